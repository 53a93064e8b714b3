"""The benchmark scripts' pure parts: job variants, tables and means (no Ray; their smoke runs
are `tests/integration/test_benchmarks.py`)."""

from __future__ import annotations

import pytest
from helpers import FIXTURE, load_benchmark

from rayaccel.core.records import records_of


def test_time_to_accuracy_runs_differ_only_in_their_methods_budgets_and_seeds(tmp_path):
    from rayaccel.config import parse_job, resolve_data

    bench = load_benchmark("time_to_accuracy")
    raws = bench.run_jobs(
        FIXTURE, tmp_path, job=bench.JOB, budgets=[1, 2], variants=list(bench.VARIANTS),
        seeds=[0, 1], smoke=True,
    )  # fmt: skip
    jobs = {key: resolve_data(parse_job(raw)) for key, raw in raws.items()}
    assert len({job.run.name for job in jobs.values()}) == len(jobs) == 2 * (2 + 10)
    base = jobs[("baseline@2", 1)]
    assert base.curriculum is None and base.infobatch is None and base.train.seed == 1
    assert jobs[("baseline@1", 0)].train.epochs == 1
    assert jobs[("et++", 0)].curriculum.preset != "progressive"
    assert jobs[("infobatch", 0)].curriculum is None
    assert jobs[("infobatch", 0)].infobatch.prune_ratio == 0.5
    assert jobs[("et++ & infobatch", 0)].curriculum == jobs[("et++", 0)].curriculum
    assert jobs[("progressive", 0)].curriculum.preset == "progressive"
    assert jobs[("fast", 0)].tricks is not None
    composed = jobs[("composed", 0)]
    assert (
        composed.curriculum and composed.infobatch and composed.tricks.ema and composed.tricks.tta
    )
    # Its frontier is the base job's baseline: the same data, model and optimizer.
    assert (composed.model, composed.data) == (base.model, base.data)
    assert (composed.train.optimizer, composed.train.global_batch_size) == (
        base.train.optimizer,
        base.train.global_batch_size,
    )
    # The ablation: each leaves out exactly its one component.
    assert jobs[("composed -curriculum", 0)].curriculum is None
    assert jobs[("composed -infobatch", 0)].infobatch is None
    assert jobs[("composed -tricks.ema", 0)].tricks.ema is None
    assert jobs[("composed -tricks.tta", 0)].tricks.tta is None
    for name in ("composed -infobatch", "composed -tricks.ema", "composed -tricks.tta"):
        assert jobs[(name, 0)].curriculum == composed.curriculum
    assert jobs[("composed -tricks.tta", 0)].tricks.ema == composed.tricks.ema
    assert jobs[("composed -curriculum", 1)].run.name == "tta-composed-minus-curriculum-s1"
    for name in ("et++", "infobatch", "et++ & infobatch", "progressive"):
        job = jobs[(name, 1)]  # the same model, data and training budget as the baseline
        assert (job.model, job.data) == (base.model, base.data)
        assert job.train.epochs == base.train.epochs and job.train.seed == 1


def test_speedup_at_equal_accuracy_reads_the_baselines_frontier():
    bench = load_benchmark("time_to_accuracy")
    # A longer budget that ends lower is not on the frontier.
    front = bench.frontier([(100, 0.90), (200, 0.92), (400, 0.93), (300, 0.91)])
    assert front == [(100, 0.90), (200, 0.92), (400, 0.93)]
    assert bench.wall_at(front, 0.925) == (pytest.approx(300), "=")
    assert bench.wall_at(front, 0.95) == (400, ">=")
    assert bench.wall_at(front, 0.80) == (100, "<=")

    def result(seed, acc, wall_s):
        rows = [{"epoch": 0, "val_acc": acc - 0.01, "time_unix_s": 10.0}]
        rows.append({"epoch": 1, "val_acc": acc, "time_unix_s": 10.0 + wall_s})
        return {
            "seed": seed,
            "final_val_acc": acc,
            "wall_time_s": wall_s,
            "to_target": bench.time_to_target(rows, 10.0, 0.915),
        }

    runs = {
        ("baseline@1", 0): result(0, 0.90, 100),
        ("baseline@1", 1): result(1, 0.90, 100),
        ("baseline@2", 0): result(0, 0.92, 200),
        ("baseline@2", 1): result(1, 0.92, 200),
        # 0.91 and 0.92 accurate: the frontier spends 150 and 200 s there.
        ("et++", 0): result(0, 0.91, 75),
        ("et++", 1): result(1, 0.92, 100),
    }
    analysis = bench.analyse(runs, target=0.915)
    etpp = analysis["rows"]["et++"]
    assert etpp["acc_mean"] == pytest.approx(0.915) and etpp["wall_s_mean"] == pytest.approx(87.5)
    assert etpp["frontier_wall_s"] == pytest.approx(175) and etpp["speedup_bound"] == "="
    assert etpp["speedup"] == pytest.approx(2.0)
    assert etpp["speedup_per_seed"] == [pytest.approx(2.0), pytest.approx(2.0)]
    assert etpp["to_target_reached"] == "1/2" and etpp["to_target_s_mean"] is None
    assert analysis["rows"]["baseline@2"]["to_target_s_mean"] == pytest.approx(200)
    table = bench.format_table(analysis)
    assert "| et++ | 2 | 91.50% ± 0.71 | 87.5 ± 17.7 | 175.0 | **2.00x** ± 0.00 |" in table
    assert table.index("baseline@1") < table.index("baseline@2") < table.index("et++")


