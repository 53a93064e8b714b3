"""Tests for the `rayaccel` command line: validate, plan and data prepare (no Ray cluster).

Bad input must exit with status 2 and one line per problem on stderr, never a traceback.
`rayaccel run` is tested with the training loop.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import (
    ABSENT_DATA,
    FIXTURE_TRAIN,
    REPO_ROOT,
    data_absent_overrides,
    search_overrides,
    shipped_plan,
)

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.config import load_job, parse_job, read_yaml
from rayaccel.data.cards import CARDS
from rayaccel.plan import format_plan
from rayaccel.tune.spec import load_search

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
def test_every_shipped_job_validates_without_its_data(capsys, job_file):
    absent = data_absent_overrides(read_yaml(job_file))
    code, _, err = _run_cli(capsys, "validate", job_file, *absent)
    assert code == 0, err
    *assumed, ok = err.splitlines()
    assert ok == f"{job_file}: OK"
    assert len(assumed) == (1 if absent else 0), err
    assert all(line.startswith(f"{job_file}: {ASSUMED}") for line in assumed)


def test_quickstart_is_among_the_shipped_jobs():
    assert QUICKSTART in JOB_FILES


# ---------------------------------------------------------------- plan
ASSUMED = f"assumed (data not found at {ABSENT_DATA / 'train'}, {ABSENT_DATA / 'val'}): "


def _plan_table(out: str) -> tuple[list[dict], str]:
    """The epoch rows and the totals line of `rayaccel plan` output (the table comes first)."""
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:2] == ["epoch", "stage"], out
    rows = []
    for line in lines[1:]:
        if line.startswith("total:"):
            return rows, line
        rows.append(dict(zip(header, (float(v) for v in line.split()), strict=True)))
    raise AssertionError(f"no totals line in:\n{out}")


def _shipped_plans() -> list[tuple[str, dict]]:
    """Every shipped job, and every search file's job with its overrides."""
    cases = [(job_file, {}) for job_file in JOB_FILES]
    for path in sorted((REPO / "searches").glob("*.yaml")):
        search = load_search(path)
        cases.append((search.job, dict(search.job_overrides)))
    return cases


@pytest.mark.parametrize(("job_file", "job_overrides"), _shipped_plans(), ids=str)
def test_every_shipped_file_plans_without_its_data(capsys, job_file, job_overrides):
    raw = read_yaml(job_file)
    absent = data_absent_overrides(raw)
    assert absent or raw["data"]["train"].startswith("data/fixture/"), (
        f"{job_file} trains on data that is not in the repository; give it a data.card"
    )
    overrides = search_overrides(job_overrides)
    code, out, err = _run_cli(capsys, "plan", job_file, *overrides, *absent)
    assert (code, err) == (0, "")
    assert out.startswith(format_plan(shipped_plan(REPO / job_file, job_overrides)) + "\n")
    assumed = [line for line in out.splitlines() if line.startswith("assumed (")]
    if absent:
        card = raw["data"]["card"]
        assert len(assumed) == 1 and assumed[0].startswith(ASSUMED), out
        assert assumed[0].endswith(f", from card {card}")
        assert f"{CARDS[card].train_images:,} training images" in assumed[0]
    else:
        assert assumed == []
    assert "\nrun:\n" not in out  # the resolved job only with --show-job


def test_plan_shows_the_resolved_job_after_the_table_with_show_job(capsys):
    code, plain, _ = _run_cli(capsys, "plan", QUICKSTART)
    assert code == 0
    code, out, _ = _run_cli(capsys, "plan", QUICKSTART, "--show-job")
    assert code == 0
    assert out.startswith(plain + "\n")
    assert parse_job(yaml.safe_load(out[len(plain) :])) == load_job(QUICKSTART)


def test_plan_of_the_imagenet_job_names_the_assumed_facts(capsys):
    job_file = "jobs/imagenet-resnet50-etpp.yaml"
    code, out, _ = _run_cli(capsys, "plan", job_file, *data_absent_overrides(read_yaml(job_file)))
    assert code == 0
    assert out.splitlines()[-1] == (
        f"{ASSUMED}1,281,167 training images, 50,000 validation images, 1000 classes, "
        "3 channels, mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225], "
        "from card imagenet-1k"
    )


def test_plan_of_absent_data_without_facts_keeps_the_error_and_hints(capsys, tmp_path):
    path = _write_job(tmp_path, {"name": "resnet9"})
    code, out, err = _run_cli(capsys, "plan", str(path), f"data.train={tmp_path / 'none'}")
    assert (code, out) == (EXIT_BAD_INPUT, "")
    (line,) = err.splitlines()
    assert line.startswith(f"{path}: data.train: {tmp_path / 'none'}/metadata.json not found; ")
    assert line.endswith(
        "to plan without the data, set data.card (imagenet-1k, cifar10, "
        "cifar100, fashion-mnist) or data.facts (train_images, num_classes, "
        "channels, image_size_px, mean, std)"
    )


def test_plan_warns_when_the_data_contradicts_the_card(capsys):
    code, out, err = _run_cli(capsys, "plan", QUICKSTART, "data.card=fashion-mnist")
    assert code == 0
    assert err.splitlines() == [
        f"{QUICKSTART}: warning: data.card: fashion-mnist's facts differ from the data, whose "
        "metadata is used: 60,000 training images (data/fixture/fashion-mnist/train holds "
        "4,000); 10,000 validation images (data/fixture/fashion-mnist/test holds 1,000)"
    ]
    assert "4000 training samples" in out and "assumed (" not in out


def test_run_refuses_absent_data_even_with_a_card(capsys, tmp_path):
    code, out, err = _run_cli(
        capsys,
        "run",
        "jobs/imagenet-resnet50-etpp.yaml",
        f"data.train={tmp_path / 'train'}",
        "data.val=null",
        f"run.storage_path={tmp_path}",
    )
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err.splitlines() == [
        f"jobs/imagenet-resnet50-etpp.yaml: data.train: {tmp_path / 'train'}/metadata.json not "
        "found; expected a split folder written by `rayaccel data prepare`; training reads the "
        "data itself (card imagenet-1k stands in for it only in `rayaccel plan` and "
        "`rayaccel validate`)"
    ]
    assert not any(tmp_path.iterdir())


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
