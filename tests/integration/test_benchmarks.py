"""Smoke runs of the benchmark scripts, so they keep working as the code changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.ray


def test_time_to_accuracy_smoke_builds_a_frontier_and_adds_runs_later(
    ray_session, tmp_path, capsys
):
    # The combination covers every job edit but progressive's and fast's (unit-tested: their
    # jobs validate); et++ alone is the job as written.
    bench = load_benchmark("time_to_accuracy")
    results_file = tmp_path / "results.json"
    # One baseline budget, so the two runs of the earlier version of this smoke: the frontier's
    # interpolation between budgets is unit-tested (test_benchmark_helpers.py).
    argv = ["--smoke", "--budgets", "2", "--seeds", "0", "--out", str(tmp_path)]
    both = ["--variants", "et++ & infobatch"]
    assert bench.main([*argv, *both, "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "ran 2, 0 still missing" in out and "| baseline@2 | 1 |" in out
    row = [line for line in out.splitlines() if line.startswith("| et++ & infobatch | 1 |")][0]
    assert "x** ± 0.00" in row  # a speed-up (a bound, with one budget) against the frontier
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    results = json.loads(results_file.read_text())
    assert results["commit"] and results["missing_runs"] == 0
    combined = results["variants"]["et++ & infobatch"]
    assert combined["speedup"] > 0 and len(combined["speedup_per_seed"]) == 1
    folder = Path(results["runs"]["et++ & infobatch s0"]["run_folder"])
    for name in ("plot_accuracy.png", "plot_plan.png", "plot_throughput.png"):
        assert (folder / name).stat().st_size > 10_000
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["infobatch/fraction_pruned"] > 0  # epoch 2 pruned with epoch 1's losses

    # Additive: finished runs are read back, and --max-runs 0 runs none of the missing ones.
    assert bench.main([*argv, "--variants", "et++ & infobatch,infobatch", "--max-runs", "0"]) == 0
    out = capsys.readouterr().out
    assert "ran 0, 1 still missing" in out and "| et++ & infobatch | 1 |" in out
    assert "| infobatch |" not in out


def test_ray_overhead_smoke_prints_its_table(ray_session, tmp_path, capsys):
    bench = load_benchmark("ray_overhead")
    results_file = tmp_path / "results.json"
    assert bench.main(["--smoke", "--out", str(tmp_path), "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "| steady (2..) |" in out and "rayaccel vs plain PyTorch per steady-state epoch" in out
    results = json.loads(results_file.read_text())
    assert results["images"] == 4000
    assert len(results["plain_epoch_s"]) == len(results["rayaccel_loop_epoch_s"]) == 2
    for loop_s, wait_s, cpu_s in zip(
        results["rayaccel_loop_epoch_s"],
        results["rayaccel_data_wait_s"],
        results["rayaccel_worker_cpu_s"],
        strict=True,
    ):
        assert 0 <= wait_s < loop_s and cpu_s > 0
    assert results["loop_ratio"] > 0 and results["interval_ratio"] > 0


def test_data_pipeline_smoke_prints_throughput_and_replay_cut(ray_session, tmp_path, capsys):
    bench = load_benchmark("data_pipeline")
    results_file = tmp_path / "results.json"
    assert bench.main(["--smoke", "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "| output px | Ray Data images/s/CPU | DataLoader images/s/CPU |" in out
    results = json.loads(results_file.read_text())
    # The job's stages are 14, 20 and 28 px; each side decoded the whole fixture each time.
    assert sorted(results["throughput"], key=int) == ["14", "20", "28"]
    for sides in results["throughput"].values():
        assert sides["ray_data"]["images"] == sides["dataloader"]["images"] == 4000
    # Stage 0 replays 2x: each step trains a full batch from half as many fresh images.
    (replay,) = results["replay"].values()
    assert replay["trained"] == 2 * replay["fresh"] > 0


def test_large_batch_smoke_prints_miou_and_agvm_multipliers(ray_session, tmp_path, capsys):
    bench = load_benchmark("large_batch")
    results_file = tmp_path / "large_batch.json"
    argv = ["--smoke", "--variants", "agvm", "--out", str(tmp_path / "runs")]
    assert bench.main([*argv, "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "| run | batch | optimizer | val mIoU |" in out and "| agvm | 512 | sgd |" in out
    run = json.loads(results_file.read_text())["runs"]["agvm"]
    assert 0 < run["final_val_miou"] <= run["final_val_pixel_acc"] <= 1
    assert set(run["agvm_mu"]) == {"backbone", "neck", "head"}


def test_gpu_check_cpu_mode_runs_every_part(ray_session, tmp_path, capsys):
    # The CUDA check runs rarely, on a lent machine; its CPU mode keeps the same code working.
    bench = load_benchmark("gpu_check")
    results_file = tmp_path / "gpu_check.json"
    argv = ["--device", "cpu", "--tiny", "--out", str(tmp_path / "runs")]
    assert bench.main([*argv, "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    for part in bench.PARTS:
        assert f"| {part} | ok |" in out, part
    assert f"{len(bench.PARTS)}/{len(bench.PARTS)} parts ok" in out
    rows = {row["part"]: row for row in json.loads(results_file.read_text())["parts"]}
    assert list(rows) == list(bench.PARTS)
    for name in ("quickstart-bf16", "device-data", "curriculum-ib", "fast-to-94"):
        assert rows[name]["images_per_s"] > 0 and 0 <= rows[name]["accuracy"] <= 1, name
    assert "max abs diff vs float64 CPU" in rows["fft-lowpass"]["note"]
    metrics = [
        json.loads(line)
        for line in (tmp_path / "runs" / "gpucheck-curriculum-ib" / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [m["resolution_px"] for m in metrics] == [20, 28]
    assert metrics[1]["infobatch/fraction_pruned"] > 0  # epoch 2 pruned with epoch 1's losses


@pytest.mark.gpu
def test_gpu_check_cuda_mode_runs_every_part(tmp_path):
    # Run alone (`pytest -m gpu`): it starts its own Ray instance with the GPU in it.
    bench = load_benchmark("gpu_check")
    argv = ["--device", "cuda", "--out", str(tmp_path / "runs")]
    assert bench.main([*argv, "--json", str(tmp_path / "gpu_check.json")]) == 0
