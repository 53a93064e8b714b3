"""`rayaccel submit`'s arguments and the failures it reports before or instead of contacting a
cluster (no Ray head; submitting to a real one is `tests/integration/test_submit.py`)."""

from __future__ import annotations

import os

from helpers import REPO_ROOT, free_port, parse_submit

from rayaccel.submit import run_submit


def test_submit_arguments_in_the_documented_order():
    args = parse_submit(["jobs/quickstart.yaml", "train.epochs=1", "--address", "http://h:8265"])
    assert (args.job, args.overrides, args.address) == (
        "jobs/quickstart.yaml",
        ["train.epochs=1"],
        "http://h:8265",
    )
    assert (args.working_dir, args.no_wait, args.runtime_env_json) == (".", False, None)


def test_submit_rejects_a_bad_override_before_contacting_the_cluster(capsys):
    # Nothing listens on the address: the job must fail validation first.
    args = parse_submit(
        [
            str(REPO_ROOT / "jobs" / "quickstart.yaml"),
            "train.epochs=-1",
            "--address",
            f"http://127.0.0.1:{free_port()}",
            "--working-dir",
            str(REPO_ROOT),
        ]
    )
    assert run_submit(args) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err
    assert "Traceback" not in err


def test_submit_reports_an_unreachable_address(capsys):
    args = parse_submit(
        [
            str(REPO_ROOT / "jobs" / "quickstart.yaml"),
            "--address",
            f"http://127.0.0.1:{free_port()}",
            "--working-dir",
            str(REPO_ROOT),
        ]
    )
    assert run_submit(args) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray job server" in err
    assert "Traceback" not in err


def test_submit_requires_the_job_inside_the_working_dir(capsys, tmp_path):
    args = parse_submit(
        [
            str(REPO_ROOT / "jobs" / "quickstart.yaml"),
            "--address",
            "http://127.0.0.1:1",
            "--working-dir",
            str(tmp_path),
        ]
    )
    assert run_submit(args) == 2
    assert "must be inside the uploaded working directory" in capsys.readouterr().err


def test_explicit_address_wins_over_ray_address(monkeypatch, capsys):
    """Ray's client lets $RAY_ADDRESS override an explicit address; rayaccel must not."""
    explicit = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    args = parse_submit(
        [
            str(REPO_ROOT / "jobs" / "quickstart.yaml"),
            "--address",
            explicit,
            "--working-dir",
            str(REPO_ROOT),
        ]
    )
    assert run_submit(args) == 2
    err = capsys.readouterr().err
    assert f"--address {explicit}: cannot reach a Ray job server" in err
    assert os.environ["RAY_ADDRESS"] == "http://127.0.0.1:1"  # restored after connecting
