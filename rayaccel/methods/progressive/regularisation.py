"""The regularisation a progressive stage sets: dropout and drop path on timm models, and
mixup / cutmix of a batch."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


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