def test_ray_overhead_compares_steady_state_epochs():
    bench = load_benchmark("ray_overhead")
    rows = [
        {"epoch_time_s": 12.0, "time_unix_s": 100.0, "data_wait_s": 5.0, "worker_cpu_s": 6.0},
        {"epoch_time_s": 10.5, "time_unix_s": 111.0, "data_wait_s": 1.0, "worker_cpu_s": 9.0},
        {"epoch_time_s": 10.5, "time_unix_s": 122.0, "data_wait_s": 2.0, "worker_cpu_s": 8.0},
    ]
    epochs = records_of([{"epoch": i, **row} for i, row in enumerate(rows)])
    result = bench.compare([20.0, 10.0, 10.0], epochs, [19.0, 9.5, 9.0])
    assert result["loop_ratio"] == pytest.approx(1.05)
    assert result["interval_ratio"] == pytest.approx(1.10)
    assert result["rayaccel_report_interval_s"] == [None, 11.0, 11.0]
    assert result["steady_data_wait_s"] == pytest.approx(1.5)
    assert result["steady_worker_cpu_s"] == pytest.approx(8.5)
    assert result["steady_plain_cpu_s"] == pytest.approx(9.25)
    # Runs from before the loop recorded its waits still compare, with the columns empty.
    old = bench.compare(
        [20.0, 10.0, 10.0],
        records_of(
            [
                {"epoch": i, **{k: r[k] for k in ("epoch_time_s", "time_unix_s")}}
                for i, r in enumerate(rows)
            ]
        ),
    )
    assert old["steady_data_wait_s"] is None and "| — |" in bench.format_table(
        {"data": "d", "machine": "m", "images": 1, **old}
    )


def test_large_batch_variants_differ_only_in_batch_optimizer_and_agvm(tmp_path):
    bench = load_benchmark("large_batch")
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


def test_an_ablation_removes_one_component_and_a_section_left_empty():
    bench = load_benchmark("time_to_accuracy")
    raw = {"tricks": {"ema": {"momentum": 0.99}, "tta": {"flip": True}}, "infobatch": {}}
    assert bench._without("tricks.ema")(raw) == {"tricks": {"tta": {"flip": True}}, "infobatch": {}}
    assert bench._without("tricks.tta")(raw) == {"infobatch": {}}
    assert bench._without("infobatch")(raw) == {}
    assert bench.slug("composed -tricks.ema") == "composed-minus-tricks.ema"


def test_an_unfinished_run_is_discarded_and_a_finished_one_kept(tmp_path):
    import json

    bench = load_benchmark("time_to_accuracy")

    def folder(name: str, completed: int | None) -> object:
        path = tmp_path / name
        path.mkdir()
        (path / "checkpoint_1").mkdir()
        if completed is not None:
            summary = {"epochs_completed": completed, "epochs_planned": 4}
            (path / "summary.json").write_text(json.dumps(summary))
        return path

    done, interrupted, failed = folder("done", 4), folder("cut", None), folder("short", 2)
    assert not bench.discard_unfinished(done) and done.is_dir()
    assert bench.discard_unfinished(interrupted) and not interrupted.exists()
    assert bench.discard_unfinished(failed) and not failed.exists()
    assert not bench.discard_unfinished(tmp_path / "never-ran")
