"""Optimizer construction and the one way the training loop changes the learning rate.

Every parameter group carries two extra keys:

- ``lr_scale``: a per-group factor on the base learning rate, for methods that give some
  parameters their own rate (e.g. myrtle.ai's frozen-BN-scale trick trains BN biases at 64x).
- ``initial_lr``: ``lr * lr_scale``, fixed at construction. The loop never keeps its own copy of
  the base rate; it calls :func:`set_lr` with the schedule's multiplier, so a schedule, a
  per-group scale and a resumed checkpoint (param groups are saved with the optimizer state)
  always agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZER_NAMES = ("sgd", "adamw", "lars", "lamb")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a weight-decay group and a no-decay group.

    Normalisation weights and all biases (every parameter with ``ndim <= 1``) get no weight
    decay ("no bias decay", He et al. 2019, Bag of Tricks): they are few and only shift or scale
    activations, so decaying them shrinks activations instead of regularising the fit. Frozen
    parameters (``requires_grad=False``) are left out so the optimizer holds no state for them.

    Args:
        model: The model whose parameters are grouped.
        weight_decay: Decay coefficient for the conv/linear weight group.

    Returns:
        ``[decay_group, no_decay_group]``, each a dict with ``params``, ``weight_decay`` and
        ``lr_scale`` (1.0). Either list of params may be empty.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
    trust_coefficient: float = 0.001,
    groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """Build SGD (Nesterov momentum), AdamW, LARS or LAMB over :func:`param_groups`.

    Args:
        model: The model to optimise.
        name: ``"sgd"``, ``"adamw"``, ``"lars"`` or ``"lamb"``.
        lr: Base learning rate; each group starts at ``lr * lr_scale``.
        weight_decay: For SGD and LARS an L2 term added to the gradient; for AdamW and LAMB the
            decoupled decay. The same number therefore means different strengths.
        momentum: SGD/LARS momentum; ignored by AdamW and LAMB.
        nesterov: Use Nesterov momentum in SGD and LARS; ignored by AdamW and LAMB.
        betas: AdamW/LAMB moment decay rates.
        eps: Denominator term; None means each optimizer's usual value (AdamW 1e-8, LAMB
            1e-6, LARS 1e-9).
        trust_coefficient: LARS's eta.
        groups: Parameter groups, each with ``params``, ``weight_decay`` and ``lr_scale``
            (e.g. ``frozen_bn.bn_bias_param_groups``); None means :func:`param_groups`. For
            LARS and LAMB, groups holding only norm weights and biases (``ndim <= 1``) get no
            trust ratio and no decay.

    Raises:
        ValueError: If ``name`` is unknown, ``lr`` is not positive or ``weight_decay`` is
            negative.
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    if groups is None:
        groups = param_groups(model, weight_decay)
    for group in groups:
        group["initial_lr"] = lr * group["lr_scale"]
        group["lr"] = group["initial_lr"]
        if name in ("lars", "lamb"):
            group.setdefault(f"{name}_exclude", all(p.ndim <= 1 for p in group["params"]))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8 if eps is None else eps)
    if name == "lars":
        from rayaccel.methods.lars import LARS

        return LARS(
            groups,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov and momentum > 0,
            trust_coefficient=trust_coefficient,
            eps=1e-9 if eps is None else eps,
        )
    from rayaccel.methods.lamb import LAMB

    return LAMB(groups, lr=lr, betas=betas, eps=1e-6 if eps is None else eps)


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Set every group's learning rate to ``initial_lr * multiplier``.

    Args:
        optimizer: An optimizer whose groups carry ``initial_lr`` (as built by
            :func:`build_optimizer`).
        multiplier: The schedule's value for the current step, usually in [0, 1].

    Raises:
        ValueError: If ``multiplier`` is negative or not finite.
        KeyError: If a group has no ``initial_lr``.
    """
    if not (math.isfinite(multiplier) and multiplier >= 0):
        raise ValueError(f"learning-rate multiplier must be finite and >= 0, got {multiplier}")
    for index, group in enumerate(optimizer.param_groups):
        if "initial_lr" not in group:
            raise KeyError(
                f"param group {index} has no 'initial_lr'; build the optimizer with "
                "rayaccel.train.optim.build_optimizer or set group['initial_lr'] yourself"
            )
        group["lr"] = group["initial_lr"] * multiplier
