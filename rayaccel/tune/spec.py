"""The search file of `rayaccel tune`: its schema, loading and readable errors.

A search file names a base job (a path as typed on the command line, like data paths in jobs),
the kind of search and its budget, what each trial reserves and how many trials run at once.
It is validated here, at the edge, with the same one-line-per-problem errors as jobs
(`searches/x.yaml: candidates_px: must be a list, got 14`); the searches get plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from rayaccel.config import ConfigError, read_yaml
from rayaccel.config.errors import format_errors
from rayaccel.core.schema import Strict, variant_key_error


class TrialResources(Strict):
    """What one trial's training reserves; replaces the base job's `scaling` section."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    # CPUs each Ray Data decode task of a trial reserves.
    preprocess_cpus: float = Field(0.5, gt=0)


class _SearchBase(Strict):
    # The base job, e.g. jobs/quickstart-etpp.yaml (relative to the working directory).
    job: str = Field(min_length=1)
    # Dotted job fields set before the search, e.g. {train.epochs: 2}.
    job_overrides: dict[str, Any] = {}
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    # The search folder is storage_path/name: trial runs, Tune state, results and best files.
    storage_path: str = "runs/searches"
    trial: TrialResources = TrialResources()
    max_concurrent_trials: int = Field(2, ge=1)

    @field_validator("job_overrides")
    @classmethod
    def _dotted(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        bad = [key for key in overrides if "." not in key]
        if bad:
            raise ValueError(f"keys must be dotted job fields like train.epochs, got {bad}")
        return overrides


class CurriculumSearch(_SearchBase):
    """EfficientTrain++ Algorithm 2: pick each stage's resolution greedily."""

    kind: Literal["curriculum"]
    num_stages: int = Field(ge=1, le=20)
    # Resolutions tried for every stage; each <= the job's image size.
    candidates_px: list[int] = Field(min_length=1)
    # Total training cost allowed, relative to the baseline (train.epochs at full size);
    # None: the job's curriculum.budget_epochs / train.epochs.
    beta: float | None = Field(None, gt=0, le=10)
    # Whole epochs round a stage's compute; a candidate whose curriculum would cost more than
    # beta * (1 + cost_tolerance) is not tried.
    cost_tolerance: float = Field(0.1, ge=0, le=1)
    # The proxy score: full-resolution fine-tune of each stage's result for this many epochs.
    proxy_epochs: int = Field(1, ge=1)
    # Peak LR of the fine-tune (cosine to 0); None: train.optimizer.lr / 10.
    proxy_lr: float | None = Field(None, gt=0, le=100)

    @field_validator("candidates_px")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if any(s < 8 for s in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"must be distinct resolutions >= 8 px, got {sizes}")
        return sorted(sizes)


class LrScalingSearch(_SearchBase):
    """Best LR per batch size, then `lr = lr_base * (B / base_batch)^alpha` fitted to them."""

    kind: Literal["lr_scaling"]
    batch_sizes: list[int] = Field(min_length=2)
    # Each trial's LR is multiplier * lr * sqrt(B / base_batch): the square-root rule is the
    # centre of the grid and the multipliers bracket it.
    lr_multipliers: list[float] = Field(min_length=1)
    # Epochs of every trial (full resolution, no curriculum).
    epochs: int = Field(ge=1)
    # ASHA: epochs every trial trains before the worse half can be stopped.
    grace_epochs: int = Field(1, ge=1)
    # The batch the job's train.optimizer.lr belongs to; None: train.global_batch_size.
    base_batch: int | None = Field(None, ge=1)

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, batches: list[int]) -> list[int]:
        if any(b < 1 for b in batches) or len(set(batches)) != len(batches):
            raise ValueError(f"must be distinct batch sizes >= 1, got {batches}")
        return sorted(batches)

    @field_validator("lr_multipliers")
    @classmethod
    def _multipliers(cls, multipliers: list[float]) -> list[float]:
        if any(m <= 0 for m in multipliers) or len(set(multipliers)) != len(multipliers):
            raise ValueError(f"must be distinct numbers > 0, got {multipliers}")
        return sorted(multipliers)

    @model_validator(mode="after")
    def _grace(self) -> LrScalingSearch:
        if self.grace_epochs > self.epochs:
            raise ValueError(f"grace_epochs: must be <= epochs={self.epochs}")
        return self


class Choice(Strict):
    choice: list[Any] = Field(min_length=1)


class Uniform(Strict):
    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] >= bounds[1]:
            raise ValueError(f"must be [low, high] with low < high, got {list(bounds)}")
        return bounds


class LogUniform(Strict):
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"must be [low, high] with 0 < low < high, got {list(bounds)}")
        return bounds


def _domain_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in ("choice", "uniform", "loguniform") else None
    return None


Domain = Annotated[
    Annotated[Choice, Tag("choice")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[LogUniform, Tag("loguniform")],
    Discriminator(
        _domain_tag,
        custom_error_type="invalid_domain",
        custom_error_message="must be one of {choice: [...]}, {uniform: [low, high]}, "
        "{loguniform: [low, high]}",
    ),
]


class FieldSearch(_SearchBase):
    """Any job fields, sampled from their domains, with ASHA stopping the worse trials."""

    kind: Literal["fields"]
    # Dotted job field -> domain, e.g. {train.optimizer.lr: {loguniform: [0.05, 0.5]}}.
    space: dict[str, Domain] = Field(min_length=1)
    num_samples: int = Field(ge=1)
    # Epochs of every trial; None: the job's train.epochs.
    epochs: int | None = Field(None, ge=1)
    grace_epochs: int = Field(1, ge=1)
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _dotted(cls, space: dict[str, Any]) -> dict[str, Any]:
        bad = [key for key in space if "." not in key]
        if bad:
            raise ValueError(f"keys must be dotted job fields like train.optimizer.lr, got {bad}")
        return space


def _kind_tag(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in SEARCH_KINDS else None


SEARCH_KINDS = ("curriculum", "lr_scaling", "fields")

SearchConfig = Annotated[
    Annotated[CurriculumSearch, Tag("curriculum")]
    | Annotated[LrScalingSearch, Tag("lr_scaling")]
    | Annotated[FieldSearch, Tag("fields")],
    Discriminator(
        _kind_tag,
        custom_error_type=variant_key_error("kind"),
        custom_error_message=f"must be one of {', '.join(SEARCH_KINDS)}",
    ),
]


_SEARCH = TypeAdapter(SearchConfig)


def load_search(path: str | Path) -> CurriculumSearch | LrScalingSearch | FieldSearch:
    """Reads and validates a search file; raises `ConfigError` with one line per problem."""
    raw = read_yaml(path)
    try:
        return _SEARCH.validate_python(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, SearchConfig, str(path))) from None
