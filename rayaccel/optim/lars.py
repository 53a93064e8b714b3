"""LARS: SGD with momentum and a per-layer trust ratio (You, Gitman & Ginsburg 2017).

Every parameter tensor w with gradient g gets its own rate ``lr * ratio`` with

    ratio = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)

so a layer whose update would be large compared with its weights takes a smaller step, which is
what keeps batches of 8k-32k trainable with one global learning rate (METHODS.md section 6).

Decisions where the paper leaves room:

- Momentum follows ``torch.optim.SGD`` (no dampening; the first step fills the buffer with the
  update itself) and the learning rate multiplies the buffer, not its input: ``buf = momentum *
  buf + ratio * (g + weight_decay * w)``, ``w -= lr * buf`` (Nesterov: ``w -= lr * (ratio * (g +
  wd * w) + momentum * buf)``). With a constant rate this is the paper's update; under a
  schedule the rate takes effect immediately, as it does for the project's SGD.
- The trust ratio uses the raw gradient norm and decay is coupled (added to the gradient),
  both as in the paper.
- A zero ``||w||`` or ``||g||`` gives ratio 1: a zero-initialised layer (zero-init residual
  BN, a zeroed head) would otherwise never move, and a zero gradient has nothing to scale.
- Parameter groups with ``lars_exclude=True`` (normalisation weights and biases, see
  :func:`rayaccel.optim.build.exclude_norms_and_biases`) are plain momentum SGD: no trust ratio and no weight decay, whatever
  their ``weight_decay``. Their norms are tiny or meaningless per layer, and the paper's recipes
  and later large-batch work leave them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


def _check_range(name: str, value: float, low: float, high: float, *, high_open: bool) -> None:
    inside = low <= value < high if high_open else low <= value <= high
    if isinstance(value, bool) or not (isinstance(value, int | float) and inside):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling over momentum SGD; see the module docstring.

    Args:
        params: Parameters or parameter groups; groups may set ``lars_exclude`` and any of the
            keyword arguments below.
        lr: Global learning rate (before the per-layer trust ratio).
        momentum: Momentum factor in [0, 1).
        weight_decay: Coupled L2 decay (the paper's beta), applied inside the trust ratio.
        trust_coefficient: The paper's eta, e.g. 0.001.
        eps: Added to the trust ratio's denominator.
        nesterov: Use Nesterov momentum; needs ``momentum > 0``.

    Raises:
        ValueError: If a hyperparameter is out of range.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
        nesterov: bool = False,
    ) -> None:
        if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr must be > 0, got {lr!r}")
        _check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        _check_range("weight_decay", weight_decay, 0.0, math.inf, high_open=True)
        _check_range("eps", eps, 0.0, math.inf, high_open=True)
        if isinstance(trust_coefficient, bool) or not (
            isinstance(trust_coefficient, int | float) and trust_coefficient > 0
        ):
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            nesterov=nesterov,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss; optional.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if not group["lars_exclude"]:
                    weight_decay = group["weight_decay"]
                    weight_norm = torch.linalg.vector_norm(param)
                    grad_norm = torch.linalg.vector_norm(grad)
                    # torch.where rather than a Python branch: no device-to-host sync per layer.
                    ratio = torch.where(
                        (weight_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"]
                        * weight_norm
                        / (grad_norm + weight_decay * weight_norm + group["eps"]),
                        torch.ones_like(weight_norm),
                    )
                    grad = grad.add(param, alpha=weight_decay).mul_(ratio)
                if momentum:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    buffer = state["momentum_buffer"]
                    grad = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                param.add_(grad, alpha=-group["lr"])
        return loss
