"""EfficientNetV2 progressive learning with adaptive regularisation.

Split training into M stages (4 in the release); stage i trains at image
size ``S_i = S_0 + (S_e - S_0) * i / (M - 1)`` with every regularisation strength moved
linearly from its start to its end value the same way. Small images need weak regularisation
and large images strong; growing the size without growing the regularisation loses accuracy.

This module holds the pure parts: the per-stage values (``progressive_stages``), the release
presets, applying dropout / drop-path rates to a timm model (``set_regularisation``) and
batch-level mixup / cutmix (``mixup_cutmix``). The real resize happens in the data pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ProgressiveStage:
    """One progressive-learning stage, fully resolved.

    Attributes:
        index: 0-based stage number i.
        start_epoch: First epoch of the stage (stages are contiguous from epoch 0).
        epochs: Whole epochs trained in the stage.
        size_px: Square training image side in pixels.
        randaug_magnitude: RandAugment magnitude.
        mixup_alpha: Beta(alpha, alpha) parameter of mixup; 0 disables it.
        cutmix_alpha: Beta(alpha, alpha) parameter of cutmix; 0 disables it.
        dropout_rate: Dropout before the classifier.
        drop_path_rate: Stochastic-depth rate of the deepest block (timm's ``drop_path_rate``).
    """

    index: int
    start_epoch: int
    epochs: int
    size_px: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float
    drop_path_rate: float


def _linear(start: float, end: float, index: int, num_stages: int) -> float:
    """``start + (end - start) * i / (M - 1)``; a single stage uses the end value."""
    if num_stages == 1:
        return float(end)
    return start + (end - start) * index / (num_stages - 1)


def _round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves up), never below ``multiple``."""
    return max(multiple, multiple * math.floor(value / multiple + 0.5))


def progressive_stages(
    num_stages: int,
    *,
    size_start_px: int,
    size_end_px: int,
    randaug_start: float,
    randaug_end: float,
    mixup_start: float,
    mixup_end: float,
    cutmix_start: float = 0.0,
    cutmix_end: float = 0.0,
    dropout_start: float,
    dropout_end: float,
    drop_path_start: float = 0.0,
    drop_path_end: float = 0.0,
    total_epochs: int,
    size_multiple_px: int = 8,
) -> list[ProgressiveStage]:
    """The per-stage sizes and regularisation strengths of progressive learning.

    Every value follows ``v_i = v_0 + (v_e - v_0) * i / (M - 1)``; with
    one stage the end values are used. Sizes: the first and last stage use ``size_start_px``
    and ``size_end_px`` exactly (evaluation runs at the final size, so it must be the one asked
    for); sizes in between are rounded to the nearest multiple of ``size_multiple_px``. The
    default 8 keeps every stage's tensors aligned for tensor cores and divisible by 8 for
    stride-8 feature maps; use 16 (or a ViT's patch size) for patch-based models and 4 or 2
    for tiny images such as 28-px Fashion-MNIST.

    Epochs: ``total_epochs // M`` per stage, the remainder given one epoch each to the last
    stages (which train at the evaluation size), so the stages sum to ``total_epochs``.

    Args:
        num_stages: M, >= 1 (4 in the release).
        size_start_px, size_end_px: Image side of the first and last stage, >= 1.
        randaug_start, randaug_end: RandAugment magnitudes, >= 0.
        mixup_start, mixup_end: Mixup alphas, >= 0.
        cutmix_start, cutmix_end: Cutmix alphas, >= 0 (the release uses none).
        dropout_start, dropout_end: Classifier dropout rates in [0, 1).
        drop_path_start, drop_path_end: Drop-path rates in [0, 1).
        total_epochs: Epochs of the whole run, >= ``num_stages``.
        size_multiple_px: Rounding step of the intermediate sizes, >= 1.

    Returns:
        ``num_stages`` stages in order.

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    if not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    if not isinstance(total_epochs, int) or total_epochs < num_stages:
        raise ValueError(
            f"total_epochs must be an int >= num_stages ({num_stages}) so every stage trains "
            f"at least one epoch, got {total_epochs!r}"
        )
    for name, value in (
        ("size_start_px", size_start_px),
        ("size_end_px", size_end_px),
        ("size_multiple_px", size_multiple_px),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value, upper in (
        ("randaug_start", randaug_start, math.inf),
        ("randaug_end", randaug_end, math.inf),
        ("mixup_start", mixup_start, math.inf),
        ("mixup_end", mixup_end, math.inf),
        ("cutmix_start", cutmix_start, math.inf),
        ("cutmix_end", cutmix_end, math.inf),
        ("dropout_start", dropout_start, 1),
        ("dropout_end", dropout_end, 1),
        ("drop_path_start", drop_path_start, 1),
        ("drop_path_end", drop_path_end, 1),
    ):
        if not (isinstance(value, int | float) and 0 <= value < upper):
            bound = "a finite number >= 0" if upper == math.inf else "in [0, 1)"
            raise ValueError(f"{name} must be {bound}, got {value!r}")

    epochs_per_stage, remainder = divmod(total_epochs, num_stages)
    stages = []
    start_epoch = 0
    for i in range(num_stages):
        if i == num_stages - 1:
            size_px = size_end_px
        elif i == 0:
            size_px = size_start_px
        else:
            size = _linear(size_start_px, size_end_px, i, num_stages)
            size_px = _round_to_multiple(size, size_multiple_px)
        epochs = epochs_per_stage + (1 if i >= num_stages - remainder else 0)
        stages.append(
            ProgressiveStage(
                index=i,
                start_epoch=start_epoch,
                epochs=epochs,
                size_px=size_px,
                randaug_magnitude=_linear(randaug_start, randaug_end, i, num_stages),
                mixup_alpha=_linear(mixup_start, mixup_end, i, num_stages),
                cutmix_alpha=_linear(cutmix_start, cutmix_end, i, num_stages),
                dropout_rate=_linear(dropout_start, dropout_end, i, num_stages),
                drop_path_rate=_linear(drop_path_start, drop_path_end, i, num_stages),
            )
        )
        start_epoch += epochs
    return stages


def _preset(
    size_end_px: int, randaug_end: float, mixup_end: float, dropout_end: float
) -> MappingProxyType:
    return MappingProxyType(
        {
            "num_stages": 4,
            "size_start_px": 128,
            "size_end_px": size_end_px,
            "randaug_start": 5.0,
            "randaug_end": randaug_end,
            "mixup_start": 0.0,
            "mixup_end": mixup_end,
            "cutmix_start": 0.0,
            "cutmix_end": 0.0,
            "dropout_start": 0.1,
            "dropout_end": dropout_end,
            "drop_path_start": 0.2,
            "drop_path_end": 0.2,
        }
    )


# Keyword arguments of `progressive_stages` (all but `total_epochs`) for the ImageNet release.
# From the EfficientNetV2 paper: 4 stages; sizes 128 -> 300 (S) and 128 -> 384 (M, L; the
# paper gives "300/384" for three models, and M and L share the larger training size); RandAugment
# 5 -> 10 / 15 / 20; mixup 0 -> 0 / 0.2 / 0.5. Our choices, not in the paper's table: dropout scheduled
# 0.1 -> 0.3 / 0.4 / 0.5 (the section says the paper schedules dropout but the code fixes it;
# these are the paper's ranges as we recall them, to check against its table), drop path fixed
# at 0.2 (stochastic depth with survival 0.8 throughout), no cutmix.
EFFICIENTNETV2_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        "s": _preset(size_end_px=300, randaug_end=10.0, mixup_end=0.0, dropout_end=0.3),
        "m": _preset(size_end_px=384, randaug_end=15.0, mixup_end=0.2, dropout_end=0.4),
        "l": _preset(size_end_px=384, randaug_end=20.0, mixup_end=0.5, dropout_end=0.5),
    }
)


def efficientnetv2_preset(variant: str) -> dict[str, Any]:
    """A copy of the release settings for ``variant``, ready for ``progressive_stages(**...)``.

    Raises:
        ValueError: If ``variant`` is not one of ``EFFICIENTNETV2_PRESETS``.
    """
    if variant not in EFFICIENTNETV2_PRESETS:
        raise ValueError(
            f"EfficientNetV2 preset must be one of {sorted(EFFICIENTNETV2_PRESETS)}, "
            f"got {variant!r}"
        )
    return dict(EFFICIENTNETV2_PRESETS[variant])
