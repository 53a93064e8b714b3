"""Every shipped job and search file plans the same table as recorded.

The tables under `tests/data/plan_tables/` were written by `rayaccel plan`'s own formatter
(and the plan's full contents as JSON) before the code was restructured around method
packages, and rewritten only when planning changed on purpose (the warm-up starting at 0):
a change to how a job is planned must show up here as a changed table (regenerate them with
`RAYACCEL_WRITE_PLAN_TABLES=1 pytest tests/unit/test_plan_tables.py`).

Jobs whose data is not in the repository (ImageNet, full Fashion-MNIST, CIFAR-10) are
planned from their own `data.card` with their data folders absent (`helpers.shipped_plan`), as
`rayaccel plan` plans them on a machine without the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import REPO_ROOT, shipped_plan

from rayaccel.plan import format_plan
from rayaccel.tune.spec import load_search

TABLES = REPO_ROOT / "tests" / "data" / "plan_tables"


def _planned(job_path: Path, overrides: dict | None = None) -> str:
    plan = shipped_plan(job_path, overrides)
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
