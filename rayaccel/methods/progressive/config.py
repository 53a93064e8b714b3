"""The `curriculum:` section of progressive learning (preset `progressive`) and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from rayaccel.core.schema import Strict
from rayaccel.methods.progressive.stages import efficientnetv2_preset

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class ProgressiveCurriculum(Strict):
    """EfficientNetV2 progressive learning with adaptive regularisation.

    `num_stages` stages of equal epochs (`train.epochs` in total); stage i trains at
    `S_i = S_0 + (S_e - S_0) * i / (M - 1)` px (a real resize in Ray Data) with every
    regularisation strength moved from its start to its end value the same way. Each pair is
    `[start, end]`. `release` takes the ImageNet settings of EfficientNetV2-S/M/L
    (`rayaccel.methods.progressive.stages.EFFICIENTNETV2_PRESETS`) and any pair given here overrides
    its value; without a release `size_px` is required and the strengths default to 0.
    Evaluation runs at the final stage's size. Dropout and drop path are set on timm models'
    attributes at every stage start; mixup and cutmix run on the worker.
    """

    preset: Literal["progressive"] = "progressive"
    release: Literal["s", "m", "l"] | None = None
    num_stages: int | None = Field(None, ge=1, le=100)
    size_px: tuple[int, int] | None = None
    randaug_magnitude: tuple[float, float] | None = None
    """torchvision's RandAugment (`rayaccel.data.randaugment`, 0 is off) on timm's 0..10 scale; the
    M/L releases' 15 and 20 are clipped.
    """
    mixup_alpha: tuple[float, float] | None = None
    cutmix_alpha: tuple[float, float] | None = None
    dropout_rate: tuple[float, float] | None = None
    drop_path_rate: tuple[float, float] | None = None
    size_multiple_px: int = Field(8, ge=1, le=256)
    """Intermediate sizes are rounded to a multiple of this (8 for tensor cores; 2 or 4 for 28-px
    images).
    """

    @field_validator("size_px")
    @classmethod
    def _sizes(cls, sizes: tuple[int, int] | None) -> tuple[int, int] | None:
        if sizes is not None and not all(8 <= s <= 4096 for s in sizes):
            raise ValueError(f"sizes must be in [8, 4096] px, got {list(sizes)}")
        return sizes

    @field_validator("randaug_magnitude")
    @classmethod
    def _magnitudes(cls, pair: tuple[float, float] | None) -> tuple[float, float] | None:
        if pair is not None and not all(0 <= m <= 10 for m in pair):
            raise ValueError(f"magnitudes must be in [0, 10] (timm's scale), got {list(pair)}")
        return pair

    @field_validator("mixup_alpha", "cutmix_alpha")
    @classmethod
    def _alphas(cls, pair: tuple[float, float] | None) -> tuple[float, float] | None:
        if pair is not None and not all(0 <= a <= 100 for a in pair):
            raise ValueError(f"alphas must be in [0, 100], got {list(pair)}")
        return pair

    @field_validator("dropout_rate", "drop_path_rate")
    @classmethod
    def _rates(cls, pair: tuple[float, float] | None) -> tuple[float, float] | None:
        if pair is not None and not all(0 <= r < 1 for r in pair):
            raise ValueError(f"rates must be in [0, 1), got {list(pair)}")
        return pair

    @model_validator(mode="after")
    def _needs_sizes(self) -> ProgressiveCurriculum:
        if self.release is None and self.size_px is None:
            raise ValueError(
                "size_px: required without a release (e.g. size_px: [16, 28]), "
                "or set release: s | m | l"
            )
        return self


def progressive_settings(curriculum: ProgressiveCurriculum) -> dict[str, Any]:
    """Keyword arguments of `progressive_stages` (all but `total_epochs`) for a curriculum."""
    if curriculum.release is not None:
        settings = efficientnetv2_preset(curriculum.release)
    else:
        settings = {"num_stages": 4}
        for name in ("randaug", "mixup", "cutmix", "dropout", "drop_path"):
            settings[f"{name}_start"] = settings[f"{name}_end"] = 0.0
    if curriculum.num_stages is not None:
        settings["num_stages"] = curriculum.num_stages
    pairs = {
        "size": curriculum.size_px,
        "randaug": curriculum.randaug_magnitude,
        "mixup": curriculum.mixup_alpha,
        "cutmix": curriculum.cutmix_alpha,
        "dropout": curriculum.dropout_rate,
        "drop_path": curriculum.drop_path_rate,
    }
    for name, pair in pairs.items():
        if pair is not None:
            suffix = "_px" if name == "size" else ""
            settings[f"{name}_start{suffix}"], settings[f"{name}_end{suffix}"] = pair
    settings["size_multiple_px"] = curriculum.size_multiple_px
    return settings


def progressive_problems(job: JobConfig) -> list[str]:
    """Settings of a progressive curriculum that cannot run with the rest of the job."""
    if not isinstance(job.curriculum, ProgressiveCurriculum):
        return []
    settings = progressive_settings(job.curriculum)
    problems = []
    if job.train.epochs < settings["num_stages"]:
        problems.append(
            f"train.epochs: a progressive curriculum of {settings['num_stages']} stages needs "
            f"at least one epoch per stage, got {job.train.epochs}"
        )
    regularised = [
        name
        for name in ("dropout", "drop_path")
        if max(settings[f"{name}_start"], settings[f"{name}_end"]) > 0
    ]
    if regularised and job.model.name == "resnet9":
        problems.append(
            f"curriculum.{regularised[0]}_rate: resnet9 has no dropout or drop path to "
            "schedule; use a timm model or set it to [0, 0]"
        )
    if job.model.name != "resnet9" and "drop_path_rate" in job.model.kwargs:
        problems.append(
            "model.kwargs.drop_path_rate: set by curriculum.drop_path_rate with a progressive "
            "curriculum; remove it"
        )
    full_px = job.data.image_size_px
    if full_px is not None and max(settings["size_start_px"], settings["size_end_px"]) > full_px:
        problems.append(
            f"curriculum.size_px: stages resize down from data.image_size_px={full_px}; "
            f"sizes must be <= {full_px}, got "
            f"{[settings['size_start_px'], settings['size_end_px']]}"
        )
    if job.data.mode == "device":
        problems.append(
            "data.mode: device keeps one resolution on the device; a progressive curriculum "
            "resizes in Ray Data (use data.mode: ray)"
        )
    return problems


@dataclass(frozen=True)
class ProgressiveSettings:
    """What a worker needs of progressive learning (each stage's strengths are in the plan).

    Attributes:
        num_classes: Width of the mixed targets.
        label_smoothing: The job's `train.label_smoothing`: mixed targets carry it (the loss
            takes soft targets as they are).
    """

    num_classes: int
    label_smoothing: float


def worker_settings(job: JobConfig, plan: Plan) -> ProgressiveSettings | None:
    if not isinstance(job.curriculum, ProgressiveCurriculum):
        return None
    return ProgressiveSettings(
        num_classes=job.data.num_classes, label_smoothing=job.train.label_smoothing
    )


def model_kwargs(job: JobConfig, plan: Plan) -> dict[str, Any]:
    """timm creates DropPath modules only for a positive `drop_path_rate`: the model is built
    with the largest stage rate, and every stage start sets its own (`set_regularisation`)."""
    if not isinstance(job.curriculum, ProgressiveCurriculum):
        return {}
    deepest = max((s.drop_path_rate for s in plan.stages), default=0.0)
    return {"drop_path_rate": deepest} if deepest > 0 else {}
