"""Frozen BatchNorm scale with bias-only BN training and its own bias LR and weight decay.

A step of the myrtle.ai ResNet-9 recipe: "frozen BN scale (bias-only,
bias lr x64, wd /64)". A BN scale in front of a scale-invariant next layer only changes the
effective learning rate of what follows, so fixing it removes a redundant degree of freedom
(and its weight decay's interaction with the LR). The BN biases, which now carry all of BN's
learnable shift, train 64x faster; dividing their weight decay by the same 64 keeps the decay
per SGD step, ``lr * weight_decay``, unchanged, so only the gradient step grows.
"""

from __future__ import annotations

import torch
from torch import nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import FrozenBnScaleSettings

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_bn_scale(model: nn.Module, scale: float = 1.0) -> int:
    """Sets every affine BatchNorm's weight to ``scale`` and stops training it.

    Build the optimizer afterwards (``bn_bias_param_groups`` leaves frozen parameters out). With
    ghost BN (a ``BatchNorm2d`` subclass) the order of the two conversions does not matter.

    Args:
        model: Changed in place.
        scale: The fixed BN scale; 1.0 makes BN a pure normalise-and-shift.

    Returns:
        Number of BatchNorm layers frozen.
    """
    n_frozen = 0
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS) and module.affine:
            with torch.no_grad():
                module.weight.fill_(scale)
            module.weight.requires_grad_(False)
            n_frozen += 1
    return n_frozen


def bn_bias_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    *,
    bias_lr_multiplier: float = 64.0,
    bias_wd_divisor: float = 64.0,
) -> list[dict]:
    """Optimizer groups giving BatchNorm biases their own learning rate and weight decay.

    Groups follow ``rayaccel.optim.build``: each carries ``lr_scale`` and
    ``initial_lr = base_lr * lr_scale`` (so ``set_lr`` keeps the 64x ratio under any schedule)
    and the starting ``lr``. Weight decay applies to conv/linear weights (``ndim > 1``) only, as
    in ``optim.param_groups``; other 1-D parameters (unfrozen norm scales, conv or linear
    biases) get none. Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: The model to optimise.
        base_lr: The optimizer's base learning rate.
        weight_decay: Decay of the weight group; BN biases get ``weight_decay / bias_wd_divisor``.
        bias_lr_multiplier: ``lr_scale`` of the BN-bias group.
        bias_wd_divisor: Divides the weight decay of the BN-bias group.

    Returns:
        ``[weights, bn_biases, other_no_decay]`` groups; any of them may hold no params.

    Raises:
        ValueError: If a rate, decay, multiplier or divisor is out of range.
    """
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not (bias_lr_multiplier > 0 and bias_wd_divisor > 0):
        raise ValueError(
            f"bias_lr_multiplier and bias_wd_divisor must be > 0, got "
            f"{bias_lr_multiplier!r} and {bias_wd_divisor!r}"
        )
    bn_bias_ids = {
        id(module.bias)
        for module in model.modules()
        if isinstance(module, _BATCH_NORMS) and module.bias is not None
    }
    weights, bn_biases, no_decay = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in bn_bias_ids:
            bn_biases.append(param)
        elif param.ndim > 1:
            weights.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"params": weights, "weight_decay": weight_decay, "lr_scale": 1.0},
        {
            "params": bn_biases,
            "weight_decay": weight_decay / bias_wd_divisor,
            "lr_scale": float(bias_lr_multiplier),
        },
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    for group in groups:
        group["initial_lr"] = group["lr"] = base_lr * group["lr_scale"]
    return groups


class FrozenBnScaleHook(Hook):
    """BN scales fixed at `scale` (also on ghost BNs); BN biases in their own fast group."""

    def __init__(self, *, scale: float, bias_lr_multiplier: float, bias_wd_divisor: float):
        self.scale = scale
        self.bias_lr_multiplier = bias_lr_multiplier
        self.bias_wd_divisor = bias_wd_divisor

    def transform_model(self, model: nn.Module) -> nn.Module:
        freeze_bn_scale(model, self.scale)
        return model

    def param_groups(
        self, model: nn.Module, groups: list[dict], *, lr: float, weight_decay: float
    ) -> list[dict]:
        return bn_bias_param_groups(
            model,
            lr,
            weight_decay,
            bias_lr_multiplier=self.bias_lr_multiplier,
            bias_wd_divisor=self.bias_wd_divisor,
        )


def hooks_for(settings: FrozenBnScaleSettings, context: WorkerContext) -> list[Hook]:
    return [
        FrozenBnScaleHook(
            scale=settings.scale,
            bias_lr_multiplier=settings.bias_lr_multiplier,
            bias_wd_divisor=settings.bias_wd_divisor,
        )
    ]
