"""Smoke runs of the benchmark scripts, so they keep working as the code changes."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.ray


def _load(name: str):
    # Scripts import `common` from their own folder, as `python benchmarks/x.py` allows.
    if str(REPO_ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    # A registered module: dataclasses in a script look their module up in sys.modules.
    return importlib.import_module(name)


def test_etpp_vs_baseline_smoke_prints_its_table(ray_session, tmp_path, capsys):
    bench = _load("etpp_vs_baseline")
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


def test_etpp_vs_baseline_over_seeds_averages_times_and_gaps():
    bench = _load("etpp_vs_baseline")

    def summary(wall_s: float, acc: float, compute: float) -> dict:
        return {
            "wall_time_s": wall_s,
            "train_time_s": wall_s - 10,
            "epochs_completed": 3,
            "final_val_acc": acc,
            "eval_resolution_px": 28,
            "compute_vs_baseline": compute,
        }

    pairs = [
        bench.pair_result(0, {"baseline": summary(300, 0.90, 1), "et++": summary(100, 0.89, 0.5)}),
        bench.pair_result(1, {"baseline": summary(100, 0.92, 1), "et++": summary(50, 0.92, 0.5)}),
    ]
    assert pairs[0]["wall_time_ratio"] == pytest.approx(3.0)
    assert pairs[0]["accuracy_delta_points"] == pytest.approx(-1.0)
    mean = bench.over_seeds(pairs)
    # Total times (400 s / 150 s), not the mean 2.5 of the ratios 3 and 2.
    assert mean["wall_time_ratio"] == pytest.approx(400 / 150)
    assert mean["accuracy_delta_points"] == pytest.approx(-0.5)
    assert mean["accuracy_delta_sd_points"] == pytest.approx(2**0.5 / 2)
    assert mean["runs"]["et++"]["final_val_acc"] == pytest.approx(0.905)
    table = bench.format_table({"data": "d", **mean})
    assert "seed: mean of 0, 1" in table and "(sd 0.71 over seeds)" in table


def test_fast_vs_baseline_smoke_reports_time_to_target(ray_session, tmp_path, capsys):
    bench = _load("fast_vs_baseline")
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


def test_time_to_accuracy_variants_differ_only_in_their_methods(tmp_path):
    from rayaccel.config import parse_job, resolve_data

    bench = _load("time_to_accuracy")
    data = REPO_ROOT / "data" / "fixture" / "fashion-mnist"
    raws = bench.jobs(data, tmp_path, smoke=True, variants=list(bench.VARIANTS))
    jobs = {name: resolve_data(parse_job(raw)) for name, raw in raws.items()}
    assert jobs["baseline"].curriculum is None and jobs["baseline"].infobatch is None
    assert jobs["et++"].curriculum is not None and jobs["et++"].infobatch is None
    assert jobs["infobatch"].curriculum is None and jobs["infobatch"].infobatch.prune_ratio == 0.5
    both = jobs["et++ & infobatch"]
    assert both.curriculum == jobs["et++"].curriculum and both.infobatch.delta == 0.875
    assert len({job.run.name for job in jobs.values()}) == 4
    for job in jobs.values():  # same model, data and budget everywhere
        assert (job.model, job.data, job.train) == (
            jobs["baseline"].model,
            jobs["baseline"].data,
            jobs["baseline"].train,
        )


def test_time_to_accuracy_smoke_prints_its_table_and_runs_write_plots(
    ray_session, tmp_path, capsys
):
    # baseline and the combination cover every job edit (et++ alone is the etpp smoke above;
    # infobatch alone only adds the section the combination adds).
    bench = _load("time_to_accuracy")
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


def test_ray_overhead_compares_steady_state_epochs():
    bench = _load("ray_overhead")
    rows = [
        {"epoch_time_s": 12.0, "time_unix_s": 100.0, "data_wait_s": 5.0, "worker_cpu_s": 6.0},
        {"epoch_time_s": 10.5, "time_unix_s": 111.0, "data_wait_s": 1.0, "worker_cpu_s": 9.0},
        {"epoch_time_s": 10.5, "time_unix_s": 122.0, "data_wait_s": 2.0, "worker_cpu_s": 8.0},
    ]
    result = bench.compare([20.0, 10.0, 10.0], rows, [19.0, 9.5, 9.0])
    assert result["loop_ratio"] == pytest.approx(1.05)
    assert result["interval_ratio"] == pytest.approx(1.10)
    assert result["rayaccel_report_interval_s"] == [None, 11.0, 11.0]
    assert result["steady_data_wait_s"] == pytest.approx(1.5)
    assert result["steady_worker_cpu_s"] == pytest.approx(8.5)
    assert result["steady_plain_cpu_s"] == pytest.approx(9.25)
    # Runs from before the loop recorded its waits still compare, with the columns empty.
    old = bench.compare(
        [20.0, 10.0, 10.0], [{k: r[k] for k in ("epoch_time_s", "time_unix_s")} for r in rows]
    )
    assert old["steady_data_wait_s"] is None and "| — |" in bench.format_table(
        {"data": "d", "machine": "m", "images": 1, **old}
    )


def test_ray_overhead_smoke_prints_its_table(ray_session, tmp_path, capsys):
    bench = _load("ray_overhead")
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
    bench = _load("data_pipeline")
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
    bench = _load("large_batch")
    results_file = tmp_path / "large_batch.json"
    argv = ["--smoke", "--variants", "agvm", "--out", str(tmp_path / "runs")]
    assert bench.main([*argv, "--json", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "| run | batch | optimizer | val mIoU |" in out and "| agvm | 512 | sgd |" in out
    run = json.loads(results_file.read_text())["runs"]["agvm"]
    assert 0 < run["final_val_miou"] <= run["final_val_pixel_acc"] <= 1
    assert set(run["agvm_mu"]) == {"backbone", "neck", "head"}


def test_large_batch_variants_differ_only_in_batch_optimizer_and_agvm(tmp_path):
    bench = _load("large_batch")
    jobs = bench.jobs(bench.SEG_FIXTURE, tmp_path, epochs=3, smoke=False)
    assert set(jobs) == {"small", "linear", "agvm", "lamb"}
    assert "agvm" in jobs["agvm"] and not any(
        "agvm" in jobs[n] for n in ("small", "linear", "lamb")
    )
    assert jobs["small"]["train"]["global_batch_size"] == 32
    assert {jobs[n]["train"]["global_batch_size"] for n in ("linear", "agvm", "lamb")} == {512}
    assert jobs["lamb"]["train"]["optimizer"]["name"] == "lamb"
    assert jobs["lamb"]["train"]["lr_scaling"]["rule"] == "sqrt"
    for job in jobs.values():
        assert job["model"] == jobs["linear"]["model"] and job["train"]["epochs"] == 3
