"""The `random_erasing:` section of a job and what a worker gets of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from rayaccel.core.schema import Strict

if TYPE_CHECKING:
    from rayaccel.config.job import JobConfig
    from rayaccel.plan import Plan


class RandomErasingSection(Strict):
    """Random erasing of the normalised inputs on the worker, as timm's training transform
    does it (`timm.data.RandomErasing`; timm's ImageNet recipes use probability 0.25, mode
    `pixel`).

    Each image, with `probability`, gets 1 to `max_count` rectangles covering `min_area` to
    `max_area` of it in total, of aspect ratio `min_aspect` to 1 / `min_aspect`, filled with
    per-pixel normal noise (`pixel`), one normal colour per channel (`rand`) or zeros
    (`const`, the dataset's mean colour after normalisation). Runs after the EfficientTrain++
    crop and replay (replayed samples are erased anew) and, by its place in the registry,
    before mixup.
    """

    probability: float = Field(0.25, ge=0, le=1)
    """Share of images erased (timm's ImageNet recipes: 0.25)."""
    mode: Literal["pixel", "rand", "const"] = "pixel"
    """Fill: pixel (per-pixel normal noise), rand (one normal colour per channel) or const (zeros,
    the mean colour)."""
    min_area: float = Field(0.02, gt=0, le=1)
    """Smallest total erased area, as a fraction of the image."""
    max_area: float = Field(1 / 3, gt=0, le=1)
    """Largest total erased area, as a fraction of the image."""
    min_aspect: float = Field(0.3, gt=0, le=1)
    """Rectangles' aspect ratios lie in [min_aspect, 1 / min_aspect]."""
    max_count: int = Field(1, ge=1, le=16)
    """Rectangles per erased image: 1 to this many."""

    @model_validator(mode="after")
    def _areas(self) -> RandomErasingSection:
        if self.min_area > self.max_area:
            raise ValueError(f"max_area: must be >= min_area={self.min_area}, got {self.max_area}")
        return self


@dataclass(frozen=True)
class RandomErasingSettings:
    probability: float
    mode: str
    min_area: float
    max_area: float
    min_aspect: float
    max_count: int


def worker_settings(job: JobConfig, plan: Plan) -> RandomErasingSettings | None:
    section = job.random_erasing
    return None if section is None else RandomErasingSettings(**section.model_dump())
