"""The `infobatch:` section of a job and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rayaccel.core.schema import Strict

# The release's bound: kept samples weigh at most 1 / (1 - 0.9) = 10.
MAX_PRUNE_RATIO = 0.9

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.core.records import EpochRecord
    from rayaccel.plan import Plan


class InfoBatchSection(Strict):
    """InfoBatch unbiased dynamic data pruning.

    Each epoch, a share `prune_ratio` of the samples whose latest training loss is below the
    mean is dropped right after Ray Data reads them (never decoded or trained on); the kept
    ones get loss weight 1/(1 - prune_ratio). `selection: exact` (the release's rule) drops
    exactly that share, a random subset; `bernoulli` drops each such sample independently
    with that probability. Epochs from `floor(delta * epochs)` on train on all data with
    weight 1 (annealing). The ratio is capped at 0.9 (weight 10), as in the release.
    """

    prune_ratio: float = Field(0.5, ge=0, le=MAX_PRUNE_RATIO)
    """Share of the below-mean-loss samples dropped each epoch (at most 0.9)."""
    delta: float = Field(0.875, gt=0, le=1)
    """From epoch floor(delta * epochs) on, all data with weight 1 (annealing)."""
    selection: Literal["exact", "bernoulli"] = "exact"
    """exact: drop exactly that share (the release's rule); bernoulli: each such sample
    independently."""


def infobatch_problems(job: JobConfig) -> list[str]:
    if job.infobatch is not None and job.data.mode == "device":
        return ["infobatch: prunes rows in the Ray Data pipeline; use data.mode: ray with it"]
    return []


@dataclass(frozen=True)
class InfoBatchSettings:
    """Workers need only the run's score board (a driver-side actor, `WorkerContext.resources`):
    the prune ratio and the annealing are the board's."""


def worker_settings(job: JobConfig, plan: Plan) -> InfoBatchSettings | None:
    return InfoBatchSettings() if job.infobatch is not None else None


def run_summary(records: list[EpochRecord], plan: Plan) -> dict[str, float]:
    """What pruning saved, for `summary.json`: fresh samples trained against every epoch on
    the whole dataset, and the time the score bookkeeping took. Empty for a run without
    InfoBatch (no epoch carries its metrics)."""
    if not any(r.metric("infobatch/kept_samples") is not None for r in records):
        return {}
    fresh = records[-1].fresh_images_seen
    return {
        "fresh_images_seen": fresh,
        "fresh_images_vs_full": fresh / max(plan.train_samples * len(records), 1),
        "infobatch_bookkeeping_s": sum(r.metric("infobatch/bookkeeping_s", 0.0) for r in records),
    }
