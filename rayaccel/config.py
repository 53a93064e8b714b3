"""The job YAML: its schema, loading, command-line overrides and readable errors.

A job is validated here, at the edge, and nowhere else: builders turn the validated
`JobConfig` into plain arguments for the plan, the data pipeline and the training loop, so
no component ever reads the job. Every problem is reported as one line naming its YAML path
(`train.optimizer.lr: must be > 0, got -1`) so a user can fix all of them in one go.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from rayaccel.data.metadata import read_meta
from rayaccel.methods.agvm.patterns import check_patterns
from rayaccel.methods.etpp.curriculum import etpp_replay_factors, etpp_resolutions
from rayaccel.methods.progressive.stages import efficientnetv2_preset
from rayaccel.optim.lr_scaling import linear_warmup_epochs_for, rule_exponent, scale_lr
from rayaccel.optim.registry import OPTIMIZER_NAMES


class ConfigError(ValueError):
    """A job that cannot run; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- data
class AugmentConfig(_Strict):
    """CPU-side augmentation applied by Ray Data before batches reach the workers."""

    random_crop_padding_px: int = Field(0, ge=0, le=64)
    horizontal_flip: bool = False
    # Zeroes one square of this side per image, on the worker (0: off; 8 px for CIFAR).
    cutout_px: int = Field(0, ge=0, le=1024)
    # Worker-side augmentation (data.mode: device crops and flips, cutout) shares one random
    # choice per this many consecutive shuffled samples, as the CIFAR record runs do.
    samples_per_choice: int = Field(1, ge=1, le=4096)


class ParquetData(_Strict):
    """Parquet shards written by `rayaccel data prepare` (local path or pyarrow URI)."""

    source: Literal["parquet"] = "parquet"
    train: str
    val: str | None = None
    # None means: take it from the train split's metadata.json.
    image_size_px: int | None = Field(None, ge=8, le=4096)
    channels: Literal[1, 3] | None = None
    num_classes: int | None = Field(None, ge=2)
    mean: list[float] | None = None
    std: list[float] | None = None
    on_bad_row: Literal["fail", "skip"] = "fail"
    augment: AugmentConfig = AugmentConfig()
    decode_batch_rows: int = Field(256, ge=1)
    # classification (one label per image) or segmentation (a class per pixel, `mask`
    # column); None means: take it from the train split's metadata.json.
    task: Literal["classification", "segmentation"] | None = None
    # ray: Ray Data decodes and augments every epoch on CPU tasks; device: each worker decodes
    # its disjoint part of the splits once, keeps the uint8 pixels on its device and augments
    # whole batches there (datasets that fit in device memory, e.g. CIFAR or Fashion-MNIST);
    # an EfficientTrain++ curriculum then down-samples on the worker in either of its modes.
    mode: Literal["ray", "device"] = "ray"

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0, got {std}")
        return std


DataConfig = ParquetData


# ---------------------------------------------------------------- model
class ResNet9Model(_Strict):
    """The built-in myrtle.ai ResNet-9 (METHODS.md section 4)."""

    name: Literal["resnet9"]
    width_multiplier: float = Field(1.0, gt=0, le=8)
    activation: Literal["relu", "celu"] = "relu"
    pool_before_activation: bool = False


class TimmModel(_Strict):
    """Any timm model, built with `timm.create_model(name, **kwargs)`.

    For a segmentation data set the model is a timm backbone (`features_only`) with a small
    FPN neck of `fpn_channels` channels and a per-pixel classifier head
    (`rayaccel.models.segmentation`).
    """

    name: str = Field(min_length=1)
    kwargs: dict[str, Any] = {}
    # Segmentation only; None means 64.
    fpn_channels: int | None = Field(None, ge=8, le=1024)

    @field_validator("kwargs")
    @classmethod
    def _no_reserved(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = {"num_classes", "in_chans", "pretrained"} & set(kwargs)
        if reserved:
            raise ValueError(
                f"{sorted(reserved)} are set by rayaccel (num_classes and in_chans come from "
                "data; pretrained weights cannot be downloaded at run time); remove them"
            )
        return kwargs


def _model_tag(value: Any) -> str:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return "resnet9" if name == "resnet9" else "timm"


ModelConfig = Annotated[
    Annotated[ResNet9Model, Tag("resnet9")] | Annotated[TimmModel, Tag("timm")],
    Discriminator(_model_tag),
]


# ---------------------------------------------------------------- train
class OptimizerConfig(_Strict):
    """SGD with Nesterov momentum, AdamW, LARS or LAMB; norms and biases never get weight
    decay (nor, with LARS and LAMB, a trust ratio)."""

    name: Literal[OPTIMIZER_NAMES] = "sgd"
    lr: float = Field(gt=0, le=100)
    # SGD and LARS.
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    # AdamW and LAMB.
    betas: tuple[float, float] = (0.9, 0.999)
    # LARS's eta: the per-layer rate is lr * eta * |w| / (|g| + weight_decay * |w|).
    trust_coefficient: float = Field(0.001, gt=0, le=1)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"both betas must be in [0, 1), got {list(betas)}")
        return betas


