"""Loop hooks of the fast-training tricks and of progressive learning.

Thin glue around the pure functions of `gpu_augment`, `flip`, `progressive` and `ema`
(METHODS.md sections 3 and 4); `rayaccel.methods.hooks.build_hooks` decides where each sits
among the other methods' hooks.

- `WorkerAugmentHook`: augmentation of fresh uint8 batches on the worker's device: random
  crop from padding and flips (random or alternating) in `data.mode: device`, alternating
  flip and cutout in either mode.
- `RegularisationHook`: EfficientNetV2's per-stage dropout / drop path (set on the model at
  every stage start) and mixup / cutmix of the normalised inputs.
- `EmaHook`: the weight average, updated after optimizer steps, swapped in for evaluation and
  saved in checkpoints.

Random draws are reseeded from `(seed, epoch)` at every epoch start, like `ReplayHook`: only
rank 0 writes checkpoints, so a per-worker generator state could not be restored, but a seed
derived from the epoch makes an epoch resumed at its start draw exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayaccel.core.seeds import epoch_seed
from rayaccel.methods.ema import ModelEma
from rayaccel.methods.flip import alternating_flip_mask
from rayaccel.methods.gpu_augment import cutout, random_crop_from_padding, random_flip
from rayaccel.methods.hooks import Hook, StepBatch
from rayaccel.methods.progressive import mixup_cutmix, set_regularisation

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


class RegularisationHook(Hook):
    """EfficientNetV2's adaptive regularisation, read from each plan stage.

    At a stage start the stage's dropout and drop-path rates are set on the model
    (`set_regularisation`: timm's `drop_rate`, head dropout and `DropPath` modules); in every
    step of a stage with a positive mixup or cutmix alpha the normalised inputs are mixed with
    a permutation of the batch and `batch.targets` carries the mixed one-hot labels (the loss
    applies label smoothing on top). Runs after replay, so replayed samples meet new partners.

    Args:
        model: The bare model (not the DDP wrapper, which shares its modules).
        num_classes: Width of the one-hot targets.
        seed: Seed of lambda, boxes and permutations, distinct per worker.
    """

    def __init__(self, model: nn.Module, *, num_classes: int, seed: int):
        self.model = model
        self.num_classes = num_classes
        self.seed = seed
        self.mixup_alpha = 0.0
        self.cutmix_alpha = 0.0
        self.rng = np.random.default_rng(seed)

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
        batch.images, batch.targets = mixup_cutmix(
            batch.images, onehot, self.mixup_alpha, self.cutmix_alpha, self.rng
        )
        return batch


class EmaHook(Hook):
    """An EMA of the weights that evaluation uses instead of the live weights.

    Counts optimizer steps itself (from 1 after the first step, carried in checkpoints) and
    averages every `every_steps`-th; `evaluation_weights` swaps the average in and the live
    weights back afterwards. The n-th update uses momentum `min(momentum, (1 + n) / (10 + n))`
    (timm's EMA warmup): with a fixed 0.99 a short run's average would still be mostly the
    random initial weights (after 18 updates, 0.99^18 = 83% of them), evaluated with the live
    model's BN statistics, which fit neither.

    Args:
        model: The bare model (not the DDP wrapper).
        momentum: Weight of the old average per update, in [0, 1).
        every_steps: Optimizer steps between updates, >= 1.
    """

    def __init__(self, model: nn.Module, *, momentum: float, every_steps: int):
        self.model = model
        self.momentum = momentum
        self.ema = ModelEma(model, momentum=momentum, every_steps=every_steps)
        self.steps = 0

    def after_step(self) -> None:
        self.steps += 1
        updates = self.ema.num_updates
        self.ema.momentum = min(self.momentum, (1 + updates) / (10 + updates))
        self.ema.update(self.steps)

    @contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        with self.ema.weights_applied(self.model):
            yield

    def on_epoch_end(self) -> dict[str, float]:
        return {"ema/updates": self.ema.num_updates}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.ema.load_state_dict(state["ema"])
            self.steps = state["steps"]
