"""The job YAML: its schema, loading, command-line overrides and readable errors.

A job is validated here, at the edge, and nowhere else: builders turn the validated
`JobConfig` into plain arguments for the plan, the data pipeline and the training loop, so
no component ever reads the job. Every problem is reported as one line naming its YAML path
(`train.optimizer.lr: must be > 0, got -1`) so a user can fix all of them in one go.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from rayaccel.config.errors import ConfigError, format_errors
from rayaccel.config.io import apply_overrides, load_curriculum_file, merge_curriculum, read_yaml
from rayaccel.core.schema import Strict, cross_field_error, number, variant_key_error
from rayaccel.data.cards import CARD_NAMES, CARDS, DatasetFacts
from rayaccel.data.folder import read_split_meta
from rayaccel.data.metadata import ShardSetMeta
from rayaccel.data.shard_check import shard_problems
from rayaccel.methods.registry import METHODS, MethodSpec, method_problems
from rayaccel.optim.lr_scaling import linear_warmup_epochs_for, rule_exponent, scale_lr
from rayaccel.optim.registry import OPTIMIZER_NAMES


# ---------------------------------------------------------------- data
class RandomResizedCropConfig(Strict):
    """RandomResizedCrop, the crop of every ImageNet recipe (torchvision's, timm's defaults)."""

    scale: tuple[float, float] = (0.08, 1.0)
    """Bounds of the crop's area as a fraction of the photo's."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Bounds of the crop's width / height (drawn log-uniformly)."""
    resize_to: Literal["stage", "image"] = "stage"
    """stage: resample each crop straight to the curriculum stage's px (the cheap path: small JPEG
    decodes, RandAugment on small images); image: to data.image_size_px, augment, then
    down-sample to the stage's px (the EfficientTrain++ release's order). Without a
    `curriculum: {mode: resize}` both are data.image_size_px.
    """

    @field_validator("scale")
    @classmethod
    def _scale_bounds(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"needs 0 < low <= high <= 1 (area fractions), got {list(scale)}")
        return scale

    @field_validator("ratio")
    @classmethod
    def _ratio_bounds(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"needs 0 < low <= high (width / height), got {list(ratio)}")
        return ratio


class AugmentConfig(Strict):
    """CPU-side augmentation applied by Ray Data before batches reach the workers."""

    random_crop_padding_px: int = Field(0, ge=0, le=64)
    """Pads by this many px (zeros) and crops back at a random offset (0: off; 4 for CIFAR)."""
    horizontal_flip: bool = False
    """Flips half the images left-right."""
    random_resized_crop: RandomResizedCropConfig | None = None
    """null: off. Replaces the padded random crop (set random_crop_padding_px 0)."""
    auto_augment: str | None = None
    """A timm augmentation string as timm's --aa flag takes it (rand-m9-mstd0.5-inc1,
    augmix-m5-w4-d2, original, v0) or trivialaugment (torchvision's TrivialAugmentWide);
    applied after the crop and flip. A curriculum's RandAugment ramp replaces it.
    """

    @field_validator("auto_augment")
    @classmethod
    def _known_policy(cls, policy: str | None) -> str | None:
        from rayaccel.data.randaugment import policy_problem

        if policy is not None and (problem := policy_problem(policy, None)) is not None:
            raise ValueError(
                f"{policy!r} is not an augmentation timm or torchvision reads ({problem}); "
                "e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, trivialaugment"
            )
        return policy

    cutout_px: int = Field(0, ge=0, le=1024)
    """Zeroes one square of this side per image, on the worker (0: off; 8 px for CIFAR)."""
    samples_per_choice: int = Field(1, ge=1, le=4096)
    """Worker-side augmentation (data.mode: device crops and flips, cutout) shares one random choice
    per this many consecutive shuffled samples, as the CIFAR record runs do.
    """


