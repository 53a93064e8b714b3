"""Submitting jobs to a real Ray head started with `ray start --head`, as on a cluster.

The head runs in its own temporary directory, on free ports, with `RAY_AUTH_MODE=disabled`
(a `~/.ray/auth_token` left by an earlier `ray.init()` would otherwise switch it to token
mode). It is stopped by killing exactly the processes it started: `ray stop` would kill every
Ray process on the machine, including other test sessions'.

The job's driver runs `rayaccel` from the head's PATH, so the head is started with this
interpreter's bin directory first on PATH; rayaccel is installed there in editable mode.
Real clusters install it through an image or setup_commands (cluster/README.md).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port, parse_submit, read_summary
from ray_heads import RAY_CLI, head_env, stop_head

from rayaccel.submit import connect_job_server, run_submit, submit_job

HEAD_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 240
# The quickstart warms up for one epoch, which a one-epoch run does not allow.
ONE_EPOCH = ["train.epochs=1", "train.schedule.warmup_epochs=0"]


def small_data(small_fixture: tuple[Path, Path]) -> list[str]:
    """Overrides that train and validate on a subset of the fixture: these tests check that a
    submitted job runs and reports, not what it learns (the head is on this machine)."""
    train, test = small_fixture
    return [f"data.train={train}", f"data.val={test}"]


def wait_for_head(process: subprocess.Popen, dashboard_url: str, agent_port: int, log: Path):
    """Waits for the job server and the node's dashboard agent (jobs run through it)."""
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start --head exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"{dashboard_url}/api/version", timeout=1).read()
            socket.create_connection(("127.0.0.1", agent_port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"Ray head not ready after {HEAD_START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def ray_head():
    """A head with 2 CPUs in a temporary directory; yields (dashboard URL, temp dir)."""
    # Short path: Ray's unix socket paths live under it and must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayaccel-head-"))
    dashboard_port, agent_port = free_port(), free_port()
    log = temp_dir / "ray-start.log"
    command = [
        RAY_CLI,
        "start",
        "--head",
        "--block",
        f"--port={free_port()}",
        "--num-cpus",
        "2",
        "--include-dashboard",
        "true",
        "--dashboard-port",
        str(dashboard_port),
        # Defaults are fixed ports that another local Ray instance may already hold.
        "--dashboard-agent-listen-port",
        str(agent_port),
        "--ray-client-server-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--temp-dir",
        str(temp_dir / "ray"),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=head_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        wait_for_head(process, dashboard_url, agent_port, log)
        yield dashboard_url, temp_dir
    finally:
        stop_head(process.pid)
        process.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def read_run_folder(folder: Path) -> tuple[dict, list[str]]:
    summary = read_summary(folder)
    metrics = (folder / "metrics.jsonl").read_text().splitlines()
    return summary, metrics


@pytest.mark.ray
@pytest.mark.timeout(HEAD_START_TIMEOUT_S + JOB_TIMEOUT_S + 60)
def test_ray_job_submit_runs_the_quickstart(ray_head, small_fixture):
    dashboard_url, temp_dir = ray_head
    runs = temp_dir / "runs"
    submission_id = f"rayaccel-cli-{int(time.time())}"
    result = subprocess.run(
        [
            RAY_CLI,
            "job",
            "submit",
            "--address",
            dashboard_url,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(REPO_ROOT),
            "--",
            "rayaccel",
            "run",
            "jobs/quickstart.yaml",
            *ONE_EPOCH,
            *small_data(small_fixture),
            f"run.storage_path={runs}",
            "run.name=submitted",
        ],
        env=head_env(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    # The Ray CLI colours its words; compare the plain text.
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode == 0, output
    assert f"Job '{submission_id}' succeeded" in output, output

    assert connect_job_server(dashboard_url).get_job_status(submission_id) == "SUCCEEDED"
    summary, metrics = read_run_folder(runs / "submitted")
    assert summary["epochs_completed"] == 1
    assert len(metrics) == 1


@pytest.mark.ray
@pytest.mark.timeout(HEAD_START_TIMEOUT_S + JOB_TIMEOUT_S + 60)
def test_submit_job_streams_logs_and_returns_the_status(ray_head, small_fixture):
    dashboard_url, temp_dir = ray_head
    runs = temp_dir / "runs"
    lines: list[str] = []
    status = submit_job(
        REPO_ROOT / "jobs" / "quickstart.yaml",
        address=dashboard_url,
        overrides=ONE_EPOCH
        + small_data(small_fixture)
        + [f"run.storage_path={runs}", "run.name=api"],
        working_dir=REPO_ROOT,
        stream=lines.append,
    )
    log = "\n".join(lines)
    assert status == "SUCCEEDED", log
    # The job's driver prints rayaccel's console: the epoch table and the result block.
    assert re.search(r"^\s*1/1\s+0\s+28\s", log, re.MULTILINE), log
    assert "finished: 1/1 epochs" in log and "TrainingReport(" not in log, log
    assert "SUCCEEDED" in lines[-1]
    summary, metrics = read_run_folder(runs / "api")
    assert summary["epochs_completed"] == 1
    assert len(metrics) == 1


@pytest.mark.ray
@pytest.mark.timeout(HEAD_START_TIMEOUT_S + 120)
def test_run_submit_exits_1_when_the_job_fails(ray_head, capsys):
    """Local validation skips data paths; the cluster-side `rayaccel run` rejects this one."""
    dashboard_url, _ = ray_head
    args = parse_submit(
        [
            str(REPO_ROOT / "jobs" / "quickstart.yaml"),
            "data.train=data/no-such-dataset",
            "--address",
            dashboard_url,
            "--working-dir",
            str(REPO_ROOT),
        ]
    )
    assert run_submit(args) == 1
    out = capsys.readouterr().out
    assert "data.train: data/no-such-dataset" in out
    assert "FAILED: Job entrypoint command failed with exit code 2" in out.splitlines()[-1]
