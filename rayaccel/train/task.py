"""What the loop trains for: one label per image (classification) or per pixel (segmentation).

The loop is the same for both; a task supplies the three things that differ: the per-sample
losses a step averages (method hooks such as InfoBatch reweight per sample, so a segmentation
loss is first averaged over each image's pixels), the training accuracy counts, and the
validation metrics, accumulated per batch and reduced over workers. Segmentation reports
pixel accuracy as `acc` (so reports, searches and benchmarks read one field) and `miou`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rayaccel.core.distributed import all_reduce_sum
from rayaccel.train.segmentation import (
    IGNORE_INDEX,
    confusion_matrix,
    mean_iou,
    per_sample_pixel_losses,
    pixel_accuracy,
)


class ClassificationTask:
    """Cross-entropy on one label per image; top-1 accuracy."""

    name = "classification"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def losses(self, logits: Tensor, labels: Tensor, targets: Tensor | None, smoothing: float):
        """Per-sample losses (N,): cross-entropy on `labels` smoothed by `smoothing`, or on
        `targets`, soft labels (mixup/cutmix) that already carry the job's smoothing, as
        they are (`sum(-target * log_softmax(logits))`, timm's `SoftTargetCrossEntropy` per
        sample, so methods can still weight samples)."""
        if targets is not None:
            return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="none")

    def correct(
        self, logits: Tensor, labels: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(correct, counted) of a batch, as float64 scalars on the logits' device.

        With soft `targets` (a mixed batch) a prediction is right when it is the target's
        dominant label, the one with the largest weight: the sample's own label while its
        share is above one half (lambda, or the CutMix box's complement), else its partner's.
        """
        if targets is not None:
            labels = targets.argmax(1)
        correct = (logits.argmax(1) == labels).sum().double()
        return correct, torch.tensor(labels.numel(), dtype=torch.float64, device=logits.device)

    def new_eval(self, device: torch.device) -> Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, images

    def eval_add(self, sums: Tensor, logits: Tensor, labels: Tensor) -> None:
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += labels.numel()

    def eval_result(self, sums: Tensor) -> dict:
        loss_sum, correct, count = all_reduce_sum(sums).tolist()
        return {
            "loss": loss_sum / max(count, 1),
            "acc": correct / max(count, 1),
            "images": int(count),
        }


class SegmentationTask:
    """Pixel cross-entropy averaged per image; pixel accuracy and mean IoU."""

    name = "segmentation"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def losses(self, logits: Tensor, labels: Tensor, targets: Tensor | None, smoothing: float):
        if targets is not None:
            raise ValueError("segmentation takes per-pixel labels, not soft (mixup) targets")
        return per_sample_pixel_losses(logits, labels, label_smoothing=smoothing)

    def correct(
        self, logits: Tensor, labels: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(correct pixels, counted pixels) of a batch, as float64 scalars (segmentation
        batches are never mixed: `targets` is always None)."""
        valid = labels != IGNORE_INDEX
        correct = ((logits.argmax(1) == labels) & valid).sum().double()
        return correct, valid.sum().double()

    def new_eval(self, device: torch.device) -> Tensor:
        # loss sum, images, then the flattened confusion matrix (rows: target, cols: prediction)
        return torch.zeros(2 + self.num_classes**2, dtype=torch.float64, device=device)

    def eval_add(self, sums: Tensor, logits: Tensor, labels: Tensor) -> None:
        sums[0] += per_sample_pixel_losses(logits, labels).double().sum()
        sums[1] += labels.shape[0]
        sums[2:] += confusion_matrix(logits, labels, self.num_classes).flatten().double()

    def eval_result(self, sums: Tensor) -> dict:
        sums = all_reduce_sum(sums)
        confusion = sums[2:].view(self.num_classes, self.num_classes).round().long().cpu()
        miou, _ = mean_iou(confusion)
        count = int(sums[1].item())
        return {
            "loss": sums[0].item() / max(count, 1),
            "acc": pixel_accuracy(confusion),
            "miou": miou,
            "images": count,
        }


def make_task(name: str, num_classes: int) -> ClassificationTask | SegmentationTask:
    """The task object for `ModelSpec.task` (`rayaccel.train.spec`)."""
    tasks = {"classification": ClassificationTask, "segmentation": SegmentationTask}
    if name not in tasks:
        raise ValueError(f"task must be one of {sorted(tasks)}, got {name!r}")
    return tasks[name](num_classes)
