"""EfficientNetV2 progressive learning with adaptive regularisation.

METHODS.md section 3: split training into M stages (4 in the release); stage i trains at image
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

import numpy as np
import torch
from torch import Tensor, nn


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

    Every value follows ``v_i = v_0 + (v_e - v_0) * i / (M - 1)`` (METHODS.md section 3); with
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
# From METHODS.md section 3: 4 stages; sizes 128 -> 300 (S) and 128 -> 384 (M, L; the section
# gives "300/384" for three models, and M and L share the larger training size); RandAugment
# 5 -> 10 / 15 / 20; mixup 0 -> 0 / 0.2 / 0.5. Our choices, not in METHODS.md: dropout scheduled
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


def set_regularisation(model: nn.Module, dropout_rate: float, drop_path_rate: float) -> None:
    """Applies a stage's dropout and drop-path rates to a timm model in place.

    Dropout: sets ``model.drop_rate`` (read in ``forward_head`` by timm's ResNet, EfficientNet
    and many others) and the ``p`` of the head's dropout module where timm builds one
    (``model.head_drop`` in ViTs, ``model.head.drop`` in ClassifierHead-style heads such as
    ConvNeXt's). Attention and projection dropouts are left alone.

    Drop path: timm raises the rate linearly with depth, so every ``DropPath`` keeps its share
    of the deepest block's rate, recorded the first time this function sees the module (as the
    attribute ``rayaccel_drop_path_share``); ``drop_path_rate`` is then the deepest block's rate,
    the meaning of timm's ``drop_path_rate``. timm only creates ``DropPath`` modules for a
    positive rate, so build the model with the schedule's largest rate (e.g.
    ``timm.create_model(name, drop_path_rate=0.2)``) and call this at each stage start.

    Args:
        model: A timm model (or any model with those attributes).
        dropout_rate: Classifier dropout in [0, 1).
        drop_path_rate: Deepest block's drop-path rate in [0, 1).

    Raises:
        ValueError: If a rate is out of range, or is positive but the model has nothing to
            apply it to.
    """
    # Imported here, as in rayaccel.models: timm takes seconds to import and planning, which
    # uses the stage functions above, never needs it.
    from timm.layers import DropPath

    for name, rate in (("dropout_rate", dropout_rate), ("drop_path_rate", drop_path_rate)):
        if not 0 <= rate < 1:
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    n_dropout_targets = 0
    if hasattr(model, "drop_rate"):
        model.drop_rate = dropout_rate
        n_dropout_targets += 1
    head = getattr(model, "head", None)
    for dropout in (getattr(model, "head_drop", None), getattr(head, "drop", None)):
        if isinstance(dropout, nn.Dropout):
            dropout.p = dropout_rate
            n_dropout_targets += 1
    if dropout_rate > 0 and n_dropout_targets == 0:
        raise ValueError(
            f"dropout_rate={dropout_rate} but {type(model).__name__} has no drop_rate, "
            f"head_drop or head.drop to set; use a timm model or a dropout rate of 0"
        )

    drop_paths = [module for module in model.modules() if isinstance(module, DropPath)]
    if drop_path_rate > 0 and not drop_paths:
        raise ValueError(
            f"drop_path_rate={drop_path_rate} but {type(model).__name__} has no DropPath "
            f"modules; build it with timm.create_model(..., drop_path_rate=<largest stage rate>)"
        )
    unrecorded = [m for m in drop_paths if not hasattr(m, "rayaccel_drop_path_share")]
    if unrecorded:
        deepest = max(m.drop_prob for m in unrecorded)
        for module in unrecorded:
            module.rayaccel_drop_path_share = module.drop_prob / deepest if deepest > 0 else 1.0
    for module in drop_paths:
        module.drop_prob = drop_path_rate * module.rayaccel_drop_path_share


def mixup_cutmix(
    images: Tensor,
    labels_onehot: Tensor,
    alpha_mixup: float,
    alpha_cutmix: float,
    generator: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """Mixup or cutmix of a whole batch with a random permutation of itself.

    One lambda per batch is drawn from Beta(alpha, alpha). When both alphas are positive, each
    batch uses cutmix or mixup with probability 1/2. Mixup blends images and labels,
    ``lam * x + (1 - lam) * x[perm]``. Cutmix pastes a box of the partner image whose sides are
    ``sqrt(1 - lam)`` times the image's, centred on a uniformly drawn pixel and clipped at the
    border; lambda is then corrected to ``1 - box_area / image_area``, so the label weights
    equal the pixel shares exactly.

    In the loop this runs on the device after replay (so replayed samples meet new partners)
    and after label smoothing (labels are already soft). The random draws use a NumPy generator
    on the host: lambda and the box are Python numbers the slicing needs anyway, so no device
    value is read back, and NumPy can draw Beta variates from a seeded generator.

    Args:
        images: Floating-point ``(N, C, H, W)`` batch.
        labels_onehot: Floating-point ``(N, num_classes)`` targets (one-hot or smoothed).
        alpha_mixup: Mixup's Beta parameter, >= 0; 0 disables mixup.
        alpha_cutmix: Cutmix's Beta parameter, >= 0; 0 disables cutmix.
        generator: Source of lambda, the choice, the box and the permutation.

    Returns:
        ``(images, labels)`` mixed; the inputs themselves when both alphas are 0.

    Raises:
        ValueError: If shapes, dtypes or alphas are invalid.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a floating-point (N, C, H, W) tensor, got dtype {images.dtype} "
            f"and shape {tuple(images.shape)}"
        )
    n_samples, _, height_px, width_px = images.shape
    if (
        labels_onehot.ndim != 2
        or labels_onehot.shape[0] != n_samples
        or not labels_onehot.is_floating_point()
    ):
        raise ValueError(
            f"labels_onehot must be a floating-point ({n_samples}, num_classes) tensor, got "
            f"dtype {labels_onehot.dtype} and shape {tuple(labels_onehot.shape)}"
        )
    if not (alpha_mixup >= 0 and alpha_cutmix >= 0):
        raise ValueError(
            f"alpha_mixup and alpha_cutmix must be >= 0, got {alpha_mixup!r} and {alpha_cutmix!r}"
        )
    if alpha_mixup == 0 and alpha_cutmix == 0:
        return images, labels_onehot
    use_cutmix = alpha_cutmix > 0 and (alpha_mixup == 0 or generator.random() < 0.5)
    alpha = alpha_cutmix if use_cutmix else alpha_mixup
    lam = float(generator.beta(alpha, alpha))
    permutation = torch.from_numpy(generator.permutation(n_samples)).to(images.device)
    partner_images = images[permutation]
    if use_cutmix:
        box_h = round(height_px * math.sqrt(1 - lam))
        box_w = round(width_px * math.sqrt(1 - lam))
        centre_y, centre_x = int(generator.integers(height_px)), int(generator.integers(width_px))
        top, left = centre_y - box_h // 2, centre_x - box_w // 2
        top, bottom = max(top, 0), min(top + box_h, height_px)
        left, right = max(left, 0), min(left + box_w, width_px)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partner_images[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height_px * width_px)
    else:
        mixed = images.lerp(partner_images, 1 - lam)
    labels = labels_onehot.lerp(labels_onehot[permutation], 1 - lam)
    return mixed, labels
