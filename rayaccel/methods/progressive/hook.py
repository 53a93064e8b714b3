"""EfficientNetV2's adaptive regularisation as a loop hook (the schedule is in `stages`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import nn

from rayaccel.core.seeds import worker_seed
from rayaccel.methods.base import Hook, StepBatch, WorkerContext
from rayaccel.methods.progressive.config import ProgressiveSettings
from rayaccel.methods.progressive.regularisation import mixup_cutmix, set_regularisation


class RegularisationHook(Hook):
    """EfficientNetV2's adaptive regularisation, read from each plan stage.

    At a stage start the stage's dropout and drop-path rates are set on the model
    (`set_regularisation`: timm's `drop_rate`, head dropout and `DropPath` modules); in every
    step of a stage with a positive mixup or cutmix alpha the normalised inputs are mixed with
    a permutation of the batch and `batch.targets` carries the mixed, smoothed one-hot labels
    (the loss takes soft targets as they are). Runs after replay, so replayed samples meet
    new partners.

    Args:
        num_classes: Width of the one-hot targets.
        label_smoothing: Applied to the one-hot labels before they are mixed (smoothing is
            linear, so this equals smoothing the mixed labels).
        seed: Seed of lambda, boxes and permutations, distinct per worker.
    """

    def __init__(self, *, num_classes: int, label_smoothing: float, seed: int):
        self.model: nn.Module | None = None
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.seed = seed
        self.mixup_alpha = 0.0
        self.cutmix_alpha = 0.0
        self.rng = np.random.default_rng(seed)

    def attach(self, model: nn.Module) -> None:
        self.model = model  # the bare model; the DDP wrapper shares its modules

    def on_stage_start(self, stage: Any) -> None:
        set_regularisation(self.model, stage.dropout_rate, stage.drop_path_rate)
        self.mixup_alpha = stage.mixup_alpha
        self.cutmix_alpha = stage.cutmix_alpha

    def on_epoch_start(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch])

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        if (self.mixup_alpha == 0 and self.cutmix_alpha == 0) or batch.labels.numel() == 0:
            return batch
        onehot = F.one_hot(batch.labels, self.num_classes).float()
        onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        batch.images, batch.targets = mixup_cutmix(
            batch.images, onehot, self.mixup_alpha, self.cutmix_alpha, self.rng
        )
        return batch


def hooks_for(settings: ProgressiveSettings, context: WorkerContext) -> list[Hook]:
    seed = worker_seed(context.seed, context.rank)
    return [
        RegularisationHook(
            num_classes=settings.num_classes,
            label_smoothing=settings.label_smoothing,
            seed=seed,
        )
    ]
