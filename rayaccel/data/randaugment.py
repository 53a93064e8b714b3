"""RandAugment at a given magnitude on uint8 image batches, for the CPU side of Ray Data.

EfficientTrain++ ramps RandAugment's magnitude from 0 to 9 over its stages (timm's
`rand-m{m}-mstd0.5-inc1`). This realisation uses torchvision's `transforms.v2.RandAugment` on
uint8 tensors (no PIL round trip, any channel count) with these choices:

- Magnitude is on timm's 0..10 scale: torchvision is given 11 magnitude bins, so magnitude m
  applies each op at m/10 of its maximum strength, as timm's `rand-m{m}` does. torchvision's
  ops already grow harder with magnitude (posterize keeps fewer bits, solarize lowers its
  threshold), which is what timm's `inc1` variant selects.
- `mstd0.5`: the magnitude of each draw is `m + N(0, 0.5)`, rounded to a whole bin and clipped
  to 0..10 (timm draws per op and keeps the fraction).
- One draw of ops and magnitude is shared by a group of `group_size` consecutive images, as
  airbench does for its crops. A torchvision call costs about 150 us whatever its batch size on
  28-px images, so per-image calls would cost more than decoding the PNG (measured on the CI
  machine, 1 thread: 156 us/image one by one, 29 us/image in groups of 8). Ray Data shuffles
  rows before this runs, so a group is a random set of images.
- Magnitude 0 means no RandAugment at all (not ops at zero strength), so the first
  EfficientTrain++ stage sees only crops and flips.
"""

from __future__ import annotations

import functools

import numpy as np

MAX_MAGNITUDE = 10
NUM_OPS = 2
MAGNITUDE_STD = 0.5


@functools.cache
def _rand_augment(magnitude_bin: int):
    from torchvision.transforms import v2

    return v2.RandAugment(
        num_ops=NUM_OPS, magnitude=magnitude_bin, num_magnitude_bins=MAX_MAGNITUDE + 1
    )


def rand_augment(
    images_nhwc: np.ndarray,
    magnitude: float,
    rng: np.random.Generator,
    *,
    group_size: int = 8,
) -> np.ndarray:
    """RandAugment of a uint8 batch; see the module docstring for the exact variant.

    Args:
        images_nhwc: Images shaped (N, H, W, C), uint8.
        magnitude: Mean magnitude on timm's 0..10 scale; 0 returns the input unchanged.
        rng: Draws the magnitude noise and seeds torchvision's op choice, so a seeded
            generator gives reproducible output.
        group_size: Consecutive images sharing one draw of ops and magnitude.

    Returns:
        Augmented images with the input's shape and dtype.

    Raises:
        ValueError: If the batch is not 4-D uint8 or magnitude is outside [0, 10].
    """
    import torch

    if images_nhwc.ndim != 4 or images_nhwc.dtype != np.uint8:
        raise ValueError(
            f"images_nhwc must be a uint8 array shaped (N, H, W, C), got dtype "
            f"{images_nhwc.dtype} and shape {images_nhwc.shape}"
        )
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}")
    if magnitude == 0 or len(images_nhwc) == 0:
        return images_nhwc
    out = np.array(images_nhwc)  # writable copy; Ray Data batches may be read-only
    batch_nchw = torch.from_numpy(out).permute(0, 3, 1, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**62)))
        for start in range(0, len(out), group_size):
            noisy = magnitude + rng.normal(0.0, MAGNITUDE_STD)
            magnitude_bin = int(np.clip(round(noisy), 0, MAX_MAGNITUDE))
            group = batch_nchw[start : start + group_size]
            group.copy_(_rand_augment(magnitude_bin)(group))
    return out
