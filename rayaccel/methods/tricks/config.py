"""The `tricks:` sections of a job (no torch: the job schema is built from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from rayaccel.core.schema import Strict
from rayaccel.optim.registry import optimizer_spec

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


WARMUP_RULES = ("none", "timm", "tensorflow")


class EmaTrick(Strict):
    """EMA of the weights: evaluated instead of the live weights and kept in checkpoints.

    `momentum` is per update (one every `every_steps` optimizer steps). `warmup` lets it rise
    from 0 over the first updates: `timm` (the default: timm's `ModelEmaV3` warm-up, 1 - n^(-2/3)
    at update n, 0.99 after 1,000 updates), `tensorflow` (TensorFlow's `num_updates` rule,
    n / (9 + n), as the EfficientNet releases use it) or `none` (the momentum from the start).
    """

    every_steps: int = Field(5, ge=1)
    """Update the average every this many optimizer steps."""
    momentum: float = Field(0.99, ge=0, lt=1)
    """Weight of the old average per update."""
    warmup: Literal[WARMUP_RULES] = "timm"
    """How the momentum rises over the first updates: timm, tensorflow or none."""


class TtaTrick(Strict):
    """Test-time augmentation: evaluation averages logits over flipped/shifted views."""

    flip: bool = True
    """Also average over the left-right flipped images."""
    translate_px: int = Field(0, ge=0, le=64)
    """Adds two diagonal shifts by this many pixels (multi-crop TTA); 0: none."""


class GhostBnTrick(Strict):
    """Ghost batch norm: each `virtual_batch_size` slice of a worker's batch normalised alone."""

    virtual_batch_size: int = Field(32, ge=2)
    """Images each BatchNorm normalises together; divides the per-worker batch."""


class FrozenBnScaleTrick(Strict):
    """BatchNorm scales fixed at `scale`; BN biases train at `bias_lr_multiplier` x the LR
    with weight decay divided by `bias_wd_divisor` (64 and 64 in the myrtle.ai recipe)."""

    scale: float = Field(1.0, gt=0)
    """The fixed BatchNorm scale."""
    bias_lr_multiplier: float = Field(64.0, gt=0)
    """BN biases train at this many times the LR."""
    bias_wd_divisor: float = Field(64.0, gt=0)
    """BN biases' weight decay is divided by this."""


class WhiteningTrick(Strict):
    """A fixed PCA-whitening conv of `patch_size` patches, computed from training images, in
    place of the model's first 3x3 conv (followed by a learnable 1x1 conv)."""

    patch_size: int = Field(3, ge=1, le=7)
    """Side of the whitened patches (odd)."""
    eps: float = Field(1e-2, gt=0)
    """Added to the covariance's eigenvalues before whitening."""
    sample_images: int = Field(5000, ge=1)
    """Training images the patch covariance is computed from (the first ones of the split)."""

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError(f"must be odd, got {size}")
        return size


class LookaheadTrick(Strict):
    """Lookahead around the optimizer: every k steps pull the weights alpha of the way to a
    slow copy."""

    k: int = Field(5, ge=1)
    """Steps between pulls toward the slow weights."""
    alpha: float = Field(0.5, gt=0, le=1)
    """Share of the way the slow weights move toward the fast ones."""


def ghost_bn_problems(job: JobConfig) -> list[str]:
    ghost = job.tricks.ghost_bn
    per_worker = job.train.global_batch_size // job.scaling.max_workers
    if ghost is not None and per_worker % ghost.virtual_batch_size:
        return [
            f"tricks.ghost_bn.virtual_batch_size: must divide the per-worker batch {per_worker} "
            f"(train.global_batch_size over scaling.num_workers), got {ghost.virtual_batch_size}"
        ]
    return []


def frozen_bn_scale_problems(job: JobConfig) -> list[str]:
    """LARS and LAMB cannot decay BN biases: norm weights and biases get no trust ratio there,
    and timm's optimizers apply decay only with it, so the divided decay would be dropped."""
    frozen = job.tricks.frozen_bn_scale
    optimizer = job.train.optimizer
    if (
        frozen is None
        or optimizer.weight_decay == 0
        or not optimizer_spec(optimizer.name).trust_ratio
    ):
        return []
    return [
        f"tricks.frozen_bn_scale: gives BN biases weight decay train.optimizer.weight_decay / "
        f"bias_wd_divisor = {optimizer.weight_decay / frozen.bias_wd_divisor:g}, which "
        f"train.optimizer.name={optimizer.name} cannot apply (it gives norm weights and biases "
        f"no trust ratio and no decay); use train.optimizer.name sgd or adamw, "
        f"train.optimizer.weight_decay: 0, or no tricks.frozen_bn_scale"
    ]


def whitening_problems(job: JobConfig) -> list[str]:
    whitening = job.tricks.whitening
    if whitening is None:
        return []
    problems = []
    if job.model.name != "resnet9":
        problems.append(
            f"tricks.whitening: needs a model whose first layer is a 3x3 stride-1 conv (resnet9); "
            f"{job.model.name} is not supported"
        )
    size_px = job.data.image_size_px
    if size_px is not None and whitening.patch_size > size_px:
        problems.append(
            f"tricks.whitening.patch_size: must be <= data.image_size_px={size_px}, "
            f"got {whitening.patch_size}"
        )
    return problems


def alternating_flip_problems(job: JobConfig) -> list[str]:
    if job.tricks.alternating_flip and not job.data.augment.horizontal_flip:
        return [
            "tricks.alternating_flip: alternates horizontal flips; set "
            "data.augment.horizontal_flip: true"
        ]
    return []


def tta_problems(job: JobConfig) -> list[str]:
    tta = job.tricks.tta
    size_px = job.data.image_size_px
    if tta is not None and size_px is not None and tta.translate_px >= size_px:
        return [
            f"tricks.tta.translate_px: must be < data.image_size_px={size_px}, "
            f"got {tta.translate_px}"
        ]
    return []


@dataclass(frozen=True)
class EmaSettings:
    momentum: float
    every_steps: int
    warmup: str


@dataclass(frozen=True)
class TtaSettings:
    flip: bool
    translate_px: int


@dataclass(frozen=True)
class GhostBnSettings:
    virtual_batch_size: int


@dataclass(frozen=True)
class FrozenBnScaleSettings:
    scale: float
    bias_lr_multiplier: float
    bias_wd_divisor: float


@dataclass(frozen=True)
class WhiteningSettings:
    """The whitening conv's settings; its filters come from the first `sample_images`
    training images (`WorkerContext.training_images`)."""

    patch_size: int
    eps: float
    sample_images: int


@dataclass(frozen=True)
class DiracInitSettings:
    """Dirac initialisation has nothing to set."""


@dataclass(frozen=True)
class LookaheadSettings:
    k: int
    alpha: float


def _section_settings(name: str, settings_type: type) -> Any:
    def worker_settings(job: JobConfig, plan: Plan) -> Any:
        section = getattr(job.tricks, name)
        return None if section is None else settings_type(**section.model_dump())

    return worker_settings


ema_settings = _section_settings("ema", EmaSettings)
tta_settings = _section_settings("tta", TtaSettings)
ghost_bn_settings = _section_settings("ghost_bn", GhostBnSettings)
frozen_bn_scale_settings = _section_settings("frozen_bn_scale", FrozenBnScaleSettings)
lookahead_settings = _section_settings("lookahead", LookaheadSettings)
whitening_settings = _section_settings("whitening", WhiteningSettings)


def dirac_init_settings(job: JobConfig, plan: Plan) -> DiracInitSettings | None:
    return DiracInitSettings() if job.tricks.dirac_init else None
