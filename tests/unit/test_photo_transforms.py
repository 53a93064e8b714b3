"""RandomResizedCrop, the evaluation crop and reduced-size decoding against torchvision/timm,
and the windowed epoch order (pure: no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as F

from rayaccel.data.codec import open_image
from rayaccel.data.pipeline import DecodeSpec, EpochOrder, decode_batch
from rayaccel.data.transforms import (
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    Box,
    crop_and_resize,
    eval_crop,
    rrc_boxes,
)


def _photo(
    width_px: int, height_px: int, *, fmt: str = "JPEG", seed: int = 0, cell_px: int = 16
) -> bytes:
    """A smooth random photo-like image (low frequencies dominate, as in photographs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height_px // cell_px + 2, width_px // cell_px + 2, 3))
    image = Image.fromarray(coarse.astype(np.uint8)).resize((width_px, height_px), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_boxes_follow_torchvisions_distribution():
    width_px, height_px, count = 500, 375, 20_000
    torch.manual_seed(0)
    image = torch.zeros(3, height_px, width_px)
    theirs = np.array(
        [RandomResizedCrop.get_params(image, DEFAULT_SCALE, DEFAULT_RATIO) for _ in range(count)]
    )  # (top, left, height, width)
    boxes = rrc_boxes(
        np.full(count, width_px),
        np.full(count, height_px),
        DEFAULT_SCALE,
        DEFAULT_RATIO,
        np.random.default_rng(1),
    )
    ours = np.array([(b.top, b.left, b.height, b.width) for b in boxes])
    # Means within 2% of the image side; spreads within 3%.
    assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) < 0.02 * width_px)
    assert np.all(np.abs(ours.std(0) - theirs.std(0)) < 0.03 * width_px)
    for b in boxes:
        assert 0 <= b.left and b.left + b.width <= width_px
        assert 0 <= b.top and b.top + b.height <= height_px
    area = ours[:, 2] * ours[:, 3] / (width_px * height_px)
    assert area.min() >= 0.07 and area.max() <= 1.0


def test_an_impossible_ratio_falls_back_to_the_central_crop_as_torchvision():
    # A 10:1 strip cannot hold a 3:4..4:3 crop of 90% of its area in 10 tries.
    boxes = rrc_boxes(
        np.array([1000]), np.array([100]), (0.9, 1.0), DEFAULT_RATIO, np.random.default_rng(0)
    )
    top, left, height, width = RandomResizedCrop.get_params(
        torch.zeros(3, 100, 1000), (0.9, 1.0), DEFAULT_RATIO
    )
    assert (boxes[0].top, boxes[0].left, boxes[0].height, boxes[0].width) == (
        top,
        left,
        height,
        width,
    )


@pytest.mark.parametrize("size_px", [224, 96])
def test_crop_and_resize_equals_torchvisions_resized_crop(size_px):
    data = _photo(640, 400)
    for box in rrc_boxes(
        np.array([640] * 6),
        np.array([400] * 6),
        DEFAULT_SCALE,
        DEFAULT_RATIO,
        np.random.default_rng(2),
    ):
        ours = crop_and_resize(open_image(data), box, (size_px, size_px), 3, reduced_decode=False)
        theirs = F.resized_crop(
            _pil(data),
            int(box.top),
            int(box.left),
            int(box.height),
            int(box.width),
            [size_px, size_px],
        )
        assert np.array_equal(ours, np.asarray(theirs))


def test_reduced_decoding_changes_pixels_by_the_resampling_only():
    data = _photo(1600, 1200, seed=3, cell_px=64)
    box = Box(100, 80, 1200, 1000)
    full = crop_and_resize(open_image(data), box, (96, 96), 3, reduced_decode=False)
    image = open_image(data)
    reduced = crop_and_resize(image, box, (96, 96), 3, reduced_decode=True)
    assert image.size[0] < 1600  # libjpeg decoded at a reduced scale
    assert image.size[0] >= 96 * 1600 / 1200  # still >= the output's pixels across the crop
    # Different low-pass filters (libjpeg's scaled IDCT, then a milder bilinear shrink) on
    # the same region: a grey level or so apart, nothing shifted.
    assert np.abs(full.astype(int) - reduced).mean() < 1.5


def test_reduced_decoding_is_skipped_when_the_crop_is_not_shrunk():
    data = _photo(300, 200)
    image = open_image(data)
    crop_and_resize(image, Box(0, 0, 150, 150), (224, 224), 3, reduced_decode=True)
    assert image.size == (300, 200)


@pytest.mark.parametrize(("size_px", "crop_pct"), [(224, 0.875), (160, 0.95), (96, 1.0)])
def test_eval_crop_equals_timms_eval_transform(size_px, crop_pct):
    data = _photo(500, 375, seed=4)
    transform = create_transform(
        size_px, is_training=False, crop_pct=crop_pct, mean=(0, 0, 0), std=(1, 1, 1)
    )
    theirs = (transform(_pil(data)).numpy().transpose(1, 2, 0) * 255).round()
    ours = eval_crop(open_image(data), size_px, crop_pct, 3, reduced_decode=False)
    assert np.array_equal(ours, theirs.astype(np.uint8))


def test_a_non_square_photo_keeps_its_aspect_ratio():
    # Left half black, right half white, 2:1: a squash would keep both halves; the centre
    # crop of the shorter side keeps the middle, half black, half white around the seam.
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, 100:] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    spec = DecodeSpec(image_size_px=50, channels=3, num_classes=2, on_bad_row="fail")
    batch = {
        "image": np.array([buffer.getvalue()], dtype=object),
        "label": np.array([0]),
        "index": np.array([0]),
    }
    out = decode_batch(batch, spec, np.random.default_rng(0))["image"][0]
    assert out.shape == (3, 50, 50)
    # The crop spans x = 50..150 of the original: columns 0..24 black, 25..49 white.
    assert out[:, :, :20].max() == 0 and out[:, :, 30:].min() == 255


