"""The optimizers a job can name, each with the hyper-parameters it takes.

One record per optimizer (timm's `_optim_factory` pattern): the job schema takes its allowed
names from `OPTIMIZER_NAMES`, and `rayaccel.optim.build.build_optimizer` builds the class a
record names with only the hyper-parameters that record lists. Kept free of torch imports so
loading and validating a job stays fast; classes are resolved when an optimizer is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OptimizerHyperparameters:
    """`train.optimizer` as plain values: what a worker builds its optimizer from.

    `weight_decay` is an L2 term added to the gradient for SGD and LARS and the decoupled
    decay for AdamW and LAMB, so the same number means different strengths. `eps` None means
    the optimizer's own default (`OptimizerSpec.default_eps`).
    """

    name: str
    lr: float
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    trust_coefficient: float = 0.001
    eps: float | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer.

    Attributes:
        name: What `train.optimizer.name` says.
        class_path: `module:attribute` of the `torch.optim.Optimizer` subclass.
        arguments: Its keyword arguments (besides params and lr) from the hyper-parameters,
            whose `eps` is already resolved.
        default_eps: Its usual denominator term, used when `eps` is None.
        trust_ratio: A layer-wise trust-ratio optimizer (timm's `always_adapt` group flag):
            parameter groups of norm weights and biases get no trust ratio and no decay, every
            other group gets the trust ratio even at weight decay 0
            (`rayaccel.optim.build.adapt_all_but_norms_and_biases`).
    """

    name: str
    class_path: str
    arguments: Callable[[OptimizerHyperparameters], dict[str, Any]]
    default_eps: float | None = None
    trust_ratio: bool = False

    def resolve(self) -> type:
        module, attribute = self.class_path.split(":")
        return getattr(importlib.import_module(module), attribute)


def _sgd(h: OptimizerHyperparameters) -> dict[str, Any]:
    return {"momentum": h.momentum, "nesterov": h.nesterov}


def _adam(h: OptimizerHyperparameters) -> dict[str, Any]:
    return {"betas": h.betas, "eps": h.eps}


def _lars(h: OptimizerHyperparameters) -> dict[str, Any]:
    return {
        "momentum": h.momentum,
        # LARS refuses Nesterov without momentum; a job with momentum 0 means plain LARS.
        "nesterov": h.nesterov and h.momentum > 0,
        "trust_coeff": h.trust_coefficient,
        "eps": h.eps,
    }


def _lamb(h: OptimizerHyperparameters) -> dict[str, Any]:
    # timm's Lamb clips the global gradient norm at 1.0 by default. A job has no clipping
    # field and no other optimizer here clips, so LAMB does not either: its runs keep the
    # numbers they had before LAMB came from timm.
    return {"betas": h.betas, "eps": h.eps, "max_grad_norm": None}


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", "torch.optim:SGD", _sgd),
        OptimizerSpec("adamw", "torch.optim:AdamW", _adam, default_eps=1e-8),
        # LARS (You, Gitman & Ginsburg 2017) and LAMB (You et al. 2019) are timm's. eps 1e-9
        # (timm's Lars: 1e-8) is the value rayaccel's own LARS used, so runs keep their numbers;
        # LAMB's 1e-6 is timm's default and the LAMB recipes'.
        OptimizerSpec("lars", "timm.optim:Lars", _lars, default_eps=1e-9, trust_ratio=True),
        OptimizerSpec("lamb", "timm.optim:Lamb", _lamb, default_eps=1e-6, trust_ratio=True),
    )
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(OPTIMIZERS)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The record of `name`; unknown names fail with the list of known ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {name!r}")
    return OPTIMIZERS[name]
