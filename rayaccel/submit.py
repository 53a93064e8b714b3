"""`rayaccel submit`: run a job on a remote Ray cluster through Ray's job server.

A convenience over `ray job submit --working-dir . -- rayaccel run JOB k=v ...`: the job is
validated here first (so a typo fails in a second, not after an upload), the working
directory is uploaded without run folders and caches, the driver's logs are streamed, and
the command exits with the job's status. The cluster must already have rayaccel installed
(an image built from `cluster/Dockerfile` or the launcher's `setup_commands`, see
`cluster/README.md`); the uploaded directory only supplies the job file and local data.

Token authentication: when the cluster requires a token, set `RAY_AUTH_MODE=token` (the token
is read from `~/.ray/auth_token`) or `RAY_AUTH_TOKEN` / `RAY_AUTH_TOKEN_PATH` before running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rayaccel.config import ConfigError, load_job

EXIT_SUCCEEDED = 0
EXIT_JOB_NOT_SUCCEEDED = 1
EXIT_BAD_INPUT = 2

# gitignore-style patterns relative to the working directory: run folders can hold
# gigabytes of checkpoints and none of these are needed to run a job.
# How long to retry while a freshly started head's job agent comes up.
AGENT_WAIT_S = 30.0
UPLOAD_EXCLUDES = ["/runs/", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
STATUS_POLL_S = 1.0


class SubmitError(RuntimeError):
    """The job could not be submitted; the message says why and what to change."""


def submit_job(
    job_path: str | Path,
    *,
    address: str | None,
    overrides: Sequence[str] = (),
    working_dir: str | Path = ".",
    runtime_env: dict | None = None,
    wait: bool = True,
    stream: Callable[[str], None] = print,
) -> str:
    """Submits `rayaccel run JOB overrides...` to a Ray cluster's job server.

    Args:
        job_path: The job YAML; it must lie inside `working_dir`, which is uploaded.
        address: The job server, e.g. `http://127.0.0.1:8265`. None means Ray's own
            default: `$RAY_API_SERVER_ADDRESS`, then `$RAY_ADDRESS`.
        overrides: `section.key=value` strings, passed on to `rayaccel run`.
        working_dir: The directory uploaded as the job's working directory.
        runtime_env: Extra runtime_env fields (`pip`, `env_vars`, ...); its `excludes` are
            added to rayaccel's own.
        wait: Stream the logs and wait for the job to end; False returns right after
            submission.
        stream: Receives the driver's log lines and rayaccel's progress messages.

    Returns:
        The job's status: SUCCEEDED, FAILED or STOPPED when waiting, else the status right
        after submission (usually PENDING).

    Raises:
        ConfigError: The job or an override is invalid.
        SubmitError: The cluster is unreachable, rejected the request, or the job file is
            outside the working directory.
    """
    # Imported here: `rayaccel --help` and the other commands should not pay for Ray.
    import aiohttp
    from ray.exceptions import AuthenticationError

    working_dir = Path(working_dir).resolve()
    if not working_dir.is_dir():
        raise SubmitError(f"--working-dir {working_dir}: no such directory")
    job_file = Path(job_path).resolve()
    if not job_file.is_relative_to(working_dir):
        raise SubmitError(
            f"{job_path}: the job file must be inside the uploaded working directory "
            f"{working_dir}; move it there or pass --working-dir"
        )
    job = load_job(job_path, list(overrides), check_paths=False)
    storage = job.run.storage_path
    if "://" not in storage and not os.path.isabs(storage):
        stream(
            f"[rayaccel] note: run.storage_path {storage!r} is relative, so the run folder is "
            "written inside the job's temporary working directory on the cluster; pass "
            "run.storage_path=s3://bucket/runs (or any shared URI) to keep it"
        )

    job_arg = job_file.relative_to(working_dir).as_posix()
    entrypoint = shlex.join(["rayaccel", "run", job_arg, *overrides])
    client = connect_job_server(address)
    env = dict(runtime_env or {})
    env["excludes"] = UPLOAD_EXCLUDES + list(env.get("excludes", []))
    env["working_dir"] = str(working_dir)
    deadline_s = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env)
            break
        except AuthenticationError as err:
            raise SubmitError(_token_hint(client.get_address(), err)) from None
        except (RuntimeError, ValueError, OSError) as err:
            # A head that has just started answers 500 until its job agent is up.
            if "No available agent" in str(err) and time.monotonic() < deadline_s:
                time.sleep(1.0)
                continue
            raise SubmitError(f"submitting to {client.get_address()} failed: {err}") from None
    stream(f"[rayaccel] submitted {job_id} to {client.get_address()}: {entrypoint}")
    if not wait:
        stream(
            f"[rayaccel] follow it with: ray job logs --follow {job_id} "
            f"--address {client.get_address()}"
        )
        return client.get_job_status(job_id).value

    try:
        asyncio.run(_tail_logs(client, job_id, stream))
    except (RuntimeError, OSError, aiohttp.ClientError) as err:
        stream(f"[rayaccel] log stream interrupted ({err}); waiting for the job to end")
    try:
        status = _wait_for_terminal_status(client, job_id)
        info = client.get_job_info(job_id)
    except (RuntimeError, OSError) as err:
        raise SubmitError(
            f"lost contact with {client.get_address()} while {job_id} was running: {err}; "
            f"check it with `ray job status {job_id} --address {client.get_address()}`"
        ) from None
    # Ray appends the driver's last logs to the message; they were streamed already.
    reason = (info.message or "").split("\n", 1)[0] if status != "SUCCEEDED" else ""
    message = f": {reason}" if reason else ""
    stream(f"[rayaccel] job {job_id} {status}{message}")
    return status


def connect_job_server(address: str | None):
    """A JobSubmissionClient for `address`, or for Ray's environment variables when None.

    Ray lets $RAY_API_SERVER_ADDRESS and $RAY_ADDRESS override even an explicit address; an
    address the user typed must win, so those variables are hidden while connecting.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    where = address or "$RAY_API_SERVER_ADDRESS / $RAY_ADDRESS"
    hidden = {}
    if address is not None:
        hidden = {k: os.environ.pop(k) for k in _ADDRESS_VARIABLES if k in os.environ}
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise SubmitError(_token_hint(where, err)) from None
    except (ConnectionError, RuntimeError, ValueError, OSError) as err:
        raise SubmitError(
            f"--address {where}: cannot reach a Ray job server ({err}); pass the dashboard "
            "URL, e.g. http://127.0.0.1:8265 after `ray dashboard cluster/aws.yaml`"
        ) from None
    finally:
        os.environ.update(hidden)