def test_decode_batch_with_rrc_is_a_function_of_its_generator():
    rows = [_photo(320 + 16 * i, 240, seed=i) for i in range(4)]
    batch = {"image": np.array(rows, dtype=object), "label": np.arange(4), "index": np.arange(4)}
    spec = DecodeSpec(
        image_size_px=64,
        channels=3,
        num_classes=4,
        on_bad_row="fail",
        horizontal_flip=True,
        rrc_scale=DEFAULT_SCALE,
        rrc_ratio=DEFAULT_RATIO,
    )
    first = decode_batch(batch, spec, np.random.default_rng(7))["image"]
    again = decode_batch(batch, spec, np.random.default_rng(7))["image"]
    other = decode_batch(batch, spec, np.random.default_rng(8))["image"]
    assert first.shape == (4, 3, 64, 64)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_rrc_can_crop_straight_to_a_stage_resolution():
    rows = [_photo(400, 300, seed=i) for i in range(2)]
    batch = {"image": np.array(rows, dtype=object), "label": np.arange(2), "index": np.arange(2)}
    spec = DecodeSpec(
        image_size_px=224,
        channels=3,
        num_classes=2,
        on_bad_row="fail",
        rrc_scale=DEFAULT_SCALE,
        rrc_output_px=96,
        output_size_px=96,
    )
    assert decode_batch(batch, spec, np.random.default_rng(0))["image"].shape == (2, 3, 96, 96)


def test_a_corrupt_photo_is_a_bad_row_with_rrc():
    good = _photo(200, 150)
    batch = {
        "image": np.array([good, good[:200]], dtype=object),
        "label": np.array([0, 1]),
        "index": np.array([10, 11]),
    }
    spec = DecodeSpec(
        image_size_px=32, channels=3, num_classes=2, on_bad_row="skip", rrc_scale=DEFAULT_SCALE
    )
    out = decode_batch(batch, spec, np.random.default_rng(0))
    assert out["bad"].tolist() == [0, 1]


# ------------------------------------------------------------------ the epoch order
def _covered(order: EpochOrder, epoch: int | None) -> list[tuple[int, int]]:
    return sorted(
        (shard, row) for shard, start, end in order.windows(epoch) for row in range(start, end)
    )


def test_every_epoch_reads_every_row_once_in_at_most_slots_windows():
    order = EpochOrder(seed=3, window_rows=100, shard_rows=(1000, 250, 7))
    every_row = [(s, r) for s, rows in enumerate(order.shard_rows) for r in range(rows)]
    for epoch in (None, 0, 1, 5):
        assert _covered(order, epoch) == every_row
        assert len(order.windows(epoch)) <= order.slots
        assert all(end - start <= 100 for _, start, end in order.windows(epoch))


def test_the_order_is_a_function_of_seed_and_epoch():
    order = EpochOrder(seed=3, window_rows=100, shard_rows=(1000, 250))
    assert order.windows(4) == EpochOrder(3, 100, (1000, 250)).windows(4)
    assert order.windows(4) != order.windows(5)
    assert order.windows(4) != EpochOrder(4, 100, (1000, 250)).windows(4)
    # Cut points move between epochs, so a window does not keep the same rows together.
    starts = {epoch: {start for _, start, _ in order.windows(epoch)} for epoch in range(4)}
    assert len({frozenset(s) for s in starts.values()}) > 1
    # Evaluation reads the stored order.
    assert order.windows(None) == sorted(order.windows(None))


# ------------------------------------------------------------------ augmentation policies
@pytest.mark.parametrize(
    "policy", ["rand-m10-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "trivialaugment"]
)
def test_policies_are_reproducible_and_survive_their_strongest_draws(policy):
    from rayaccel.data.randaugment import apply_policy

    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    # timm's posterize reaches 0 bits at magnitude 10, which Pillow >= 10 refuses.
    outputs = [apply_policy(images, policy, np.random.default_rng(seed)) for seed in range(12)]
    assert np.array_equal(outputs[0], apply_policy(images, policy, np.random.default_rng(0)))
    assert not np.array_equal(outputs[0], images)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"augment_policy": "rand-m9-mstd0.5-inc1"},
        {"randaug_impl": "timm", "randaug_magnitude": 6.0},
        {"augment_policy": "trivialaugment", "output_size_px": 24},
    ],
)
def test_the_photo_path_gives_the_array_paths_pixels(monkeypatch, extra):
    """RandomResizedCrop rows are augmented as PIL images; forcing the general array path
    (crop to pixels, flip the batch, augment the batch) must give the very same batch."""
    import rayaccel.data.pipeline as pipeline

    rows = [_photo(300 + 20 * i, 220 + 10 * i, seed=i) for i in range(6)]
    batch = {
        "image": np.array(rows, dtype=object),
        "label": np.arange(6) % 3,
        "index": np.arange(6),
    }
    spec = DecodeSpec(
        image_size_px=48,
        channels=3,
        num_classes=3,
        on_bad_row="fail",
        horizontal_flip=True,
        rrc_scale=DEFAULT_SCALE,
        randaug_fill=(120, 110, 100),
        **extra,
    )
    assert pipeline._photo_path(spec) is not None
    photo = decode_batch(batch, spec, np.random.default_rng(5))
    monkeypatch.setattr(pipeline, "_photo_path", lambda spec: None)
    general = decode_batch(batch, spec, np.random.default_rng(5))
    assert np.array_equal(photo["image"], general["image"])
    assert photo["image"].shape == (
        6,
        3,
        extra.get("output_size_px", 48),
        extra.get("output_size_px", 48),
    )
