"""Mixup and CutMix as a loop hook around timm's `Mixup`."""

from __future__ import annotations

import numpy as np
from timm.data import Mixup
from timm.data.mixup import mixup_target

from rayaccel.core.seeds import seeded_global_rngs, worker_seed
from rayaccel.methods.base import Hook, StepBatch, WorkerContext
from rayaccel.methods.mixup.config import MixupSettings


class MixupHook(Hook):
    """Mixes every assembled training batch (`on_inputs`: normalised fp32, replayed samples
    included) and sets `batch.targets` to timm's smoothed, mixed soft targets.

    timm draws lambda, the CutMix box and the choice between them from NumPy's global
    generator; each step seeds it from `(seed, epoch, step)` and restores it afterwards, so a
    run resumed at an epoch start mixes exactly as the uninterrupted one on every worker.
    A batch that skipped bad rows may be odd: its last sample then trains unmixed, on its
    smoothed one-hot target, and the others are mixed as usual.

    Args:
        settings: The section's values with the job's label smoothing and class count.
        seed: Distinct per worker.
    """

    def __init__(self, settings: MixupSettings, *, seed: int):
        self.mixup = Mixup(
            mixup_alpha=settings.mixup_alpha,
            cutmix_alpha=settings.cutmix_alpha,
            cutmix_minmax=settings.cutmix_minmax,
            prob=settings.prob,
            switch_prob=settings.switch_prob,
            mode=settings.mode,
            correct_lam=settings.correct_lam,
            label_smoothing=settings.label_smoothing,
            num_classes=settings.num_classes,
        )
        self.first_unmixed_epoch = settings.first_unmixed_epoch
        self.seed = seed
        self.epoch = 0
        self.step = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    @property
    def active(self) -> bool:
        """Whether this epoch mixes (timm's `mixup_enabled`, off from `off_epoch` on)."""
        return self.first_unmixed_epoch is None or self.epoch < self.first_unmixed_epoch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        self.step += 1
        # Unmixed epochs train on the hard labels: the loss's label smoothing then gives
        # exactly timm's smoothed one-hot targets (its disabled Mixup), at no extra cost.
        if not self.active or batch.labels.numel() == 0:
            return batch
        even = batch.labels.shape[0] // 2 * 2
        images = batch.images.clone()  # timm mixes in place; the input may be a buffer's
        targets = mixup_target(
            batch.labels, self.mixup.num_classes, smoothing=self.mixup.label_smoothing
        )
        if even:
            with seeded_global_rngs(self.step_seed()):
                images[:even], targets[:even] = self.mixup(images[:even], batch.labels[:even])
        batch.images, batch.targets = images, targets
        return batch

    def step_seed(self) -> int:
        """This step's seed of NumPy's generator (which takes 32 bits), from `(seed, epoch,
        step)`."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.step]).generate_state(1)[0])

    def on_epoch_end(self) -> dict[str, float]:
        return {"mixup/active": float(self.active)}


def hooks_for(settings: MixupSettings, context: WorkerContext) -> list[Hook]:
    return [MixupHook(settings, seed=worker_seed(context.seed, context.rank))]
