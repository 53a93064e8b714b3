"""Lookahead around the job's optimizer, as a hook (the wrapper is `rayaccel.optim.lookahead`)."""

from __future__ import annotations

import torch

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import LookaheadSettings
from rayaccel.optim.lookahead import Lookahead


class LookaheadHook(Hook):
    """Every `k` steps the weights move `alpha` of the way to a slow copy."""

    def __init__(self, *, k: int, alpha: float):
        self.k = k
        self.alpha = alpha

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> Lookahead:
        return Lookahead(optimizer, k=self.k, alpha=self.alpha)


def hooks_for(settings: LookaheadSettings, context: WorkerContext) -> list[Hook]:
    return [LookaheadHook(k=settings.k, alpha=settings.alpha)]
