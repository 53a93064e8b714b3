"""RandAugment on uint8 batches: timm's transform, exactly, and torchvision's stronger one."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import FIXTURE_TRAIN
from PIL import Image
from timm.data import auto_augment

from rayaccel.core.seeds import seeded_global_rngs
from rayaccel.data.codec import decode_image
from rayaccel.data.pipeline import DecodeSpec
from rayaccel.data.randaugment import rand_augment, timm_transform

FILL_GREY = (74,)  # the fixture's mean pixel, what the training pipeline passes
FILL_RGB = (74, 100, 128)


@pytest.fixture(scope="module")
def grey_images() -> np.ndarray:
    """The first 256 fixture images, (256, 28, 28, 1) uint8."""
    meta = json.loads((FIXTURE_TRAIN / "metadata.json").read_text())
    table = pq.read_table(FIXTURE_TRAIN / meta["shards"][0]["file"], columns=["image"])
    return np.stack([decode_image(d, 1) for d in table.column("image").to_pylist()[:256]])


@pytest.fixture(scope="module")
def rgb_images(grey_images) -> np.ndarray:
    """Colour images whose channels differ, built from the grey ones."""
    grey = grey_images[..., 0]
    return np.stack([grey, 255 - grey, grey // 2 + 64], axis=-1)


def _pillow9_posterize(image, bits_to_keep, **_):
    """Posterize as Pillow did before it refused 0 bits (a mask of 0: a black image)."""
    mask = ~(2 ** (8 - bits_to_keep) - 1) & 0xFF
    return image.point([v & mask for v in range(256)] * len(image.getbands()))


def timm_reference(images: np.ndarray, transform, seed: int) -> np.ndarray:
    """`transform` (a timm RandAugment) on each image as PIL, after seeding the global RNGs."""
    grey = images.shape[3] == 1
    random.seed(seed)
    np.random.seed(seed)
    out = [
        np.asarray(transform(Image.fromarray(x[..., 0] if grey else x, "L" if grey else "RGB")))
        for x in images
    ]
    return np.stack(out).reshape(images.shape)


def hparams(fill: tuple[int, ...]) -> dict:
    return {
        "img_mean": fill[0] if len(fill) == 1 else fill,
        "interpolation": Image.Resampling.BICUBIC,
    }


@pytest.mark.parametrize("magnitude", [0, 5, 9, 10])
@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_timm_impl_is_timms_rand_augment_transform(
    magnitude, colour, grey_images, rgb_images, monkeypatch
):
    images, fill = (grey_images, FILL_GREY) if colour == "grey" else (rgb_images, FILL_RGB)
    # Pillow >= 10 refuses posterize to 0 bits, timm's level at magnitude 10.
    monkeypatch.setitem(auto_augment.NAME_TO_OP, "PosterizeIncreasing", _pillow9_posterize)
    reference = auto_augment.rand_augment_transform(
        f"rand-m{magnitude}-mstd0.5-inc1", hparams(fill)
    )
    seed = int(np.random.default_rng(7).integers(2**32))
    expected = timm_reference(images, reference, seed)
    out = rand_augment(images, magnitude, np.random.default_rng(7), impl="timm", fill=fill)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert not np.array_equal(out, images)


def test_fractional_magnitude_is_timms_ops_at_that_magnitude(grey_images):
    # timm's config string takes whole magnitudes; its ops take any float.
    ops = auto_augment.rand_augment_ops(
        magnitude=4.5,
        prob=0.5,
        hparams={**hparams(FILL_GREY), "magnitude_std": 0.5},
        transforms=auto_augment._RAND_INCREASING_TRANSFORMS,
    )
    reference = auto_augment.RandAugment(ops, 2)
    seed = int(np.random.default_rng(3).integers(2**32))
    out = rand_augment(grey_images, 4.5, np.random.default_rng(3), impl="timm", fill=FILL_GREY)
    assert np.array_equal(out, timm_reference(grey_images, reference, seed))


def test_timm_impl_is_deterministic_and_leaves_the_global_rngs_alone(grey_images):
    random.seed(11)
    np.random.seed(11)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    a = rand_augment(grey_images, 5, np.random.default_rng(1), impl="timm")
    b = rand_augment(grey_images, 5, np.random.default_rng(1), impl="timm")
    c = rand_augment(grey_images, 5, np.random.default_rng(2), impl="timm")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_timm_magnitude_zero_still_changes_images_and_torchvision_zero_is_off(grey_images):
    rng = np.random.default_rng(0)
    out = rand_augment(grey_images, 0, rng, impl="timm", fill=FILL_GREY)
    changed = (out != grey_images).reshape(len(out), -1).any(axis=1).mean()
    # AutoContrast, Equalize and Invert need no magnitude; 3 of 15 ops, each with p 0.5.
    assert 0.2 < changed < 0.7
    assert rand_augment(grey_images, 0, rng, impl="torchvision") is grey_images


def test_timm_ops_apply_with_probability_one_half(grey_images, monkeypatch):
    transform = timm_transform(5, 1, FILL_GREY)
    applied_per_image = []

    def counting(aug_fn):
        def wrapped(image, *args, **kwargs):
            applied_per_image[-1] += 1
            return aug_fn(image, *args, **kwargs)

        return wrapped

    for op in transform.ops:
        monkeypatch.setattr(op, "aug_fn", counting(op.aug_fn))
    rng = np.random.default_rng(0)
    for _ in range(2000 // len(grey_images[:50])):
        for image in grey_images[:50]:
            applied_per_image.append(0)
            rand_augment(image[None], 5, rng, impl="timm", fill=FILL_GREY)
    counts = np.bincount(applied_per_image, minlength=3) / len(applied_per_image)
    # Two independent ops at p 0.5: none 1/4, one 1/2, both 1/4; 2000 images give a
    # standard error near 0.01, so 0.04 fails for p 0.4 or 0.6 (and for torchvision's 1).
    assert counts == pytest.approx([0.25, 0.5, 0.25], abs=0.04)


def test_timm_is_weaker_than_torchvision_at_the_same_magnitude(grey_images):
    def changed_and_mean_change(impl):
        out = rand_augment(grey_images, 5, np.random.default_rng(0), impl=impl, fill=FILL_GREY)
        delta = np.abs(out.astype(np.int16) - grey_images)
        return (delta.reshape(len(delta), -1).max(axis=1) > 0).mean(), delta.mean()

    timm_changed, timm_delta = changed_and_mean_change("timm")
    torchvision_changed, torchvision_delta = changed_and_mean_change("torchvision")
    assert timm_changed < 0.85 < torchvision_changed
    assert timm_delta < torchvision_delta


def test_posterize_to_zero_bits_is_a_black_image_not_an_error(grey_images):
    transform = timm_transform(10, 1)
    posterize = next(op for op in transform.ops if op.name == "PosterizeIncreasing")
    image = Image.fromarray(grey_images[0, ..., 0], "L")
    assert not np.asarray(posterize.aug_fn(image, 0)).any()
    assert np.array_equal(np.asarray(posterize.aug_fn(image, 3)), np.asarray(image) & 0xE0)
    with seeded_global_rngs(0):
        rand_augment(grey_images, 10, np.random.default_rng(0), impl="timm")


def test_bad_arguments_name_what_to_change(grey_images):
    with pytest.raises(ValueError, match="randaugment_impl: torchvision"):
        rand_augment(np.zeros((2, 8, 8, 2), np.uint8), 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="impl must be one of"):
        rand_augment(grey_images, 5, np.random.default_rng(0), impl="kornia")
    with pytest.raises(ValueError, match="magnitude must be in"):
        rand_augment(grey_images, 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fill needs one value per channel"):
        rand_augment(grey_images, 5, np.random.default_rng(0), fill=(1, 2, 3))
    with pytest.raises(ValueError, match="needs a randaug_impl"):
        DecodeSpec(28, 1, 10, "fail", randaug_magnitude=5)


def test_torchvision_impl_is_seeded_and_applies_both_ops(grey_images):
    a = rand_augment(grey_images, 9, np.random.default_rng(1), impl="torchvision")
    b = rand_augment(grey_images, 9, np.random.default_rng(1), impl="torchvision")
    assert a.shape == grey_images.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert (a != grey_images).reshape(len(a), -1).any(axis=1).mean() > 0.95
