"""Augmentation of fresh uint8 batches on the worker's device, as a loop hook.

Random crop from padding and flips (random or alternating) for `data.mode: device`,
alternating flip and cutout in either mode. Draws are reseeded from `(seed, epoch)` at every
epoch start (`rayaccel.core.seeds`), so an epoch resumed at its start draws exactly as before.
"""

from __future__ import annotations

import torch

from rayaccel.core.seeds import epoch_seed
from rayaccel.methods.base import Hook, StepBatch
from rayaccel.methods.tricks.flip import alternating_flip_mask
from rayaccel.methods.tricks.gpu_augment import cutout, random_crop_from_padding, random_flip

FLIP_MODES = ("none", "random", "alternating")


class WorkerAugmentHook(Hook):
    """Batched crop, flip and cutout of fresh uint8 batches, on the device that holds them.

    Order: crop, flip, cutout (cutout last so the erased square is never shifted out of view).
    Crops pad with zeros, as the Ray Data pipeline's crops do, so both data modes train on the
    same views.

    Args:
        crop_padding_px: Random crop of the original size from this much zero padding; 0: none.
        flip: "none", "random" (each sample with probability 1/2) or "alternating" (random in
            epoch 0, then exactly the samples not flipped in the previous epoch, by index).
        cutout_px: Side of the zeroed square; 0: none.
        samples_per_choice: Consecutive samples sharing one random crop, flip and square.
        seed: Seed of the draws, distinct per worker (e.g. `job seed * 1000 + rank`).
        flip_seed: The run's data seed; alternating flips are a function of `(flip_seed,
            index, epoch)` only, the same on every worker.
        device: The device the batches arrive on.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        *,
        crop_padding_px: int = 0,
        flip: str = "none",
        cutout_px: int = 0,
        samples_per_choice: int = 1,
        seed: int,
        flip_seed: int,
        device: torch.device,
    ):
        if flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
        if crop_padding_px < 0 or cutout_px < 0 or samples_per_choice < 1:
            raise ValueError(
                "crop_padding_px and cutout_px must be >= 0 and samples_per_choice >= 1, got "
                f"{crop_padding_px}, {cutout_px} and {samples_per_choice}"
            )
        self.crop_padding_px = crop_padding_px
        self.flip = flip
        self.cutout_px = cutout_px
        self.samples_per_choice = samples_per_choice
        self.seed = seed
        self.flip_seed = flip_seed
        self.epoch = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.seed, epoch))

    def on_batch(self, batch: StepBatch) -> StepBatch:
        images = batch.images
        if images.shape[0] == 0:
            return batch
        if self.crop_padding_px:
            images = random_crop_from_padding(
                images,
                self.crop_padding_px,
                self.generator,
                padding_mode="constant",
                samples_per_choice=self.samples_per_choice,
            )
        if self.flip == "alternating":
            images = random_flip(
                images, alternating_flip_mask(batch.indices, self.epoch, self.flip_seed)
            )
        elif self.flip == "random":
            images = random_flip(images, self._coin_flips(images.shape[0], images.device))
        if self.cutout_px:
            images = cutout(
                images, self.cutout_px, self.generator, samples_per_choice=self.samples_per_choice
            )
        batch.images = images
        return batch

    def _coin_flips(self, n_samples: int, device: torch.device) -> torch.Tensor:
        n_choices = -(-n_samples // self.samples_per_choice)
        coins = torch.rand(n_choices, generator=self.generator, device=device) < 0.5
        return coins.repeat_interleave(self.samples_per_choice)[:n_samples]
