"""Tests for the `rayaccel` command line: validate, plan and data prepare (no Ray cluster).

Bad input must exit with status 2 and one line per problem on stderr, never a traceback.
`rayaccel run` is tested with the training loop.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURE_TRAIN, REPO_ROOT

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.config import load_job, parse_job
from rayaccel.models import model_exists

REPO = REPO_ROOT
QUICKSTART = "jobs/quickstart.yaml"
JOB_FILES = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "jobs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """Shipped jobs use data paths relative to the repository root, as users run them."""
    monkeypatch.chdir(REPO)


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _write_job(tmp_path: Path, model: dict, **train) -> Path:
    job = {
        "data": {"train": str(FIXTURE_TRAIN)},
        "model": model,
        "train": {"epochs": 2, "global_batch_size": 64, "optimizer": {"lr": 0.1}, **train},
        "run": {"name": "cli-test"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# ---------------------------------------------------------------- validate
def test_validate_quickstart_prints_the_resolved_job(capsys):
    code, out, err = _run_cli(capsys, "validate", QUICKSTART)
    assert code == 0
    assert err == f"{QUICKSTART}: OK\n"
    printed = parse_job(yaml.safe_load(out))
    assert printed == load_job(QUICKSTART)
    assert printed.data.image_size_px == 28


def test_validate_bad_job_prints_one_line_per_problem(capsys, tmp_path):
    path = _write_job(tmp_path, {"name": "resnet9"}, precision="fp8", label_smoothing=1)
    code, out, err = _run_cli(capsys, "validate", str(path), "train.optimizer.lr=-1")
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert err.splitlines() == [
        f"{path}: train.optimizer.lr: must be > 0, got -1",
        f"{path}: train.label_smoothing: must be < 1, got 1",
        f"{path}: train.precision: must be 'fp32', 'bf16' or 'fp16', got 'fp8'",
    ]


def test_validate_malformed_override(capsys):
    code, _, err = _run_cli(capsys, "validate", QUICKSTART, "trainepochs3")
    assert code == EXIT_BAD_INPUT
    assert err == "override 'trainepochs3': expected section.key=value, e.g. train.epochs=3\n"


def test_validate_unknown_timm_model_suggests_close_names(capsys, tmp_path):
    path = _write_job(tmp_path, {"name": "resnet5O"})
    code, out, err = _run_cli(capsys, "validate", str(path))
    assert code == EXIT_BAD_INPUT
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"{path}: model.name: unknown model 'resnet5O'; ")
    assert "resnet50" in line.split("e.g. ", 1)[1].split(", ")


def test_missing_arguments_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == EXIT_BAD_INPUT
    assert "job" in capsys.readouterr().err


@pytest.mark.parametrize("job_file", JOB_FILES)
def test_every_shipped_job_validates(capsys, job_file):
    data_train = yaml.safe_load((REPO / job_file).read_text())["data"]["train"]
    if data_train.startswith("data/fixture"):
        code, _, err = _run_cli(capsys, "validate", job_file)
        assert (code, err) == (0, f"{job_file}: OK\n")
    else:
        # The job trains on a user's dataset that is not on this machine: check all but paths.
        job = load_job(job_file, check_paths=False)
        assert model_exists(job.model.name), job.model.name


def test_quickstart_is_among_the_shipped_jobs():
    assert QUICKSTART in JOB_FILES


# ---------------------------------------------------------------- plan
def _plan_table(out: str) -> tuple[list[dict], str]:
    """The epoch rows and the totals line of `rayaccel plan` output (after the job YAML)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "stage"])
    header = lines[start].split()
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("total:"):
            return rows, line
        rows.append(dict(zip(header, (float(v) for v in line.split()), strict=True)))
    raise AssertionError(f"no totals line in:\n{out}")


def test_plan_quickstart_table(capsys):
    code, out, _ = _run_cli(capsys, "plan", QUICKSTART)
    assert code == 0
    rows, totals = _plan_table(out)
    assert [row["epoch"] for row in rows] == list(range(8))
    # 4000 samples over 2 workers = 2000 each; 2000 // (128 / 2) = 31 full batches.
    assert {(row["batch"], row["per_worker"], row["steps"]) for row in rows} == {(128, 64, 31)}
    assert rows[0]["lr_start"] == 0  # the warm-up starts at 0, as the reference schedules
    assert rows[0]["lr_end"] == pytest.approx(0.2)
    assert rows[-1]["lr_end"] == 0
    assert all(a["lr_end"] >= b["lr_end"] for a, b in zip(rows[1:], rows[2:], strict=False))
    assert totals == (
        "total: 8 epochs, 248 steps, 4000 training samples on 2 worker(s); "
        "compute 1.000x of all epochs at 28px"
    )


def test_plan_with_batch_larger_than_the_dataset(capsys):
    code, out, err = _run_cli(capsys, "plan", QUICKSTART, "train.global_batch_size=8192")
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert err.splitlines() == [
        f"{QUICKSTART}: train.global_batch_size: 8192 is larger than the training set allows "
        "(4000 samples over 2 workers = 2000 each); use at most 4000"
    ]


# ---------------------------------------------------------------- data prepare
def test_data_prepare_missing_source(capsys, tmp_path):
    out_dir = tmp_path / "x"
    code, _, err = _run_cli(
        capsys, "data", "prepare", "fashion-mnist", "/nonexistent", str(out_dir)
    )
    assert code == EXIT_BAD_INPUT
    (line,) = err.splitlines()
    assert line.startswith("rayaccel data prepare: ")
    assert "/nonexistent" in line and "fashion-mnist" in line
    assert not out_dir.exists()


# ---------------------------------------------------------------- a real process
def _rayaccel_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rayaccel", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


# A successful `validate` is not run as a process: it imports torch (seconds) and exits through
# the same `sys.exit(main())` as these failures.
def test_process_bad_job_exits_2_without_traceback():
    result = _rayaccel_process("validate", QUICKSTART, "train.epochs=0", "run.name=a b")
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{QUICKSTART}: train.epochs: must be > 0, got 0",
        f"{QUICKSTART}: run.name: must use only letters, digits, '.', '_' and '-', got 'a b'",
    ]


def test_process_data_prepare_missing_source_exits_2_without_traceback(tmp_path):
    result = _rayaccel_process(
        "data", "prepare", "fashion-mnist", "/nonexistent", str(tmp_path / "x")
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("rayaccel data prepare: ")


def test_submit_takes_overrides_after_options_and_validates_before_contacting(capsys):
    # Port 1 never has a job server: the bad override must be reported first.
    code = main(
        [
            "submit",
            str(REPO / "jobs" / "quickstart.yaml"),
            "--working-dir",
            str(REPO),
            "--address",
            "http://127.0.0.1:1",
            "train.epochs=-1",
        ]
    )
    assert code == 2
    assert "train.epochs: must be > 0, got -1" in capsys.readouterr().err
