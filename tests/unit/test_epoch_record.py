"""The per-epoch record: what the loop reports, `metrics.jsonl` holds and every reader reads."""

from __future__ import annotations

import json

import pytest

from rayaccel.core.records import EpochRecord, records_of
from rayaccel.core.storage import RunFolder
from rayaccel.methods.infobatch.config import run_summary
from rayaccel.methods.registry import method_summaries
from rayaccel.plan import Plan, StagePlan

ROW = {
    "epoch": 3,
    "stage": 1,
    "resolution_px": 24,
    "global_batch": 128,
    "randaug_magnitude": 4.5,
    "replay_factor": 2,
    "lr": 0.05,
    "steps": 31,
    "train_loss": 0.61,
    "train_acc": 0.78,
    "train_images": 3968,
    "fresh_images": 1984,
    "bad_rows_skipped": 0,
    "epoch_time_s": 7.5,
    "images_per_s": 529.1,
    "data_wait_s": 0.4,
    "worker_cpu_s": 12.0,
    "images_seen": 15872,
    "fresh_images_seen": 7936,
    "world_size": 2,
    "checkpointed": True,
    "val_acc": 0.81,
    "val_loss": 0.55,
    "val_resolution_px": 24,
    "val_images": 1000,
    "replay/buffer_samples": 512,
    "agvm/mu/backbone": 1.25,
    "workers": [{"rank": 0, "node": "a"}, {"rank": 1, "node": "b"}],
    "time_unix_s": 1.7e9,
    "placement_group_id": "pg1",
}


def test_a_row_round_trips_through_the_record():
    record = EpochRecord.from_row(ROW)
    assert record.to_row() == ROW
    assert json.loads(json.dumps(record.to_row())) == ROW
    assert record.method_metrics == {"replay/buffer_samples": 512, "agvm/mu/backbone": 1.25}
    assert record.metric("agvm/mu/backbone") == 1.25 and record.metric("x/y", 0) == 0
    assert record.workers[1]["node"] == "b"
    assert record.evaluated and record.eval_resolution_px == 24


def test_an_epoch_without_evaluation_writes_no_validation_fields():
    row = {k: v for k, v in ROW.items() if not k.startswith("val_")}
    record = EpochRecord.from_row(row)
    assert not record.evaluated and record.val_loss is None
    assert not any(key.startswith("val_") for key in record.to_row())


def test_old_logs_still_read():
    """A row of an older version: no waits or CPU times, no validation resolution, a key
    this version does not know. Missing fields are None, the unknown key survives a rewrite."""
    old = {
        "epoch": 0,
        "resolution_px": 28,
        "global_batch": 64,
        "train_loss": 1.2,
        "train_acc": 0.5,
        "train_images": 640,
        "epoch_time_s": 3.0,
        "images_per_s": 213.3,
        "val_acc": 0.6,
        "legacy_field": "kept",
    }
    record = EpochRecord.from_row(old)
    assert record.data_wait_s is None and record.worker_cpu_s is None
    assert record.eval_resolution_px == 28  # the stage's resolution
    assert record.extra == {"legacy_field": "kept"}
    assert record.to_row()["legacy_field"] == "kept"


def test_a_row_without_its_epoch_is_refused():
    with pytest.raises(ValueError, match="needs `epoch`"):
        EpochRecord.from_row({"train_loss": 1.0})


def test_a_run_folder_reads_and_writes_records(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    assert folder.read_epochs() == []
    records = records_of([{**ROW, "epoch": e} for e in range(3)])
    folder.write_epochs(records)
    assert folder.read_epochs() == records
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").open()] == [
        0,
        1,
        2,
    ]


def _plan(train_samples: int) -> Plan:
    stage = StagePlan(
        index=0,
        first_epoch=0,
        num_epochs=2,
        resolution_px=28,
        global_batch=64,
        per_worker_batch=64,
        steps_per_epoch=10,
        peak_lr=0.1,
    )
    return Plan(stages=(stage,), train_samples=train_samples, full_resolution_px=28)


def test_infobatch_summarises_what_pruning_saved():
    rows = [
        {
            **ROW,
            "epoch": 0,
            "fresh_images_seen": 600,
            "infobatch/kept_samples": 600,
            "infobatch/bookkeeping_s": 0.25,
        },
        {
            **ROW,
            "epoch": 1,
            "fresh_images_seen": 1600,
            "infobatch/kept_samples": 1000,
            "infobatch/bookkeeping_s": 0.5,
        },
    ]
    plan = _plan(train_samples=1000)
    summary = run_summary(records_of(rows), plan)
    assert summary == {
        "fresh_images_seen": 1600,
        "fresh_images_vs_full": 0.8,
        "infobatch_bookkeeping_s": 0.75,
    }
    assert method_summaries(records_of(rows), plan) == summary
    # A run without InfoBatch has none of its figures.
    assert method_summaries(records_of([ROW]), plan) == {}
