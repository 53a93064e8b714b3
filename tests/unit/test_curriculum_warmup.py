"""Every shipped curriculum job warms up from 0 and ends its warm-up where its plan says.

Curriculum plans run the LR schedule on the fraction of the run's compute, so a warm-up that
started at a fixed offset of progress (as it once did: 0.01 "epoch", i.e. 1% of the whole
run) began far above zero; the EfficientTrain++ release's first step is at exactly 0.
"""

from __future__ import annotations

import pytest
from helpers import REPO_ROOT, shipped_plan

from rayaccel.plan import format_plan

CURRICULUM_JOBS = sorted(
    path
    for path in (REPO_ROOT / "jobs").glob("*.yaml")
    if shipped_plan(path).schedule_progress == "compute"
)


def test_the_shipped_curriculum_jobs_are_found():
    names = {path.stem for path in CURRICULUM_JOBS}
    assert {"imagenet-resnet50-etpp", "fashion-mnist-etpp-device", "quickstart-etpp"} <= names


def _steps(plan):
    """(epoch, step, steps in epoch) of every planned step, in order."""
    for stage in plan.stages:
        for epoch in range(stage.first_epoch, stage.end_epoch):
            for step in range(stage.steps_per_epoch):
                yield epoch, step, stage.steps_per_epoch


@pytest.mark.parametrize("job_path", CURRICULUM_JOBS, ids=lambda p: p.stem)
def test_warmup_starts_at_zero_and_ends_where_the_plan_says(job_path):
    plan = shipped_plan(job_path)
    warmup_fraction = plan.schedule["warmup_epochs"]
    assert warmup_fraction > 0
    steps = list(_steps(plan))
    fractions = [plan.compute_fraction_at(*s) for s in steps]
    multipliers = [plan.lr_at(*s) / plan.stage_of(s[0]).peak_lr for s in steps]
    # The first step: exactly 0 (at most one warm-up increment above it is what the release
    # allows; rayaccel matches it).
    assert multipliers[0] == 0.0
    # Linear in compute: the second step is one increment above the first.
    assert multipliers[1] == pytest.approx(fractions[1] / warmup_fraction)
    # Every step before the warm-up's end is below the peak and rising, the first step at or
    # after it is at the peak (the cosine's start).
    end = next(i for i, f in enumerate(fractions) if f >= warmup_fraction)
    assert all(m < 1 for m in multipliers[:end])
    assert all(b > a for a, b in zip(multipliers[: end - 1], multipliers[1:end], strict=True))
    assert multipliers[end] == pytest.approx(1.0, abs=1e-3)
    # `rayaccel plan` shows the first epoch's LR starting at 0.
    first_row = next(line for line in format_plan(plan).splitlines() if line.split()[:1] == ["0"])
    assert first_row.split()[plan_columns(plan).index("lr_start")] in {"0", "0.0000", "0.000"}


def plan_columns(plan) -> list[str]:
    header = next(line for line in format_plan(plan).splitlines() if "lr_start" in line)
    return header.split()
