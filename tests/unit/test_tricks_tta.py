"""Tests of flip and multi-crop translate test-time augmentation."""

import pytest
import torch
from torch import nn

from rayaccel.methods.tricks.tta import predict_with_tta, tta_views


class PixelProbe(nn.Module):
    """Deliberately asymmetric: its logits are the values of fixed pixels of channel 0."""

    def __init__(self, *pixels: tuple[int, int]):
        super().__init__()
        self.pixels = pixels

    def forward(self, x):
        return torch.stack([x[:, 0, y, x_] for y, x_ in self.pixels], dim=1)


def ramp_image(height_px: int = 5, width_px: int = 5) -> torch.Tensor:
    """One image whose pixel (y, x) holds y * width + x."""
    return torch.arange(height_px * width_px, dtype=torch.float32).view(1, 1, height_px, width_px)


def test_flip_averages_a_view_and_its_mirror():
    image = ramp_image()  # left edge pixel (1, 0) = 5, right edge pixel (1, 4) = 9
    model = PixelProbe((1, 0), (1, 4))
    torch.testing.assert_close(predict_with_tta(model, image, flip=False), torch.tensor([[5.0, 9]]))
    torch.testing.assert_close(predict_with_tta(model, image), torch.tensor([[7.0, 7]]))


def test_translate_and_flip_average_six_views():
    # Pixel (1, 1) of the 6 views shows input (1,1)=6, (0,0)=0, (2,2)=12 and, mirrored,
    # (1,3)=8, (0,2)=2, (2,4)=14.
    logits = predict_with_tta(PixelProbe((1, 1)), ramp_image(), flip=True, translate_px=1)
    torch.testing.assert_close(logits, torch.tensor([[42.0 / 6]]))


def test_translate_reads_reflect_padding_at_the_border():
    # Pixel (0, 0): the image itself 0, shifted bottom-right input (-1, -1) -> reflected (1, 1)
    # = 6, shifted top-left input (1, 1) = 6.
    logits = predict_with_tta(PixelProbe((0, 0)), ramp_image(), flip=False, translate_px=1)
    torch.testing.assert_close(logits, torch.tensor([[4.0]]))


@pytest.mark.parametrize(
    ("flip", "translate_px", "n_views"), [(False, 0, 1), (True, 0, 2), (False, 2, 3), (True, 2, 6)]
)
def test_view_count_and_shapes(flip, translate_px, n_views):
    views = tta_views(torch.zeros(2, 3, 8, 6), flip=flip, translate_px=translate_px)
    assert len(views) == n_views
    assert all(view.shape == (2, 3, 8, 6) for view in views)


def test_rejects_translation_beyond_the_image():
    with pytest.raises(ValueError, match="translate_px"):
        tta_views(torch.zeros(1, 1, 4, 4), translate_px=4)
