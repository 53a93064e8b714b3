"""`rayaccel data prepare imagefolder` on the session's Ray instance: a small photo tree with a
PNG, greyscale, CMYK, RGBA, EXIF-rotated and truncated file, in shards of 10 rows.

Checks what the trainer relies on (exact, contiguous indices; class-mixed shards; exact
mean/std), what the user relies on (the bad file listed, never dropped silently; original bytes
kept; original sizes recorded) and resuming (only missing shards are rewritten, and the result
equals a clean run).
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import PHOTO_TREE_ODD_FILES, write_photo_tree
from PIL import Image, ImageOps

from rayaccel.cli import main
from rayaccel.data.image_shard import ShardOptions, convert_image
from rayaccel.data.metadata import read_meta
from rayaccel.data.pixel_stats import PixelStats
from rayaccel.data.prepare import PrepareError, prepare_dataset

MAX_SIDE_PX = 60
CORRUPT = PHOTO_TREE_ODD_FILES["corrupt"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(tree root with train/ and val/, train files); val lacks the "beach" class."""
    root = tmp_path_factory.mktemp("photos")
    files = write_photo_tree(root / "train", per_class=12)
    write_photo_tree(root / "more", per_class=2, seed=1)
    (root / "val").mkdir()
    shutil.copytree(root / "more" / "city", root / "val" / "city")
    shutil.rmtree(root / "more")
    return root, files


def read_rows(split_dir) -> dict:
    meta = read_meta(split_dir)
    return pq.ParquetDataset([str(split_dir / s.file) for s in meta.shards]).read().to_pydict()


def upright_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def prepare(src, out, **kwargs):
    options = {"rows_per_shard": 10, "max_side_px": MAX_SIDE_PX} | kwargs
    return prepare_dataset("imagefolder", str(src), str(out), **options)


def test_skip_lists_the_bad_file_and_writes_exact_mixed_shards(
    ray_session, photos, tmp_path, capsys
):
    root, files = photos
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "prepare",
                "imagefolder",
                str(root),
                str(out),
                "--rows-per-shard",
                "10",
                "--max-side-px",
                str(MAX_SIDE_PX),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "[prepare] train write: 41/41 images (100%)" in printed and "images/s" in printed
    assert (
        f"train: 41 images, 5 shards, 1 unreadable file skipped (listed in {out}/train/bad_files.txt)"
        in printed
    )

    meta = read_meta(out / "train")
    assert (out / "train" / "bad_files.txt").read_text().startswith(f"{CORRUPT}\t")
    assert "runcated" in (out / "train" / "bad_files.txt").read_text()
    assert meta.bad_file_count == 1 and meta.count == len(files) - 1
    assert [(s.first_index, s.count) for s in meta.shards] == [
        (0, 10),
        (10, 10),
        (20, 10),
        (30, 10),
        (40, 1),
    ]
    assert meta.image_size is None and meta.classes == ("beach", "city", "forest")
    rows = read_rows(out / "train")
    assert rows["index"] == list(range(41))
    for shard in meta.shards:
        table = pq.read_table(out / "train" / shard.file)
        assert table.column("index").to_pylist() == list(
            range(shard.first_index, shard.first_index + shard.count)
        )
    assert sorted(rows["file"]) == sorted(set(files) - {CORRUPT})
    assert rows["file"] != sorted(rows["file"])  # a seeded random order, not the listing's
    for shard_start in (0, 10, 20, 30):
        assert len(set(rows["label"][shard_start : shard_start + 10])) >= 2  # classes mixed
    assert rows["label"] == [meta.classes.index(file.split("/")[0]) for file in rows["file"]]

    stats = PixelStats(3)
    kept = 0
    for file, data, height_px, width_px in zip(
        rows["file"], rows["image"], rows["height_px"], rows["width_px"], strict=True
    ):
        source = root / "train" / file
        assert (width_px, height_px) == upright_size(source)
        stored = Image.open(io.BytesIO(data))
        assert stored.mode == "RGB" and stored.format == "JPEG"
        if max(width_px, height_px) > MAX_SIDE_PX:
            assert max(stored.size) == MAX_SIDE_PX
            assert stored.size[0] / stored.size[1] == pytest.approx(width_px / height_px, rel=0.05)
        else:
            assert stored.size == (width_px, height_px)
        if data == source.read_bytes():
            kept += 1
        stats.add(convert_image(source.read_bytes(), ShardOptions(max_side_px=MAX_SIDE_PX)).pixels)
    small_rgb_jpegs = [
        file
        for file in rows["file"]
        if file.endswith(".jpg")
        and file not in PHOTO_TREE_ODD_FILES.values()
        and max(upright_size(root / "train" / file)) <= MAX_SIDE_PX
    ]
    assert kept == len(small_rgb_jpegs) > 0  # every untouched JPEG byte for byte, nothing else
    assert list(meta.mean) == stats.mean_std()[0] and list(meta.std) == stats.mean_std()[1]
    heights = rows["height_px"]
    assert meta.original_size_px["height"].min == min(heights)
    assert meta.original_size_px["height"].median == float(np.median(heights))
    assert meta.original_size_px["width"].max == max(rows["width_px"])

    val = read_meta(out / "val")
    assert val.classes == meta.classes and val.class_counts == (0, 4, 0)


