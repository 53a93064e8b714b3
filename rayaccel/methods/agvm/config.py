"""The `agvm:` section of a job and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from rayaccel.core.schema import Strict
from rayaccel.methods.agvm.patterns import (
    DEFAULT_CLASSIFIER_PATTERNS,
    DEFAULT_SEGMENTATION_PATTERNS,
    check_patterns,
)

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class AgvmSection(Strict):
    """AGVM: per-component LR multipliers from gradient variance.

    `components` maps a component name to parameter-name patterns (shell-style, `*` also
    matches dots, or `re:` regular expressions); the first component is the reference
    (backbone) and one component holds the catch-all `*`. None means backbone vs head for
    classifiers and backbone / neck / head for segmentation models. Every `interval` steps
    from `start_step` on (counted over the whole run), each worker's batch is split into two
    halves for two backward passes, so per-worker batches must be even.
    """

    components: dict[str, list[str]] | None = None
    """Component name to parameter-name patterns, reference component first; null: backbone vs head
    (classifiers) or backbone / neck / head (segmentation)."""
    start_step: int = Field(50, ge=0)
    """First step (over the whole run) at which the multipliers are measured."""
    interval: int = Field(10, ge=1)
    """Measure every this many steps (two half-batch backward passes each)."""
    momentum: float = Field(0.97, ge=0, lt=1)
    """Weight of the old multiplier in its moving average; 0 uses each new one."""
    clip: tuple[float, float] = (0.5, 10.0)
    """[low, high] bounds of the variance ratio before its square root (low <= 1 <= high)."""
    eps: float = Field(1e-6, gt=0)
    """Added to both gradient distances of the ratio."""

    @field_validator("components")
    @classmethod
    def _patterns(cls, components: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if components is not None:
            check_patterns(components)
        return components

    @field_validator("clip")
    @classmethod
    def _clip(cls, clip: tuple[float, float]) -> tuple[float, float]:
        low, high = clip
        if not 0 < low <= 1 <= high:
            raise ValueError(f"must be [low, high] with 0 < low <= 1 <= high, got {list(clip)}")
        return clip


def agvm_problems(job: JobConfig) -> list[str]:
    """AGVM halves every worker's batch, at every world size an elastic range allows."""
    if job.agvm is None:
        return []
    for workers in range(job.scaling.min_workers, job.scaling.max_workers + 1):
        per_worker = job.train.global_batch_size // workers
        if per_worker % 2:
            return [
                f"agvm: splits each worker's batch into two halves, but "
                f"train.global_batch_size={job.train.global_batch_size} over {workers} "
                f"workers gives {per_worker}; use an even per-worker batch"
            ]
    return []


@dataclass(frozen=True)
class AgvmSettings:
    """`AGVMState` settings and each component's parameter-name patterns."""

    components: dict[str, tuple[str, ...]]
    start_step: int
    interval: int
    momentum: float
    clip: tuple[float, float]
    eps: float


def worker_settings(job: JobConfig, plan: Plan) -> AgvmSettings | None:
    """The job's AGVM section; components default by task (backbone/head, or with a neck)."""
    agvm = job.agvm
    if agvm is None:
        return None
    components = agvm.components
    if components is None:
        segmentation = job.data.task == "segmentation"
        components = DEFAULT_SEGMENTATION_PATTERNS if segmentation else DEFAULT_CLASSIFIER_PATTERNS
    return AgvmSettings(
        components={name: tuple(patterns) for name, patterns in components.items()},
        start_step=agvm.start_step,
        interval=agvm.interval,
        momentum=agvm.momentum,
        clip=tuple(agvm.clip),
        eps=agvm.eps,
    )
