"""The named points where speed-up methods plug into the training loop.

The loop reads top to bottom and calls, in this order:

    on_stage_start(stage)      a new plan stage begins (also on resume in the middle of one)
    on_epoch_start(epoch)      before the first batch of an epoch
    on_batch(batch)            a fresh uint8 batch arrived from Ray Data (replay: uint8 buffer)
    on_inputs(batch)           after normalisation, float32, before autocast
                               (low-pass crop, then replay with an fp16 buffer; later mixup)
    on_loss(losses, batch)     per-sample losses -> per-sample losses to average (InfoBatch)
    after_step()               after the optimizer step (EMA)
    on_epoch_end() -> dict     namespaced metrics, e.g. {"replay/buffer_samples": 4096}
    state_dict() / load_state_dict(state)   checkpointed with the model (rank 0's copy)
    evaluation_weights()       a context the loop evaluates in (EMA swaps its weights in)

A method subclasses `Hook` and overrides only the points it needs; each point passes through
every hook in the order `build_hooks` gives, which is where ordering rules between methods
live. Hooks get plain arguments from the runner and never read the job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class StepBatch:
    """What one step trains on: uint8 pixels at `on_batch`, normalised inputs at `on_inputs`."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    # Per-sample loss weights (InfoBatch's 1 or 1/(1-r)); None means all 1.
    weights: Tensor | None = None
    # Soft (N, num_classes) targets replacing `labels` in the loss (mixup/cutmix); None: labels.
    targets: Tensor | None = None

    def take(self, rows: Tensor) -> StepBatch:
        """The batch's `rows` (e.g. one half of it for AGVM's two backward passes)."""

        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor[rows]

        return StepBatch(
            self.images[rows],
            self.labels[rows],
            self.indices[rows],
            pick(self.weights),
            pick(self.targets),
        )


class Hook:
    """A method's view of the loop; every point defaults to doing nothing."""

    def on_stage_start(self, stage: Any) -> None:
        """`stage` is a `rayaccel.plan.StagePlan` (resolution_px, replay_factor, ...)."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def epoch_samples(self, samples: int) -> int:
        """How many training rows this epoch's Ray Data pass yields (pruning makes it fewer)."""
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        return losses

    def after_step(self) -> None:
        pass

    def on_epoch_end(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def evaluation_weights(self) -> AbstractContextManager:
        """Context the loop evaluates in (EMA swaps its averaged weights in)."""
        return nullcontext()


class MethodHooks:
    """Calls every hook at each point, in order; the loop holds one of these."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_stage_start(self, stage: Any) -> None:
        for hook in self.hooks:
            hook.on_stage_start(stage)

    def on_epoch_start(self, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(epoch)

    def epoch_samples(self, samples: int) -> int:
        for hook in self.hooks:
            samples = hook.epoch_samples(samples)
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_batch(batch)
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_inputs(batch)
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        for hook in self.hooks:
            losses = hook.on_loss(losses, batch)
        return losses

    def after_step(self) -> None:
        for hook in self.hooks:
            hook.after_step()

    def on_epoch_end(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for hook in self.hooks:
            metrics.update(hook.on_epoch_end())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {type(hook).__name__: hook.state_dict() for hook in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.load_state_dict(state.get(type(hook).__name__, {}))

    def evaluation_weights(self) -> AbstractContextManager:
        stack = ExitStack()
        for hook in self.hooks:
            stack.enter_context(hook.evaluation_weights())
        return stack