class LrScalingSection(_Strict):
    """How the learning rate follows the global batch (METHODS.md section 6).

    `train.optimizer.lr` is the rate at `base_batch`; the job trains at
    `lr * (train.global_batch_size / base_batch) ** e` with e = 1 (`linear`, Goyal et al.), 0.5
    (`sqrt`), `alpha` (`fitted`, from `rayaccel tune` LR-scaling searches) or 0 (`none`, for
    LARS/LAMB runs tuned at their batch), capped at `lr_max`. With an EfficientTrain++
    curriculum the same exponent and cap give each Early-Large-Batch stage its rate.
    `scale_warmup` lengthens `train.schedule.warmup_epochs` by one warmup per doubling of the
    batch beyond the base (`rayaccel.optim.lr_scaling.linear_warmup_epochs_for`).
    """

    rule: Literal["linear", "sqrt", "fitted", "none"]
    base_batch: int = Field(ge=1)
    alpha: float | None = Field(None, ge=0, le=2)
    lr_max: float | None = Field(None, gt=0, le=100)
    scale_warmup: bool = False

    @model_validator(mode="after")
    def _alpha_with_fitted(self) -> LrScalingSection:
        if self.rule == "fitted" and self.alpha is None:
            raise ValueError("rule 'fitted' needs alpha (the exponent an LR-scaling search wrote)")
        if self.rule != "fitted" and self.alpha is not None:
            raise ValueError(f"alpha is only used by rule 'fitted', not {self.rule!r}")
        return self

    @property
    def exponent(self) -> float:
        return rule_exponent(self.rule, self.alpha)


