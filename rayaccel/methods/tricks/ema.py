"""Exponential moving average (EMA) of model weights, evaluated instead of the live weights.

A step of the myrtle.ai ResNet-9 recipe (before flip TTA): "EMA every 5 steps, momentum 0.99".
Averaging the weights of the last few hundred steps smooths out the noise of a large learning
rate late in a short run, so the averaged model is more accurate than the live one at no cost
in steps; updating only every k steps keeps the averaging's own cost negligible.

The average is timm's ``ModelEmaV3`` with ``exclude_buffers=True``; rayaccel adds the update
interval, the choice of warm-up rule (``WARMUP_RULES`` in ``tricks.config``), evaluation in the
live model and a checkpoint format keyed by parameter name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import WARMUP_RULES, EmaSettings


class ModelEma:
    """A float32 EMA of a model's parameters, plus a copy of its buffers.

    Every ``every_steps`` optimizer steps, each floating-point parameter ``w`` updates its
    average as ``ema = d * ema + (1 - d) * w``; the momentum d applies per update, so the
    average spans about ``every_steps / (1 - momentum)`` steps (500 with the defaults). The
    average starts as a copy of the weights at construction.

    With a fixed d = ``momentum`` a short run's average stays mostly the initial weights (0.99
    per update keeps 83% of them after 18 updates); a warm-up rule starts d low and lets it rise
    to ``momentum`` (:meth:`next_momentum`, n counts updates from 1):

    - ``none``: d = ``momentum`` from the first update on (the myrtle.ai recipe, whose
      per-update momentum, 0.99 per step over 5 steps, is low enough not to need one).
    - ``timm``: timm's ``ModelEmaV3(use_warmup=True)`` at its defaults ``warmup_gamma=1``,
      ``warmup_power=2/3``: ``min(momentum, 1 - n ** -(2/3))``, 0 at the first update (the
      average restarts from the weights then). timm updates once per optimizer step, so its
      step count is this update count. Reaches 0.99 after 1,000 updates, 0.999 after 31,600.
    - ``tensorflow``: TensorFlow's ``ExponentialMovingAverage`` with ``num_updates = n - 1``,
      the updates done before (the EfficientNet releases pass the global step and average every
      step): ``min(momentum, n / (9 + n))``. Rises more slowly: 0.956 at update 194, 0.99 only
      at update 891.

    Buffers (BatchNorm running mean/var and ``num_batches_tracked``) are *copied* at each update,
    not averaged (timm's ``exclude_buffers=True``): running statistics are already an
    exponential average over recent batches, and the live model's statistics describe
    activations of weights that are within a few hundred steps of the average, so averaging them
    a second time would only make them lag further. Evaluating with EMA weights therefore uses
    the live model's BN statistics of the last update.

    The average lives on the model's device. Pass the bare model (not the
    ``DistributedDataParallel`` wrapper, which shares its parameters), so names match
    checkpoints.

    Args:
        model: The model being trained; ``update`` reads its weights.
        momentum: Weight of the old average at each update once warmed up, in [0, 1).
        every_steps: Update once per this many optimizer steps, >= 1.
        warmup: One of ``WARMUP_RULES``: "none", "timm" or "tensorflow".

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        momentum: float = 0.99,
        every_steps: int = 5,
        warmup: str = "timm",
    ):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be an int >= 1, got {every_steps!r}")
        if warmup not in WARMUP_RULES:
            raise ValueError(f"warmup must be one of {WARMUP_RULES}, got {warmup!r}")
        self._average = ModelEmaV3(
            model, decay=momentum, use_warmup=True, exclude_buffers=True, dtype=torch.float32
        )
        self.every_steps = every_steps
        self.warmup = warmup
        self.num_updates = 0
        self._model = model

    @property
    def momentum(self) -> float:
        """The momentum once warmed up (timm's ``decay``)."""
        return self._average.decay

    @momentum.setter
    def momentum(self, momentum: float) -> None:
        self._average.decay = momentum

    def next_momentum(self) -> float:
        """The momentum d the next update uses under ``warmup`` (see the class docstring)."""
        if self.warmup == "timm":
            return self._average.get_decay(self.num_updates + 1)
        if self.warmup == "tensorflow":
            return min(self.momentum, (1 + self.num_updates) / (10 + self.num_updates))
        return self.momentum

    @property
    def averaged(self) -> dict[str, Tensor]:
        """The averaged parameters by name (the tensors themselves, not copies)."""
        return dict(self._average.module.named_parameters())

    @property
    def copied(self) -> dict[str, Tensor]:
        """The buffers copied at the last update, by name."""
        return dict(self._average.module.named_buffers())

    def update(self, step: int) -> bool:
        """Averages in the model's current weights if ``step`` is a multiple of ``every_steps``.

        Args:
            step: Optimizer steps done so far, counted from 1 after the first step.

        Returns:
            Whether the average was updated.
        """
        if step % self.every_steps != 0:
            return False
        momentum = self.next_momentum()
        with torch.no_grad():
            self._average.apply_update_no_buffers_(self._model, momentum)
        self.num_updates += 1
        return True

    def copy_to(self, model: nn.Module) -> None:
        """Overwrites ``model``'s parameters with the average and its buffers with the copies."""
        _load_tensors(model, self.averaged, self.copied)

    @contextmanager
    def weights_applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the EMA weights; the live weights come back after.

        Example::

            with ema.weights_applied(model):
                accuracy = evaluate(model)
        """
        live_parameters = {name: p.detach().clone() for name, p in model.named_parameters()}
        live_buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        self.copy_to(model)
        try:
            yield model
        finally:
            _load_tensors(model, live_parameters, live_buffers)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: settings, update count and CPU copies of every tensor."""
        return {
            "momentum": self.momentum,
            "every_steps": self.every_steps,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "averaged": {name: t.to("cpu", copy=True) for name, t in self.averaged.items()},
            "copied": {name: t.to("cpu", copy=True) for name, t in self.copied.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict`` (tensors are moved to where the average lives).

        A state saved before the warm-up rule was recorded keeps this EMA's rule.

        Raises:
            ValueError: If the saved tensors do not match this model's names and shapes.
        """
        for key, current in (("averaged", self.averaged), ("copied", self.copied)):
            saved: dict[str, Tensor] = state[key]
            if set(saved) != set(current):
                raise ValueError(
                    f"EMA state {key!r} has tensors {sorted(set(saved) ^ set(current))} that "
                    f"this model lacks or vice versa; build ModelEma from the same model"
                )
            for name, tensor in saved.items():
                if tensor.shape != current[name].shape:
                    raise ValueError(
                        f"EMA state {key}[{name!r}] has shape {tuple(tensor.shape)}, "
                        f"the model has {tuple(current[name].shape)}"
                    )
            with torch.no_grad():
                for name, tensor in saved.items():
                    current[name].copy_(tensor)
        self.momentum = state["momentum"]
        self.every_steps = state["every_steps"]
        self.warmup = state.get("warmup", self.warmup)
        self.num_updates = state["num_updates"]


def _load_tensors(model: nn.Module, parameters: dict[str, Tensor], buffers: dict[str, Tensor]):
    """Copies tensors by name into ``model``'s parameters and buffers (casting dtypes)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(parameters[name])
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])


