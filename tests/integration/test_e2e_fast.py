"""The fast-training recipe and progressive learning end to end, through real Ray Train.

`jobs/fashion-mnist-fast.yaml` on the bundled fixture in `data.mode: device` (every trick on,
plus mixup and CutMix, no Ray Data pass for training), and a 2-stage progressive curriculum
through Ray Data's per-stage resize, both with 2 workers.
"""

from __future__ import annotations

import pytest
import torch
from helpers import checkpoints, read_job, read_metrics, read_summary, write_job

from rayaccel.cli import main

pytestmark = pytest.mark.ray


def test_fast_recipe_trains_in_device_mode_with_every_trick(ray_session, tmp_path):
    job = read_job("fashion-mnist-fast.yaml")
    job["train"].update(epochs=3, log_every_steps=100)
    job["train"]["schedule"]["points"] = [[0, 0.1], [1, 1], [3, 0]]
    job["data"]["augment"]["cutout_px"] = 4  # exercised too, though off in the shipped job
    # Mixup and CutMix on the device-resident batches, switched off for the last epoch.
    job["mixup"] = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "off_epoch": 2}
    path = write_job(tmp_path, job, "fast")

    assert main(["run", str(path)]) == 0
    rows = read_metrics(tmp_path / "fast")
    summary = read_summary(tmp_path / "fast")

    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # 2000 rows per worker in batches of 128: 15 steps, 1920 images per worker and epoch.
    assert all(r["train_images"] == 2 * 15 * 128 for r in rows)
    assert all(r["val_images"] == 1000 for r in rows)
    # EMA (with its warmup) every 5 of 45 steps: 9 updates; evaluated with TTA.
    assert [r["ema/updates"] for r in rows] == [3, 6, 9]
    assert [r["mixup/active"] for r in rows] == [1.0, 1.0, 0.0]
    assert summary["final_val_acc"] > 0.7, rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    saved = checkpoints(tmp_path / "fast")
    state = torch.load(saved[-1] / "state.pt", map_location="cpu", weights_only=False)
    assert state["methods"]["EmaHook"]["ema"]["num_updates"] == 9
    assert state["optimizer"]["k"] == 5  # lookahead's state wraps the SGD state
    assert any(k.startswith("prep.0.0.") for k in state["model"])  # the whitening conv


def test_progressive_stages_resize_in_ray_data_and_evaluate_at_the_final_size(
    ray_session, tmp_path
):
    job = read_job("quickstart.yaml")
    job["train"].update(epochs=2, log_every_steps=100)
    job["train"]["schedule"]["warmup_epochs"] = 0.2
    job["curriculum"] = {
        "preset": "progressive",
        "num_stages": 2,
        "size_px": [20, 28],
        "randaug_magnitude": [0, 4],
        "mixup_alpha": [0, 0.2],
    }
    path = write_job(tmp_path, job, "progressive")

    assert main(["run", str(path)]) == 0
    rows = read_metrics(tmp_path / "progressive")
    summary = read_summary(tmp_path / "progressive")
    assert [r["stage"] for r in rows] == [0, 1]
    assert [r["resolution_px"] for r in rows] == [20, 28]
    assert [r["randaug_magnitude"] for r in rows] == [0, 4]
    assert [r["val_resolution_px"] for r in rows] == [20, 28]
    assert summary["eval_resolution_px"] == 28
    assert summary["final_val_acc"] > 0.5, rows
