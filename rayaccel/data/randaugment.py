"""RandAugment at a given magnitude on uint8 image batches, for the CPU side of Ray Data.

Two realisations, picked by `impl`; both take the magnitude on timm's 0..10 scale:

- `"timm"`: timm's own `rand_augment_transform("rand-m{m}-mstd0.5-inc1")`, the variant the
  EfficientTrain++ release ramps from m = 0 to 9. Each image gets 2 ops drawn with
  replacement from timm's 15 "increasing" ops; each op applies with probability 0.5, at a
  magnitude drawn per op from N(m, 0.5) and clipped to 0..10. Magnitude 0 is not "off":
  AutoContrast, Equalize and Invert take no magnitude and still apply, and a noisy draw above
  0 gives the other ops a little strength, so 45% of Fashion-MNIST images change at m = 0. It runs on PIL images one by one (grey `L` or `RGB` only). Two choices the
  release's command line leaves to its train transform are fixed here: geometric ops fill
  with `fill` (the caller passes the data set's mean pixel, as timm's ImageNet transform does
  with its mean) and resample bicubic (timm's default for DeiT-style recipes), so the output
  depends on nothing but the seed.
- `"torchvision"`: `transforms.v2.RandAugment` on uint8 tensors (any channel count, no PIL
  round trip), rayaccel's earlier realisation and markedly stronger: both ops always apply,
  magnitude m applies each op at m/10 of its maximum (11 bins), the `mstd0.5` noise is drawn
  once per group of `group_size` images and rounded to a whole bin, and magnitude 0 means no
  RandAugment at all. A group shares one draw of ops and magnitude because a torchvision
  call costs about 150 us whatever its batch size on 28-px images (Ray Data shuffles rows
  first, so a group is a random set of images).

Measured on 512 Fashion-MNIST images (`benchmarks/randaugment_strength.py`, 1 core): at m = 5
timm changes 69% of the images, by a mean 33.8 grey levels over all images, torchvision 99%
by 35.1; at m = 9 69% / 43.8 against 100% / 44.6. timm costs about twice torchvision's CPU
time per 28-px image (40 us against 19 us on one CI core), more than the PNG decode's 27 us.

Both are reproducible for a seeded `rng`. timm's ops draw from Python's `random` and
NumPy's legacy global generator; `rand_augment` seeds both from `rng` for the batch and puts
their previous states back afterwards, so nothing else that uses them is disturbed (Ray
Data runs one decode call at a time per worker process).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from rayaccel.core.seeds import seeded_global_rngs

IMPLS = ("timm", "torchvision")
MAX_MAGNITUDE = 10
NUM_OPS = 2
MAGNITUDE_STD = 0.5
TIMM_CONFIG = "rand-m{magnitude}-mstd0.5-inc1"


def changes_images(impl: str | None, magnitude: float) -> bool:
    """Whether RandAugment `impl` at `magnitude` touches any image (None means off)."""
    if impl == "timm":
        return True
    return impl == "torchvision" and magnitude > 0


def rand_augment(
    images_nhwc: np.ndarray,
    magnitude: float,
    rng: np.random.Generator,
    *,
    impl: Literal["timm", "torchvision"] = "timm",
    fill: tuple[int, ...] | None = None,
    group_size: int = 8,
) -> np.ndarray:
    """RandAugment of a uint8 batch; see the module docstring for the two variants.

    Args:
        images_nhwc: Images shaped (N, H, W, C), uint8; C must be 1 or 3 for timm.
        magnitude: Mean magnitude on timm's 0..10 scale.
        rng: Seeds every random draw, so a seeded generator gives reproducible output.
        impl: "timm" (the EfficientTrain++ release's) or "torchvision" (stronger; 0 is off).
        fill: timm only: the pixel its geometric ops fill with, one value per channel; None
            means timm's default mid-grey 128.
        group_size: torchvision only: consecutive images sharing one draw of ops and
            magnitude.

    Returns:
        Augmented images with the input's shape and dtype (torchvision at magnitude 0: the
        input itself).

    Raises:
        ValueError: If the batch is not 4-D uint8, magnitude is outside [0, 10], impl is
            unknown, or timm is given a channel count other than 1 or 3.
    """
    if images_nhwc.ndim != 4 or images_nhwc.dtype != np.uint8:
        raise ValueError(
            f"images_nhwc must be a uint8 array shaped (N, H, W, C), got dtype "
            f"{images_nhwc.dtype} and shape {images_nhwc.shape}"
        )
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}")
    if impl == "timm":
        return _timm_rand_augment(images_nhwc, magnitude, rng, fill)
    if impl == "torchvision":
        return _torchvision_rand_augment(images_nhwc, magnitude, rng, group_size)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def timm_transform(magnitude: float, channels: int, fill: tuple[int, ...] | None = None):
    """timm's `rand-m{magnitude}-mstd0.5-inc1` for PIL images of `channels` channels.

    timm's config string takes whole magnitudes only; a fractional one (a custom or tuned
    stage's) is set on the ops themselves, which take any float.
    """
    return _timm_transform(float(magnitude), channels, None if fill is None else tuple(fill))


@functools.cache
def _timm_transform(magnitude: float, channels: int, fill: tuple[int, ...] | None):
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    if channels not in (1, 3):
        raise ValueError(
            f"timm's RandAugment works on grey or RGB images, got {channels} channels; "
            "use the torchvision RandAugment (randaugment_impl: torchvision)"
        )
    fill = fill or (128,) * channels
    if len(fill) != channels:
        raise ValueError(f"fill needs one value per channel ({channels}), got {list(fill)}")
    hparams = {
        # PIL wants a plain int as the fill colour of a grey image.
        "img_mean": fill[0] if channels == 1 else fill,
        "interpolation": Image.Resampling.BICUBIC,
    }
    transform = rand_augment_transform(TIMM_CONFIG.format(magnitude=int(magnitude)), hparams)
    for op in transform.ops:
        op.magnitude = magnitude
        if op.name == "PosterizeIncreasing":
            op.aug_fn = _posterize
    return transform


def _posterize(image, bits_to_keep: int, **_):
    """timm's posterize, keeping 0 bits (its level at magnitude 10) as a black image.

    That is what Pillow did when timm's RandAugment was written; Pillow 10 and later raise
    instead, which would stop a run whenever the magnitude noise reaches 10.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def _timm_rand_augment(
    images_nhwc: np.ndarray,
    magnitude: float,
    rng: np.random.Generator,
    fill: tuple[int, ...] | None,
) -> np.ndarray:
    from PIL import Image

    channels = images_nhwc.shape[3]
    transform = timm_transform(magnitude, channels, fill)
    out = np.array(images_nhwc)  # writable copy; Ray Data batches may be read-only
    with seeded_global_rngs(int(rng.integers(2**32))):
        for i in range(len(out)):
            pixels = out[i, :, :, 0] if channels == 1 else out[i]
            augmented = transform(Image.fromarray(pixels, "L" if channels == 1 else "RGB"))
            out[i] = np.asarray(augmented).reshape(out.shape[1:])
    return out


