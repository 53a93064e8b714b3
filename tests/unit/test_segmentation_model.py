"""Segmentation model (timm backbone + FPN) and the pure loss and metric functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rayaccel.models import SegmentationFPN, build_model
from rayaccel.train.segmentation import (
    confusion_matrix,
    mean_iou,
    per_sample_pixel_losses,
    pixel_accuracy,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has 2 cores shared with a Ray session; more threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("backbone", "shape"),
    [
        ("resnet18", (1, 1, 28, 28)),
        ("resnet10t", (2, 3, 64, 64)),
        ("resnet10t", (2, 1, 31, 29)),
        ("mobilenetv3_small_100", (1, 1, 28, 28)),
        ("mobilenetv3_small_100", (2, 3, 37, 23)),
        ("efficientnet_b0", (2, 1, 28, 28)),
    ],
)
def test_logits_have_the_input_resolution_and_every_parameter_learns(backbone, shape):
    batch, channels, height, width = shape
    model = build_model(backbone, num_classes=11, in_chans=channels, task="segmentation")
    assert isinstance(model, SegmentationFPN)
    if batch == 1:
        model.eval()  # BatchNorm cannot train on one value per channel at the coarsest level
    logits = model(torch.randn(shape))
    assert logits.shape == (batch, 11, height, width)
    logits.square().mean().backward()
    names = [name for name, _ in model.named_parameters()]
    assert all(name.split(".")[0] in ("backbone", "neck", "head") for name in names)
    assert {name.split(".")[0] for name in names} == {"backbone", "neck", "head"}
    # DistributedDataParallel fails on parameters that never get a gradient.
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_backbone_stops_at_reduction_16():
    model = build_model("resnet10t", num_classes=3, in_chans=1, task="segmentation")
    assert model.backbone.feature_info.reduction() == [2, 4, 8, 16]
    assert not any(name.startswith("backbone.model.layer4") for name, _ in model.named_parameters())
    narrow = build_model(
        "resnet10t", num_classes=3, in_chans=1, task="segmentation", fpn_channels=16
    )
    assert narrow.head[-1].in_channels == 16 and narrow.head[-1].out_channels == 3


def test_build_model_errors():
    with pytest.raises(ValueError, match="segmentation needs a timm backbone"):
        build_model("resnet9", num_classes=11, in_chans=1, task="segmentation")
    with pytest.raises(ValueError, match="did you mean"):
        build_model("resnet10x", num_classes=11, in_chans=1, task="segmentation")
    with pytest.raises(ValueError, match="task must be one of"):
        build_model("resnet10t", num_classes=11, in_chans=1, task="detection")
    with pytest.raises(ValueError, match="fpn_channels=32 applies only to task 'segmentation'"):
        build_model("resnet10t", num_classes=11, in_chans=1, fpn_channels=32)
    classifier = build_model("resnet9", num_classes=10, in_chans=1)
    assert classifier(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def one_hot_logits(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``predictions`` (N, H, W)."""
    return F.one_hot(predictions, num_classes).permute(0, 3, 1, 2).float() * 10


def test_perfect_prediction_scores_one_and_absent_classes_are_nan():
    masks = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])
    confusion = confusion_matrix(one_hot_logits(masks, 3), masks, 3)
    assert confusion.dtype == torch.int64 and confusion.tolist() == [[4, 0, 0], [0, 4, 0], [0] * 3]
    miou, per_class = mean_iou(confusion)
    assert miou == 1.0 and per_class[:2] == [1.0, 1.0] and math.isnan(per_class[2])
    assert pixel_accuracy(confusion) == 1.0


def test_known_confusion_gives_known_ious_and_ignores_pixels():
    targets = torch.tensor([[[0, 0, 1, 1, 2, 255]]])
    predictions = torch.tensor([[[0, 1, 1, 1, 1, 0]]])
    confusion = confusion_matrix(one_hot_logits(predictions, 3), targets.to(torch.uint8), 3)
    # rows target, columns prediction; the 255 pixel is not counted
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    miou, per_class = mean_iou(confusion)
    # class 0: 1 / (1 + 0 + 1); class 1: 2 / (2 + 2 + 0); class 2: 0 / (0 + 0 + 1)
    assert per_class == [0.5, 0.5, 0.0]
    assert miou == pytest.approx(1 / 3)
    assert pixel_accuracy(confusion) == pytest.approx(3 / 5)


def test_per_sample_loss_is_each_samples_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, dtype=torch.bfloat16, requires_grad=True)
    masks = torch.randint(0, 4, (3, 5, 6), dtype=torch.uint8)
    masks[1, :2] = 255
    masks[2] = 255  # no valid pixel
    losses = per_sample_pixel_losses(logits, masks, label_smoothing=0.1)
    assert losses.shape == (3,) and losses.dtype == torch.float32
    for sample in range(2):
        expected = F.cross_entropy(
            logits[sample : sample + 1].float(),
            masks[sample : sample + 1].long(),
            ignore_index=255,
            label_smoothing=0.1,
        )
        assert losses[sample].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses[2].item() == 0.0
    losses.sum().backward()
    assert torch.isfinite(logits.grad.float()).all() and not logits.grad[2].any()
