"""Segmentation data: the derived fashion-seg set, its metadata, and the mask decode path.

The decode tests build images whose masks follow from their pixels (pixel = 20 * class + 5), so
after random crops and flips the relation holds only if image and mask moved identically.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import FIXTURE_ROOT

from rayaccel.data.codec import decode_image, encode_image
from rayaccel.data.device import load_rows
from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import (
    BAD_ROW_MARK,
    BadRowError,
    DecodeSpec,
    decode_batch,
    resize_nearest,
)
from rayaccel.data.prepare import (
    FASHION_SEG_CLASSES,
    PrepareError,
    add_prepare_arguments,
    prepare_dataset,
    run_prepare,
)

FASHION_MNIST = FIXTURE_ROOT / "fashion-mnist"
FASHION_SEG = FIXTURE_ROOT / "fashion-seg"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
THRESHOLD = 51
NUM_MASK_CLASSES = 11


def read_split(split_dir: Path) -> dict[str, list]:
    return pq.read_table(split_dir / "part-00000.parquet").to_pydict()


def grey(data: bytes) -> np.ndarray:
    return decode_image(data, 1)[..., 0]


def test_prepare_fashion_seg_from_prepared_fixture_matches_shipped_fixture(tmp_path):
    results = prepare_dataset("fashion-seg", FASHION_MNIST, tmp_path / "seg", rows_per_shard=10000)
    assert list(results) == ["train", "test"]
    for split, per_class in (("train", 400), ("test", 100)):
        meta = read_meta(tmp_path / "seg" / split)
        assert meta == results[split]
        assert meta.task == "segmentation" and meta.name == "fashion-seg"
        assert list(meta.classes) == list(FASHION_SEG_CLASSES) and meta.num_classes == 11
        assert meta.classes[0] == "background"
        assert list(meta.class_counts) == [0] + [per_class] * 10
        source_meta = read_meta(FASHION_MNIST / split)
        assert meta.mean == source_meta.mean and meta.std == source_meta.std

        rows = read_split(tmp_path / "seg" / split)
        source = read_split(FASHION_MNIST / split)
        assert rows["index"] == list(range(meta.count))
        assert rows["source_index"] == source["source_index"]
        assert rows["label"] == [label + 1 for label in source["label"]]
        for image, mask, label, source_image in zip(
            rows["image"], rows["mask"], rows["label"], source["image"], strict=True
        ):
            pixels = grey(image)
            assert np.array_equal(pixels, grey(source_image))
            assert np.array_equal(grey(mask), (pixels >= THRESHOLD) * label)
        assert rows == read_split(FASHION_SEG / split), "shipped fixture differs from its command"
        assert read_meta(FASHION_SEG / split) == meta


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's Fashion-MNIST missing")
def test_prepare_fashion_seg_from_idx_gives_the_fixture_rows(tmp_path):
    prepare_dataset(
        "fashion-seg",
        DEBIAN_FASHION_MNIST,
        tmp_path,
        per_class={"train": 400, "test": 100},
        seed=0,
    )
    for split in ("train", "test"):
        assert read_split(tmp_path / split) == read_split(FASHION_SEG / split)


def write_tiny_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
            raw = gzip.compress(header + array.astype(np.uint8).tobytes())
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(raw)


def test_cli_mask_threshold_on_idx_source(tmp_path, capsys):
    images = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (3, 25, 1))  # (3, 25, 25)
    write_tiny_idx(tmp_path / "idx", images, np.array([0, 4, 9]))
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args(
        ["fashion-seg", str(tmp_path / "idx"), str(tmp_path / "out"), "--mask-threshold", "100"]
    )
    assert run_prepare(args) == 0
    assert "train: 3 images" in capsys.readouterr().out
    rows = read_split(tmp_path / "out" / "train")
    assert rows["label"] == [1, 5, 10] and "source_index" not in rows
    for mask, label, pixels in zip(rows["mask"], rows["label"], images, strict=True):
        assert np.array_equal(grey(mask), np.where(pixels >= 100, label, 0))


def test_mask_threshold_is_refused_for_other_kinds_and_out_of_range(tmp_path):
    with pytest.raises(PrepareError, match="--mask-threshold.*only to fashion-seg"):
        prepare_dataset("fashion-mnist", tmp_path, tmp_path / "out", mask_threshold=10)
    with pytest.raises(PrepareError, match=r"must be a grey level in \[1, 255\], got 0"):
        prepare_dataset("fashion-seg", tmp_path, tmp_path / "out", mask_threshold=0)


def test_prepared_source_must_be_fashion_mnist(tmp_path):
    prepare_dataset(
        "fashion-seg", FASHION_MNIST, tmp_path / "seg", per_class={"train": 1, "test": 1}
    )
    with pytest.raises(PrepareError, match="needs a prepared fashion-mnist split"):
        prepare_dataset("fashion-seg", tmp_path / "seg", tmp_path / "again")


def test_old_metadata_without_task_reads_as_classification(tmp_path):
    fields = json.loads((FASHION_MNIST / "test" / "metadata.json").read_text())
    fields.pop("task", None)
    (tmp_path / "metadata.json").write_text(json.dumps(fields))
    meta = read_meta(tmp_path)
    assert meta.task == "classification"
    assert meta.to_json_dict()["task"] == "classification"
    fields["task"] = "detection"
    (tmp_path / "metadata.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="task must be one of"):
        read_meta(tmp_path)


def class_batch(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Rows whose image is 20 * mask + 5 (so 0 marks padding), label 1."""
    count = len(masks)
    return {
        "image": np.array([encode_image(20 * m + 5) for m in masks], dtype=object),
        "mask": np.array([encode_image(m) for m in masks], dtype=object),
        "label": np.ones(count, dtype=np.int64),
        "index": np.arange(count, dtype=np.int64),
        "path": np.array(["/data/part-00000.parquet"] * count),
    }


