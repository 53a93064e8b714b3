"""EfficientTrain++ end to end: a 3-stage curriculum through real Ray Data and Ray Train.

Each run is `jobs/quickstart-etpp.yaml` on the bundled fixture with a budget small enough for
one epoch per stage (14 px with 2x replay, 20 px, 28 px), 2 workers, evaluation every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_job, read_metrics, read_summary, write_job

from rayaccel.cli import main

pytestmark = pytest.mark.ray


def _three_stage_job(tmp_path: Path, mode: str, **sections) -> Path:
    job = read_job("quickstart-etpp.yaml")
    for section, fields in sections.items():
        job[section].update(fields)
    job["train"].update(epochs=2, log_every_steps=100)
    job["train"]["schedule"]["warmup_epochs"] = 0.2
    # Stage data epochs: 0.5 * (28/14)^2 = 2 at 2x replay -> 1 epoch; 0.98 -> 1; 0.5 -> 1.
    job["curriculum"].update(mode=mode, budget_epochs=1.5)
    return write_job(tmp_path, job, f"etpp-{mode}")


def test_three_stage_curriculum_runs_each_stage_as_planned(ray_session, tmp_path, capsys):
    # The exact FFT crop; the resize mode runs end to end in test_e2e_infobatch.py (stages,
    # replay, resume) and in benchmarks/gpu_check.py's CPU mode (test_benchmarks.py).
    mode = "fft"
    job_path = _three_stage_job(tmp_path, mode)
    assert main(["plan", str(job_path)]) == 0
    plan_text = capsys.readouterr().out
    assert "compute" in plan_text and f"low-frequency mode: {mode}" in plan_text

    assert main(["run", str(job_path)]) == 0
    run_dir = tmp_path / f"etpp-{mode}"
    rows = read_metrics(run_dir)
    summary = read_summary(run_dir)

    assert [r["stage"] for r in rows] == [0, 1, 2]
    assert [r["resolution_px"] for r in rows] == [14, 20, 28]
    # Early Large Batch: min(128 * (28/B)^2, 512), rounded down to a multiple of 2 workers.
    assert [r["global_batch"] for r in rows] == [512, 250, 128]
    assert [r["replay_factor"] for r in rows] == [2, 1, 1]
    assert [r["randaug_magnitude"] for r in rows] == [0, 2, 4]
    assert all(r["images_per_s"] > 0 and r["epoch_time_s"] > 0 for r in rows)
    # One epoch is one pass over fresh data: 2000 rows per worker in chunks of 256 / 2.
    assert rows[0]["fresh_images"] == 2 * (2000 // 128) * 128
    assert rows[0]["train_images"] == 2 * rows[0]["fresh_images"]
    assert rows[1]["train_images"] == rows[1]["fresh_images"]
    # Low-resolution stages are evaluated at their B, the end at full resolution.
    assert [r["val_resolution_px"] for r in rows] == [14, 20, 28]
    assert all(r["val_images"] == 1000 for r in rows)
    assert summary["eval_resolution_px"] == 28
    assert summary["final_val_acc"] > 0.3  # 10 classes; chance is 0.1
    assert summary["epochs_completed"] == 3
    assert 0.5 < summary["compute_vs_baseline"] < 1.2
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["lowpass_mode"] == mode
    assert [s["dataset"] for s in plan["stages"]] == ["train_s0", "train_s1", "train_s2"]


def test_curriculum_on_device_resident_data_down_samples_on_the_workers(ray_session, tmp_path):
    """`data.mode: device`: one full-resolution copy per worker, crops and flips there, and
    each stage's B made by the worker's anti-aliased resize (no Ray Data pass per epoch)."""
    job_path = _three_stage_job(
        tmp_path,
        "resize",
        data={"mode": "device"},
        scaling={"resources_per_worker": {"CPU": 1}},
        curriculum={"randaugment": False},  # RandAugment lives in the Ray Data pipeline
    )

    assert main(["run", str(job_path)]) == 0
    run_dir = tmp_path / "etpp-resize"
    rows = read_metrics(run_dir)
    summary = read_summary(run_dir)
    assert [r["resolution_px"] for r in rows] == [14, 20, 28]
    assert [r["global_batch"] for r in rows] == [512, 250, 128]
    assert [r["randaug_magnitude"] for r in rows] == [0, 0, 0]
    # Each worker holds 2000 of the 4000 rows; replay doubles the 14-px stage's images.
    assert rows[0]["fresh_images"] == 2 * (2000 // 128) * 128
    assert rows[0]["train_images"] == 2 * rows[0]["fresh_images"]
    assert [r["val_resolution_px"] for r in rows] == [14, 20, 28]
    assert all(r["val_images"] == 1000 for r in rows)
    assert summary["eval_resolution_px"] == 28
    assert summary["final_val_acc"] > 0.3  # 10 classes; chance is 0.1


def test_curriculum_crops_to_each_stage_and_mixes(ray_session, tmp_path, capsys):
    """RandomResizedCrop straight to each stage's px (a 14-px stage decodes, crops and
    augments 14-px images) with Mixup/CutMix on the workers, through Ray Data and Ray Train."""
    job = read_job("quickstart-etpp.yaml")
    job["data"]["augment"] = {
        "random_resized_crop": {"scale": [0.35, 1.0], "resize_to": "stage"},
        "horizontal_flip": True,
    }
    job["mixup"] = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5}
    job["train"].update(epochs=2, log_every_steps=100)
    job["train"]["schedule"]["warmup_epochs"] = 0.2
    # Stage batches 128 * (28/14)^2 = 512 and 128: even per worker, as Mixup needs.
    job["curriculum"].update(
        budget_epochs=1.0,
        stages=[
            {"resolution_px": 14, "randaug_magnitude": 2},
            {"resolution_px": 28, "randaug_magnitude": 4},
        ],
    )
    job_path = write_job(tmp_path, job, "etpp-rrc-mixup")
    assert main(["plan", str(job_path)]) == 0
    assert "RandomResizedCrop scale [0.35, 1.0]" in capsys.readouterr().out
    assert main(["run", str(job_path)]) == 0
    rows = read_metrics(tmp_path / "etpp-rrc-mixup")
    assert [r["resolution_px"] for r in rows][0] == 14 and rows[-1]["resolution_px"] == 28
    assert all(r["mixup/active"] == 1 for r in rows)
    assert all(r["bad_rows_skipped"] == 0 for r in rows)
    summary = read_summary(tmp_path / "etpp-rrc-mixup")
    assert summary["final_val_acc"] > 0.2, summary  # 10 classes; chance is 0.1
