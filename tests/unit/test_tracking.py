"""Experiment tracking without a Ray cluster: the pure parts, the refusal of a tracker whose
library is missing, and the controller callback driven by hand with real TensorBoard and
MLflow writers (a resume that re-reports an epoch logs it once, a broken tracker never
raises)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import REPO_ROOT, read_tensorboard

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.config.job import TrackingSection, tracking_problems
from rayaccel.core.records import STEP_LOG_KEY, WORKER_FACTS_KEY, EpochRecord
from rayaccel.core.storage import RunFolder
from rayaccel.train.tracking import (
    MlflowSettings,
    Tracking,
    TrackingSettings,
    TrackingState,
    epoch_scalars,
    finish_tracking,
    flatten_params,
    step_scalars,
)

QUICKSTART = str(REPO_ROOT / "jobs" / "quickstart.yaml")


# ---------------------------------------------------------------- pure parts
def test_flatten_params_joins_keys_and_writes_lists_and_none_as_json():
    tree = {"train": {"optimizer": {"lr": 0.1, "nesterov": True}, "epochs": 8}, "mixup": None}
    tree["data"] = {"mean": [0.5], "augment": {}}
    assert flatten_params(tree) == {
        "train.optimizer.lr": 0.1,
        "train.optimizer.nesterov": True,
        "train.epochs": 8,
        "mixup": "null",
        "data.mean": "[0.5]",
    }


def test_epoch_scalars_keep_numbers_and_method_metrics_only():
    record = EpochRecord(
        epoch=3,
        stage=1,
        resolution_px=28,
        train_loss=0.5,
        val_acc=None,
        checkpointed=True,
        method_metrics={"infobatch/kept_samples": 900, "agvm/name": "x"},
        workers=({"rank": 0},),
        time_unix_s=1.0,
        placement_group_id="abc",
    )
    scalars = epoch_scalars(record)
    assert scalars["resolution_px"] == 28.0 and scalars["train_loss"] == 0.5
    assert scalars["infobatch/kept_samples"] == 900.0
    for left_out in ("epoch", "stage", "checkpointed", "val_acc", "workers", "agvm/name"):
        assert left_out not in scalars
    assert "time_unix_s" not in scalars and "placement_group_id" not in scalars


def test_step_scalars_sit_at_the_images_trained_in_the_run():
    record = EpochRecord(epoch=2, train_images=400, images_seen=1200)
    steps = [{"images": 200, "loss": 1.5, "lr": 0.1, "images_per_s": 50.0}, {"images": 400}]
    assert step_scalars(record, steps) == [
        (1000, {"step/loss": 1.5, "step/lr": 0.1, "step/images_per_s": 50.0}),
        (1200, {}),
    ]


def test_state_logs_each_epoch_once_per_tracker_and_round_trips():
    state = TrackingState()
    assert state.is_new("mlflow", 0)
    state.logged("mlflow", 0)
    state.logged("mlflow", 1)
    state.set_run_id("mlflow", "abc")
    again = TrackingState.from_json(state.to_json())
    assert not again.is_new("mlflow", 1)  # re-reported after a restart: already logged
    assert again.is_new("mlflow", 2) and again.is_new("tensorboard", 0)
    again.logged("mlflow", 0)  # never moves back
    assert again.trackers["mlflow"] == {"next_epoch": 2, "run_id": "abc"}
    assert TrackingState.from_json(None).trackers == {}


# ---------------------------------------------------------------- validate
def test_tracking_switches_accept_true_and_mappings():
    section = TrackingSection.model_validate({"mlflow": True, "wandb": {"project": "p"}})
    assert section.mlflow.experiment == "rayaccel" and section.mlflow.tracking_uri is None
    assert section.wandb.mode == "offline" and section.enabled
    assert not TrackingSection.model_validate({"mlflow": False}).enabled


def test_validate_refuses_a_tracker_whose_library_is_missing(capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("mlflow", "alembic") else find_spec(name, *a),
    )
    code = main(["validate", QUICKSTART, "tracking.mlflow=true", "tracking.tensorboard=true"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.splitlines() == [
        f"{QUICKSTART}: tracking.mlflow: needs mlflow-skinny, alembic, not installed; "
        "pip install 'rayaccel[tracking]' (or: pip install mlflow-skinny alembic)"
    ]
    # A tracking server needs no SQLite store.
    remote = TrackingSection.model_validate({"mlflow": {"tracking_uri": "http://mlflow:5000"}})
    assert tracking_problems(remote) == [
        "tracking.mlflow: needs mlflow-skinny, not installed; pip install 'rayaccel[tracking]' "
        "(or: pip install mlflow-skinny)"
    ]


# ---------------------------------------------------------------- the callback
def _report(epoch: int, val_acc: float) -> list[dict]:
    """One epoch's reports of two workers, as Ray Train hands them to a callback."""
    record = EpochRecord(
        epoch=epoch, train_loss=1.0 / (epoch + 1), val_acc=val_acc, train_images=100
    ).replace(images_seen=100 * (epoch + 1))
    steps = [{"images": 50, "loss": 2.0, "lr": 0.1, "images_per_s": 10.0}]
    rank0 = {**record.to_row(), WORKER_FACTS_KEY: {"rank": 0}, STEP_LOG_KEY: steps}
    return [rank0, {**record.to_row(), WORKER_FACTS_KEY: {"rank": 1}}]


