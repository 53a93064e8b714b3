"""Lookahead: every k steps, pull the weights back part of the way to a slow copy.

One of airbench's extra tricks. Lookahead (Zhang et al., 2019) keeps
"slow" weights phi next to the "fast" weights theta that an inner optimizer trains; every k
inner steps ``phi <- phi + alpha * (theta - phi)`` and theta restarts from phi. The slow weights
average out the fast weights' oscillation across a high-curvature valley, which steadies a
run with a large learning rate at the cost of one extra copy of the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Lookahead:
    """Wraps an optimizer; use it where the optimizer was used (``step``, ``zero_grad``).

    ``param_groups`` and ``state`` are the inner optimizer's, so ``rayaccel.optim.build.set_lr``
    and ``GradScaler.step`` work unchanged. The inner optimizer's state (e.g. SGD momentum) is
    kept across synchronisations, the paper's default. Slow weights start as a copy of the
    parameters at construction and live on their devices.

    Args:
        optimizer: The inner ("fast") optimizer.
        k: Inner steps between synchronisations, >= 1.
        alpha: Slow-weight step size in (0, 1]; 1 makes lookahead a no-op.

    Raises:
        ValueError: If ``k`` or ``alpha`` is out of range.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, k: int = 5, alpha: float = 0.5):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.optimizer = optimizer
        self.k = k
        self.alpha = alpha
        self.inner_steps = 0
        self.slow_weights = [param.detach().clone() for param in self._params()]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One inner step; every ``k``-th also moves the slow weights and resets the fast ones."""
        loss = self.optimizer.step(closure)
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            with torch.no_grad():
                for param, slow in zip(self._params(), self.slow_weights, strict=True):
                    slow.lerp_(param, self.alpha)
                    param.copy_(slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state plus k, alpha, the step count and CPU slow weights."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "k": self.k,
            "alpha": self.alpha,
            "inner_steps": self.inner_steps,
            "slow_weights": [slow.to("cpu", copy=True) for slow in self.slow_weights],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict`` of a Lookahead over the same parameters.

        Raises:
            ValueError: If the saved slow weights do not match the parameters' shapes.
        """
        saved = state["slow_weights"]
        shapes = [tuple(s.shape) for s in saved]
        expected = [tuple(s.shape) for s in self.slow_weights]
        if shapes != expected:
            raise ValueError(
                f"Lookahead state has slow weights shaped {shapes}, the parameters are "
                f"{expected}; wrap an optimizer over the same parameters"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.k, self.alpha, self.inner_steps = state["k"], state["alpha"], state["inner_steps"]
        for slow, value in zip(self.slow_weights, saved, strict=True):
            slow.copy_(value)

    def _params(self) -> list[Tensor]:
        return [param for group in self.optimizer.param_groups for param in group["params"]]
