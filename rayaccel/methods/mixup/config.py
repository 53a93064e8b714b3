"""The `mixup:` section of a job, its checks and what a worker gets of it (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from rayaccel.core.compute import pixel_compute
from rayaccel.core.schema import Strict, number

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class MixupSection(Strict):
    """Mixup and CutMix of every training batch on the worker, with timm's `Mixup`.

    The arguments are `timm.data.Mixup`'s, with its defaults: each batch (`mode: batch`), each
    pair of samples (`pair`) or each sample (`elem`) is mixed with probability `prob`; when
    both alphas are positive, CutMix is used with probability `switch_prob`, else mixup.
    Lambda is drawn from Beta(alpha, alpha); `cutmix_minmax: [min, max]` draws the box sides
    as fractions of the image instead (timm then fixes the CutMix alpha at 1, so
    `cutmix_alpha` must be left out). `correct_lam` sets lambda to the pasted box's true
    area share where the image border clips it. Sample i is mixed with sample N-1-i of its
    worker's batch, which timm requires to be even. The targets are `train.label_smoothing`
    smoothed one-hot labels mixed with the same lambda; the loss does not smooth them again.
    From `off_epoch` equivalent full-resolution epochs of compute on (timm's
    `--mixup-off-epoch`, here counted as the plan's compute, so a curriculum's cheap
    low-resolution epochs count for less), batches are no longer mixed.
    """

    mixup_alpha: float = Field(1.0, ge=0, le=100)
    """Beta(alpha, alpha) of mixup's lambda; 0: no mixup."""
    cutmix_alpha: float = Field(0.0, ge=0, le=100)
    """Beta(alpha, alpha) of CutMix's lambda; 0: no CutMix."""
    cutmix_minmax: tuple[float, float] | None = None
    """[min, max] CutMix box sides as fractions of the image (instead of cutmix_alpha)."""
    prob: float = Field(1.0, ge=0, le=1)
    """Probability that a batch (pair, sample) is mixed."""
    switch_prob: float = Field(0.5, ge=0, le=1)
    """With both alphas > 0: probability of CutMix instead of mixup."""
    mode: Literal["batch", "pair", "elem"] = "batch"
    """Mix per batch, per pair of samples or per sample (elem)."""
    correct_lam: bool = True
    """Lambda is the pasted box's true area where the image border clips it."""
    off_epoch: float | None = Field(None, gt=0)
    """Stop mixing after this many equivalent full-resolution epochs of compute; null: never."""

    @field_validator("cutmix_minmax")
    @classmethod
    def _box_range(cls, minmax: tuple[float, float] | None) -> tuple[float, float] | None:
        if minmax is not None and not 0 < minmax[0] < minmax[1] <= 1:
            raise ValueError(
                f"must be [min, max] fractions of the image side with 0 < min < max <= 1, "
                f"got {list(minmax)}"
            )
        return minmax

    @model_validator(mode="after")
    def _something_to_mix(self) -> MixupSection:
        if self.cutmix_minmax is not None and "cutmix_alpha" in self.model_fields_set:
            raise ValueError(
                "cutmix_alpha: not used with cutmix_minmax (timm draws the box sides from that "
                "range and fixes the CutMix alpha at 1); remove one of them"
            )
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0 and self.cutmix_minmax is None:
            raise ValueError(
                "mixup_alpha and cutmix_alpha are both 0, so nothing is mixed; set one > 0 "
                "(DeiT's recipe: mixup_alpha 0.8, cutmix_alpha 1.0) or remove the section"
            )
        return self


