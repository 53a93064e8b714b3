"""The job YAML: its schema, loading, command-line overrides and readable errors.

A job is validated here, at the edge, and nowhere else: builders turn the validated
`JobConfig` into plain arguments for the plan, the data pipeline and the training loop, so
no component ever reads the job. Every problem is reported as one line naming its YAML path
(`train.optimizer.lr: must be > 0, got -1`) so a user can fix all of them in one go.
"""

from __future__ import annotations

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
    """Any timm model, built with `timm.create_model(name, **kwargs)`."""

    name: str = Field(min_length=1)
    kwargs: dict[str, Any] = {}

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
    """SGD with Nesterov momentum or AdamW; norms and biases never get weight decay."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


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
    seed: int = 0
    eval_every_epochs: int = Field(1, ge=1)
    log_every_steps: int = Field(20, ge=1)


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
    # Cap on the square-root-scaled LR; None means no cap.
    lr_max: float | None = Field(None, gt=0, le=100)
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


def _curriculum_tag(value: Any) -> str:
    if isinstance(value, dict):
        preset = value.get("preset")
        if preset is None:
            return "custom" if "stages" in value else "et++"
        return preset if isinstance(preset, str) else "et++"
    return getattr(value, "preset", "et++")


CurriculumConfig = Annotated[
    Annotated[EtppCurriculum, Tag("et++")] | Annotated[CustomCurriculum, Tag("custom")],
    Discriminator(_curriculum_tag),
]


# timm vision transformers built for one input size unless created with dynamic_img_size=True.
_FIXED_SIZE_VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "cait", "flexivit")


def curriculum_problems(job: JobConfig) -> list[str]:
    """Settings of a curriculum that validate one by one but cannot run together.

    Needs `data.image_size_px`; it is called again after the size was read from the dataset
    metadata when the job left it out.
    """
    from rayaccel.methods.curriculum import etpp_replay_factors, etpp_resolutions

    curriculum = job.curriculum
    full_px = job.data.image_size_px
    if curriculum is None or full_px is None:
        return []
    problems = []
    workers = job.scaling.num_workers
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
        if stage_batch is not None and stage_batch % workers:
            problems.append(
                f"{where}.global_batch_size: must be a multiple of scaling.num_workers="
                f"{workers}, got {stage_batch}"
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


# ---------------------------------------------------------------- scaling
class ScalingSection(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    # Ray resources each training worker reserves; None means 1 CPU (plus 1 GPU with use_gpu).
    resources_per_worker: dict[str, float] | None = None
    # CPUs each Ray Data decode/augment task reserves; fractions let them share cores.
    preprocess_cpus: float = Field(1.0, gt=0)

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


class JobConfig(_Strict):
    """A whole job: what to train on, what to train, how, on how much, and where to write."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    scaling: ScalingSection = ScalingSection()
    run: RunSection
    # None trains every epoch at full resolution, as the baseline.
    curriculum: CurriculumConfig | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> JobConfig:
        problems = []
        workers = self.scaling.num_workers
        batch = self.train.global_batch_size
        if batch < workers:
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
        problems.extend(curriculum_problems(self))
        if problems:
            raise ValueError(_CROSS_MARK + "\n".join(problems))
        return self


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
    """Applies `section.key=value` overrides; values are parsed as YAML (`3`, `true`, `[1,2]`)."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
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


def load_job(path: str | Path, overrides: list[str] = (), *, check_paths: bool = True) -> JobConfig:
    """Reads, overrides and validates a job file.

    Args:
        path: The job YAML.
        overrides: `section.key=value` strings from the command line.
        check_paths: Also check that the data folders exist and hold rayaccel metadata,
            and fill image size, channels, classes and mean/std from it where the job left
            them out.
    """
    raw = apply_overrides(read_yaml(path), list(overrides))
    job = parse_job(raw, source=str(path))
    if check_paths:
        job = resolve_data(job, source=str(path))
    return job


def resolve_data(job: JobConfig, *, source: str = "job") -> JobConfig:
    """Checks the data folders and fills data fields the job left to the dataset metadata."""
    from rayaccel.data.metadata import read_meta

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
                f"{source}: curriculum.preset: must be 'et++' or 'custom', got {ctx.get('tag')!r}"
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
    }
    key = ".".join(loc)
    if key in sections:
        return list(sections[key].model_fields)
    if key == "model":
        model = ResNet9Model if tags.get("model") == "resnet9" else TimmModel
        return list(model.model_fields)
    if key == "curriculum":
        return sorted(set(EtppCurriculum.model_fields) | set(CustomCurriculum.model_fields))
    if re.fullmatch(r"curriculum\.stages\.\d+", key):
        return list(CurriculumStage.model_fields)
    if key == "train.schedule":
        return sorted(set(CosineSchedule.model_fields) | set(PiecewiseSchedule.model_fields))
    return []
