"""AGVM in the training loop: the thin hook around `rayaccel.methods.agvm.multipliers`.

Its hook points: `param_groups` (the optimizer's groups split by component), `backward` (two
half-batch passes instead of the usual one when a measurement is due, leaving the full-batch
gradient in `.grad`: `half_batch_gradients`), `before_step` (after the step's base rates were
set, each component's groups get their mu), and mu in the epoch metrics, AGVM's state and
step counter in checkpoints.

Steps are counted over the whole run (all stages and epochs), so `start_step` and `interval`
mean the same thing in a resumed run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rayaccel.methods.agvm.config import AgvmSettings
from rayaccel.methods.agvm.multipliers import (
    AGVMState,
    apply_multipliers,
    component_param_groups,
    group_parameters,
    half_batch_gradients,
)
from rayaccel.methods.base import Hook, WorkerContext

ADAM_TYPES = ("adamw", "lamb")


def split_optimizer_groups(
    model: nn.Module, groups: list[dict], patterns: Mapping[str, Sequence[str]]
) -> tuple[list[dict], dict[str, list[nn.Parameter]], list[str]]:
    """The optimizer's groups split by AGVM component, the components' parameters, and the
    component of each split group (aligned with the groups)."""
    components = group_parameters(model, patterns)
    split, group_component = component_param_groups(groups, components)
    return split, components, group_component


class AgvmHook(Hook):
    """Per-component LR multipliers measured from half-batch gradients (see module docstring).

    Its `param_groups` point splits the optimizer's groups by component (after any other
    method's groups, e.g. frozen-BN biases), so each group gets exactly one multiplier.

    Args:
        components: `{component: parameter-name patterns}`; the first is the reference.
        optimizer_name: The job's optimizer; Adam-type ones precondition the half gradients.
        start_step, interval, momentum, clip, eps: `AGVMState` settings.
    """

    def __init__(
        self,
        components: Mapping[str, Sequence[str]],
        *,
        optimizer_name: str,
        start_step: int,
        interval: int,
        momentum: float,
        clip: Sequence[float],
        eps: float,
    ):
        self.patterns = {name: list(patterns) for name, patterns in components.items()}
        self.components: dict[str, list[nn.Parameter]] = {}
        self.group_component: list[str] = []
        self.state = AGVMState(
            list(components),
            momentum=momentum,
            clip=tuple(clip),
            eps=eps,
            start_step=start_step,
            interval=interval,
        )
        self.precondition = optimizer_name in ADAM_TYPES
        self.step = 0
        self.measured_in_epoch = 0

    def param_groups(
        self, model: nn.Module, groups: list[dict], *, lr: float, weight_decay: float
    ) -> list[dict]:
        split, components, self.group_component = split_optimizer_groups(
            model, groups, self.patterns
        )
        self.components = {name: list(params) for name, params in components.items()}
        return split

    def due(self) -> bool:
        return self.state.due(self.step)

    def backward(
        self,
        model: nn.Module,
        loss_of_rows: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        optimizer: torch.optim.Optimizer,
        scale_loss: Callable[[Tensor], Tensor],
    ) -> bool:
        """Two half-batch backward passes when a measurement is due; updates mu from their
        cosine distances. An odd batch (after skipped bad rows) waits for the next step.

        `loss_of_rows(inputs_half, rows_half)` runs the forward pass on those rows of the
        step's batch and returns their mean loss (it may record logits for the step's metrics).
        """
        if not self.due() or inputs.shape[0] % 2:
            return False
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        optimizer = getattr(optimizer, "optimizer", optimizer)  # under Lookahead
        result = half_batch_gradients(
            model,
            loss_of_rows,
            inputs,
            rows,
            self.components,
            precondition=optimizer if self.precondition else None,
            scale_loss=scale_loss,
        )
        self.state.update(result.distances())
        self.measured_in_epoch += 1
        return True

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Multiply each group's current LR by its component's mu (once per step)."""
        apply_multipliers(optimizer, self.group_component, self.state.multipliers())

    def after_step(self) -> None:
        self.step += 1

    def on_epoch_end(self) -> dict[str, float]:
        metrics = {**self.state.metrics(), "agvm/measurements": self.measured_in_epoch}
        self.measured_in_epoch = 0
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"agvm": self.state.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.state.load_state_dict(state["agvm"])
            self.step = int(state["step"])


def hooks_for(settings: AgvmSettings, context: WorkerContext) -> list[Hook]:
    return [
        AgvmHook(
            settings.components,
            optimizer_name=context.optimizer_name,
            start_step=settings.start_step,
            interval=settings.interval,
            momentum=settings.momentum,
            clip=settings.clip,
            eps=settings.eps,
        )
    ]
