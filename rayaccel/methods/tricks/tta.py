"""Test-time augmentation (TTA): average the model's logits over flipped and shifted views.

Flip TTA is the last step of the myrtle.ai ResNet-9 recipe (94% on
CIFAR-10 in 10 epochs), and airbench adds multi-crop TTA. Training with random flips and
crops teaches the model that these views are the same image; averaging its predictions over
them at test time cancels part of the per-view error for a few extra forward passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import TtaSettings


def tta_views(images: Tensor, *, flip: bool = True, translate_px: int = 0) -> list[Tensor]:
    """The views ``predict_with_tta`` averages over, untransformed image first.

    Crops: the image itself and, if ``translate_px > 0``, the image shifted diagonally by
    ``translate_px`` pixels towards the bottom-right and towards the top-left, taken from a
    reflect-padded copy (the padding the training crops use, see ``gpu_augment``). With
    ``flip`` each crop is also taken mirrored left-right; a mirrored diagonal shift is the
    other diagonal of the mirrored image, so two shifts cover all four diagonals.

    Args:
        images: Floating-point batch shaped ``(N, C, H, W)``.
        flip: Add the left-right mirror of every crop.
        translate_px: Shift of the extra crops in pixels, ``0 <= translate_px < min(H, W)``
            (the reflect padding's limit); 0 uses the image only.

    Returns:
        1, 2, 3 or 6 tensors shaped like ``images``.

    Raises:
        ValueError: If ``images`` is not 4-D or ``translate_px`` is out of range.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(images.shape)}")
    height_px, width_px = images.shape[-2:]
    if not isinstance(translate_px, int) or not 0 <= translate_px < min(height_px, width_px):
        raise ValueError(
            f"translate_px must be an int in [0, {min(height_px, width_px)}) for "
            f"{height_px}x{width_px} images, got {translate_px!r}"
        )
    crops = [images]
    if translate_px > 0:
        pad = translate_px
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        # Output pixel (y, x) of a crop starting at (top, left) shows input (y+top-p, x+left-p).
        for top_left in (0, 2 * pad):
            crops.append(
                padded[..., top_left : top_left + height_px, top_left : top_left + width_px]
            )
    if flip:
        crops += [crop.flip(-1) for crop in crops]
    return crops


def predict_with_tta(
    model: nn.Module, images: Tensor, *, flip: bool = True, translate_px: int = 0
) -> Tensor:
    """Logits averaged over the views of :func:`tta_views`, each view weighted equally.

    Logits are averaged rather than softmax probabilities: the result is still a logit (so the
    loop's loss and accuracy code take it unchanged), it is one add per view, and the argmax
    of mean logits and mean probabilities rarely differs when the views agree, which is what
    flip/crop-trained models do. The model's mode is left alone (call ``model.eval()`` first);
    gradients are not recorded. One forward pass per view keeps peak memory at one batch.

    Args:
        model: Maps ``(N, C, H, W)`` images to ``(N, num_classes)`` logits.
        images: Floating-point batch, normalised as the model expects.
        flip: Average over left-right mirrors too.
        translate_px: Also average over two diagonal shifts by this many pixels; 0 disables.

    Returns:
        Averaged logits shaped ``(N, num_classes)``.

    Raises:
        ValueError: If ``images`` is not 4-D or ``translate_px`` is out of range.
    """
    views = tta_views(images, flip=flip, translate_px=translate_px)
    with torch.no_grad():
        total = model(views[0]).float()
        for view in views[1:]:
            total += model(view).float()
    return total / len(views)


class TtaHook(Hook):
    """Evaluation averages the logits of flipped and shifted views (`predict_with_tta`)."""

    def __init__(self, *, flip: bool, translate_px: int):
        self.flip = flip
        self.translate_px = translate_px

    def predict(self, net: nn.Module, inputs: Tensor) -> Tensor:
        return predict_with_tta(net, inputs, flip=self.flip, translate_px=self.translate_px)


def hooks_for(settings: TtaSettings, context: WorkerContext) -> list[Hook]:
    return [TtaHook(flip=settings.flip, translate_px=settings.translate_px)]
