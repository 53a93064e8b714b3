"""The `infobatch:` section of a job and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from rayaccel.core.schema import Strict

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class InfoBatchSection(Strict):
    """InfoBatch unbiased dynamic data pruning (METHODS.md section 2).

    Each epoch, samples whose latest training loss is below the mean are dropped with
    probability `prune_ratio` right after Ray Data reads them (never decoded or trained on);
    the surviving ones get loss weight 1/(1 - prune_ratio). Epochs from
    `ceil(delta * epochs)` on train on all data with weight 1 (annealing).
    """

    prune_ratio: float = Field(0.5, ge=0, lt=1)
    delta: float = Field(0.875, gt=0, le=1)


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
