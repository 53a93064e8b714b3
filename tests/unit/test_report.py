"""`rayaccel report`: compute and table numbers (pure), PNGs, and the command line.

Run folders here are written by hand with the files `rayaccel run` writes (`plan.json` from
a real `Plan`, `metrics.jsonl` rows with the loop's keys, `summary.json`); the real Ray runs
that write plots at their end are the benchmark smoke tests.
"""

from __future__ import annotations

import json

import pytest

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.core.records import records_of
from rayaccel.plan import Plan, StagePlan
from rayaccel.report import (
    PLOT_FILES,
    TABLE_FILE,
    ReportError,
    RunRecord,
    comparison_table,
    compute_full_epochs,
    compute_px_images,
    elapsed_s,
    final_full_resolution_eval,
    load_run,
    render,
    run_stats,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_plan(epochs: int = 3) -> Plan:
    stage = StagePlan(
        index=0,
        first_epoch=0,
        num_epochs=epochs,
        resolution_px=28,
        global_batch=100,
        per_worker_batch=50,
        steps_per_epoch=10,
        peak_lr=0.4,
    )
    schedule = {"name": "cosine", "warmup_epochs": 0.5, "final_fraction": 0.0}
    return Plan(
        stages=(stage,),
        schedule={**schedule, "total_epochs": epochs},
        num_workers=2,
        train_samples=1000,
        full_resolution_px=28,
        baseline_epochs=epochs,
        baseline_images_per_epoch=1000,
    )


def _curriculum_plan() -> Plan:
    """Two 14-px epochs at batch 200, then one at 28 px, against a 3-epoch baseline."""
    low = StagePlan(
        index=0,
        first_epoch=0,
        num_epochs=2,
        resolution_px=14,
        global_batch=200,
        per_worker_batch=100,
        steps_per_epoch=5,
        peak_lr=0.56,
        dataset="train_s0",
    )
    full = StagePlan(
        index=1,
        first_epoch=2,
        num_epochs=1,
        resolution_px=28,
        global_batch=100,
        per_worker_batch=50,
        steps_per_epoch=10,
        peak_lr=0.4,
        dataset="train_s1",
    )
    return Plan(
        stages=(low, full),
        schedule={"name": "cosine", "total_epochs": 1.0, "warmup_epochs": 0.1},
        num_workers=2,
        train_samples=1000,
        full_resolution_px=28,
        schedule_progress="compute",
        lowpass_mode="resize",
        baseline_epochs=3,
        baseline_images_per_epoch=1000,
    )


def _rows(plan: Plan, accuracies: list[float], *, epoch_s: float, start_s: float = 1e9):
    rows, now = [], start_s
    for epoch, acc in enumerate(accuracies):
        stage = plan.stage_of(epoch)
        images = stage.steps_per_epoch * stage.global_batch
        now += epoch_s
        last = epoch + 1 == plan.total_epochs
        rows.append(
            {
                "epoch": epoch,
                "stage": stage.index,
                "resolution_px": stage.resolution_px,
                "global_batch": stage.global_batch,
                "lr": 0.1,
                "train_loss": 1.0,
                "train_images": images,
                "epoch_time_s": epoch_s * 0.9,
                "images_per_s": images / (epoch_s * 0.9),
                "images_seen": images * (epoch + 1),
                "val_acc": acc,
                "val_resolution_px": plan.full_resolution_px if last else stage.resolution_px,
                "time_unix_s": now,
            }
        )
    return rows


def _baseline() -> RunRecord:
    plan = _plain_plan()
    rows = _rows(plan, [0.7, 0.8, 0.9], epoch_s=10)
    summary = {"epochs_completed": 3, "wall_time_s": 40.0}
    return RunRecord("baseline", records_of(rows), plan, summary)


def _curriculum() -> RunRecord:
    plan = _curriculum_plan()
    rows = _rows(plan, [0.6, 0.75, 0.88], epoch_s=5)
    summary = {"epochs_completed": 3, "wall_time_s": 20.0}
    return RunRecord("et++", records_of(rows), plan, summary)


# ---------------------------------------------------------------- pure numbers
def test_compute_counts_trained_images_times_pixels_in_full_resolution_epochs():
    record = _curriculum()
    # 14-px epochs: 1000 images x 196 px^2 each; the 28-px epoch: 1000 x 784.
    assert compute_px_images(record.epochs) == [196_000, 392_000, 1_176_000]
    assert compute_full_epochs(record.epochs, record.plan) == pytest.approx([0.25, 0.5, 1.5])
    baseline = _baseline()
    assert compute_full_epochs(baseline.epochs, baseline.plan) == pytest.approx([1, 2, 3])


def test_compute_counts_what_was_trained_not_what_was_planned():
    """A pruned (InfoBatch) epoch trains fewer images than its plan; the compute follows."""
    record = _baseline()
    record.epochs[1] = record.epochs[1].replace(train_images=400)
    assert compute_full_epochs(record.epochs, record.plan) == pytest.approx([1, 1.4, 2.4])


def test_elapsed_starts_when_the_first_epoch_started():
    rows = _baseline().epochs  # reports every 10 s, epochs of 9 s
    assert elapsed_s(rows) == pytest.approx([9, 19, 29])
    assert elapsed_s([]) == []


def test_final_accuracy_ignores_low_resolution_evaluations():
    record = _curriculum()
    assert final_full_resolution_eval(record.epochs, 28).val_acc == 0.88
    assert final_full_resolution_eval(record.epochs[:2], 28) is None  # only 14-px evaluations


def test_table_compares_every_run_with_the_first():
    table = comparison_table([_baseline(), _curriculum()])
    header, separator, base, etpp = table.splitlines()
    assert header.count("|") == separator.count("|") == base.count("|") == etpp.count("|")
    cells = [c.strip() for c in etpp.strip("|").split("|")]
    assert cells[0] == "et++"
    assert cells[2] == "0.8800 @28px"
    assert cells[3] == "20.0"  # summary wall time
    assert cells[6] == "1.50"  # full-resolution epochs
    assert cells[8] == "0.500"  # wall time / baseline's
    assert cells[9] == "0.500"  # compute / baseline's (1.5 of 3 full-res epochs)
    assert cells[10] == "-2.00"  # accuracy points vs the baseline
    assert [c.strip() for c in base.strip("|").split("|")][8:] == ["1.000", "1.000", "+0.00"]


def test_unfinished_run_is_marked_partial_and_timed_from_its_epochs():
    record = _baseline()
    partial = RunRecord("running", record.epochs[:2], record.plan, summary=None)
    stats = run_stats(partial)
    assert not stats["finished"]
    assert stats["wall_time_s"] == pytest.approx(19)
    assert stats["final_val_acc"] == 0.8  # a plain plan evaluates at full resolution
    assert "2/3 (partial)" in comparison_table([record, partial])


# ---------------------------------------------------------------- figures and folders
def test_render_draws_every_plot_as_a_png():
    files = render([_baseline(), _curriculum()])
    assert set(files) == set(PLOT_FILES)
    for data in files.values():
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def _write_run(folder, record: RunRecord) -> None:
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(record.plan.to_dict()))
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps(e.to_row()) + "\n" for e in record.epochs)
    )
    if record.summary is not None:
        (folder / "summary.json").write_text(json.dumps(record.summary))