class CosineSchedule(_Strict):
    """Linear warmup then cosine decay, in epochs."""

    name: Literal["cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    final_fraction: float = Field(0.0, ge=0, le=1)


class PiecewiseSchedule(_Strict):
    """Piecewise-linear LR multiplier through (epoch, multiplier) points."""

    name: Literal["piecewise"]
    points: list[tuple[float, float]] = Field(min_length=2)

    @field_validator("points")
    @classmethod
    def _sorted(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        epochs = [p[0] for p in points]
        if any(later <= earlier for earlier, later in zip(epochs, epochs[1:], strict=False)):
            raise ValueError(f"epochs must be strictly increasing, got {epochs}")
        if any(not 0 <= m <= 1 for _, m in points):
            raise ValueError(
                "multipliers must be in [0, 1] (they scale train.optimizer.lr), "
                f"got {[m for _, m in points]}"
            )
        return points


def _schedule_tag(value: Any) -> str | None:
    name = value.get("name", "cosine") if isinstance(value, dict) else getattr(value, "name", None)
    return name if name in ("cosine", "piecewise") else None


ScheduleConfig = Annotated[
    Annotated[CosineSchedule, Tag("cosine")] | Annotated[PiecewiseSchedule, Tag("piecewise")],
    Discriminator(
        _schedule_tag,
        custom_error_type="invalid_schedule",
        custom_error_message="must be 'cosine' or 'piecewise'",
    ),
]


class TrainConfig(_Strict):
    epochs: int = Field(gt=0, le=100_000)
    global_batch_size: int = Field(gt=0)
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = CosineSchedule()
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # NHWC activations and weights: convolutions take their channels-last kernels (tensor
    # cores under autocast on GPUs, oneDNN's NHWC path on CPUs). Off by default: layers
    # that `view` NCHW tensors in user models would fail.
    channels_last: bool = False
    seed: int = 0
    eval_every_epochs: int = Field(1, ge=1)
    log_every_steps: int = Field(20, ge=1)
    # None: train.optimizer.lr is the rate at train.global_batch_size.
    lr_scaling: LrScalingSection | None = None


# ---------------------------------------------------------------- tricks
class EmaTrick(_Strict):
    """EMA of the weights: evaluated instead of the live weights and kept in checkpoints."""

    every_steps: int = Field(5, ge=1)
    momentum: float = Field(0.99, ge=0, lt=1)


class TtaTrick(_Strict):
    """Test-time augmentation: evaluation averages logits over flipped/shifted views."""

    flip: bool = True
    # Adds two diagonal shifts by this many pixels (multi-crop TTA); 0: none.
    translate_px: int = Field(0, ge=0, le=64)


class GhostBnTrick(_Strict):
    """Ghost batch norm: each `virtual_batch_size` slice of a worker's batch normalised alone."""

    virtual_batch_size: int = Field(32, ge=2)


class FrozenBnScaleTrick(_Strict):
    """BatchNorm scales fixed at `scale`; BN biases train at `bias_lr_multiplier` x the LR
    with weight decay divided by `bias_wd_divisor` (64 and 64 in the myrtle.ai recipe)."""

    scale: float = Field(1.0, gt=0)
    bias_lr_multiplier: float = Field(64.0, gt=0)
    bias_wd_divisor: float = Field(64.0, gt=0)


class WhiteningTrick(_Strict):
    """A fixed PCA-whitening conv of `patch_size` patches, computed from training images, in
    place of the model's first 3x3 conv (followed by a learnable 1x1 conv)."""

    patch_size: int = Field(3, ge=1, le=7)
    eps: float = Field(1e-2, gt=0)
    # Training images the patch covariance is computed from (the first ones of the split).
    sample_images: int = Field(5000, ge=1)

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError(f"must be odd, got {size}")
        return size


class LookaheadTrick(_Strict):
    """Lookahead around the optimizer: every k steps pull the weights alpha of the way to a
    slow copy."""

    k: int = Field(5, ge=1)
    alpha: float = Field(0.5, gt=0, le=1)


class TricksConfig(_Strict):
    """The fast-training tricks of METHODS.md section 4; every one off unless given."""

    ema: EmaTrick | None = None
    tta: TtaTrick | None = None
    ghost_bn: GhostBnTrick | None = None
    frozen_bn_scale: FrozenBnScaleTrick | None = None
    whitening: WhiteningTrick | None = None
    dirac_init: bool = False
    # Epoch e > 0 flips exactly the images not flipped in e - 1 (needs horizontal_flip).
    alternating_flip: bool = False
    lookahead: LookaheadTrick | None = None


def tricks_problems(job: JobConfig) -> list[str]:
    """Tricks that validate alone but not with the rest of the job."""
    tricks = job.tricks
    problems = []
    per_worker = job.train.global_batch_size // job.scaling.max_workers
    ghost = tricks.ghost_bn
    if ghost is not None and per_worker % ghost.virtual_batch_size:
        problems.append(
            f"tricks.ghost_bn.virtual_batch_size: must divide the per-worker batch {per_worker} "
            f"(train.global_batch_size over scaling.num_workers), got {ghost.virtual_batch_size}"
        )
    if tricks.whitening is not None and not isinstance(job.model, ResNet9Model):
        problems.append(
            f"tricks.whitening: needs a model whose first layer is a 3x3 stride-1 conv (resnet9); "
            f"{job.model.name} is not supported"
        )
    if tricks.alternating_flip and not job.data.augment.horizontal_flip:
        problems.append(
            "tricks.alternating_flip: alternates horizontal flips; set "
            "data.augment.horizontal_flip: true"
        )
    if job.data.mode == "device" and getattr(job, "infobatch", None) is not None:
        problems.append(
            "infobatch: prunes rows in the Ray Data pipeline; use data.mode: ray with it"
        )
    size_px = job.data.image_size_px
    if size_px is not None:
        if tricks.tta is not None and tricks.tta.translate_px >= size_px:
            problems.append(
                f"tricks.tta.translate_px: must be < data.image_size_px={size_px}, "
                f"got {tricks.tta.translate_px}"
            )
        if tricks.whitening is not None and tricks.whitening.patch_size > size_px:
            problems.append(
                f"tricks.whitening.patch_size: must be <= data.image_size_px={size_px}, "
                f"got {tricks.whitening.patch_size}"
            )
        padding_px = job.data.augment.random_crop_padding_px
        if job.data.mode == "device" and padding_px >= size_px:
            problems.append(
                f"data.augment.random_crop_padding_px: must be < data.image_size_px={size_px} "
                f"with data.mode: device, got {padding_px}"
            )
    return problems


# ---------------------------------------------------------------- curriculum
class ReplaySection(_Strict):
    """The per-worker replay buffer of EfficientTrain++ (METHODS.md section 1).

    `uint8` keeps raw pixels as they arrive from Ray Data (half the memory; low-pass crop and
    normalisation are recomputed for replayed samples); `fp16` keeps normalised, already
    low-passed inputs like the release (no recomputation, twice the memory).
    """

    capacity_samples: int = Field(4096, ge=1)
    dtype: Literal["uint8", "fp16"] = "uint8"


class CurriculumStage(_Strict):
    """One stage of a custom curriculum."""

    resolution_px: int = Field(ge=8, le=4096)
    # timm's 0..10 scale; 0 turns RandAugment off for the stage.
    randaug_magnitude: float = Field(0.0, ge=0, le=10)
    # Relative compute of the stage; shares are normalised over all stages.
    share: float = Field(1.0, gt=0)
    replay_factor: int = Field(1, ge=1, le=64)
    # None means the Early-Large-Batch rule (curriculum.max_global_batch).
    global_batch_size: int | None = Field(None, ge=1)


class _CurriculumBase(_Strict):
    """EfficientTrain++ (METHODS.md section 1): what every curriculum shares.

    `mode` picks the low-frequency realisation: `resize` down-samples on the CPU side after
    crop/flip/RandAugment at full size (also cuts decode-to-worker transfer); `fft` keeps
    batches at full size and applies the exact FFT crop on the worker after normalisation.
    With `data.mode: device` there is no CPU pipeline: both modes run on the worker, after its
    crops and flips (RandAugment, which only Ray Data has, must then be off).
    `train.epochs` stays the baseline that `budget_epochs` is compared to, and with a
    curriculum `train.schedule.warmup_epochs` counts equivalent full-resolution epochs of
    compute. `randaugment: false` keeps every stage's magnitude at 0 (use it when the baseline
    has no RandAugment: ET++ ramps up to the baseline's strength, not beyond). How the plan
    turns this into whole epochs is documented in `rayaccel.plan`.
    """

    mode: Literal["fft", "resize"] = "resize"
    # Compute budget in equivalent full-resolution epochs; train.epochs is the baseline.
    budget_epochs: float = Field(gt=0, le=100_000)
    # Early Large Batch cap; None means train.global_batch_size (no larger early batches).
    max_global_batch: int | None = Field(None, ge=1)
    # Cap on the scaled LR; None means no cap.
    lr_max: float | None = Field(None, gt=0, le=100)
    # Early Large Batch LR rule lr_B = lr * (batch_B / batch) ** lr_alpha: 0.5 is the
    # square-root rule; `rayaccel tune` LR-scaling searches fit it for a model and data set.
    # None means 0.5, or train.lr_scaling's exponent when the job has one.
    lr_alpha: float | None = Field(None, ge=0, le=2)
    replay: ReplaySection = ReplaySection()
    randaugment: bool = True


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


class ProgressiveCurriculum(_Strict):
    """EfficientNetV2 progressive learning with adaptive regularisation (METHODS.md section 3).

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
    # rayaccel's RandAugment is on timm's 0..10 scale; the M/L releases' 15 and 20 are clipped.
    randaug_magnitude: tuple[float, float] | None = None
    mixup_alpha: tuple[float, float] | None = None
    cutmix_alpha: tuple[float, float] | None = None
    dropout_rate: tuple[float, float] | None = None
    drop_path_rate: tuple[float, float] | None = None
    # Intermediate sizes are rounded to a multiple of this (8 for tensor cores; 2 or 4 for
    # 28-px images).
    size_multiple_px: int = Field(8, ge=1, le=256)

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


def _progressive_problems(job: JobConfig) -> list[str]:
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
    if regularised and isinstance(job.model, ResNet9Model):
        problems.append(
            f"curriculum.{regularised[0]}_rate: resnet9 has no dropout or drop path to "
            "schedule; use a timm model or set it to [0, 0]"
        )
    if isinstance(job.model, TimmModel) and "drop_path_rate" in job.model.kwargs:
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


def _curriculum_tag(value: Any) -> str:
    if isinstance(value, dict):
        preset = value.get("preset")
        if preset is None:
            return "custom" if "stages" in value else "et++"
        return preset if isinstance(preset, str) else "et++"
    return getattr(value, "preset", "et++")


CurriculumConfig = Annotated[
    Annotated[EtppCurriculum, Tag("et++")]
    | Annotated[CustomCurriculum, Tag("custom")]
    | Annotated[ProgressiveCurriculum, Tag("progressive")],
    Discriminator(_curriculum_tag),
]


# timm vision transformers built for one input size unless created with dynamic_img_size=True.
_FIXED_SIZE_VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "cait", "flexivit")


def curriculum_problems(job: JobConfig) -> list[str]:
    """Settings of a curriculum that validate one by one but cannot run together.

    Needs `data.image_size_px`; it is called again after the size was read from the dataset
    metadata when the job left it out.
    """
    curriculum = job.curriculum
    full_px = job.data.image_size_px
    if curriculum is None or full_px is None:
        return []
    if isinstance(curriculum, ProgressiveCurriculum):
        return _progressive_problems(job)
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
    if not isinstance(job.train.schedule, CosineSchedule):
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
        isinstance(model, TimmModel)
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


# ---------------------------------------------------------------- pruning
class InfoBatchSection(_Strict):
    """InfoBatch unbiased dynamic data pruning (METHODS.md section 2).

    Each epoch, samples whose latest training loss is below the mean are dropped with
    probability `prune_ratio` right after Ray Data reads them (never decoded or trained on);
    the surviving ones get loss weight 1/(1 - prune_ratio). Epochs from
    `ceil(delta * epochs)` on train on all data with weight 1 (annealing).
    """

    prune_ratio: float = Field(0.5, ge=0, lt=1)
    delta: float = Field(0.875, gt=0, le=1)


# ---------------------------------------------------------------- large batch
class AgvmSection(_Strict):
    """AGVM: per-component LR multipliers from gradient variance (METHODS.md section 5).

    `components` maps a component name to parameter-name patterns (shell-style, `*` also
    matches dots, or `re:` regular expressions); the first component is the reference
    (backbone) and one component holds the catch-all `*`. None means backbone vs head for
    classifiers and backbone / neck / head for segmentation models. Every `interval` steps
    from `start_step` on (counted over the whole run), each worker's batch is split into two
    halves for two backward passes, so per-worker batches must be even.
    """

    components: dict[str, list[str]] | None = None
    start_step: int = Field(50, ge=0)
    interval: int = Field(10, ge=1)
    momentum: float = Field(0.97, ge=0, lt=1)
    clip: tuple[float, float] = (0.5, 10.0)
    eps: float = Field(1e-6, gt=0)

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


def large_batch_problems(job: JobConfig) -> list[str]:
    """LR scaling and AGVM settings that validate alone but not with the rest of the job."""
    problems = []
    scaling = job.train.lr_scaling
    if scaling is not None:
        if (
            scaling.lr_max is not None
            and scaling.lr_max < job.train.optimizer.lr
            and (job.train.global_batch_size >= scaling.base_batch)
        ):
            problems.append(
                f"train.lr_scaling.lr_max: must be >= train.optimizer.lr="
                f"{job.train.optimizer.lr} (the rate at base_batch), got {scaling.lr_max}"
            )
        curriculum = job.curriculum
        if curriculum is not None and getattr(curriculum, "lr_alpha", None) is not None:
            problems.append(
                "curriculum.lr_alpha: train.lr_scaling sets the Early-Large-Batch exponent "
                f"({scaling.rule}); remove one of them"
            )
    if job.agvm is not None:
        for workers in range(job.scaling.min_workers, job.scaling.max_workers + 1):
            per_worker = job.train.global_batch_size // workers
            if per_worker % 2:
                problems.append(
                    f"agvm: splits each worker's batch into two halves, but "
                    f"train.global_batch_size={job.train.global_batch_size} over {workers} "
                    f"workers gives {per_worker}; use an even per-worker batch"
                )
                break
    return problems


def task_problems(job: JobConfig) -> list[str]:
    """Options that need one label per image, for segmentation jobs (and the reverse)."""
    task = job.data.task
    if task is None:
        return []
    if task == "classification":
        if isinstance(job.model, TimmModel) and job.model.fpn_channels is not None:
            return ["model.fpn_channels: only used with segmentation data (data.task)"]
        return []
    problems = []
    if isinstance(job.model, ResNet9Model):
        problems.append(
            "model.name: segmentation needs a timm backbone with features_only support "
            "(e.g. resnet18), not resnet9"
        )
    unsupported = {
        "curriculum": job.curriculum is not None,
        "infobatch": job.infobatch is not None,
        "tricks.tta": job.tricks.tta is not None,
        "tricks.alternating_flip": job.tricks.alternating_flip,
        "tricks.whitening": job.tricks.whitening is not None,
        "data.mode": job.data.mode == "device",
    }
    for field, used in unsupported.items():
        if used:
            problems.append(
                f"{field}: not supported with segmentation data yet (it transforms images "
                "without their masks); remove it"
                + (" or use data.mode: ray" if field == "data.mode" else "")
            )
    return problems


# ---------------------------------------------------------------- scaling
class ScalingSection(_Strict):
    # An integer, or [min, max] for elastic training: Ray Train starts as many workers as the
    # cluster has room for (at least min), and restarts the group from the latest checkpoint
    # with more workers when room appears or with fewer after losing a node.
    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    # Ray resources each training worker reserves; None means 1 CPU (plus 1 GPU with use_gpu).
    resources_per_worker: dict[str, float] | None = None
    # CPUs each Ray Data decode/augment task reserves; fractions let them share cores.
    preprocess_cpus: float = Field(1.0, gt=0)
    # How the workers are placed: PACK (as few nodes as possible), SPREAD (across nodes where
    # possible), STRICT_PACK (one node) or STRICT_SPREAD (every worker on its own node).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Elastic ranges only: seconds between checks whether the cluster has room for more workers.
    resize_check_interval_s: float = Field(60.0, gt=0)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _count_or_range(cls, value: Any) -> int | tuple[int, int]:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if is_int(value):
            if value < 1:
                raise ValueError(f"must be >= 1, got {value}")
            return value
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_int, value))):
            raise ValueError(f"must be an integer or a [min, max] range of integers, got {value!r}")
        low, high = value
        if low < 1:
            raise ValueError(f"the range's min must be >= 1, got {list(value)}")
        if low > high:
            raise ValueError(f"the range's min must be <= its max, got {list(value)}")
        return low if low == high else (low, high)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers; the smallest per-worker batch belongs to this world size."""
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def worker_multiple(self) -> int:
        """Global batches must be multiples of this: every allowed world size divides it."""
        return math.lcm(*range(self.min_workers, self.max_workers + 1))

    @field_validator("resources_per_worker")
    @classmethod
    def _positive(cls, res: dict[str, float] | None) -> dict[str, float] | None:
        if res is not None:
            bad = {k: v for k, v in res.items() if v < 0}
            if bad:
                raise ValueError(f"amounts must be >= 0, got {bad}")
        return res


# ---------------------------------------------------------------- run
class RunSection(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    storage_path: str = "runs"
    checkpoint_every_epochs: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)

    @field_validator("storage_path")
    @classmethod
    def _parsable_uri(cls, location: str) -> str:
        # pyarrow and Ray would fail only once the run starts, with a traceback.
        if "://" in location and not _URI.fullmatch(location):
            raise ValueError(
                "is not a valid URI (characters such as spaces must be percent-encoded, "
                f"e.g. %20), got {location!r}"
            )
        return location


# RFC 3986 characters only; the scheme, then anything pyarrow's URI parser accepts.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


class JobConfig(_Strict):
    """A whole job: what to train on, what to train, how, on how much, and where to write."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    scaling: ScalingSection = ScalingSection()
    run: RunSection
    # None trains every epoch at full resolution, as the baseline.
    curriculum: CurriculumConfig | None = None
    tricks: TricksConfig = TricksConfig()
    # None trains on every sample every epoch.
    infobatch: InfoBatchSection | None = None
    # None: every parameter follows the one schedule.
    agvm: AgvmSection | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> JobConfig:
        problems = []
        workers = self.scaling.max_workers
        batch = self.train.global_batch_size
        multiple = self.scaling.worker_multiple
        if isinstance(self.scaling.num_workers, tuple) and batch % multiple:
            problems.append(
                f"train.global_batch_size: must be a multiple of every worker count "
                f"scaling.num_workers={list(self.scaling.num_workers)} allows (of {multiple}), "
                f"got {batch}" + (f" (try {batch - batch % multiple})" if batch > multiple else "")
            )
        elif batch < workers:
            problems.append(
                f"train.global_batch_size: must be >= scaling.num_workers={workers}, got {batch}"
            )
        elif batch % workers:
            problems.append(
                f"train.global_batch_size: must be a multiple of scaling.num_workers={workers}, "
                f"got {batch} (try {batch - batch % workers})"
            )
        schedule = self.train.schedule
        if isinstance(schedule, CosineSchedule) and schedule.warmup_epochs >= self.train.epochs:
            problems.append(
                f"train.schedule.warmup_epochs: must be < train.epochs={self.train.epochs}, "
                f"got {_number(schedule.warmup_epochs)}"
            )
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            problems.append(
                "train.precision: fp16 needs scaling.use_gpu: true (use bf16 or fp32 on CPU)"
            )
        res = self.scaling.resources_per_worker or {}
        if self.scaling.use_gpu and res.get("GPU", 1) <= 0:
            problems.append("scaling.resources_per_worker.GPU: must be > 0 when use_gpu is true")
        for name in ("mean", "std"):
            values = getattr(self.data, name)
            if values is not None and self.data.channels and len(values) != self.data.channels:
                problems.append(
                    f"data.{name}: needs one value per channel ({self.data.channels}), "
                    f"got {len(values)}"
                )
        if isinstance(schedule, CosineSchedule) and self.train.lr_scaling is not None:
            warmup = self.warmup_epochs
            if warmup >= self.train.epochs and self.curriculum is None:
                problems.append(
                    f"train.lr_scaling.scale_warmup: makes the warmup {_number(warmup)} epochs "
                    f"at batch {batch}, not < train.epochs={self.train.epochs}; lower "
                    "train.schedule.warmup_epochs"
                )
        problems.extend(curriculum_problems(self))
        problems.extend(tricks_problems(self))
        problems.extend(large_batch_problems(self))
        problems.extend(task_problems(self))
        if problems:
            raise ValueError(_CROSS_MARK + "\n".join(problems))
        return self

    @property
    def peak_lr(self) -> float:
        """The learning rate at train.global_batch_size (train.lr_scaling applied)."""
        scaling = self.train.lr_scaling
        if scaling is None:
            return self.train.optimizer.lr
        return scale_lr(
            self.train.optimizer.lr,
            batch=self.train.global_batch_size,
            base_batch=scaling.base_batch,
            rule=scaling.rule,
            alpha=scaling.alpha,
            lr_max=scaling.lr_max,
        )

    @property
    def warmup_epochs(self) -> float:
        """train.schedule.warmup_epochs, lengthened by train.lr_scaling.scale_warmup."""
        schedule = self.train.schedule
        warmup = getattr(schedule, "warmup_epochs", 0.0)
        scaling = self.train.lr_scaling
        if scaling is None or not scaling.scale_warmup:
            return warmup
        batch = self.train.global_batch_size
        return linear_warmup_epochs_for(max(batch, scaling.base_batch), scaling.base_batch, warmup)


_CROSS_MARK = "@cross@"


# ---------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, turning I/O and syntax problems into a `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such job file"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{path}: the job must be a mapping of sections, got {type(raw).__name__}"]
        )
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `section.key=value` (or `section=value`) overrides; values are parsed as YAML
    (`3`, `true`, `[1,2]`, `{rule: sqrt, base_batch: 64}`, `null` to drop a section)."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            problems.append(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
            continue
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return raw


def parse_job(raw: dict[str, Any], *, source: str = "job") -> JobConfig:
    """Validates a raw mapping into a `JobConfig`; raises `ConfigError` with every problem."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw, source)) from None


def load_job(
    path: str | Path,
    overrides: list[str] = (),
    *,
    check_paths: bool = True,
    curriculum_file: str | Path | None = None,
) -> JobConfig:
    """Reads, overrides and validates a job file.

    Args:
        path: The job YAML.
        overrides: `section.key=value` strings from the command line.
        check_paths: Also check that the data folders exist and hold rayaccel metadata,
            and fill image size, channels, classes and mean/std from it where the job left
            them out.
        curriculum_file: A `curriculum:` file written by `rayaccel tune`, applied before the
            overrides (see `merge_curriculum`).
    """
    raw = read_yaml(path)
    if curriculum_file is not None:
        raw = merge_curriculum(raw, load_curriculum_file(curriculum_file))
    raw = apply_overrides(raw, list(overrides))
    job = parse_job(raw, source=str(path))
    if check_paths:
        job = resolve_data(job, source=str(path))
    return job


def load_curriculum_file(path: str | Path) -> dict[str, Any]:
    """The `curriculum` mapping of a file written by a search (or by hand)."""
    raw = read_yaml(path)
    section = raw.get("curriculum")
    if set(raw) != {"curriculum"} or not isinstance(section, dict):
        raise ConfigError(
            [f"{path}: must hold one `curriculum:` mapping (as written by `rayaccel tune`)"]
        )
    return section


def merge_curriculum(raw_job: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The job with a curriculum file applied.

    A file that names its `preset` brings a whole curriculum and replaces the job's; a file
    without one (an LR rule: `lr_alpha`, `lr_max`) changes only those keys of the job's.
    """
    raw_job = copy.deepcopy(raw_job)
    current = raw_job.get("curriculum")
    if "preset" in section or not isinstance(current, dict):
        raw_job["curriculum"] = copy.deepcopy(section)
    else:
        raw_job["curriculum"] = {**current, **copy.deepcopy(section)}
    return raw_job


def resolve_data(job: JobConfig, *, source: str = "job") -> JobConfig:
    """Checks the data folders and fills data fields the job left to the dataset metadata."""
    problems = []
    metas = {}
    for split in ("train", "val"):
        location = getattr(job.data, split)
        if location is None:
            continue
        try:
            metas[split] = read_meta(location)
        except FileNotFoundError as err:
            problems.append(f"data.{split}: {err}")
        except (ValueError, OSError) as err:
            problems.append(
                f"data.{split}: {location} is not a prepared dataset folder ({err}); "
                "make one with `rayaccel data prepare`"
            )
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    meta = metas["train"]
    filled = {}
    if job.data.image_size_px is None:
        if meta.image_size is None or meta.image_size[0] != meta.image_size[1]:
            problems.append(
                f"data.image_size_px: the images in {job.data.train} are not one square size "
                f"({meta.image_size}); set data.image_size_px"
            )
        else:
            filled["image_size_px"] = meta.image_size[0]
    for field, value in (
        ("channels", meta.channels),
        ("num_classes", meta.num_classes),
        ("task", meta.task),
        ("mean", list(meta.mean)),
        ("std", list(meta.std)),
    ):
        if getattr(job.data, field) is None:
            filled[field] = value
    channels = job.data.channels or meta.channels
    for name in ("mean", "std"):
        values = getattr(job.data, name) or filled.get(name)
        if len(values) != channels:
            problems.append(
                f"data.{name}: needs one value per channel ({channels}), got {len(values)}"
            )
    tasks = {split: m.task for split, m in metas.items()}
    if "val" in tasks and tasks["val"] != tasks["train"]:
        problems.append(
            f"data.val: is a {tasks['val']} data set but data.train is {tasks['train']}"
        )
    if job.data.task is not None and job.data.task != tasks["train"]:
        problems.append(
            f"data.task: is {job.data.task} but {job.data.train} holds {tasks['train']} data"
        )
    if "val" in metas and metas["val"].num_classes > (job.data.num_classes or meta.num_classes):
        problems.append(
            f"data.val: has {metas['val'].num_classes} classes but training uses "
            f"{job.data.num_classes or meta.num_classes}"
        )
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    data = job.data.model_copy(update=filled)
    job = job.model_copy(update={"data": data})
    if "image_size_px" in filled:
        problems.extend(curriculum_problems(job))
        problems.extend(tricks_problems(job))
    if "task" in filled:
        problems.extend(task_problems(job))
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return job


def dump_job(job: JobConfig) -> str:
    """The resolved job as YAML (written into every run folder)."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- error text
def _format_errors(err: ValidationError, raw: dict[str, Any], source: str) -> list[str]:
    lines = []
    for item in err.errors(include_url=False):
        loc, tags = _split_tags(item["loc"])
        where = ".".join(loc) or "(top level)"
        kind = item["type"]
        ctx = item.get("ctx") or {}
        got = item.get("input")
        message = item["msg"]
        if kind == "value_error" and _CROSS_MARK in message:
            lines.extend(
                f"{source}: {line}" for line in message.split(_CROSS_MARK, 1)[1].splitlines()
            )
            continue
        if kind == "union_tag_invalid" and loc == ["curriculum"]:
            lines.append(
                f"{source}: curriculum.preset: must be 'et++', 'custom' or 'progressive', "
                f"got {ctx.get('tag')!r}"
            )
            continue
        if kind == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], tags)
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            text = f"unknown key{hint}"
        elif kind == "missing":
            text = "required, but missing"
        elif kind in _BOUNDS:
            op, key = _BOUNDS[kind]
            text = f"must be {op} {_number(ctx.get(key))}, got {got!r}"
        elif kind == "invalid_schedule":
            where += ".name"
            name = got.get("name") if isinstance(got, dict) else got
            text = f"must be 'cosine' or 'piecewise', got {name!r}"
        elif kind in ("literal_error", "enum"):
            text = f"must be {ctx.get('expected', 'one of the allowed values')}, got {got!r}"
        elif kind == "union_tag_invalid":
            text = f"must be {ctx.get('expected_tags')}, got {ctx.get('tag', got)!r}"
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            text = f"must be an integer, got {got!r}"
        elif kind in ("float_type", "float_parsing"):
            text = f"must be a number, got {got!r}"
        elif kind in ("bool_type", "bool_parsing"):
            text = f"must be true or false, got {got!r}"
        elif kind in ("string_type",):
            text = f"must be a string, got {got!r}"
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            text = f"must be a mapping of keys, got {got!r}"
        elif kind in ("list_type", "tuple_type"):
            text = f"must be a list, got {got!r}"
        elif kind == "string_pattern_mismatch":
            text = f"must use only letters, digits, '.', '_' and '-', got {got!r}"
        elif kind in ("too_short", "too_long"):
            text = f"{message.lower()}, got {got!r}"
        elif kind == "value_error":
            text = message.removeprefix("Value error, ")
        else:
            text = f"{message}, got {got!r}"
        lines.append(f"{source}: {where}: {text}")
    return lines


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _number(value: Any) -> Any:
    """1.0 -> 1 so bounds read as the user wrote them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_UNION_SECTIONS = ("model", "schedule", "curriculum")


def _split_tags(raw_loc: tuple) -> tuple[list[str], dict[str, str]]:
    """The YAML path of an error without pydantic's union tags, and the tag of each union."""
    loc: list[str] = []
    tags: dict[str, str] = {}
    for part in map(str, raw_loc):
        if loc and loc[-1] in _UNION_SECTIONS and ".".join(loc) not in tags:
            tags[".".join(loc)] = part
            continue
        loc.append(part)
    return loc, tags


def _allowed_keys(loc: list[str], tags: dict[str, str]) -> list[str]:
    """The keys a section accepts, for the 'unknown key' hint; empty when not resolvable."""
    sections: dict[str, type[BaseModel]] = {
        "": JobConfig,
        "data": ParquetData,
        "data.augment": AugmentConfig,
        "train": TrainConfig,
        "train.optimizer": OptimizerConfig,
        "scaling": ScalingSection,
        "run": RunSection,
        "curriculum.replay": ReplaySection,
        "tricks": TricksConfig,
        "tricks.ema": EmaTrick,
        "tricks.tta": TtaTrick,
        "tricks.ghost_bn": GhostBnTrick,
        "tricks.frozen_bn_scale": FrozenBnScaleTrick,
        "tricks.whitening": WhiteningTrick,
        "tricks.lookahead": LookaheadTrick,
    }
    key = ".".join(loc)
    if key in sections:
        return list(sections[key].model_fields)
    if key == "model":
        model = ResNet9Model if tags.get("model") == "resnet9" else TimmModel
        return list(model.model_fields)
    if key == "curriculum":
        if tags.get("curriculum") == "progressive":
            return list(ProgressiveCurriculum.model_fields)
        return sorted(set(EtppCurriculum.model_fields) | set(CustomCurriculum.model_fields))
    if re.fullmatch(r"curriculum\.stages\.\d+", key):
        return list(CurriculumStage.model_fields)
    if key == "train.schedule":
        return sorted(set(CosineSchedule.model_fields) | set(PiecewiseSchedule.model_fields))
    return []
