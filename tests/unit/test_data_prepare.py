"""Dataset conversion: format readers, codec, metadata and prepare_dataset, plus the bundled fixture.

Every reader is tested on tiny files written here in the official on-disk format, so the tests
need no downloads; the fixture test additionally compares against Debian's real Fashion-MNIST
when it is installed.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import FIXTURE
from PIL import Image

from rayaccel.data import formats
from rayaccel.data.codec import decode_image, encode_image
from rayaccel.data.metadata import ShardSetMeta, read_meta, write_meta
from rayaccel.data.prepare import (
    PrepareError,
    add_prepare_arguments,
    prepare_dataset,
    run_prepare,
)

FIXTURE_DIR = FIXTURE
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_fashion_mnist(folder: Path, rng: np.random.Generator, sizes=(("train", 23), ("t10k", 9))):
    """Tiny Fashion-MNIST in the official IDX .gz layout; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count in sizes:
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        arrays["train" if prefix == "train" else "test"] = (images, labels)
    return arrays


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the official (N, 3072) rows: the R plane, then G, then B."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_pickle(path: Path, content: dict) -> None:
    # Byte-string keys and values are what the official Python 2 pickles load as.
    path.write_bytes(pickle.dumps(content, protocol=2))


def write_cifar(parent: Path, variant: int, rng: np.random.Generator, per_batch: int = 3):
    """Tiny CIFAR in the official python-pickle layout; returns {split: (images, labels)}."""
    num_classes = 10 if variant == 10 else 100
    folder = parent / ("cifar-10-batches-py" if variant == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    names = [f"class{k}".encode() for k in range(num_classes)]
    if variant == 10:
        write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 3})
        batch_files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key = b"labels"
    else:
        write_pickle(
            folder / "meta",
            {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20},
        )
        batch_files = {"train": ["train"], "test": ["test"]}
        label_key = b"fine_labels"
    arrays = {}
    for split, files in batch_files.items():
        all_images, all_labels = [], []
        for name in files:
            images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, num_classes, size=per_batch).tolist()
            content = {
                b"batch_label": name.encode(),
                b"data": cifar_rows(images),
                label_key: labels,
                b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
            }
            if variant == 100:
                content[b"coarse_labels"] = [0] * per_batch
            write_pickle(folder / name, content)
            all_images.append(images)
            all_labels.extend(labels)
        arrays[split] = (np.concatenate(all_images), np.array(all_labels))
    return folder, arrays


def read_split(split_dir: Path) -> dict[str, np.ndarray | list]:
    meta = read_meta(split_dir)
    table = pq.ParquetDataset([str(split_dir / s.file) for s in meta.shards]).read()
    return table.to_pydict()


# ---- codec -------------------------------------------------------------------------------------


def test_png_round_trip_is_exact_for_grey_and_rgb():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(grey, "png"), 1)[:, :, 0], grey)
    assert np.array_equal(decode_image(encode_image(rgb, "png"), 3), rgb)
    assert decode_image(encode_image(grey, "jpeg"), 3).shape == (5, 7, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty bytes"),
        (b"definitely not an image", "cannot identify image file"),
        (
            encode_image(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8))[:400],
            "truncated",
        ),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_decode_of_corrupt_bytes_raises_value_error(data, reason):
    with pytest.raises(ValueError, match=reason):
        decode_image(data, 1)


# ---- readers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1])
    write_idx(tmp_path / f"images{suffix}", images, 2051)
    write_idx(tmp_path / f"labels{suffix}", labels, 2049)
    assert np.array_equal(formats.read_idx_images(tmp_path / f"images{suffix}"), images)
    read_labels = formats.read_idx_labels(tmp_path / f"labels{suffix}")
    assert read_labels.dtype == np.int64 and np.array_equal(read_labels, labels)


def test_idx_errors_name_the_file_and_the_problem(tmp_path):
    write_idx(tmp_path / "labels.gz", np.arange(4), 2049)
    with pytest.raises(ValueError, match=r"labels\.gz: IDX magic number is 2049, expected 2051"):
        formats.read_idx_images(tmp_path / "labels.gz")
    write_idx(tmp_path / "images", np.zeros((3, 2, 2)), 2051)
    (tmp_path / "short").write_bytes((tmp_path / "images").read_bytes()[:-1])
    with pytest.raises(ValueError, match="short: header says dimensions .3, 2, 2.*truncated"):
        formats.read_idx_images(tmp_path / "short")