class ParquetData(Strict):
    """The training data: parquet shards written by `rayaccel data prepare` (local path or
    pyarrow URI), or a class-per-folder image tree read at run time (`rayaccel.data.folder`)."""

    source: Literal["parquet", "imagefolder"] = "parquet"
    """parquet: prepared shards; imagefolder: train/val are class-per-folder trees (a disk every
    node sees, or a URI) read file by file (needs data.mean/std or data.card).
    """
    train: str
    """The training split: a folder written by `rayaccel data prepare`, or an image tree with
    data.source: imagefolder; a local path (relative to where rayaccel runs) or a URI (s3://,
    gs://)."""
    val: str | None = None
    """The validation split, as data.train; null: no evaluation."""
    image_size_px: int | None = Field(None, ge=8, le=4096)
    """None means: take it from the train split's metadata.json."""
    channels: Literal[1, 3] | None = None
    """Image channels; null: from the train split's metadata.json."""
    num_classes: int | None = Field(None, ge=2)
    """Classes; null: from the train split's metadata.json."""
    mean: list[float] | None = None
    """Per-channel normalisation mean in [0, 1] units; null: the train split's measured statistics."""
    std: list[float] | None = None
    """Per-channel normalisation std in [0, 1] units; null: the train split's measured statistics."""
    on_bad_row: Literal["fail", "skip"] = "fail"
    """An undecodable image or out-of-range label: fail names its shard and row; skip leaves it out
    and counts it (bad_rows_skipped)."""
    augment: AugmentConfig = AugmentConfig()
    decode_batch_rows: int = Field(256, ge=1)
    """Rows per Ray Data decode/augment batch."""
    shuffle: Literal["windows", "full"] = "windows"
    """windows: each epoch reads windows of shuffle_window_rows consecutive rows in a seeded random
    order, each window's rows permuted (prepared shards store rows in random order); a
    resumed run reads exactly the order an uninterrupted one would. full: Ray Data's
    all-to-all shuffle of the whole split every epoch (costlier, not resume-exact).
    """
    shuffle_window_rows: int = Field(1024, ge=1)
    """Rows per window of data.shuffle: windows."""
    eval_crop_pct: float | None = Field(None, gt=0, le=1)
    """Evaluation crop: resize the shorter side to size / eval_crop_pct, take the centre square.
    None: the timm model's pretrained crop_pct with a RandomResizedCrop (0.875 when it has
    none), else 1.0 (the whole shorter side).
    """
    reduced_decode: bool = True
    """Decode JPEGs at a reduced DCT scale when their crop is shrunk anyway (same result up to the
    resampling; several times fewer pixels decoded for low-resolution stages).
    """
    cache_val: bool = True
    """Keep each decoded validation split in the object store after its first use, when the run's
    validation copies fit in a quarter of it.
    """
    task: Literal["classification", "segmentation"] | None = None
    """classification (one label per image) or segmentation (a class per pixel, `mask` column); None
    means: take it from the train split's metadata.json.
    """
    mode: Literal["ray", "device"] = "ray"
    """ray: Ray Data decodes and augments every epoch on CPU tasks; device: each worker decodes its
    disjoint part of the splits once, keeps the uint8 pixels on its device and augments whole
    batches there (datasets that fit in device memory, e.g. CIFAR or Fashion-MNIST); an
    EfficientTrain++ curriculum then down-samples on the worker in either of its modes.
    """
    card: Literal[CARD_NAMES] | None = None
    """What `rayaccel plan` and `validate` assume where the data folders are absent (a job written
    for a cluster's disk): a known data set's published facts, or facts stated here. Training
    always reads the data, and the data's metadata wins where it exists.
    """
    facts: DatasetFacts | None = None

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0, got {std}")
        return std

    @model_validator(mode="after")
    def _one_source_of_facts(self) -> ParquetData:
        if self.card is not None and self.facts is not None:
            raise cross_field_error(
                [
                    "data.facts: set data.card or data.facts, not both (the facts would "
                    f"replace card {self.card}'s)"
                ]
            )
        return self

    @model_validator(mode="after")
    def _folder_settings(self) -> ParquetData:
        if self.source != "imagefolder":
            return self
        problems = []
        if self.mode == "device":
            problems.append("data.mode: device needs prepared shards (data.source: parquet)")
        if self.shuffle == "full":
            problems.append("data.shuffle: full needs prepared shards (data.source: parquet)")
        if (self.mean is None or self.std is None) and self.card is None:
            problems.append(
                "data.mean: an image folder has no measured statistics; set data.mean and "
                "data.std (ImageNet's: [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]) or a "
                "data.card"
            )
        if problems:
            raise cross_field_error(problems)
        return self

    def split_statistics(self) -> dict:
        """The statistics an image folder's metadata is made with (the job's, else the
        card's); empty for shards, whose metadata.json has measured ones."""
        if self.source != "imagefolder":
            return {}
        card = CARDS[self.card] if self.card else None
        return {
            "mean": self.mean or (card.mean if card else None),
            "std": self.std or (card.std if card else None),
            "channels": self.channels or (card.channels if card else 3),
        }

    @property
    def stated_facts(self) -> tuple[str, DatasetFacts] | None:
        """Where the stated facts come from (`card imagenet-1k`, `data.facts`), and them."""
        if self.card is not None:
            return f"card {self.card}", CARDS[self.card]
        if self.facts is not None:
            return "data.facts", self.facts
        return None


DataConfig = ParquetData


