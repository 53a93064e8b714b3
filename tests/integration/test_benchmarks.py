"""Smoke runs of the benchmark scripts, so they keep working as the code changes."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark

pytestmark = pytest.mark.ray


def test_etpp_vs_baseline_smoke_prints_its_table(ray_session, tmp_path, capsys):
    bench = load_benchmark("etpp_vs_baseline")
    results_file = tmp_path / "results.json"
    assert (
        bench.main(["--smoke", "--out", str(tmp_path / "runs"), "--json", str(results_file)]) == 0
    )
    out = capsys.readouterr().out
    assert "et++ vs baseline:" in out and "x less wall time" in out
    results = json.loads(results_file.read_text())
    assert set(results["runs"]) == {"baseline", "et++"}
    assert results["runs"]["et++"]["eval_resolution_px"] == 28  # final eval at full size
    # Smoke budgets are below one epoch per stage, and stages train whole epochs, so the
    # ratio is only checked for being reported; the real run measures it.
    assert results["compute_vs_baseline"] > 0
    assert results["wall_time_ratio"] > 0


def test_fast_vs_baseline_smoke_reports_time_to_target(ray_session, tmp_path, capsys):
    bench = load_benchmark("fast_vs_baseline")
    results_file = tmp_path / "fast.json"
    argv = ["--smoke", "--out", str(tmp_path / "runs"), "--json", str(results_file)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "epochs_to_target" in out and "fast vs baseline to 50.0%" in out
    results = json.loads(results_file.read_text())
    assert set(results["runs"]) == {"baseline", "fast"}
    for run in results["runs"].values():
        assert run["epochs_run"] == 2
        hit = run["to_target"]
        # Reached within the run, after its first report at the earliest.
        if hit["epochs"] is not None:
            assert 1 <= hit["epochs"] <= 2 and 0 < hit["wall_s"] <= run["wall_time_s"] + 1


def test_time_to_accuracy_smoke_prints_its_table_and_runs_write_plots(
    ray_session, tmp_path, capsys
):
    # baseline and the combination cover every job edit (et++ alone is the etpp smoke above;
    # infobatch alone only adds the section the combination adds).
    bench = load_benchmark("time_to_accuracy")
    results_file = tmp_path / "results.json"
    argv = ["--smoke", "--variants", "baseline,et++ & infobatch", "--out", str(tmp_path)]
    assert bench.main([*argv, "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "| run | epochs | final val acc (full res) |" in out
    assert "| baseline | 2/2 |" in out and "| et++ & infobatch | 3/3 |" in out
    results = json.loads(results_file.read_text())
    for summary in results["runs"].values():
        assert summary["eval_resolution_px"] == 28
        for name in ("plot_accuracy.png", "plot_plan.png", "plot_throughput.png"):
            assert (tmp_path / summary["run_folder"] / name).stat().st_size > 10_000
    rows = [
        json.loads(line)
        for line in (tmp_path / "bench-tta-etpp-infobatch" / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    assert rows[1]["infobatch/fraction_pruned"] > 0  # epoch 2 pruned with epoch 1's losses


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