_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def _token_hint(where: str, err: Exception) -> str:
    return (
        f"{where}: the cluster requires a token ({err}); set RAY_AUTH_MODE=token with the "
        "token in ~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
    )


async def _tail_logs(client, job_id: str, stream: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        stream(chunk.rstrip("\n"))


def _wait_for_terminal_status(client, job_id: str) -> str:
    # The log stream can close a moment before the job server records the final status.
    while (status := client.get_job_status(job_id).value) not in TERMINAL_STATUSES:
        time.sleep(STATUS_POLL_S)
    return status


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `JOB [section.key=value ...] --address URL [--no-wait] ...` to a parser.

    With this parser alone, overrides go right after JOB: argparse cannot collect
    positional overrides that follow an option (`rayaccel.cli` moves them for the user).
    """
    parser.add_argument("job", help="job YAML file, inside the working directory")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="override job fields"
    )
    parser.add_argument(
        "--address",
        help="Ray job server (dashboard) URL, e.g. http://127.0.0.1:8265; "
        "defaults to $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS like `ray job submit`",
    )
    parser.add_argument(
        "--working-dir", default=".", help="directory uploaded with the job (default: .)"
    )
    parser.add_argument(
        "--runtime-env-json",
        metavar="JSON",
        help='extra runtime_env fields, e.g. \'{"env_vars": {"AWS_REGION": "us-west-2"}}\'',
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return after submission instead of streaming logs until the job ends",
    )


def run_submit(args: argparse.Namespace) -> int:
    """Runs `rayaccel submit`: 0 when the job succeeded (or was submitted with --no-wait),
    1 when it failed or was stopped, 2 for bad input or an unreachable cluster."""
    if not (
        args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    ):
        print(
            "rayaccel submit: no cluster given; pass --address http://HEAD:8265 or set RAY_ADDRESS",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    runtime_env = None
    if args.runtime_env_json:
        try:
            runtime_env = json.loads(args.runtime_env_json)
        except json.JSONDecodeError as err:
            print(f"rayaccel submit: --runtime-env-json: invalid JSON: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not isinstance(runtime_env, dict):
            print("rayaccel submit: --runtime-env-json must be a JSON object", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        status = submit_job(
            args.job,
            address=args.address,
            overrides=args.overrides,
            working_dir=args.working_dir,
            runtime_env=runtime_env,
            wait=not args.no_wait,
            stream=lambda text: print(text, flush=True),
        )
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except SubmitError as err:
        print(f"rayaccel submit: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "rayaccel submit: stopped following; the job keeps running on the cluster "
            "(`ray job stop JOB_ID --address ...` stops it)",
            file=sys.stderr,
        )
        return EXIT_JOB_NOT_SUCCEEDED
    if args.no_wait or status == "SUCCEEDED":
        return EXIT_SUCCEEDED
    return EXIT_JOB_NOT_SUCCEEDED