def test_fashion_mnist_reader_accepts_plain_files_and_names_missing_ones(tmp_path):
    arrays = write_fashion_mnist(tmp_path, np.random.default_rng(2))
    for gz in tmp_path.glob("t10k-*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    loaded = formats.load_fashion_mnist(tmp_path)
    for split in ("train", "test"):
        assert np.array_equal(loaded[split][0], arrays[split][0])
        assert np.array_equal(loaded[split][1], arrays[split][1])
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz .or t10k-labels"):
        formats.load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("variant", [10, 100])
def test_cifar_reader_on_official_pickles(tmp_path, variant):
    folder, arrays = write_cifar(tmp_path, variant, np.random.default_rng(variant))
    for src in (folder, tmp_path):  # the extracted folder or its parent
        loaded = formats.load_cifar(src, variant)
        for split in ("train", "test"):
            assert loaded[split][0].shape == arrays[split][0].shape
            assert np.array_equal(loaded[split][0], arrays[split][0])
            assert np.array_equal(loaded[split][1], arrays[split][1])
    assert len(loaded["train"][0]) == (15 if variant == 10 else 3)
    names = formats.read_cifar_class_names(tmp_path, variant)
    assert names[:2] == ["class0", "class1"] and len(names) == variant


def test_cifar_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        formats.load_cifar(tmp_path, 10)
    folder, _ = write_cifar(tmp_path, 10, np.random.default_rng(0))
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        formats.load_cifar(tmp_path, 10)
    write_pickle(
        folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    )
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' is uint8 \(2, 100\)"):
        formats.load_cifar(tmp_path, 10)


def make_image_folder(root: Path, sizes_by_class: dict[str, list[tuple[int, int]]]) -> None:
    rng = np.random.default_rng(3)
    for class_name, sizes in sizes_by_class.items():
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            suffix = ".PNG" if i % 2 else ".png"
            path = root / class_name / ("nested" if i == 2 else "") / f"img{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, format="PNG")


def test_scan_image_folder_labels_from_sorted_folder_names(tmp_path):
    make_image_folder(tmp_path, {"zebra": [(8, 8)] * 2, "ant": [(8, 8)] * 3})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    items, classes = formats.scan_image_folder(tmp_path)
    assert classes == ["ant", "zebra"]
    assert [item.label for item in items] == [0, 0, 0, 1, 1]
    # Sorted part by part, as pathlib sorts: "nested/img2.png" after "img1.PNG".
    assert [item.file for item in items] == [
        "ant/img0.png",
        "ant/img1.PNG",
        "ant/nested/img2.png",
        "zebra/img0.png",
        "zebra/img1.PNG",
    ]
    assert items[0].size_bytes == (tmp_path / "ant" / "img0.png").stat().st_size
    assert formats.image_folder_splits(tmp_path) == {"train": str(tmp_path)}
    assert formats.scan_image_folder(f"file://{tmp_path}")[0] == items
    with pytest.raises(ValueError, match="not among the classes"):
        formats.scan_image_folder(tmp_path, class_names=["ant"])


def test_image_folder_splits_need_train_and_a_held_out_split(tmp_path):
    make_image_folder(tmp_path / "train", {"cat": [(8, 8)]})
    assert formats.image_folder_splits(tmp_path) == {"train": str(tmp_path)}  # train/ is a class
    make_image_folder(tmp_path / "val", {"cat": [(8, 8)]})
    assert formats.image_folder_splits(tmp_path) == {
        "train": f"{tmp_path}/train",
        "val": f"{tmp_path}/val",
    }
    with pytest.raises(FileNotFoundError, match="expected an image folder"):
        formats.image_folder_splits(tmp_path / "missing")


# ---- prepare -----------------------------------------------------------------------------------


def test_prepare_fashion_mnist_round_trip(tmp_path):
    arrays = write_fashion_mnist(tmp_path / "src", np.random.default_rng(4))
    progress_calls = []
    results = prepare_dataset(
        "fashion-mnist",
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        rows_per_shard=5,
        progress=lambda *call: progress_calls.append(call),
    )
    assert progress_calls[-1] == ("test", 9, 9)
    for split, (images, labels) in arrays.items():
        split_dir = tmp_path / "out" / split
        meta = read_meta(split_dir)
        assert meta == results[split]
        assert meta.count == len(images) and meta.channels == 1 and meta.image_size == (28, 28)
        assert [s.count for s in meta.shards] == [5] * (len(images) // 5) + [len(images) % 5]
        rows = read_split(split_dir)
        assert "source_index" not in rows
        assert rows["index"] == list(range(len(images)))
        assert rows["label"] == labels.tolist()
        decoded = np.stack([decode_image(b, 1)[:, :, 0] for b in rows["image"]])
        assert np.array_equal(decoded, images)
        pixels = images.astype(np.float64) / 255
        assert meta.mean[0] == pytest.approx(pixels.mean(), rel=1e-12)
        assert meta.std[0] == pytest.approx(pixels.std(), rel=1e-12)
        assert list(meta.class_counts) == np.bincount(labels, minlength=10).tolist()
        for shard in meta.shards:  # a row's position in its shard is index - first_index
            shard_index = pq.read_table(split_dir / shard.file).column("index").to_pylist()
            assert shard_index == list(range(shard.first_index, shard.first_index + shard.count))


def test_prepare_cifar10_round_trip_with_rgb_statistics(tmp_path):
    _, arrays = write_cifar(tmp_path / "src", 10, np.random.default_rng(5))
    results = prepare_dataset("cifar10", str(tmp_path / "src"), str(tmp_path / "out"))
    images, labels = arrays["train"]
    rows = read_split(tmp_path / "out" / "train")
    assert rows["label"] == labels.tolist()
    assert np.array_equal(np.stack([decode_image(b, 3) for b in rows["image"]]), images)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    assert results["train"].mean == pytest.approx(tuple(pixels.mean(axis=0)), rel=1e-12)
    assert results["train"].std == pytest.approx(tuple(pixels.std(axis=0)), rel=1e-12)
    assert results["train"].classes[0] == "class0"


def test_per_class_subset_is_stratified_seeded_and_traceable(tmp_path):
    arrays = write_fashion_mnist(
        tmp_path / "src", np.random.default_rng(6), (("train", 50), ("t10k", 20))
    )
    out = tmp_path / "out"
    results = prepare_dataset(
        "fashion-mnist", str(tmp_path / "src"), str(out), per_class={"train": 3, "test": 1}, seed=7
    )
    assert results["train"].class_counts == (3,) * 10 and results["test"].count == 10
    images, labels = arrays["train"]
    rows = read_split(out / "train")
    assert rows["index"] == list(range(30))
    assert rows["source_index"] == sorted(rows["source_index"])
    assert rows["label"] == labels[rows["source_index"]].tolist()
    decoded = np.stack([decode_image(b, 1)[:, :, 0] for b in rows["image"]])
    assert np.array_equal(decoded, images[rows["source_index"]])
    pixels = images[rows["source_index"]].astype(np.float64) / 255
    assert results["train"].mean[0] == pytest.approx(pixels.mean(), rel=1e-12)

    prepare_dataset(
        "fashion-mnist",
        str(tmp_path / "src"),
        str(tmp_path / "again"),
        per_class={"train": 3},
        seed=7,
    )
    assert read_split(tmp_path / "again" / "train")["source_index"] == rows["source_index"]
    assert "source_index" not in read_split(tmp_path / "again" / "test")


def test_prepare_refuses_to_overwrite_unless_asked(tmp_path):
    write_fashion_mnist(tmp_path / "src", np.random.default_rng(7))
    out = tmp_path / "out"
    prepare_dataset("fashion-mnist", str(tmp_path / "src"), str(out), rows_per_shard=2)
    with pytest.raises(PrepareError, match="not empty; pass overwrite=True"):
        prepare_dataset("fashion-mnist", str(tmp_path / "src"), str(out))
    prepare_dataset("fashion-mnist", str(tmp_path / "src"), str(out), overwrite=True)
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "metadata.json",
        "part-00000.parquet",
    ]


@pytest.mark.parametrize(
    ("kind", "src", "kwargs", "message"),
    [
        ("mnist", "src", {}, "unknown dataset kind 'mnist'"),
        ("fashion-mnist", "missing", {}, "source .*missing does not exist"),
        ("fashion-mnist", "src", {"image_size": 32}, "applies only to imagefolder"),
        (
            "fashion-mnist",
            "src",
            {"max_side_px": 500},
            "--max-side-px. applies only to imagefolder",
        ),
        ("fashion-mnist", "src", {"on_bad_file": "fail"}, "--on-bad-file. applies only"),
        ("imagefolder", "src", {"image_size": 8, "max_side_px": 9}, "not both"),
        ("imagefolder", "src", {"max_side_px": 0}, r"--max-side-px\) must be >= 1 pixel, got 0"),
        ("imagefolder", "src", {"on_bad_file": "ignore"}, "must be skip or fail, got 'ignore'"),
        ("imagefolder", "src", {"max_parallel_shards": 0}, "--max-parallel-shards"),
        ("imagefolder", "missing", {}, "source .*missing does not exist"),
        ("fashion-mnist", "src", {"per_class": {"val": 3}}, r"per_class names splits \['val'\]"),
        ("fashion-mnist", "src", {"rows_per_shard": 0}, "--rows-per-shard"),
        ("cifar10", "src", {}, "expected CIFAR-10 python pickles"),
    ],
)
def test_prepare_errors_are_prepare_errors(tmp_path, kind, src, kwargs, message):
    write_fashion_mnist(tmp_path / "src", np.random.default_rng(8))
    with pytest.raises(PrepareError, match=message):
        prepare_dataset(kind, str(tmp_path / src), str(tmp_path / "out"), **kwargs)


def test_cli_arguments_and_summary(tmp_path, capsys):
    write_fashion_mnist(tmp_path / "src", np.random.default_rng(9))
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args(
        ["fashion-mnist", str(tmp_path / "src"), str(tmp_path / "out"), "--test-per-class", "1"]
    )
    assert run_prepare(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("train: 23 images, 1 shards, mean=[0.")
    assert lines[1].startswith("test: 9 images") and lines[1].endswith(f"{tmp_path}/out/test")


# ---- metadata ----------------------------------------------------------------------------------


def test_metadata_reader_accepts_uris_and_explains_bad_files(tmp_path):
    meta = ShardSetMeta(
        name="toy",
        split="train",
        classes=["a", "b"],
        num_classes=2,
        count=3,
        class_counts=[1, 2],
        image_size=[4, 4],
        channels=3,
        encoding="png",
        mean=[0.1, 0.2, 0.3],
        std=[0.4, 0.5, 0.6],
        shards=[{"file": "part-00000.parquet", "first_index": 0, "count": 3}],
    )
    write_meta(meta, tmp_path / "train")
    assert read_meta(f"file://{tmp_path}/train") == meta
    assert json.loads((tmp_path / "train" / "metadata.json").read_text())["image_size"] == [4, 4]

    with pytest.raises(FileNotFoundError, match=r"nowhere/metadata\.json not found"):
        read_meta(tmp_path / "nowhere")
    (tmp_path / "train" / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json: not valid JSON"):
        read_meta(tmp_path / "train")
    fields = meta.to_json_dict() | {"count": 4}
    (tmp_path / "train" / "metadata.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="class_counts sum to 3 but count is 4"):
        read_meta(tmp_path / "train")


# ---- bundled fixture ---------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "per_class"), [("train", 400), ("test", 100)])
def test_bundled_fixture_is_a_stratified_real_fashion_mnist_subset(split, per_class):
    meta = read_meta(FIXTURE_DIR / split)
    assert meta.count == 10 * per_class and meta.num_classes == 10
    assert meta.class_counts == (per_class,) * 10
    assert meta.classes == formats.FASHION_MNIST_CLASSES
    rows = read_split(FIXTURE_DIR / split)
    assert rows["index"] == list(range(meta.count))
    assert np.bincount(rows["label"]).tolist() == [per_class] * 10
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"{DEBIAN_FASHION_MNIST} not installed; pixel comparison skipped")
    images, labels = _debian_fashion_mnist()[split]
    decoded = np.stack([decode_image(b, 1)[:, :, 0] for b in rows["image"]])
    assert np.array_equal(decoded, images[rows["source_index"]])
    assert rows["label"] == labels[rows["source_index"]].tolist()


@functools.cache
def _debian_fashion_mnist() -> dict[str, formats.Split]:
    return formats.load_fashion_mnist(DEBIAN_FASHION_MNIST)  # 60k images: read once per session