def test_load_run_reads_a_run_folder(tmp_path):
    _write_run(tmp_path / "runs" / "base", _baseline())
    record = load_run(str(tmp_path / "runs" / "base"))
    assert record.label == "base"
    assert record.plan == _plain_plan()
    assert record.epochs == _baseline().epochs
    assert record.summary["wall_time_s"] == 40.0


def test_load_run_rejects_folders_that_are_not_runs(tmp_path):
    with pytest.raises(ReportError, match="not a run folder .no plan.json."):
        load_run(str(tmp_path))
    (tmp_path / "plan.json").write_text(json.dumps(_plain_plan().to_dict()))
    with pytest.raises(ReportError, match="no finished epoch yet"):
        load_run(str(tmp_path))
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(ReportError, match="unreadable plan.json"):
        load_run(str(tmp_path))


def test_write_report_writes_plots_and_table(tmp_path):
    written = {}
    names = write_report([_baseline()], written.__setitem__)
    assert names == [*PLOT_FILES, TABLE_FILE]
    assert written[TABLE_FILE].decode().startswith("| run |")
    assert list(write_report([_baseline()], written.__setitem__, table=False)) == list(PLOT_FILES)


# ---------------------------------------------------------------- command line
def test_cli_report_of_one_run_writes_into_its_folder(tmp_path, capsys):
    run = tmp_path / "runs" / "base"
    _write_run(run, _baseline())
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| base | 3/3 | 0.9000 @28px |" in out
    for name in (*PLOT_FILES, TABLE_FILE):
        assert (run / name).stat().st_size > 0


def test_cli_report_compares_several_runs(tmp_path, capsys, monkeypatch):
    _write_run(tmp_path / "runs" / "base", _baseline())
    _write_run(tmp_path / "runs" / "etpp", _curriculum())
    monkeypatch.chdir(tmp_path)
    assert main(["report", "runs/base", "runs/etpp"]) == 0
    out = capsys.readouterr().out
    assert "compute ÷ base" in out and "| etpp |" in out
    for name in (*PLOT_FILES, TABLE_FILE):
        assert (tmp_path / "report" / name).read_bytes()
    assert main(["report", "runs/base", "runs/etpp", "--out", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "plot_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cli_report_of_a_folder_that_is_not_a_run_exits_2_with_a_clear_error(tmp_path, capsys):
    _write_run(tmp_path / "base", _baseline())
    code = main(["report", str(tmp_path / "base"), str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert err == (
        f"rayaccel report: {tmp_path}: not a run folder (no plan.json); give the folder "
        "`rayaccel run` printed as its run folder, e.g. runs/quickstart\n"
    )
    assert "Traceback" not in err and not list(tmp_path.glob("report*"))


def test_run_folder_gets_its_plots_and_a_failure_only_warns(tmp_path, capsys):
    from rayaccel.core.storage import RunFolder
    from rayaccel.train.runner import _write_plots

    _write_run(tmp_path / "done", _baseline())
    _write_plots(RunFolder(str(tmp_path / "done")))
    for name in PLOT_FILES:
        assert (tmp_path / "done" / name).read_bytes().startswith(PNG_SIGNATURE)
    _write_plots(RunFolder(str(tmp_path / "empty")))  # no plan.json: a warning, no exception
    assert "warning: could not write the plots" in capsys.readouterr().err
