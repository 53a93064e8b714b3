"""The `curriculum:` sections of EfficientTrain++ (preset `et++` and `custom`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from rayaccel.core.schema import Strict
from rayaccel.methods.etpp.curriculum import etpp_replay_factors, etpp_resolutions

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class ReplaySection(Strict):
    """The per-worker replay buffer of EfficientTrain++.

    `uint8` keeps raw pixels as they arrive from Ray Data (half the memory; low-pass crop and
    normalisation are recomputed for replayed samples); `fp16` keeps normalised, already
    low-passed inputs like the release (no recomputation, twice the memory).
    """

    capacity_samples: int = Field(4096, ge=1)
    dtype: Literal["uint8", "fp16"] = "uint8"


class CurriculumStage(Strict):
    """One stage of a custom curriculum."""

    resolution_px: int = Field(ge=8, le=4096)
    randaug_magnitude: float = Field(0.0, ge=0, le=10)
    """timm's 0..10 scale. With curriculum.randaugment_impl timm, 0 still applies the magnitude-free
    ops (AutoContrast, Equalize, Invert); with torchvision, 0 is off.
    """
    share: float = Field(1.0, gt=0)
    """Relative compute of the stage; shares are normalised over all stages."""
    replay_factor: int = Field(1, ge=1, le=64)
    global_batch_size: int | None = Field(None, ge=1)
    """None means the Early-Large-Batch rule (curriculum.max_global_batch)."""


class _CurriculumBase(Strict):
    """EfficientTrain++: what every curriculum shares.

    `mode` picks the low-frequency realisation: `resize` down-samples on the CPU side after
    crop/flip/RandAugment at full size (also cuts decode-to-worker transfer); `fft` keeps
    batches at full size and applies the exact FFT crop on the worker after normalisation.
    With `data.mode: device` there is no CPU pipeline: both modes run on the worker, after its
    crops and flips (RandAugment, which only Ray Data has, must then be off).
    `train.epochs` stays the baseline that `budget_epochs` is compared to, and with a
    curriculum `train.schedule.warmup_epochs` counts equivalent full-resolution epochs of
    compute. `randaugment: false` turns RandAugment off in every stage (use it when the
    baseline has no RandAugment: ET++ ramps up to the baseline's strength, not beyond).
    `randaugment_impl` picks the realisation (`rayaccel.data.randaugment`): `timm`, the
    release's `rand-m{M}-mstd0.5-inc1` (each of the 2 ops applies with probability 0.5,
    magnitude noise std 0.5, magnitude 0 still changes images), or `torchvision` (both ops
    always apply, so it is stronger at every magnitude; magnitude 0 is off). How the plan
    turns this into whole epochs is documented in `rayaccel.plan`.
    """

    mode: Literal["fft", "resize"] = "resize"
    budget_epochs: float = Field(gt=0, le=100_000)
    """Compute budget in equivalent full-resolution epochs; train.epochs is the baseline."""
    max_global_batch: int | None = Field(None, ge=1)
    """Early Large Batch cap; None means train.global_batch_size (no larger early batches)."""
    lr_max: float | None = Field(None, gt=0, le=100)
    """Cap on the scaled LR; None means no cap."""
    lr_alpha: float | None = Field(None, ge=0, le=2)
    """Early Large Batch LR rule lr_B = lr * (batch_B / batch) ** lr_alpha: 0.5 is the square-root
    rule; `rayaccel tune` LR-scaling searches fit it for a model and data set. None means
    0.5, or train.lr_scaling's exponent when the job has one.
    """
    replay: ReplaySection = ReplaySection()
    randaugment: bool = True
    randaugment_impl: Literal["timm", "torchvision"] = "timm"


class EtppCurriculum(_CurriculumBase):
    """The EfficientTrain++ preset: 10 equal-compute stages for a model family.

    Resolutions from `etpp_resolutions(family, data.image_size_px)` (the release's 224-px
    schedules, or the 40/30/30 card rule for other sizes and `generic`), RandAugment magnitude
    0..9 and replay factors from `etpp_replay_factors`.
    """

    preset: Literal["et++"] = "et++"
    family: Literal["resnet", "swin", "cswin", "deit", "convnext", "generic"] = "generic"


class CustomCurriculum(_CurriculumBase):
    """A user-written stage list."""

    preset: Literal["custom"] = "custom"
    stages: list[CurriculumStage] = Field(min_length=1, max_length=100)


# timm vision transformers built for one input size unless created with dynamic_img_size=True.
_FIXED_SIZE_VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "cait", "flexivit")


def untagged_preset(section: dict[str, Any]) -> str:
    """The preset of a `curriculum:` mapping that names none: `custom` with stages, else `et++`."""
    return "custom" if "stages" in section else "et++"


def curriculum_problems(job: JobConfig) -> list[str]:
    """Settings of an EfficientTrain++ curriculum that validate one by one but cannot run
    together.

    Needs `data.image_size_px`; it runs again after the size was read from the dataset
    metadata when the job left it out.
    """
    curriculum = job.curriculum
    full_px = job.data.image_size_px
    if not isinstance(curriculum, EtppCurriculum | CustomCurriculum) or full_px is None:
        return []
    problems = []
    if job.data.mode == "device" and curriculum.randaugment:
        # The device keeps the full-resolution pixels and down-samples them on the worker
        # (both modes), but RandAugment exists only in the Ray Data pipeline.
        problems.append(
            "curriculum.randaugment: the RandAugment ramp runs in the Ray Data pipeline; with "
            "data.mode: device set it to false (crops, flips and cutout run on the device), or "
            "use data.mode: ray"
        )
    workers = job.scaling.max_workers
    batch = job.train.global_batch_size
    if curriculum.max_global_batch is not None and curriculum.max_global_batch < batch:
        problems.append(
            f"curriculum.max_global_batch: must be >= train.global_batch_size={batch}, "
            f"got {curriculum.max_global_batch}"
        )
    if curriculum.lr_max is not None and curriculum.lr_max < job.train.optimizer.lr:
        problems.append(
            f"curriculum.lr_max: must be >= train.optimizer.lr={job.train.optimizer.lr}, "
            f"got {curriculum.lr_max}"
        )
    if job.train.schedule.name != "cosine":
        problems.append(
            "train.schedule: a curriculum drives warmup and cosine by the fraction of compute "
            "spent; use name: cosine"
        )
    elif job.train.schedule.warmup_epochs >= curriculum.budget_epochs:
        problems.append(
            f"train.schedule.warmup_epochs: counts equivalent full-resolution epochs with a "
            f"curriculum and must be < curriculum.budget_epochs={curriculum.budget_epochs}, "
            f"got {job.train.schedule.warmup_epochs}"
        )
    model = job.model
    if (
        model.name != "resnet9"
        and model.name.startswith(_FIXED_SIZE_VIT_PREFIXES)
        and not model.kwargs.get("dynamic_img_size")
    ):
        problems.append(
            f"model.kwargs.dynamic_img_size: {model.name} must follow the curriculum's "
            "resolutions (interpolated position embeddings); set it to true"
        )
    if isinstance(curriculum, EtppCurriculum):
        resolutions = etpp_resolutions(curriculum.family, full_px)
        for i, factor in enumerate(etpp_replay_factors(resolutions, full_px)):
            if batch // workers < factor:
                problems.append(
                    f"train.global_batch_size: the et++ preset replays stage {i} {factor}x, "
                    f"which needs a per-worker batch >= {factor}; {batch} over {workers} "
                    f"workers gives {batch // workers}"
                )
                break
        return problems
    for i, stage in enumerate(curriculum.stages):
        where = f"curriculum.stages.{i}"
        if stage.resolution_px > full_px:
            problems.append(
                f"{where}.resolution_px: must be <= data.image_size_px={full_px}, "
                f"got {stage.resolution_px}"
            )
        stage_batch = stage.global_batch_size
        if stage_batch is not None and stage_batch % job.scaling.worker_multiple:
            problems.append(
                f"{where}.global_batch_size: must be a multiple of scaling.num_workers="
                f"{job.scaling.worker_multiple}, got {stage_batch}"
            )
            continue
        # The Early-Large-Batch rule never goes below train.global_batch_size.
        per_worker = (stage_batch or batch) // workers
        if per_worker < stage.replay_factor:
            problems.append(
                f"{where}.replay_factor: needs a per-worker batch >= {stage.replay_factor}, "
                f"but the stage's batch {stage_batch or batch} over {workers} workers gives "
                f"{per_worker}"
            )
    return problems


def lr_rule_problems(job: JobConfig) -> list[str]:
    """One Early-Large-Batch exponent: `train.lr_scaling`'s or `curriculum.lr_alpha`."""
    scaling = job.train.lr_scaling
    curriculum = job.curriculum
    if (
        scaling is not None
        and isinstance(curriculum, EtppCurriculum | CustomCurriculum)
        and curriculum.lr_alpha is not None
    ):
        return [
            "curriculum.lr_alpha: train.lr_scaling sets the Early-Large-Batch exponent "
            f"({scaling.rule}); remove one of them"
        ]
    return []


@dataclass(frozen=True)
class EtppSettings:
    """What a worker needs of an EfficientTrain++ curriculum (the plan has the stages).

    Attributes:
        lowpass_mode: "fft" or "resize" (the plan's low-frequency mode).
        crop_on_worker: The worker low-pass crops its inputs: always in `fft` mode, and in
            `resize` mode when the data lives on the device (otherwise Ray Data resizes).
        replay_capacity_samples: The per-worker replay buffer's size.
        replay_dtype: "uint8" (raw pixels) or "fp16" (normalised, low-passed inputs).
    """

    lowpass_mode: str
    crop_on_worker: bool
    replay_capacity_samples: int
    replay_dtype: str


def worker_settings(job: JobConfig, plan: Plan) -> EtppSettings | None:
    curriculum = job.curriculum
    if not isinstance(curriculum, EtppCurriculum | CustomCurriculum):
        return None
    return EtppSettings(
        lowpass_mode=plan.lowpass_mode,
        crop_on_worker=plan.lowpass_mode == "fft" or job.data.mode == "device",
        replay_capacity_samples=curriculum.replay.capacity_samples,
        replay_dtype=curriculum.replay.dtype,
    )
