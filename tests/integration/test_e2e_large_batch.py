"""Large-batch training end to end through real Ray Train, as users run it from the CLI.

`jobs/fashion-seg-agvm.yaml` on the derived segmentation fixture with 2 workers: AGVM
measures on half batches (two backward passes with the gradient all-reduce done by hand),
scales the neck's and head's LRs, logs mu per epoch and keeps its state in the checkpoint; the
run reports mean IoU. A classifier with LAMB, the square-root rule and AGVM's Adam
preconditioning trains through the same loop on one worker.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (
    JOBS_DIR,
    SEG_FIXTURE,
    checkpoints,
    read_job,
    read_metrics,
    read_summary,
    write_job,
)

from rayaccel.cli import main

pytestmark = pytest.mark.ray


def test_segmentation_with_agvm_on_two_workers(ray_session, tmp_path, capsys):
    code = main(
        [
            "run",
            str(JOBS_DIR / "fashion-seg-agvm.yaml"),
            f"data.train={SEG_FIXTURE / 'train'}",
            f"data.val={SEG_FIXTURE / 'test'}",
            f"run.storage_path={tmp_path}",
            "run.name=seg",
            "train.epochs=2",
            "train.global_batch_size=256",
            "train.schedule.warmup_epochs=0.5",
            "agvm.start_step=3",
            "agvm.interval=4",
            "train.log_every_steps=100",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "val_miou" in out
    rows = read_metrics(tmp_path / "seg")
    summary = read_summary(tmp_path / "seg")
    # 2,000 rows per worker in batches of 128: 15 steps per epoch, 30 in all; measurements at
    # steps 3, 7, ..., 27: 4 in epoch 1 (3, 7, 11) -> 3, then 19, 23, 27 (and 15) -> 4.
    assert [r["steps"] for r in rows] == [15, 15]
    assert [r["agvm/measurements"] for r in rows] == [3, 4]
    for row in rows:
        assert row["agvm/mu/backbone"] == 1.0
        for component in ("neck", "head"):
            assert 0.5**0.5 <= row[f"agvm/mu/{component}"] <= 10**0.5
            assert 0 <= row[f"agvm/distance/{component}"] <= 2
    assert rows[-1]["agvm/mu/head"] != 1.0
    assert all(r["val_images"] == 1000 for r in rows)
    # 11 classes, background most pixels: all-background scores about 0.05 (measured after 2
    # epochs: 0.083 then 0.158).
    assert summary["final_val_miou"] > 0.1, rows
    assert rows[-1]["val_miou"] > rows[0]["val_miou"]
    assert 0 < summary["final_val_miou"] < summary["final_val_acc"] <= 1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # The LR follows the linear rule: 0.01 at batch 32 -> 0.08 at 256.
    plan = json.loads((tmp_path / "seg" / "plan.json").read_text())
    assert plan["stages"][0]["peak_lr"] == pytest.approx(0.08)

    saved = checkpoints(tmp_path / "seg")
    state = torch.load(saved[-1] / "state.pt", map_location="cpu", weights_only=False)
    agvm = state["methods"]["AgvmHook"]
    assert agvm["step"] == 30 and agvm["agvm"]["num_updates"] == 7
    assert agvm["agvm"]["mu"]["head"] == pytest.approx(rows[-1]["agvm/mu/head"])
    assert any(k.startswith("neck.") for k in state["model"])


def test_classifier_with_lamb_sqrt_rule_and_agvm(ray_session, tmp_path):
    job = read_job("quickstart.yaml")
    job["train"].update(epochs=1, global_batch_size=256, log_every_steps=100)
    job["train"]["schedule"]["warmup_epochs"] = 0.3
    job["train"]["optimizer"] = {"name": "lamb", "lr": 0.005, "weight_decay": 0.01}
    job["train"]["lr_scaling"] = {"rule": "sqrt", "base_batch": 64}
    job["scaling"].update(num_workers=1, resources_per_worker={"CPU": 1})
    job["agvm"] = {"start_step": 0, "interval": 3}
    path = write_job(tmp_path, job, "lamb")

    assert main(["run", str(path)]) == 0
    rows = read_metrics(tmp_path / "lamb")
    summary = read_summary(tmp_path / "lamb")
    # 4,000 images in batches of 256: 15 steps, measured at 0, 3, ..., 12.
    assert rows[0]["steps"] == 15 and rows[0]["agvm/measurements"] == 5
    assert set(k for k in rows[0] if k.startswith("agvm/mu/")) == {
        "agvm/mu/backbone",
        "agvm/mu/head",
    }
    assert summary["final_val_acc"] > 0.3, rows