# ---------------------------------------------------------------- model
class _InitialWeights(Strict):
    """The checks of `pretrained` and `init_checkpoint`, where a model's first weights come
    from: random (the default), timm's pretrained weights, or a file or run folder
    (`rayaccel.models.weights`)."""

    @field_validator("init_checkpoint", check_fields=False)
    @classmethod
    def _weights_exist(cls, location: str | None) -> str | None:
        # URIs are read when the run starts; a local path is checked now, with its kind.
        if location is None or "://" in location:
            return location
        from rayaccel.models.weights import WEIGHT_FILE_SUFFIXES

        path = Path(location).expanduser()
        if not path.exists():
            raise ValueError(f"no such file or folder: {path.absolute()}")
        if path.is_file() and not location.endswith(WEIGHT_FILE_SUFFIXES):
            raise ValueError(
                f"{location} is not a weight file (expected {', '.join(WEIGHT_FILE_SUFFIXES)}) "
                "or a run folder"
            )
        return str(path)

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> _InitialWeights:
        if self.pretrained and self.init_checkpoint is not None:
            raise cross_field_error(
                ["model.init_checkpoint: set model.pretrained or model.init_checkpoint, not both"]
            )
        if self.pretrained:
            from rayaccel.models.weights import pretrained_problem

            if (problem := pretrained_problem(self.name)) is not None:
                raise cross_field_error([f"model.pretrained: {problem}"])
        return self


_INIT_CHECKPOINT_DOC = (
    "Start from these weights: a .safetensors or .pth/.pt state dict (also nested under "
    "state_dict/model, DDP's module. prefixes removed), or a rayaccel run folder (its latest "
    "checkpoint's model); a local path or a URI. A classifier for another class count is "
    "re-initialised; the run's `init weights` line names what did not fit. A resumed run "
    "restores its own checkpoint instead."
)


class ResNet9Model(_InitialWeights):
    """The built-in myrtle.ai ResNet-9."""

    name: Literal["resnet9"]
    """rayaccel's own ResNet-9 (any other name is a timm model)."""
    width_multiplier: float = Field(1.0, gt=0, le=8)
    """Scales every channel count (64-128-256-512); 0.25 gives a ~0.4M-parameter model."""
    activation: Literal["relu", "celu"] = "relu"
    """relu (the original) or celu (smooth, alpha 0.075)."""
    pool_before_activation: bool = False
    """conv-pool-BN-act instead of conv-BN-act-pool: BN and the activation on a quarter of
    the pixels (a myrtle.ai speed-up)."""
    pretrained: bool = False
    """Not available: resnet9 has no published weights (use init_checkpoint)."""
    init_checkpoint: str | None = Field(None, description=_INIT_CHECKPOINT_DOC)


