"""LAMB: Adam with decoupled weight decay and a per-layer trust ratio (You et al. 2019).

For every parameter tensor w with gradient g, at step t:

    m = beta1 * m + (1 - beta1) * g            v = beta2 * v + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)                 v_hat = v / (1 - beta2**t)
    r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
    w -= lr * (||w|| / ||r||) * r

so each layer moves by about ``lr`` times its own norm per step, whatever the scale of its
gradients: the property that lets BERT and ViT-type models train at batches of 32k and more
with the square-root LR rule (METHODS.md section 6).

Decisions where the paper leaves room:

- The trust ratio is ``||w|| / ||r||`` without the paper's clipping function phi (identity),
  and it is 1 when either norm is 0, so zero-initialised layers still start to move.
- Parameter groups with ``lamb_exclude=True`` (normalisation weights and biases, see
  :func:`rayaccel.optim.build.exclude_norms_and_biases`) get the plain Adam update ``m_hat / (sqrt(v_hat) + eps)``: no trust
  ratio and no weight decay, whatever their ``weight_decay``.
- ``bias_correction=False`` uses ``m`` and ``v`` directly (some BERT recipes do).
- No gradient clipping: clipping the global gradient norm is the training loop's choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments for Batch training; see the module docstring.

    Args:
        params: Parameters or parameter groups; groups may set ``lamb_exclude`` and any of the
            keyword arguments below.
        lr: Global learning rate (before the per-layer trust ratio).
        betas: Decay rates of the first and second moment, each in [0, 1).
        eps: Added to ``sqrt(v_hat)``; LAMB recipes use 1e-6 rather than Adam's 1e-8.
        weight_decay: Decoupled decay added to the Adam direction before the trust ratio.
        bias_correction: Divide the moments by ``1 - beta**t``.

    Raises:
        ValueError: If a hyperparameter is out of range.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
    ) -> None:
        if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not (isinstance(eps, int | float) and eps >= 0):
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not (isinstance(weight_decay, int | float) and math.isfinite(weight_decay)) or (
            weight_decay < 0
        ):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            lamb_exclude=False,
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
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format
                    )
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    correction1 = 1 - beta1 ** state["step"]
                    correction2 = 1 - beta2 ** state["step"]
                else:
                    correction1 = correction2 = 1.0
                denominator = (exp_avg_sq / correction2).sqrt_().add_(group["eps"])
                update = (exp_avg / correction1).div_(denominator)
                if not group["lamb_exclude"]:
                    update.add_(param, alpha=group["weight_decay"])
                    weight_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    # torch.where rather than a Python branch: no device-to-host sync per layer.
                    ratio = torch.where(
                        (weight_norm > 0) & (update_norm > 0),
                        weight_norm / update_norm,
                        torch.ones_like(weight_norm),
                    )
                    update.mul_(ratio)
                param.add_(update, alpha=-group["lr"])
        return loss
