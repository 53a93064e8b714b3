"""The training pipelines a run builds (`runner._datasets`), read through Ray Data epoch by
epoch: every row once per epoch, a new order and new crops every epoch, and a resumed run's
pipelines give its first epoch exactly the rows and augmentation an uninterrupted run's
pipelines gave that epoch."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import ray

from rayaccel.config import parse_job, resolve_data
from rayaccel.config.io import apply_overrides, read_yaml
from rayaccel.data.pipeline import start_epoch_clock
from rayaccel.train.runner import _datasets, build_run
from tests.helpers import FIXTURE_TEST, FIXTURE_TRAIN, QUICKSTART

OVERRIDES = [
    f"data.train={FIXTURE_TRAIN}",
    f"data.val={FIXTURE_TEST}",
    "data.augment.random_crop_padding_px=0",
    "data.augment.random_resized_crop={scale: [0.35, 1.0]}",
    "data.shuffle_window_rows=512",
]


def _pipelines(overrides: list[str]):
    job = resolve_data(parse_job(apply_overrides(read_yaml(QUICKSTART), overrides)))
    plan, spec = build_run(job)
    clock = start_epoch_clock()
    return clock, _datasets(job, plan, spec, [], clock)


def _epoch(clock, dataset, epoch: int) -> dict[int, str]:
    """Sample index -> digest of the pixels it was trained with in `epoch`."""
    ray.get(clock.set.remote(epoch))
    seen: dict[int, str] = {}
    for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
        for index, image in zip(batch["index"], batch["image"], strict=True):
            assert int(index) not in seen, f"row {index} read twice in epoch {epoch}"
            seen[int(index)] = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
    return seen


@pytest.mark.usefixtures("ray_session")
def test_a_resumed_run_reads_the_same_rows_and_crops_as_an_uninterrupted_one():
    clock, datasets = _pipelines(OVERRIDES)
    train = datasets["train"]
    epochs = [_epoch(clock, train, epoch) for epoch in range(3)]
    assert all(sorted(seen) == list(range(4000)) for seen in epochs)
    # A new order of crops every epoch (RandomResizedCrop and flips differ per epoch) ...
    assert sum(epochs[1][i] != epochs[2][i] for i in range(4000)) > 3900
    # ... and the same ones when a resumed run's new pipelines start at epoch 2.
    resumed_clock, resumed = _pipelines(OVERRIDES)
    assert _epoch(resumed_clock, resumed["train"], 2) == epochs[2]
    # Validation is decoded once and never augmented.
    assert type(datasets["val"]).__name__ == "MaterializedDataset"
    val = _epoch(clock, datasets["val"], 0)
    assert sorted(val) == list(range(1000)) and _epoch(clock, datasets["val"], 1) == val


@pytest.mark.usefixtures("ray_session")
def test_the_full_shuffle_still_reads_every_row_once():
    clock, datasets = _pipelines([*OVERRIDES, "data.shuffle=full"])
    first, second = (_epoch(clock, datasets["train"], epoch) for epoch in range(2))
    assert sorted(first) == sorted(second) == list(range(4000))
