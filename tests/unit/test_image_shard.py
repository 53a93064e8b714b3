"""What one `prepare imagefolder` task does, without Ray: sizes, kept bytes, checks, one shard.

The tasks are plain functions that `rayaccel.data.imagefolder` runs as Ray tasks unchanged, so
calling them here tests exactly the code the tasks run; `tests/integration/test_prepare_imagefolder.py`
runs them on Ray.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import FIXTURE_TEST, PHOTO_TREE_ODD_FILES, write_photo_tree
from PIL import Image

from rayaccel.data.codec import decode_image
from rayaccel.data.image_shard import (
    SHARD_KEY,
    ShardError,
    ShardOptions,
    ShardTask,
    check_files,
    check_image,
    convert_image,
    finished_shard,
    fit_within_px,
    keeps_original_bytes,
    write_shard,
)
from rayaccel.data.metadata import ShardSetMeta, read_meta
from rayaccel.data.pixel_stats import PixelStats


@pytest.mark.parametrize(
    ("size", "max_side_px", "expected"),
    [
        ((800, 600), 500, (500, 375)),  # landscape: the longer side becomes the limit
        ((600, 800), 500, (375, 500)),  # portrait
        ((500, 20), 100, (100, 4)),
        ((3000, 2), 300, (300, 1)),  # no side rounds down to 0 px
        ((500, 375), 500, (500, 375)),  # within the limit: unchanged, never enlarged
        ((120, 90), 500, (120, 90)),
        ((800, 600), None, (800, 600)),
    ],
)
def test_fit_within_px_keeps_the_aspect_ratio_and_never_enlarges(size, max_side_px, expected):
    assert fit_within_px(*size, max_side_px) == expected


@pytest.mark.parametrize(
    ("image_format", "mode", "orientation", "resized", "encoding", "kept"),
    [
        ("JPEG", "RGB", 1, False, "jpeg", True),
        ("PNG", "RGB", 1, False, "png", True),
        ("JPEG", "RGB", 1, True, "jpeg", False),  # shrunk: new pixels
        ("PNG", "RGB", 1, False, "jpeg", False),  # not the set's encoding
        ("JPEG", "RGB", 1, False, "png", False),
        ("JPEG", "L", 1, False, "jpeg", False),  # would decode grey
        ("JPEG", "CMYK", 1, False, "jpeg", False),
        ("PNG", "RGBA", 1, False, "png", False),
        ("JPEG", "RGB", 6, False, "jpeg", False),  # would decode sideways
        ("MPO", "RGB", 1, False, "jpeg", False),
    ],
)
def test_original_bytes_are_kept_only_when_nothing_changes(
    image_format, mode, orientation, resized, encoding, kept
):
    assert keeps_original_bytes(image_format, mode, orientation, resized, encoding) is kept


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return root, write_photo_tree(root, per_class=4)


def test_convert_keeps_bytes_or_re_encodes_upright_rgb(tree):
    root, files = tree
    odd = PHOTO_TREE_ODD_FILES
    options = ShardOptions(max_side_px=60)
    for file in files:
        if file == odd["corrupt"]:
            continue
        data = (root / file).read_bytes()
        with Image.open(root / file) as image:
            width_px, height_px = image.size
            mode, image_format = image.mode, image.format
        if file == odd["rotated"]:
            width_px, height_px = height_px, width_px
        converted = convert_image(data, options)
        assert (converted.height_px, converted.width_px) == (height_px, width_px)
        stored = Image.open(io.BytesIO(converted.data))
        assert stored.format == "JPEG" and stored.mode == "RGB"
        assert stored.size == fit_within_px(width_px, height_px, 60)
        should_keep = max(width_px, height_px) <= 60 and (image_format, mode) == ("JPEG", "RGB")
        should_keep = should_keep and file != odd["rotated"]
        assert converted.kept_original is should_keep, file
        assert (converted.data == data) is should_keep, file
        assert converted.pixels.shape == (stored.size[1], stored.size[0], 3)
        if should_keep:  # the statistics' pixels are exactly what a reader decodes
            assert np.array_equal(converted.pixels, decode_image(data, 3))


def test_convert_turns_an_exif_rotated_photo_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # stored: white left half, black right half
    Image.fromarray(pixels).save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    converted = convert_image((tmp_path / "r.jpg").read_bytes(), ShardOptions())
    upright = decode_image(converted.data, 3)
    assert upright.shape == (40, 20, 3)
    assert upright[:15].mean() > 200 and upright[25:].mean() < 50  # the white half is on top


def test_centre_crop_of_image_size_is_still_available(tree):
    root, _ = tree
    converted = convert_image((root / "city/00.jpg").read_bytes(), ShardOptions(centre_crop_px=16))
    assert Image.open(io.BytesIO(converted.data)).size == (16, 16)
    assert not converted.kept_original


def test_check_finds_truncated_and_foreign_files(tree, tmp_path):
    root, _ = tree
    corrupt = PHOTO_TREE_ODD_FILES["corrupt"]
    assert (
        check_image((root / "city/00.jpg").read_bytes())
        == Image.open(root / "city/00.jpg").size[::-1]
    )
    with Image.open(root / corrupt) as image:
        assert image.size  # the header alone looks fine
    with pytest.raises(ValueError, match="(?i)truncated"):
        check_image((root / corrupt).read_bytes())
    (tmp_path / "notes.jpg").write_text("not an image")
    results = check_files(str(root), ["city/00.jpg", corrupt])
    assert results[0] == Image.open(root / "city/00.jpg").size[::-1]
    assert isinstance(results[1], str) and "runcated" in results[1]
    assert "cannot identify" in check_files(str(tmp_path), ["notes.jpg"])[0]
    assert "No such file" in check_files(str(tmp_path), ["gone.jpg"])[0]


def shard_task(root, out, files, **fields) -> ShardTask:
    defaults = {
        "source": str(root),
        "out": str(out),
        "file_name": "part-00001.parquet",
        "first_index": 7,
        "files": tuple(files),
        "labels": tuple(range(len(files))),
        "source_indices": None,
        "plan_id": "plan-a",
        "options": ShardOptions(max_side_px=50),
    }
    return ShardTask(**(defaults | fields))


def test_write_shard_writes_rows_footer_and_exact_stats(tree, tmp_path):
    root, _ = tree
    files = ["city/00.jpg", "forest/grey.jpg", PHOTO_TREE_ODD_FILES["rotated"]]
    record = write_shard(shard_task(root, tmp_path, files, source_indices=(4, 5, 6)))
    path = tmp_path / "part-00001.parquet"
    assert [p.name for p in tmp_path.iterdir()] == ["part-00001.parquet"]  # no temporary left
    rows = pq.read_table(path).to_pydict()
    assert rows["index"] == [7, 8, 9] and rows["label"] == [0, 1, 2]
    assert rows["file"] == files and rows["source_index"] == [4, 5, 6]
    expected = PixelStats(3)
    for data, file in zip(rows["image"], files, strict=True):
        converted = convert_image((root / file).read_bytes(), ShardOptions(max_side_px=50))
        assert data == converted.data
        expected.add(converted.pixels)
    assert record["pixel_stats"] == expected.to_dict()
    assert json.loads(pq.read_metadata(path).metadata[SHARD_KEY]) == record
    assert rows["height_px"][2] == 64 and rows["width_px"][2] == 32  # upright original size

    local = pafs.LocalFileSystem()
    assert finished_shard(local, str(path), "plan-a", 3) == record
    assert finished_shard(local, str(path), "plan-b", 3) is None  # another plan's shard
    assert finished_shard(local, str(path), "plan-a", 4) is None
    path.write_bytes(path.read_bytes()[:100])  # cut short
    assert finished_shard(local, str(path), "plan-a", 3) is None
    assert finished_shard(local, str(tmp_path / "none.parquet"), "plan-a", 3) is None


def test_write_shard_names_a_file_that_broke_after_the_check(tree, tmp_path):
    root, _ = tree
    task = shard_task(root, tmp_path, ["city/00.jpg", PHOTO_TREE_ODD_FILES["corrupt"]])
    with pytest.raises(ShardError, match="beach/truncated.jpg: passed the check but cannot"):
        write_shard(task)
    assert list(tmp_path.iterdir()) == []


def test_pixel_stats_of_parts_merge_to_the_stats_of_the_whole():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, 5, 3), dtype=np.uint8) for h in (3, 4, 9)]
    whole, parts = PixelStats(3), [PixelStats(3), PixelStats(3)]
    for i, image in enumerate(images):
        whole.add(image)
        parts[i % 2].add(image)
    merged = PixelStats.from_dict(json.loads(json.dumps(parts[0].to_dict())))
    merged.merge(parts[1])
    assert merged.to_dict() == whole.to_dict()
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]) / 255
    mean, std = merged.mean_std()
    assert mean == pytest.approx(pixels.mean(axis=0), rel=1e-12)
    assert std == pytest.approx(pixels.std(axis=0), rel=1e-12)


def test_metadata_written_before_original_sizes_existed_still_loads(tmp_path):
    fields = read_meta(FIXTURE_TEST).to_json_dict()
    del fields["original_size_px"], fields["bad_file_count"]
    (tmp_path / "metadata.json").write_text(json.dumps(fields))
    meta = read_meta(tmp_path)
    assert meta.original_size_px is None and meta.bad_file_count == 0
    with_sizes = fields | {
        "original_size_px": {
            "height": {"min": 20, "median": 40.5, "max": 90},
            "width": {"min": 21, "median": 41.0, "max": 89},
        },
        "bad_file_count": 1,
    }
    assert ShardSetMeta(**with_sizes).to_json_dict() == with_sizes
    with pytest.raises(ValueError, match="original_size_px needs exactly the sides"):
        ShardSetMeta(
            **(
                with_sizes
                | {"original_size_px": {"height": with_sizes["original_size_px"]["height"]}}
            )
        )
