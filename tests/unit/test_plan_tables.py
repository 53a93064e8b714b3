"""Every shipped job and search file plans the same table as recorded.

The tables under `tests/data/plan_tables/` were written by `rayaccel plan`'s own formatter
(and the plan's full contents as JSON) before the code was restructured around method
packages; a change to how a job is planned
must show up here as a changed table, on purpose (regenerate them with
`RAYACCEL_WRITE_PLAN_TABLES=1 pytest tests/test_plan_tables.py`).

Jobs whose data is not in the repository (ImageNet, full Fashion-MNIST, CIFAR-10) are
planned from the facts their datasets' metadata would give (size, channels, classes,
training images), so the tables need no data on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from rayaccel.config import apply_overrides, parse_job, read_yaml, resolve_data
from rayaccel.data.metadata import read_meta
from rayaccel.plan import format_plan, make_plan
from rayaccel.tune.spec import load_search

TABLES = REPO_ROOT / "tests" / "data" / "plan_tables"

# What `rayaccel data prepare` would record for the data sets the jobs point at.
_DATASETS = {
    "data/fashion-mnist/": dict(channels=1, num_classes=10, train_samples=60_000, size_px=28),
    "data/cifar10/": dict(channels=3, num_classes=10, train_samples=50_000, size_px=32),
    "/data/imagenet": dict(channels=3, num_classes=1000, train_samples=1_281_167, size_px=None),
}


def _planned(job_path: Path, overrides: dict | None = None) -> str:
    raw = read_yaml(job_path)
    if overrides:
        raw = apply_overrides(raw, [f"{key}={value}" for key, value in overrides.items()])
    job = parse_job(raw, source=str(job_path))
    facts = next((f for prefix, f in _DATASETS.items() if job.data.train.startswith(prefix)), None)
    if facts is None:  # bundled fixture data: plan from its real metadata
        cwd = os.getcwd()
        os.chdir(REPO_ROOT)
        try:
            job = resolve_data(job, source=str(job_path))
            train_samples = read_meta(job.data.train).count
        finally:
            os.chdir(cwd)
    else:
        filled = {"channels": facts["channels"], "num_classes": facts["num_classes"]}
        filled["task"] = "classification"
        filled["mean"] = [0.5] * facts["channels"]
        filled["std"] = [0.25] * facts["channels"]
        if job.data.image_size_px is None:
            filled["image_size_px"] = facts["size_px"]
        filled = {k: v for k, v in filled.items() if getattr(job.data, k) is None}
        job = job.model_copy(update={"data": job.data.model_copy(update=filled)})
        train_samples = facts["train_samples"]
    plan = make_plan(job, train_samples=train_samples)
    # The table a user reads, then every planned number the workers get.
    return f"{format_plan(plan)}\n\n{json.dumps(plan.to_dict(), indent=1, sort_keys=True)}\n"


def _cases() -> list[tuple[str, Path, dict | None]]:
    cases = [(path.stem, path, None) for path in sorted((REPO_ROOT / "jobs").glob("*.yaml"))]
    for path in sorted((REPO_ROOT / "searches").glob("*.yaml")):
        search = load_search(path)
        cases.append((f"search-{path.stem}", REPO_ROOT / search.job, dict(search.job_overrides)))
    return cases


@pytest.mark.parametrize(("name", "job_path", "overrides"), _cases(), ids=lambda c: str(c))
def test_shipped_file_plans_the_recorded_table(name, job_path, overrides):
    table = _planned(job_path, overrides)
    recorded = TABLES / f"{name}.txt"
    if os.environ.get("RAYACCEL_WRITE_PLAN_TABLES") == "1":
        recorded.write_text(table)
    assert recorded.is_file(), (
        f"no recorded table {recorded}; write it with RAYACCEL_WRITE_PLAN_TABLES=1"
    )
    assert table == recorded.read_text()


def test_every_shipped_file_has_a_recorded_table():
    names = {name for name, _, _ in _cases()}
    assert {path.stem for path in TABLES.glob("*.txt")} == names