def test_fail_names_the_file_and_writes_nothing(ray_session, photos, tmp_path, capsys):
    root, _ = photos
    out = tmp_path / "out"
    code = main(
        ["data", "prepare", "imagefolder", str(root / "train"), str(out), "--on-bad-file", "fail"]
    )
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"{root}/train/{CORRUPT}: not a readable image" in error and "runcated" in error
    assert "--on-bad-file skip" in error
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_resume_rewrites_only_missing_shards_and_equals_a_clean_run(ray_session, photos, tmp_path):
    root, _ = photos
    src, out = root / "train", tmp_path / "out"
    clean = prepare(src, tmp_path / "clean")["train"]
    prepare(src, out)
    split = out / "train"
    before = {path.name: path.stat().st_mtime_ns for path in split.glob("part-*.parquet")}
    # An interruption: shard 2 never written, a temporary file left, no metadata.json yet.
    (split / "part-00002.parquet").rename(split / "part-00002.parquet.1234.tmp")
    (split / "metadata.json").unlink()
    (split / "bad_files.txt").unlink()
    (split / "part-00003.parquet").write_bytes(b"PAR1 cut short")
    resumed = prepare(src, out)["train"]
    after = {path.name: path.stat().st_mtime_ns for path in split.glob("part-*.parquet")}
    assert [name for name in sorted(after) if after[name] != before[name]] == [
        "part-00002.parquet",
        "part-00003.parquet",
    ]
    assert not list(split.glob("*.tmp"))
    assert (split / "bad_files.txt").read_text().startswith(f"{CORRUPT}\t")
    assert resumed == clean == read_meta(split)
    assert read_rows(split) == read_rows(tmp_path / "clean" / "train")


def test_changed_source_or_options_are_refused(ray_session, photos, tmp_path):
    root, _ = photos
    src = tmp_path / "src"
    shutil.copytree(root / "train", src)
    out = tmp_path / "out"
    prepare(src, out)
    with pytest.raises(
        PrepareError, match=r"other options \(--max-side-px 60 -> 70\).*--overwrite"
    ):
        prepare(src, out, max_side_px=70)
    shutil.copy(src / "city" / "00.jpg", src / "city" / "new.jpg")
    with pytest.raises(
        PrepareError,
        match="different source: .* listed 42 images then, .* lists 43 now.*--overwrite",
    ):
        prepare(src, out)
    assert prepare(src, out, overwrite=True)["train"].count == 42
    (tmp_path / "other" / "train").mkdir(parents=True)
    (tmp_path / "other" / "train" / "notes.txt").write_text("someone else's")
    with pytest.raises(PrepareError, match="not empty and holds no imagefolder prepare to resume"):
        prepare(src, tmp_path / "other")


def test_centre_crop_and_lossless_png(ray_session, photos, tmp_path):
    root, _ = photos
    cropped = prepare(
        f"file://{root}", tmp_path / "crop", max_side_px=None, image_size=16, per_class={"val": 1}
    )
    assert cropped["train"].image_size == (16, 16)
    assert read_rows(tmp_path / "crop" / "val")["source_index"][0] in range(4)
    lossless = prepare(root / "train", tmp_path / "png", encoding="png", max_side_px=None)
    rows = read_rows(tmp_path / "png" / "train")
    png = rows["file"].index(PHOTO_TREE_ODD_FILES["png"])
    assert rows["image"][png] == (root / "train" / PHOTO_TREE_ODD_FILES["png"]).read_bytes()
    assert lossless["train"].encoding == "png"
    assert all(Image.open(io.BytesIO(data)).format == "PNG" for data in rows["image"])
