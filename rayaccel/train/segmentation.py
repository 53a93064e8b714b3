"""Semantic segmentation: per-sample pixel loss, confusion matrix, mean IoU, pixel accuracy.

Pure functions of tensors, so the training loop only calls them and tests check them against
hand-computed values. The loss is per sample (not one batch mean) because sample-level methods
(InfoBatch's scores, bad-row masking, loss weights) work on one loss per row, as they do for
classification. Metrics go through a confusion matrix because it is additive: workers sum theirs
(one all-reduce of a C x C int64 tensor) and mIoU is computed once from the total, which is exact,
whereas averaging per-batch or per-worker IoUs is not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
"""Mask value of pixels that count neither in the loss nor in the metrics (uint8's largest)."""


def per_sample_pixel_losses(
    logits: torch.Tensor,
    masks: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Pixel cross-entropy averaged over each sample's non-ignored pixels.

    Computed in float32 whatever the logits' dtype, because a sum over ~50k pixels per image in
    bfloat16 loses the small per-pixel terms.

    Args:
        logits: (N, C, H, W) scores.
        masks: (N, H, W) integer class per pixel (any integer dtype, e.g. uint8 from the
            pipeline); ``ignore_index`` pixels are skipped.
        label_smoothing: as in ``F.cross_entropy``.
        ignore_index: mask value to skip.

    Returns:
        (N,) float32 losses; a sample without any valid pixel gets 0 (and a zero gradient).
    """
    targets = masks.long()
    pixel_losses = F.cross_entropy(
        logits.float(),
        targets,
        reduction="none",
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )  # ignored pixels are 0 here
    valid_pixels = (targets != ignore_index).flatten(1).sum(dim=1)
    return pixel_losses.flatten(1).sum(dim=1) / valid_pixels.clamp(min=1)


def confusion_matrix(
    logits: torch.Tensor, masks: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel counts by (target class, predicted class), on the logits' device.

    Args:
        logits: (N, C, H, W) scores; the prediction is the argmax over C.
        masks: (N, H, W) integer targets; ``ignore_index`` pixels are not counted.
        num_classes: C.
        ignore_index: mask value to skip.

    Returns:
        (C, C) int64: row = target class, column = predicted class.
    """
    predictions = logits.argmax(dim=1).flatten()
    targets = masks.to(device=logits.device, dtype=torch.long).flatten()
    valid = targets != ignore_index
    pairs = targets[valid] * num_classes + predictions[valid]
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """Mean and per-class intersection over union, TP / (TP + FP + FN).

    A class absent from both targets and predictions has no IoU (NaN in the list) and is left
    out of the mean, so a rare class missing from an evaluation set does not count as 0.

    Args:
        confusion: (C, C) counts from ``confusion_matrix`` (rows target, columns prediction).

    Returns:
        (mean IoU over the present classes, per-class IoUs); the mean is NaN if no class is
        present.
    """
    counts = confusion.double().cpu()
    true_positives = counts.diagonal()
    union = counts.sum(dim=0) + counts.sum(dim=1) - true_positives
    per_class = [
        float(tp / total) if total > 0 else math.nan
        for tp, total in zip(true_positives.tolist(), union.tolist(), strict=True)
    ]
    present = [iou for iou in per_class if not math.isnan(iou)]
    return (sum(present) / len(present) if present else math.nan), per_class


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Fraction of counted pixels whose prediction is right; NaN if none were counted."""
    total = int(confusion.sum())
    return int(confusion.diagonal().sum()) / total if total else math.nan