@functools.cache
def _torchvision_op(magnitude_bin: int):
    from torchvision.transforms import v2

    return v2.RandAugment(
        num_ops=NUM_OPS, magnitude=magnitude_bin, num_magnitude_bins=MAX_MAGNITUDE + 1
    )


def _torchvision_rand_augment(
    images_nhwc: np.ndarray, magnitude: float, rng: np.random.Generator, group_size: int
) -> np.ndarray:
    import torch

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
            group.copy_(_torchvision_op(magnitude_bin)(group))
    return out


# ------------------------------------------------------------------ fixed policies
TRIVIAL_AUGMENT = "trivialaugment"


def policy_problem(policy: str, channels: int | None) -> str | None:
    """Why `policy` cannot be built (timm's parser's own words), or None when it can."""
    try:
        policy_transform(policy, channels or 3, None)
    except Exception as err:  # timm's parser raises assorted errors on a bad string
        return f"{err}"
    return None


def policy_transform(policy: str, channels: int, fill: tuple[int, ...] | None):
    """A PIL-image transform for a timm augmentation string, or torchvision's
    TrivialAugmentWide for "trivialaugment".

    timm's strings are those of its `--aa` flag: `rand-m9-mstd0.5-inc1` (RandAugment),
    `augmix-m5-w4-d2` (AugMix), `original`/`v0` and their `r` variants (AutoAugment), read by
    the same functions `timm.data.create_transform` dispatches to.
    """
    return _policy_transform(policy, channels, None if fill is None else tuple(fill))


@functools.cache
def _policy_transform(policy: str, channels: int, fill: tuple[int, ...] | None):
    from PIL import Image

    if policy == TRIVIAL_AUGMENT:
        from torchvision.transforms import TrivialAugmentWide

        return TrivialAugmentWide(fill=list(fill) if fill else None)
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    if channels not in (1, 3):
        raise ValueError(f"timm's augmentations work on grey or RGB images, got {channels}")
    fill = fill or (128,) * channels
    hparams = {
        "img_mean": fill[0] if channels == 1 else fill,
        "interpolation": Image.Resampling.BICUBIC,
    }
    if policy.startswith("rand"):
        transform = rand_augment_transform(policy, hparams)
        ops = transform.ops
    elif policy.startswith("augmix"):
        transform = augment_and_mix_transform(policy, hparams)
        ops = transform.ops
    else:
        transform = auto_augment_transform(policy, hparams)
        ops = [op for sub_policy in transform.policy for op in sub_policy]
    for op in ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize  # keeps 0 bits as black instead of raising (see there)
    return transform


def apply_policy(
    images_nhwc: np.ndarray,
    policy: str,
    rng: np.random.Generator,
    fill: tuple[int, ...] | None = None,
) -> np.ndarray:
    """`policy` on every image of a uint8 batch, each image on its own, seeded by `rng`
    (timm's ops draw from Python's and NumPy's global generators, torchvision's from torch's:
    all are seeded for the batch and put back afterwards)."""
    import torch
    from PIL import Image

    channels = images_nhwc.shape[3]
    transform = policy_transform(policy, channels, fill)
    out = np.array(images_nhwc)  # writable copy; Ray Data batches may be read-only
    seed = int(rng.integers(2**32))
    with seeded_global_rngs(seed), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(out)):
            pixels = out[i, :, :, 0] if channels == 1 else out[i]
            augmented = transform(Image.fromarray(pixels, "L" if channels == 1 else "RGB"))
            out[i] = np.asarray(augmented).reshape(out.shape[1:])
    return out
