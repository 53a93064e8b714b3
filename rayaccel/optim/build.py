"""Optimizer construction and the one way the training loop changes the learning rate.

Every parameter group carries two extra keys:

- ``lr_scale``: a per-group factor on the base learning rate, for methods that give some
  parameters their own rate (e.g. myrtle.ai's frozen-BN-scale trick trains BN biases at 64x).
- ``initial_lr``: ``lr * lr_scale`` at construction (what schedulers that read it expect).

The loop never changes a group's rate itself: every step it calls :func:`set_lr` with the
plan's rate, so a schedule, a per-group scale and a resumed checkpoint (param groups are saved
with the optimizer state) always agree.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from rayaccel.optim.registry import OptimizerHyperparameters, optimizer_spec


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


def adapt_all_but_norms_and_biases(groups: list[dict]) -> list[dict]:
    """Sets timm's ``always_adapt`` flag of each group for LARS and LAMB (in place).

    Groups of only norm weights and biases (``ndim <= 1``) get no trust ratio and no decay:
    their per-layer norms are tiny or meaningless. Every other group gets the trust ratio even
    at weight decay 0 (timm would skip it there), so a job's ``weight_decay: 0`` turns off the
    decay and nothing else. A flag a group already carries is kept.

    Returns:
        ``groups``, for chaining.

    Raises:
        ValueError: If a group of norm weights and biases has weight decay: timm's LARS and
            LAMB apply decay only together with the trust ratio, so it could not take effect.
    """
    for index, group in enumerate(groups):
        norms_and_biases = bool(group["params"]) and all(p.ndim <= 1 for p in group["params"])
        if norms_and_biases and group["weight_decay"] != 0:
            raise ValueError(
                f"param group {index} holds only norm weights and biases with weight_decay="
                f"{group['weight_decay']}; LARS and LAMB give such groups no trust ratio and "
                "hence no decay: set its weight_decay to 0 or use sgd or adamw"
            )
        group.setdefault("always_adapt", not norms_and_biases)
    return groups


def build_optimizer(
    model: nn.Module,
    hyperparameters: OptimizerHyperparameters,
    *,
    groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer `hyperparameters.name` names (`rayaccel.optim.registry`) over groups.

    Args:
        model: The model to optimise.
        hyperparameters: Name, base learning rate (each group starts at ``lr * lr_scale``),
            decay and the optimizer's own hyper-parameters; the ones it does not take are
            ignored.
        groups: Parameter groups, each with ``params``, ``weight_decay`` and ``lr_scale``
            (e.g. ``frozen_bn.bn_bias_param_groups``); None means :func:`param_groups`. For
            trust-ratio optimizers (LARS, LAMB), groups holding only norm weights and biases
            (``ndim <= 1``) get no trust ratio and no decay
            (:func:`adapt_all_but_norms_and_biases`).

    Raises:
        ValueError: If the name is unknown, ``lr`` is not positive, ``weight_decay`` is
            negative, or a trust-ratio optimizer gets a decayed group of norms and biases.
    """
    spec = optimizer_spec(hyperparameters.name)
    lr, weight_decay = hyperparameters.lr, hyperparameters.weight_decay
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    if groups is None:
        groups = param_groups(model, weight_decay)
    for group in groups:
        group["initial_lr"] = lr * group["lr_scale"]
        group["lr"] = group["initial_lr"]
    if spec.trust_ratio:
        adapt_all_but_norms_and_biases(groups)
    if hyperparameters.eps is None:
        hyperparameters = dataclasses.replace(hyperparameters, eps=spec.default_eps)
    return spec.resolve()(groups, lr=lr, **spec.arguments(hyperparameters))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group's learning rate to ``lr * lr_scale`` (the loop calls it every step).

    Args:
        optimizer: An optimizer whose groups carry ``lr_scale`` (as built by
            :func:`build_optimizer`; a Lookahead wrapper shares its inner groups).
        lr: The plan's rate for this step.

    Raises:
        ValueError: If ``lr`` is negative or not finite.
        KeyError: If a group has no ``lr_scale``.
    """
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"learning rate must be finite and >= 0, got {lr}")
    for index, group in enumerate(optimizer.param_groups):
        if "lr_scale" not in group:
            raise KeyError(
                f"param group {index} has no 'lr_scale'; build the optimizer with "
                "rayaccel.optim.build.build_optimizer or set group['lr_scale'] yourself"
            )
        group["lr"] = lr * group["lr_scale"]