class EmaHook(Hook):
    """An EMA of the weights that evaluation uses instead of the live weights.

    Counts optimizer steps itself (from 1 after the first step, carried in checkpoints) and
    averages every `every_steps`-th with the momentum its warm-up rule gives
    (`ModelEma.next_momentum`); `evaluation_weights` swaps the average in and the live weights
    back afterwards.

    Args:
        momentum: Weight of the old average per update once warmed up, in [0, 1).
        every_steps: Optimizer steps between updates, >= 1.
        warmup: One of ``WARMUP_RULES``.
    """

    def __init__(self, *, momentum: float, every_steps: int, warmup: str):
        self.momentum = momentum
        self.every_steps = every_steps
        self.warmup = warmup
        self.model: nn.Module | None = None
        self.ema: ModelEma | None = None
        self.steps = 0

    def attach(self, model: nn.Module) -> None:
        """Starts the average from `model`, the bare model (not the DDP wrapper)."""
        self.model = model
        self.ema = ModelEma(
            model, momentum=self.momentum, every_steps=self.every_steps, warmup=self.warmup
        )

    def after_step(self) -> None:
        self.steps += 1
        self.ema.update(self.steps)

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        with self.ema.weights_applied(self.model):
            yield

    def on_epoch_end(self) -> dict[str, float]:
        return {"ema/updates": self.ema.num_updates}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.ema.load_state_dict(state["ema"])
            self.steps = state["steps"]


def hooks_for(settings: EmaSettings, context: WorkerContext) -> list[Hook]:
    return [
        EmaHook(
            momentum=settings.momentum, every_steps=settings.every_steps, warmup=settings.warmup
        )
    ]
