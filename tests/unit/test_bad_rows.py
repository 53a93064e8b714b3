"""Bad rows and shards met at run time: every message names the shard, the row and the reason.

`rayaccel validate` checks shard footers; these are the problems only decoding finds, or a
shard damaged after validation. No Ray: the decode operator and the root-cause search are
plain functions.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FIXTURE_TRAIN, write_subset

from rayaccel.data.codec import encode_image
from rayaccel.data.pipeline import (
    BAD_ROW_MARK,
    BAD_SHARD_MARK,
    BadRowError,
    BadShardError,
    DecodeSpec,
    EpochOrder,
    _window_task,
    decode_batch,
)
from rayaccel.train.runner import _root_cause

SHARD = "/data/train/part-00003.parquet"


def _grey_png(value: int) -> bytes:
    return encode_image(np.full((8, 8), value, np.uint8))


def _rgb_png() -> bytes:
    return encode_image(np.zeros((8, 8, 3), np.uint8))


def _batch(images: list[bytes], labels: list[int], path: str = SHARD) -> dict:
    indices = np.arange(100, 100 + len(images))
    return {
        "image": np.array(images, dtype=object),
        "label": np.array(labels),
        "index": indices,
        "path": np.array([path] * len(images), dtype=object),
    }


def _spec(**changes) -> DecodeSpec:
    fields = dict(
        image_size_px=8,
        channels=1,
        num_classes=10,
        on_bad_row="fail",
        shard_first_index=(("part-00003.parquet", 100),),
    )
    return DecodeSpec(**(fields | changes))


def test_every_bad_row_of_a_batch_is_named_in_index_order():
    # Rows in shuffled order: the message lists them by index whatever the epoch's order.
    batch = _batch([_grey_png(1), _rgb_png(), b"", _grey_png(2)], [0, 3, 1, 12])
    batch = {name: column[::-1].copy() for name, column in batch.items()}
    with pytest.raises(BadRowError) as error:
        decode_batch(batch, _spec(), np.random.default_rng(0))
    assert str(error.value) == (
        f"{BAD_ROW_MARK}: "
        f"shard {SHARD} row 1 (index 101): image has 3 channels (mode RGB) but the split's "
        "metadata.json says channels: 1; "
        f"shard {SHARD} row 2 (index 102): not a decodable image (empty bytes); "
        f"shard {SHARD} row 3 (index 103): label 12 is outside 0..9"
    )


def test_skipped_bad_rows_are_marked_and_the_good_ones_decoded():
    batch = _batch([_grey_png(7), _rgb_png(), _grey_png(9)], [1, 2, 3])
    out = decode_batch(batch, _spec(on_bad_row="skip"), np.random.default_rng(0))
    assert out["bad"].tolist() == [0, 1, 0]
    assert out["image"][:, 0, 0, 0].tolist() == [7, 0, 9]


def test_image_folder_files_of_another_mode_are_converted_not_refused():
    batch = _batch([_rgb_png()], [0], path="/photos/cat/1.png")
    out = decode_batch(batch, _spec(), np.random.default_rng(0))
    assert out["bad"].tolist() == [0] and out["image"].shape == (1, 1, 8, 8)


def test_a_shard_damaged_after_validation_is_named_by_its_task(tmp_path):
    split = write_subset(FIXTURE_TRAIN, tmp_path / "train", 16)
    shard = split / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-64])
    task = _window_task(
        {"slot": np.array([0])},
        location=str(split),
        files=("part-00000.parquet",),
        columns=["image", "label", "index"],
        order=EpochOrder(seed=0, window_rows=16, shard_rows=(16,)),
        shuffle=False,
        clock=None,
        spec=_spec(image_size_px=28),
        decode_batch_rows=16,
        row_filter=None,
        row_filter_kwargs={},
    )
    with pytest.raises(BadShardError) as error:
        next(task)
    assert str(error.value).startswith(
        f"{BAD_SHARD_MARK}: {shard}: not a readable parquet file (Parquet magic bytes not found"
    )


class _GroupError(RuntimeError):
    """Ray Train's group error: a truncated summary plus the workers' own exceptions."""

    def __init__(self, summary: str, worker_failures: dict):
        super().__init__(summary)
        self.worker_failures = worker_failures


@pytest.mark.parametrize(
    "cause",
    [
        BadRowError(f"{BAD_ROW_MARK}: shard s row 1 (index 1): not a decodable image"),
        BadShardError(f"{BAD_SHARD_MARK}: s: not a readable parquet file"),
    ],
)
def test_root_cause_is_the_marked_line_however_deeply_wrapped(cause):
    try:
        try:
            raise cause
        except ValueError as inner:
            raise RuntimeError("ray::MapBatches(_window_task)() failed\n  File ...") from inner
    except RuntimeError as task_error:
        wrapped = task_error
    group = _GroupError("Training failed due to worker errors: [Rank 0 ...", {0: wrapped})
    assert _root_cause(group) == str(cause)