def seg_spec(size_px: int, **changes) -> DecodeSpec:
    fields = {
        "image_size_px": size_px,
        "channels": 1,
        "num_classes": NUM_MASK_CLASSES,
        "on_bad_row": "fail",
        "task": "segmentation",
        "shard_first_index": (("part-00000.parquet", 0),),
    }
    return DecodeSpec(**(fields | changes))


def test_crop_and_flip_move_image_and_mask_identically():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, NUM_MASK_CLASSES, size=(32, 12, 12), dtype=np.uint8)
    spec = seg_spec(12, random_crop_padding_px=3, horizontal_flip=True)
    out = decode_batch(class_batch(masks), spec, np.random.default_rng(1))
    images, out_masks = out["image"][:, 0], out["mask"]
    assert out_masks.shape == (32, 12, 12) and out_masks.dtype == np.uint8
    assert out_masks.flags["C_CONTIGUOUS"]
    padding = images == 0
    assert np.all(out_masks[padding] == 0)
    assert np.array_equal(images[~padding], 20 * out_masks[~padding] + 5)
    assert padding.any() and not np.array_equal(out_masks, masks), "augmentation never moved"


def test_output_size_downsizes_mask_with_nearest_values():
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 3, size=(4, 16, 16), dtype=np.uint8) * 4  # values {0, 4, 8}
    out = decode_batch(class_batch(masks), seg_spec(16, output_size_px=7), rng)
    assert out["image"].shape == (4, 1, 7, 7) and out["mask"].shape == (4, 7, 7)
    assert set(np.unique(out["mask"])) <= {0, 4, 8}
    grid = np.arange(16).reshape(1, 4, 4)
    assert resize_nearest(grid, 2).tolist() == [[[5, 7], [13, 15]]]


def test_mask_is_resized_nearest_when_the_image_is():
    masks = np.kron(np.array([[1, 2], [3, 4]], np.uint8), np.ones((4, 4), np.uint8))[None]
    out = decode_batch(class_batch(masks), seg_spec(16), np.random.default_rng(0))
    expected = np.kron(np.array([[1, 2], [3, 4]], np.uint8), np.ones((8, 8), np.uint8))
    assert np.array_equal(out["mask"][0], expected)


@pytest.mark.parametrize(
    ("bad_mask", "reason"),
    [
        (b"not a png", "mask: not a decodable image"),
        (encode_image(np.zeros((5, 6), np.uint8)), "mask is 5x6 px but its image is 6x6 px"),
        (encode_image(np.full((6, 6), 11, np.uint8)), "mask holds class 11, outside 0..10"),
    ],
)
def test_bad_masks_fail_or_are_marked(bad_mask, reason):
    batch = class_batch(np.ones((3, 6, 6), np.uint8))
    batch["mask"][1] = bad_mask
    with pytest.raises(BadRowError, match=rf"{BAD_ROW_MARK}: shard .*part-00000.parquet row 1"):
        decode_batch(batch, seg_spec(6), np.random.default_rng(0))
    with pytest.raises(BadRowError, match=reason):
        decode_batch(batch, seg_spec(6), np.random.default_rng(0))
    out = decode_batch(batch, seg_spec(6, on_bad_row="skip"), np.random.default_rng(0))
    assert out["bad"].tolist() == [0, 1, 0] and out["label"].tolist() == [1, 0, 1]
    assert not out["mask"][1].any() and not out["image"][1].any()
    assert out["mask"][0].min() == 1


@pytest.mark.parametrize(
    ("impl", "magnitude"),
    # timm's RandAugment changes images at magnitude 0 too, so it is refused there as well.
    [("torchvision", 5), ("timm", 0)],
)
def test_randaugment_is_refused_for_segmentation(impl, magnitude):
    batch = class_batch(np.ones((2, 6, 6), np.uint8))
    spec = seg_spec(6, randaug_impl=impl, randaug_magnitude=magnitude)
    with pytest.raises(ValueError, match="RandAugment must be off for segmentation"):
        decode_batch(batch, spec, np.random.default_rng(0))
    plain = seg_spec(6, randaug_impl="torchvision", randaug_magnitude=0)
    assert decode_batch(batch, plain, np.random.default_rng(0))["mask"].shape == (2, 6, 6)


def test_classification_spec_drops_a_mask_column_and_unknown_task_is_refused():
    batch = class_batch(np.ones((2, 6, 6), np.uint8))
    out = decode_batch(batch, seg_spec(6, task="classification"), np.random.default_rng(0))
    assert set(out) == {"image", "label", "index", "bad"}
    with pytest.raises(ValueError, match="DecodeSpec.task must be one of"):
        seg_spec(6, task="detection")


def test_device_mode_refuses_segmentation():
    meta = read_meta(FASHION_SEG / "test")
    with pytest.raises(ValueError, match="data.mode: device.*classification only"):
        load_rows(str(FASHION_SEG / "test"), meta, seg_spec(28), np.arange(4))