def mixup_problems(job: JobConfig) -> list[str]:
    """What the job alone shows cannot run: an odd per-worker batch at a world size the job
    allows, or an off switch past the run's end. Stage batches that the Early-Large-Batch
    rule derives are checked on the plan (`plan_problems`)."""
    section = job.mixup
    if section is None:
        return []
    problems = []
    scaling = job.scaling
    batches = {"train.global_batch_size": job.train.global_batch_size}
    # The curricula are read by their fields (a method package imports no other method).
    for i, stage in enumerate(getattr(job.curriculum, "stages", None) or []):
        if getattr(stage, "global_batch_size", None) is not None:
            batches[f"curriculum.stages.{i}.global_batch_size"] = stage.global_batch_size
    groups = range(scaling.min_workers, scaling.max_workers + 1)
    for where, batch in batches.items():
        for workers in groups:
            if batch % workers == 0 and (batch // workers) % 2:
                problems.append(_odd_batch_line(where, batch, workers, groups))
                break
    length_epochs, unit = job.train.epochs, "train.epochs"
    budget_epochs = getattr(job.curriculum, "budget_epochs", None)
    if budget_epochs is not None:
        length_epochs, unit = budget_epochs, "curriculum.budget_epochs"
    if section.off_epoch is not None and section.off_epoch >= length_epochs:
        problems.append(
            f"mixup.off_epoch: must be < {unit}={number(length_epochs)} (the run's length in "
            f"equivalent full-resolution epochs) to switch mixing off, got "
            f"{number(section.off_epoch)}; remove it to mix until the end"
        )
    return problems


def _odd_batch_line(where: str, batch: int, workers: int, groups: range, fix: str = "") -> str:
    """The problem line of an odd per-worker batch, with the multiple that is even per worker
    at every group size in `groups`; `fix` (given the multiple) says how to get one."""
    multiple = math.lcm(*(2 * size for size in groups))
    elastic = " (even per worker at every group size scaling.num_workers allows)"
    return (
        f"{where}: mixup pairs each sample with another of its worker's batch and needs an "
        f"even per-worker batch, but {batch} over {workers} workers gives {batch // workers}; "
        f"use a multiple of {multiple}"
        + (elastic if len(groups) > 1 else "")
        + fix.format(multiple=multiple, below=batch - batch % multiple)
    )


def plan_problems(plan: Plan, cutmix_minmax: tuple[float, float] | None) -> list[str]:
    """What a plan with mixup cannot run: a stage whose per-worker batch is odd at a world
    size the plan allows (the Early-Large-Batch rule derives stage batches), or a
    `cutmix_minmax` range that holds no whole-pixel box side at a stage's resolution (timm
    draws the side from `int(px * min)` up to, excluding, `int(px * max)`)."""
    problems = []
    groups = range(plan.min_workers or plan.num_workers, plan.num_workers + 1)
    for stage in plan.stages:
        for workers in groups:
            if stage.global_batch % workers == 0 and (stage.global_batch // workers) % 2:
                where, fix = "train.global_batch_size", ""
                if len(plan.stages) > 1:
                    where = f"curriculum: stage {stage.index}'s batch"
                    fix = (
                        " (e.g. curriculum.max_global_batch: {below} caps the Early-Large-Batch "
                        "batches there, or set the stage's global_batch_size)"
                    )
                problems.append(_odd_batch_line(where, stage.global_batch, workers, groups, fix))
                break
        if cutmix_minmax is not None:
            low, high = (int(stage.resolution_px * f) for f in cutmix_minmax)
            if low >= high:
                problems.append(
                    f"mixup.cutmix_minmax: at stage {stage.index}'s {stage.resolution_px} px "
                    f"it allows no box side (from {low} px up to, excluding, {high} px); "
                    "widen the range"
                )
    return problems


def first_unmixed_epoch(plan: Plan, off_epoch: float | None) -> int | None:
    """The first plan epoch that starts with at least `off_epoch` equivalent full-resolution
    epochs of compute spent (each epoch costs its images times its pixels, against one
    baseline epoch at full resolution); None when mixing never stops."""
    if off_epoch is None:
        return None
    baseline_epoch = pixel_compute(plan.baseline_images_per_epoch, plan.full_resolution_px)
    spent_epochs = 0.0
    for stage in plan.stages:
        epoch_cost = pixel_compute(stage.steps_per_epoch * stage.global_batch, stage.resolution_px)
        for epoch in range(stage.first_epoch, stage.end_epoch):
            # A hair of tolerance: 3 plain epochs sum to 3.0 but rounding must not make it 2.99.
            if spent_epochs >= off_epoch - 1e-9:
                return epoch
            spent_epochs += epoch_cost / baseline_epoch
    return None


@dataclass(frozen=True)
class MixupSettings:
    """`timm.data.Mixup`'s arguments for a run, and the first epoch left unmixed.

    Attributes:
        label_smoothing: The job's `train.label_smoothing`, applied by timm to the one-hot
            targets before they are mixed (the loss then leaves soft targets as they are).
        num_classes: Width of the targets.
        first_unmixed_epoch: Epochs from this one on train on plain labels; None: none.
    """

    mixup_alpha: float
    cutmix_alpha: float
    cutmix_minmax: tuple[float, float] | None
    prob: float
    switch_prob: float
    mode: str
    correct_lam: bool
    label_smoothing: float
    num_classes: int
    first_unmixed_epoch: int | None


def worker_settings(job: JobConfig, plan: Plan) -> MixupSettings | None:
    section = job.mixup
    if section is None:
        return None
    return MixupSettings(
        mixup_alpha=section.mixup_alpha,
        cutmix_alpha=section.cutmix_alpha,
        cutmix_minmax=section.cutmix_minmax,
        prob=section.prob,
        switch_prob=section.switch_prob,
        mode=section.mode,
        correct_lam=section.correct_lam,
        label_smoothing=job.train.label_smoothing,
        num_classes=job.data.num_classes,
        first_unmixed_epoch=first_unmixed_epoch(plan, section.off_epoch),
    )