def _settings(**trackers) -> TrackingSettings:
    return TrackingSettings(
        run_name="cb", end_epoch=3, params={"train.epochs": 3}, plan_text="the plan", **trackers
    )


def test_a_resumed_run_continues_one_mlflow_run_and_logs_each_epoch_once(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    folder = RunFolder(str(tmp_path / "run"))
    settings = _settings(tensorboard=True, mlflow=MlflowSettings(None, "tests"))
    first = Tracking(folder, settings)
    for epoch in (0, 1):
        first.after_report(None, _report(epoch, 0.5 + epoch / 10), None)
    # Resumed from epoch 1's checkpoint (kept only every 2 epochs): epoch 1 comes again.
    resumed = Tracking(folder, settings)
    resumed.after_report(None, _report(1, 0.9), None)
    resumed.after_report(None, _report(2, 0.7), None)
    (tmp_path / "run" / "summary.json").write_text("{}\n")
    finish_tracking(folder, settings, checkpoint="/ckpt")
    assert "logged already; it keeps its first values" in capsys.readouterr().out

    scalars = read_tensorboard(tmp_path / "run" / "tensorboard")
    assert scalars["val_acc"] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert scalars["step/loss"] == [(50, 2.0), (150, 2.0), (250, 2.0)]

    client = MlflowClient(f"sqlite:///{tmp_path}/run/mlflow/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert run.info.status == "FINISHED" and run.data.tags["rayaccel.checkpoint"] == "/ckpt"
    assert run.data.params == {"train.epochs": "3"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"plan.txt", "summary.json"}
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())["trackers"]
    assert state["mlflow"] == {"run_id": run.info.run_id, "next_epoch": 3}


def test_epochs_a_tracker_missed_are_logged_from_the_metrics_log(tmp_path):
    """Killed after metrics.jsonl got epoch 1 but before the trackers did, or tracking turned
    on at the resume: the next controller logs those epochs first, without their steps."""
    folder = RunFolder(str(tmp_path / "run"))
    settings = _settings(tensorboard=True)
    Tracking(folder, settings).after_report(None, _report(0, 0.5), None)
    folder.write_epochs([EpochRecord.from_row(_report(e, 0.5 + e / 10)[1]) for e in (0, 1, 2)])
    Tracking(folder, settings).after_report(None, _report(2, 0.8), None)
    scalars = read_tensorboard(tmp_path / "run" / "tensorboard")
    assert scalars["val_acc"] == [(1, 0.5), (2, 0.6), (3, 0.8)]  # epoch 3 as reported now
    assert [x for x, _ in scalars["step/loss"]] == [50, 250]


def test_a_tracker_that_cannot_open_warns_and_the_others_log(tmp_path, capsys):
    folder = RunFolder(str(tmp_path / "run"))
    settings = _settings(tensorboard=True, mlflow=MlflowSettings("bogus://nowhere", "x"))
    tracking = Tracking(folder, settings)
    tracking.after_report(None, _report(0, 0.5), None)
    tracking.after_report(None, _report(1, 0.6), None)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "mlflow tracking is off for this run" in warnings[0]
    assert read_tensorboard(tmp_path / "run" / "tensorboard")["val_acc"] == [(1, 0.5), (2, 0.6)]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb")
def test_wandb_offline_run_is_continued_by_its_id(tmp_path):
    from rayaccel.train.tracking import WandbSettings

    folder = RunFolder(str(tmp_path / "run"))
    settings = _settings(wandb=WandbSettings("rayaccel-tests", None, "offline"))
    first = Tracking(folder, settings)
    first.after_report(None, _report(0, 0.5), None)
    first.writers["wandb"].close()  # as the end of its process would
    resumed = Tracking(folder, settings)
    resumed.after_report(None, _report(1, 0.6), None)
    resumed.after_report(None, _report(2, 0.7), None)  # the last epoch finishes the run
    state = json.loads((tmp_path / "run" / "tracking.json").read_text())["trackers"]
    run_id = state["wandb"]["run_id"]
    assert state["wandb"]["next_epoch"] == 3
    parts = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and all(name.endswith(f"-{run_id}") for name in parts)


def test_a_broken_tracking_folder_warns_once_and_never_raises(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tracking.json").write_text("{not json")
    tracking = Tracking(RunFolder(str(tmp_path / "run")), _settings(tensorboard=True))
    for epoch in (0, 1):
        tracking.after_report(None, _report(epoch, 0.5), None)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "tracking stopped: JSONDecodeError" in warnings[0]


def test_copy_tree_creates_the_folders_a_mirror_needs(tmp_path):
    import pyarrow.fs as pafs

    from rayaccel.train.tracking import _copy_tree

    nested = tmp_path / "from" / "mlflow" / "artifacts" / "abc"
    nested.mkdir(parents=True)
    (nested / "summary.json").write_text("{}")
    local = pafs.LocalFileSystem()
    _copy_tree(local, str(tmp_path / "from" / "mlflow"), local, str(tmp_path / "to" / "mlflow"))
    _copy_tree(local, str(tmp_path / "from" / "absent"), local, str(tmp_path / "to" / "absent"))
    assert (tmp_path / "to" / "mlflow" / "artifacts" / "abc" / "summary.json").read_text() == "{}"
    assert not (tmp_path / "to" / "absent").exists()