class TimmModel(_InitialWeights):
    """Any timm model, built with `timm.create_model(name, **kwargs)`.

    For a segmentation data set the model is a timm backbone (`features_only`) with a small
    FPN neck of `fpn_channels` channels and a per-pixel classifier head
    (`rayaccel.models.segmentation`).
    """

    name: str = Field(min_length=1)
    """A timm model name (`timm.list_models()`), optionally with a pretrained tag
    (resnet50.a1_in1k)."""
    kwargs: dict[str, Any] = {}
    """More `timm.create_model` arguments, e.g. drop_path_rate, img_size (num_classes and
    in_chans come from the data)."""
    fpn_channels: int | None = Field(None, ge=8, le=1024)
    """Segmentation only: channels of the FPN neck and head; None means 64."""
    pretrained: bool = False
    """Start from timm's pretrained weights, fetched once by the driver through timm's hub
    cache (HF_HOME, HF_ENDPOINT) and shipped to the workers; a classifier for another class
    count is re-initialised. A resumed run restores its own checkpoint instead."""
    init_checkpoint: str | None = Field(None, description=_INIT_CHECKPOINT_DOC)

    @field_validator("kwargs")
    @classmethod
    def _no_reserved(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = {"num_classes", "in_chans", "pretrained"} & set(kwargs)
        if reserved:
            raise ValueError(
                f"{sorted(reserved)} are set by rayaccel (num_classes and in_chans come from "
                "data; for timm's weights set model.pretrained: true); remove them"
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
class OptimizerConfig(Strict):
    """SGD with Nesterov momentum, AdamW, LARS or LAMB; norms and biases never get weight
    decay (nor, with LARS and LAMB, a trust ratio)."""

    name: Literal[OPTIMIZER_NAMES] = "sgd"
    """sgd (Nesterov momentum), adamw, lars or lamb."""
    lr: float = Field(gt=0, le=100)
    """Peak learning rate (at train.lr_scaling.base_batch when train.lr_scaling is set)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD and LARS."""
    nesterov: bool = True
    """Nesterov momentum (SGD)."""
    weight_decay: float = Field(5e-4, ge=0)
    """Decoupled for AdamW and LAMB; never applied to norms and biases."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW and LAMB."""
    trust_coefficient: float = Field(0.001, gt=0, le=1)
    """LARS's eta: the per-layer rate is lr * eta * |w| / (|g| + weight_decay * |w|)."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"both betas must be in [0, 1), got {list(betas)}")
        return betas


class LrScalingSection(Strict):
    """How the learning rate follows the global batch.

    `train.optimizer.lr` is the rate at `base_batch`; the job trains at
    `lr * (train.global_batch_size / base_batch) ** e` with e = 1 (`linear`, Goyal et al.), 0.5
    (`sqrt`), `alpha` (`fitted`, from `rayaccel tune` LR-scaling searches) or 0 (`none`, for
    LARS/LAMB runs tuned at their batch), capped at `lr_max`. With an EfficientTrain++
    curriculum the same exponent and cap give each Early-Large-Batch stage its rate.
    `scale_warmup` lengthens `train.schedule.warmup_epochs` by one warmup per doubling of the
    batch beyond the base (`rayaccel.optim.lr_scaling.linear_warmup_epochs_for`).
    """

    rule: Literal["linear", "sqrt", "fitted", "none"]
    """linear (exponent 1), sqrt (0.5), fitted (alpha) or none (0)."""
    base_batch: int = Field(ge=1)
    """The batch size train.optimizer.lr was tuned at."""
    alpha: float | None = Field(None, ge=0, le=2)
    """The exponent of rule fitted, as an LR-scaling search writes it."""
    lr_max: float | None = Field(None, gt=0, le=100)
    """Cap on the scaled rate; null: none."""
    scale_warmup: bool = False
    """Lengthen the warmup by one train.schedule.warmup_epochs per doubling of the batch beyond
    base_batch."""

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


class CosineSchedule(Strict):
    """Linear warmup then cosine decay, in epochs."""

    name: Literal["cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    """Linear warmup from 0, in epochs (fractions allowed)."""
    final_fraction: float = Field(0.0, ge=0, le=1)
    """The rate at the end, as a fraction of the peak."""


class PiecewiseSchedule(Strict):
    """Piecewise-linear LR multiplier through (epoch, multiplier) points."""

    name: Literal["piecewise"]
    points: list[tuple[float, float]] = Field(min_length=2)
    """[epoch, multiplier of train.optimizer.lr] points, epochs increasing; linear in between."""

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
        custom_error_type=variant_key_error("name"),
        custom_error_message="must be 'cosine' or 'piecewise'",
    ),
]


class TrainConfig(Strict):
    """How long and how to train: epochs, batch, optimizer, schedule, loss and precision."""

    epochs: int = Field(gt=0, le=100_000)
    """Full passes over the training split (a curriculum's budget_epochs replaces it)."""
    global_batch_size: int = Field(gt=0)
    """Images per optimizer step over all workers; a multiple of scaling.num_workers."""
    optimizer: OptimizerConfig
    """The optimizer and its hyper-parameters."""
    schedule: ScheduleConfig = CosineSchedule()
    """The learning-rate schedule (name: cosine or piecewise)."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss (0.1 in most ImageNet recipes)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32, or autocast to bf16 (CPU or GPU) or fp16 (GPU, with a grad scaler)."""
    channels_last: bool = False
    """NHWC activations and weights: convolutions take their channels-last kernels (tensor cores
    under autocast on GPUs, oneDNN's NHWC path on CPUs). Off by default: layers that `view`
    NCHW tensors in user models would fail.
    """
    seed: int = 0
    """Seeds the model initialisation, the data order and the augmentation."""
    eval_every_epochs: int = Field(1, ge=1)
    """Evaluate every this many epochs (and always after the last)."""
    log_every_steps: int = Field(20, ge=1)
    """Rank 0's progress line every this many steps."""
    lr_scaling: LrScalingSection | None = None
    """None: train.optimizer.lr is the rate at train.global_batch_size."""


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
        spec.key: True for spec in METHODS if not spec.segmentation and spec.enabled(job)
    }
    unsupported["data.mode"] = job.data.mode == "device"
    for field, used in unsupported.items():
        if used:
            problems.append(
                f"{field}: not supported with segmentation data yet (it transforms images "
                "without their masks); remove it"
                + (" or use data.mode: ray" if field == "data.mode" else "")
            )
    return problems


# ---------------------------------------------------------------- scaling
class ScalingSection(Strict):
    """How many Ray Train workers, with what resources, placed how."""

    num_workers: int | tuple[int, int] = 1
    """An integer, or [min, max] for elastic training: Ray Train starts as many workers as the
    cluster has room for (at least min), and restarts the group from the latest checkpoint
    with more workers when room appears or with fewer after losing a node.
    """
    use_gpu: bool = False
    """One GPU per training worker (CUDA)."""
    resources_per_worker: dict[str, float] | None = None
    """Ray resources each training worker reserves; None means 1 CPU (plus 1 GPU with use_gpu)."""
    preprocess_cpus: float = Field(1.0, gt=0)
    """CPUs each Ray Data decode/augment task reserves; fractions let them share cores."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How the workers are placed: PACK (as few nodes as possible), SPREAD (across nodes where
    possible), STRICT_PACK (one node) or STRICT_SPREAD (every worker on its own node).
    """
    resize_check_interval_s: float = Field(60.0, gt=0)
    """Elastic ranges only: seconds between checks whether the cluster has room for more workers."""

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
class RunSection(Strict):
    """Where the run folder goes, how often it is checkpointed and how failures restart."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    """The run's folder name under storage_path; running the same name again resumes it."""
    storage_path: str = "runs"
    """Where run folders go: a local folder or a URI (s3://, gs://); a multi-node cluster needs
    storage every node reaches."""
    checkpoint_every_epochs: int = Field(1, ge=1)
    """Checkpoint every this many epochs (and after the last)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept (the newest)."""
    max_failures: int = Field(0, ge=-1)
    """Worker-group restarts from the latest checkpoint after a failure; -1: unlimited."""

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


# ---------------------------------------------------------------- tracking
class MlflowTracking(Strict):
    """MLflow: one run per rayaccel run, continued when the job is resumed."""

    tracking_uri: str | None = None
    """null: a SQLite store in the run folder (mlflow/mlflow.db, artifacts in
    mlflow/artifacts; MLflow 3 refuses new file stores); else any tracking URI MLflow takes
    (http://host:5000, sqlite:///path.db)."""
    experiment: str = Field("rayaccel", min_length=1)
    """The MLflow experiment the run is logged in (created if new)."""


class WandbTracking(Strict):
    """Weights & Biases (needs `pip install wandb`); its files go under <run folder>/wandb."""

    project: str = Field("rayaccel", min_length=1)
    """The W&B project."""
    entity: str | None = None
    """The W&B team or user; null: the default of the logged-in account."""
    mode: Literal["offline", "online"] = "offline"
    """offline: nothing leaves the machine (`wandb sync <run folder>/wandb/offline-run-*`
    uploads later); online: needs `wandb login` where the Ray Train controller runs."""


class TrackingSection(Strict):
    """Experiment trackers the run also logs to, every epoch once across resumes (all off by
    default; see docs/tracking.md)."""

    tensorboard: bool = False
    """Event files in <run folder>/tensorboard: `tensorboard --logdir <storage_path>`."""
    mlflow: MlflowTracking | None = None
    """true or a mapping: log to MLflow; null or false: off."""
    wandb: WandbTracking | None = None
    """true or a mapping: log to Weights & Biases; null or false: off."""

    @field_validator("mlflow", "wandb", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None or self.wandb is not None


# The packages each tracker imports (module, pip name); tensorboardX comes with Ray.
_TRACKER_PACKAGES = {
    "tensorboard": (("tensorboardX", "tensorboardX"),),
    "mlflow": (("mlflow", "mlflow-skinny"),),
    "wandb": (("wandb", "wandb"),),
}
# MLflow's SQLite store (the default) also needs SQLAlchemy and Alembic.
_MLFLOW_SQL_PACKAGES = (("sqlalchemy", "sqlalchemy"), ("alembic", "alembic"))


def tracking_problems(tracking: TrackingSection) -> list[str]:
    """`tracking.<tracker>: ...` for every tracker the job asks for whose library is missing."""
    import importlib.util

    wanted = {
        "tensorboard": tracking.tensorboard,
        "mlflow": tracking.mlflow is not None,
        "wandb": tracking.wandb is not None,
    }
    problems = []
    for name, packages in _TRACKER_PACKAGES.items():
        if not wanted[name]:
            continue
        if name == "mlflow" and tracking.mlflow.tracking_uri is None:
            packages = packages + _MLFLOW_SQL_PACKAGES
        missing = [pip for module, pip in packages if importlib.util.find_spec(module) is None]
        if missing:
            extra = "wandb" if name == "wandb" else "tracking"
            problems.append(
                f"tracking.{name}: needs {', '.join(missing)}, not installed; "
                f"pip install 'rayaccel[{extra}]' (or: pip install {' '.join(missing)})"
            )
    return problems


class _JobCore(Strict):
    """A whole job: what to train on, what to train, how, on how much, and where to write.

    The methods' sections (`curriculum`, `tricks`, `infobatch`, `agvm`, ...) are added from
    `rayaccel.methods.registry` to make `JobConfig`; each is off when absent.
    """

    data: DataConfig
    model: ModelConfig
    """resnet9 (rayaccel's ResNet-9) or any timm model by name, and its first weights."""
    train: TrainConfig
    scaling: ScalingSection = ScalingSection()
    run: RunSection
    tracking: TrackingSection = TrackingSection()
    """TensorBoard, MLflow and W&B logging (docs/tracking.md)."""

    @model_validator(mode="after")
    def _cross_field(self) -> _JobCore:
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
                f"got {number(schedule.warmup_epochs)}"
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
                    f"train.lr_scaling.scale_warmup: makes the warmup {number(warmup)} epochs "
                    f"at batch {batch}, not < train.epochs={self.train.epochs}; lower "
                    "train.schedule.warmup_epochs"
                )
        scaling = self.train.lr_scaling
        if (
            scaling is not None
            and scaling.lr_max is not None
            and scaling.lr_max < self.train.optimizer.lr
            and batch >= scaling.base_batch
        ):
            problems.append(
                f"train.lr_scaling.lr_max: must be >= train.optimizer.lr="
                f"{self.train.optimizer.lr} (the rate at base_batch), got {scaling.lr_max}"
            )
        problems.extend(size_problems(self))
        problems.extend(method_problems(self))
        problems.extend(task_problems(self))
        if problems:
            raise cross_field_error(problems)
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


def size_problems(job: JobConfig) -> list[str]:
    """Data settings that need `data.image_size_px` (checked again once it is read from the
    dataset's metadata)."""
    size_px = job.data.image_size_px
    augment = job.data.augment
    padding_px = augment.random_crop_padding_px
    problems = []
    if size_px is not None and job.data.mode == "device" and padding_px >= size_px:
        problems.append(
            f"data.augment.random_crop_padding_px: must be < data.image_size_px={size_px} "
            f"with data.mode: device, got {padding_px}"
        )
    curriculum = getattr(job, "curriculum", None)
    if augment.auto_augment is not None and curriculum is not None and curriculum.randaugment:
        problems.append(
            "data.augment.auto_augment: the curriculum ramps its own RandAugment; remove "
            "auto_augment or set curriculum.randaugment: false"
        )
    if augment.auto_augment is not None and job.data.mode == "device":
        problems.append(
            "data.augment.auto_augment: needs data.mode: ray (it runs on Ray Data's CPUs)"
        )
    if augment.random_resized_crop is not None:
        if padding_px:
            problems.append(
                "data.augment.random_resized_crop: replaces the padded random crop; set "
                f"data.augment.random_crop_padding_px: 0 (got {padding_px})"
            )
        if job.data.mode == "device":
            problems.append(
                "data.augment.random_resized_crop: needs data.mode: ray (device mode keeps "
                "fixed-size images on the worker and crops them there)"
            )
        if job.data.task == "segmentation":
            problems.append(
                "data.augment.random_resized_crop: is for classification; a segmentation "
                "set's masks are not cropped with it"
            )
    if augment.auto_augment is not None and job.data.task == "segmentation":
        problems.append(
            "data.augment.auto_augment: is for classification; its geometric ops would move "
            "images away from their masks"
        )
    return problems


def _section_field(specs: list[MethodSpec]) -> tuple[Any, Any]:
    """The annotation and default of one job key from the methods that use it."""
    if len(specs) == 1 and not specs[0].variants:
        spec = specs[0]
        annotation = spec.section if spec.default is not None else spec.section | None
        return annotation, Field(spec.default, description=spec.summary)
    variants = {tag: v for spec in specs for tag, v in spec.variants.items()}
    untagged = next(spec.untagged for spec in specs if spec.untagged is not None)

    def tag_of(value: Any) -> str | None:
        if isinstance(value, dict):
            preset = value.get("preset")
            if preset is None:
                return untagged(value)
            return preset if preset in variants else None
        return getattr(value, "preset", None)

    tags = [repr(tag) for tag in variants]
    members = [Annotated[v, Tag(tag)] for tag, v in variants.items()]
    union = Annotated[
        functools.reduce(operator.or_, members),
        Discriminator(
            tag_of,
            custom_error_type=variant_key_error("preset"),
            custom_error_message=f"must be {', '.join(tags[:-1])} or {tags[-1]}",
        ),
    ]
    summary = "; ".join(f"{spec.name}: {spec.summary}" for spec in specs)
    return union | None, Field(None, description=summary)


def _method_sections() -> dict[str, tuple[Any, Any]]:
    """`JobConfig`'s fields of the registered methods; `a.b` keys become section `a`."""
    by_key: dict[str, list[MethodSpec]] = {}
    for spec in METHODS:
        by_key.setdefault(spec.key, []).append(spec)
    fields: dict[str, tuple[Any, Any]] = {}
    nested: dict[str, dict[str, tuple[Any, Any]]] = {}
    for key, specs in by_key.items():
        section, _, name = key.partition(".")
        if name:
            # A nested section sits where its first member's method is registered.
            fields.setdefault(section, None)
            nested.setdefault(section, {})[name] = _section_field(specs)
        else:
            fields[key] = _section_field(specs)
    for section, members in nested.items():
        model = create_model(
            f"{section.title()}Config",
            __base__=Strict,
            __doc__=f"The `{section}:` section; every entry is off unless given.",
            **members,
        )
        fields[section] = (model, model())
    return fields


JobConfig = create_model(
    "JobConfig",
    __base__=_JobCore,
    __doc__=_JobCore.__doc__,
    __module__=__name__,
    **_method_sections(),
)
TricksConfig = JobConfig.model_fields["tricks"].annotation


# ---------------------------------------------------------------- loading
def parse_job(raw: dict[str, Any], *, source: str = "job") -> JobConfig:
    """Validates a raw mapping into a `JobConfig`; raises `ConfigError` with every problem."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, JobConfig, source)) from None


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
            them out (`resolve_data`; without the data, see `resolve_data_facts`).
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


@dataclass(frozen=True)
class ResolvedData:
    """A job with its data fields filled, and what they were filled from.

    Attributes:
        job: The job, every data field the job left out filled from the metadata (or, for
            an absent folder, from `data.card` / `data.facts`).
        train_images: Images in the training split, for the plan.
        assumed: The line naming the facts taken from `data.card` / `data.facts` because
            data folders are absent; None when the data was read.
        contradictions: At most one line: where the data's metadata contradicts
            `data.card` / `data.facts` (the metadata was used).
    """

    job: JobConfig
    train_images: int
    assumed: str | None = None
    contradictions: tuple[str, ...] = ()


# Prepared statistics differ from the published ones by resizing and rounding, not by this.
_STATISTICS_TOLERANCE = 0.01


def resolve_data(job: JobConfig, *, source: str = "job") -> JobConfig:
    """Checks the data folders and fills data fields the job left to the dataset metadata.

    The folders must exist, as for training; commands use `resolve_data_facts`, which also
    plans without them and says where the data contradicts the job's stated facts.
    """
    return resolve_data_facts(job, source=source).job


def resolve_data_facts(
    job: JobConfig, *, source: str = "job", plan_only: bool = False
) -> ResolvedData:
    """Fills the data fields the job left out, from the data's metadata or its stated facts.

    Args:
        job: A validated job.
        source: What error lines start with, usually the job file's path.
        plan_only: The caller only checks or plans the job (`rayaccel validate`, `plan`), so
            an absent data folder may be stood in for by `data.card` / `data.facts`;
            training (the default) needs the data itself.
    """
    stated = job.data.stated_facts
    problems = []
    metas = {}
    absent = {}
    for split in ("train", "val"):
        location = getattr(job.data, split)
        if location is None:
            continue
        try:
            metas[split] = read_split_meta(
                location,
                source=job.data.source,
                classes=metas["train"].classes if split == "val" and "train" in metas else None,
                **job.data.split_statistics(),
            )
        except FileNotFoundError as err:
            if plan_only and stated is not None:
                absent[split] = location
            else:
                problems.append(f"data.{split}: {err}{_absent_hint(stated, plan_only)}")
        except (ValueError, OSError) as err:
            problems.append(
                f"data.{split}: {location} is not a prepared dataset folder ({err}); "
                "make one with `rayaccel data prepare`"
                if job.data.source == "parquet"
                else f"data.{split}: {location} is not a class-per-folder image tree ({err})"
            )
        else:
            if job.data.source == "parquet":
                problems.extend(
                    f"data.{split}: {line}" for line in shard_problems(location, metas[split])
                )
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    train = _train_facts(job, metas.get("train"), stated)
    filled = {}
    if job.data.image_size_px is None:
        if train.image_size_px is None:
            problems.append(f"data.image_size_px: {train.unsized}; set data.image_size_px")
        else:
            filled["image_size_px"] = train.image_size_px
    for field in ("channels", "num_classes", "task", "mean", "std"):
        if getattr(job.data, field) is None:
            filled[field] = getattr(train, field)
    channels = job.data.channels or train.channels
    for name in ("mean", "std"):
        values = getattr(job.data, name) or filled.get(name)
        if len(values) != channels:
            problems.append(
                f"data.{name}: needs one value per channel ({channels}), got {len(values)}"
            )
    val_meta = metas.get("val")
    if val_meta is not None and val_meta.task != train.task:
        problems.append(f"data.val: is a {val_meta.task} data set but data.train is {train.task}")
    if job.data.task is not None and job.data.task != train.task:
        problems.append(f"data.task: is {job.data.task} but {train.holder} {train.task} data")
    num_classes = job.data.num_classes or train.num_classes
    if val_meta is not None and val_meta.num_classes > num_classes:
        problems.append(
            f"data.val: has {val_meta.num_classes} classes but training uses {num_classes}"
        )
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    data = job.data.model_copy(update=filled)
    job = job.model_copy(update={"data": data})
    if "image_size_px" in filled:
        problems.extend(size_problems(job))
        problems.extend(method_problems(job))
    if "task" in filled:
        problems.extend(task_problems(job))
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return ResolvedData(
        job=job,
        train_images=train.train_images,
        assumed=_assumed_line(absent, stated, filled) if absent else None,
        contradictions=_contradictions(job.data, metas),
    )


@dataclass(frozen=True)
class _TrainFacts:
    """The training split's facts, read from its metadata or stated by the job."""

    train_images: int
    num_classes: int
    channels: int
    image_size_px: int | None
    mean: list[float]
    std: list[float]
    task: str
    holder: str
    """"<where> holds" / "<card> describes", for messages about the split."""
    unsized: str
    """Why there is no one image size, for the data.image_size_px message."""


def _train_facts(
    job: JobConfig, meta: ShardSetMeta | None, stated: tuple[str, DatasetFacts] | None
) -> _TrainFacts:
    if meta is not None:
        square = meta.image_size is not None and meta.image_size[0] == meta.image_size[1]
        return _TrainFacts(
            train_images=meta.count,
            num_classes=meta.num_classes,
            channels=meta.channels,
            image_size_px=meta.image_size[0] if square else None,
            mean=list(meta.mean),
            std=list(meta.std),
            task=meta.task,
            holder=f"{job.data.train} holds",
            unsized=f"the images in {job.data.train} are not one square size ({meta.image_size})",
        )
    origin, facts = stated
    return _TrainFacts(
        train_images=facts.train_images,
        num_classes=facts.num_classes,
        channels=facts.channels,
        image_size_px=facts.image_size_px,
        mean=list(facts.mean),
        std=list(facts.std),
        task=facts.task,
        holder=f"{origin} describes",
        unsized=f"{origin} states no one image size (its images differ in size)",
    )


def _absent_hint(stated: tuple[str, DatasetFacts] | None, plan_only: bool) -> str:
    if stated is not None:
        return (
            f"; training reads the data itself ({stated[0]} stands in for it only in "
            "`rayaccel plan` and `rayaccel validate`)"
        )
    if plan_only:
        return (
            f"; to plan without the data, set data.card ({', '.join(CARD_NAMES)}) or "
            "data.facts (train_images, num_classes, channels, image_size_px, mean, std)"
        )
    return ""


def _assumed_line(
    absent: dict[str, str], stated: tuple[str, DatasetFacts], filled: dict[str, Any]
) -> str:
    """`assumed (data not found at ...): 1,281,167 training images, ... from card imagenet-1k`."""
    origin, facts = stated
    assumed = []
    if "train" in absent:
        assumed.append(f"{facts.train_images:,} training images")
    if "val" in absent and facts.val_images is not None:
        assumed.append(f"{facts.val_images:,} validation images")
    if "train" in absent:
        if "image_size_px" in filled:
            assumed.append(f"{filled['image_size_px']} px images")
        if "num_classes" in filled:
            assumed.append(f"{filled['num_classes']} classes")
        if "channels" in filled:
            assumed.append(f"{filled['channels']} channel" + "s" * (filled["channels"] > 1))
        assumed.extend(f"{name} {filled[name]}" for name in ("mean", "std") if name in filled)
        if filled.get("task") == "segmentation":
            assumed.append("segmentation masks")
    facts_text = ", ".join(assumed) or "nothing the plan needs"
    return f"assumed (data not found at {', '.join(absent.values())}): {facts_text}, from {origin}"


def _contradictions(data: DataConfig, metas: dict[str, ShardSetMeta]) -> tuple[str, ...]:
    """Where the data that exists says otherwise than `data.card` / `data.facts`."""
    stated = data.stated_facts
    if stated is None or not metas:
        return ()
    facts = stated[1]
    differences = []
    train = metas.get("train")
    if train is not None:
        where = data.train
        if train.count != facts.train_images:
            differences.append(
                f"{facts.train_images:,} training images ({where} holds {train.count:,})"
            )
        for name, stated_value, found in (
            ("classes", facts.num_classes, train.num_classes),
            ("channels", facts.channels, train.channels),
        ):
            if stated_value != found:
                differences.append(f"{stated_value} {name} ({where} holds {found})")
        size = facts.image_size_px
        if size is not None and train.image_size != (size, size):
            shown = "x".join(map(str, train.image_size)) if train.image_size else "mixed sizes"
            differences.append(f"{size} px images ({where} holds {shown})")
        for name in ("mean", "std"):
            stated_values, found = getattr(facts, name), getattr(train, name)
            if len(found) == len(stated_values) and any(
                abs(a - b) > _STATISTICS_TOLERANCE
                for a, b in zip(stated_values, found, strict=True)
            ):
                differences.append(
                    f"{name} {stated_values} ({where} holds {[round(v, 4) for v in found]})"
                )
        if train.task != facts.task:
            differences.append(f"{facts.task} data ({where} holds {train.task} data)")
    val = metas.get("val")
    if val is not None and facts.val_images is not None and val.count != facts.val_images:
        differences.append(
            f"{facts.val_images:,} validation images ({data.val} holds {val.count:,})"
        )
    if not differences:
        return ()
    said = f"data.card: {data.card}'s facts" if data.card else "data.facts: the stated facts"
    return (f"{said} differ from the data, whose metadata is used: " + "; ".join(differences),)


def dump_job(job: JobConfig) -> str:
    """The resolved job as YAML (written into every run folder)."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
