"""Dataset cards: the facts planning needs about a data set, for when its data is not here.

`rayaccel plan` and `rayaccel validate` read a data set's size, classes, channels, image size
and normalisation statistics from the prepared split's `metadata.json`. A job written for a
cluster's data (ImageNet on `/data`) names a card (`data.card: imagenet-1k`) or states the
facts itself (`data.facts:`), so it can be checked and planned on a laptop. Training never
uses them: `rayaccel run` reads the data, and where the data exists its metadata wins.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from rayaccel.core.schema import Strict


class DatasetFacts(Strict):
    """What a plan needs to know about a data set without reading it (`data.facts:`)."""

    train_images: int = Field(ge=1)
    """Images in the training split."""
    val_images: int | None = Field(None, ge=1)
    """Only compared with the data when it exists; a plan does not need it."""
    num_classes: int = Field(ge=2)
    """Classes."""
    channels: Literal[1, 3]
    """Image channels."""
    image_size_px: int | None = Field(None, ge=8, le=4096)
    """None: the images differ in size, so the job must set data.image_size_px."""
    mean: list[float]
    """Per channel, in [0, 1] units: population statistics of the training split, as `rayaccel data
    prepare` computes them.
    """
    std: list[float]
    """Per channel, in [0, 1] units, as mean."""
    task: Literal["classification", "segmentation"] = "classification"
    """classification or segmentation."""

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, values: list[float], info: ValidationInfo) -> list[float]:
        channels = info.data.get("channels")
        if channels is not None and len(values) != channels:
            raise ValueError(f"needs one value per channel ({channels}), got {len(values)}")
        if info.field_name == "std" and any(s <= 0 for s in values):
            raise ValueError(f"every std must be > 0, got {values}")
        if info.field_name == "mean" and any(not 0 <= m <= 1 for m in values):
            raise ValueError(f"every mean must be in [0, 1] (pixel units), got {values}")
        return values


# The published split sizes. Mean and std: population statistics over the training images,
# the form `rayaccel data prepare` records (Fashion-MNIST's match a prepared copy to 4 digits;
# CIFAR's are the widely quoted ones). ImageNet's are torchvision's; its images differ in
# size, so its card has no image_size_px and its jobs set data.image_size_px.
CARDS: dict[str, DatasetFacts] = {
    "imagenet-1k": DatasetFacts(
        train_images=1_281_167,
        val_images=50_000,
        num_classes=1000,
        channels=3,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    ),
    "cifar10": DatasetFacts(
        train_images=50_000,
        val_images=10_000,
        num_classes=10,
        channels=3,
        image_size_px=32,
        mean=[0.4914, 0.4822, 0.4465],
        std=[0.2470, 0.2435, 0.2616],
    ),
    "cifar100": DatasetFacts(
        train_images=50_000,
        val_images=10_000,
        num_classes=100,
        channels=3,
        image_size_px=32,
        mean=[0.5071, 0.4865, 0.4409],
        std=[0.2673, 0.2564, 0.2762],
    ),
    "fashion-mnist": DatasetFacts(
        train_images=60_000,
        val_images=10_000,
        num_classes=10,
        channels=1,
        image_size_px=28,
        mean=[0.2860],
        std=[0.3530],
    ),
}
CARD_NAMES = tuple(CARDS)
