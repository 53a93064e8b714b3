"""What every benchmark script shares: the dataset, Ray start-up, running a job, the table.

Scripts import it as `common` (Python puts a script's own folder first on `sys.path`).
Every run goes through `rayaccel.train.runner.run_job`, the code path of `rayaccel run`, and
every table comes from `rayaccel.report`, so a benchmark and `rayaccel report` on its run
folders print the same numbers.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "data" / "fixture" / "fashion-mnist"
# Debian's dataset-fashion-mnist package installs the IDX files here.
SOURCE = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path.home() / ".cache" / "rayaccel" / "fashion-mnist"


def dataset_dir(smoke: bool) -> Path:
    """The prepared Fashion-MNIST folder (with train/ and test/) to benchmark on.

    The full dataset when Debian's package is installed (prepared once with rayaccel's own
    `prepare_dataset` into ~/.cache/rayaccel/fashion-mnist), else the bundled 4,000-image
    fixture; smoke runs always use the fixture.
    """
    if smoke or not SOURCE.is_dir():
        return FIXTURE
    if not (CACHE / "train" / "metadata.json").is_file():
        from rayaccel.data.prepare import prepare_dataset

        print(f"[bench] preparing {SOURCE} -> {CACHE}", flush=True)
        prepare_dataset("fashion-mnist", SOURCE, CACHE, overwrite=True)
    return CACHE


def start_ray(num_cpus: int | None = 2, num_gpus: int | None = None) -> None:
    """Joins `RAY_ADDRESS` (or an already started instance), else starts a private local one.

    `None` lets Ray detect the CPUs (GPUs); `num_gpus` is for machines where it may not.

    A private instance keeps the benchmark off other users' clusters on a shared machine;
    `RAY_ADDRESS` is exported because Ray Train's helpers look the cluster up by address and
    refuse to pick one when several instances run on the machine.
    """
    import ray

    from rayaccel.data.cluster import connect_ray

    if os.environ.get("RAY_ADDRESS"):
        connect_ray()
    else:
        gpus = {} if num_gpus is None else {"num_gpus": num_gpus}
        connect_ray(address="local", num_cpus=num_cpus, **gpus)
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def job_on_data(job_path: Path, data: Path, storage: Path) -> dict:
    """A shipped job as a raw mapping, pointed at `data` and writing its runs under `storage`."""
    from rayaccel.config import read_yaml

    raw = read_yaml(job_path)
    raw["data"].update(train=str(data / "train"), val=str(data / "test"))
    raw["run"].update(storage_path=str(storage))
    return raw


def run(raw: dict, *, source: str) -> dict:
    """Validates and trains a raw job as `rayaccel run` does; returns its summary."""
    from rayaccel.config import parse_job, resolve_data
    from rayaccel.train.runner import run_job

    job = resolve_data(parse_job(raw, source=source), source=source)
    return run_job(job)


def comparison(run_folders: dict[str, str]) -> str:
    """The markdown table of `rayaccel report` over the runs; the first is the baseline."""
    from rayaccel.report import comparison_table, load_run

    return comparison_table([load_run(f, label=label) for label, f in run_folders.items()])


def machine() -> str:
    """One line naming the hardware and date a table was measured on."""
    import torch

    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores, "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def provenance(script: str, argv: list[str] | None) -> dict:
    """What a results record needs to be reproduced: command, commit, machine, versions, date.

    `script` is the benchmark's file (its `__file__`); `argv` the arguments its `main` parsed
    (None: the command line's). The commit carries `+dirty` when the work tree had changes.
    """
    import shlex
    import subprocess
    import sys
    from importlib import metadata

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    versions = {"python": platform.python_version()}
    for package in ("rayaccel", "ray", "torch", "torchvision", "timm", "pyarrow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    script_path = Path(script).resolve().relative_to(REPO_ROOT)
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["python", str(script_path), *args]),
        "commit": commit,
        "machine": machine(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_record(path: Path, results: dict, *, script: str, argv: list[str] | None) -> None:
    """Writes a benchmark's JSON record: its provenance first, then its results.

    Records under benchmarks/results/ are rendered into docs/results.md by
    `python benchmarks/results_page.py`.
    """

    record = {**provenance(script, argv), **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def metrics_rows(folder: Path) -> list[dict]:
    """A local run folder's metrics.jsonl rows, one per epoch."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def time_to_target(rows: list[dict], started_unix_s: float | None, target: float) -> dict:
    """The first evaluated epoch at or above `target` (a 1-based count) and the wall time from
    `started_unix_s` until its report; `rows` are the run's metrics.jsonl rows."""
    for row in rows:
        if row.get("val_acc") is not None and row["val_acc"] >= target:
            wall_s = None if started_unix_s is None else row["time_unix_s"] - started_unix_s
            return {"epochs": row["epoch"] + 1, "wall_s": wall_s}
    return {"epochs": None, "wall_s": None}
