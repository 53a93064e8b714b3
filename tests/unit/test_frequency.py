"""Tests of the EfficientTrain++ low-frequency cropping functions."""

import math

import numpy as np
import pytest
import torch

from rayaccel.methods.etpp.frequency import (
    downsample,
    lowpass_crop,
    resize_antialias,
    resize_antialias_tensor,
)

# (input H, W) -> (output h, w) covering every parity combination and non-square shapes.
SHAPES = [
    ((8, 8), (4, 4)),
    ((8, 8), (3, 5)),
    ((9, 9), (4, 4)),
    ((9, 9), (5, 3)),
    ((8, 10), (5, 6)),
    ((7, 12), (6, 7)),
    ((11, 6), (4, 5)),
    ((16, 15), (1, 1)),
    ((6, 9), (6, 4)),
]


def reference_lowpass_crop(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """fftshift -> centred crop -> ifftshift -> ifft2 -> real, in float64.

    The crop is centred on the fftshift DC position n // 2, so it starts at n // 2 - m // 2.
    """
    height_px, width_px = x.shape[-2:]
    size_h, size_w = size_hw
    shifted = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    top = height_px // 2 - size_h // 2
    left = width_px // 2 - size_w // 2
    cropped = shifted[..., top : top + size_h, left : left + size_w]
    scale = (size_h / height_px) * (size_w / width_px)
    return torch.fft.ifft2(torch.fft.ifftshift(cropped, dim=(-2, -1))).real * scale


def assert_max_abs_diff(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Element-wise closeness check (torch.testing.assert_close costs seconds on first use)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    max_diff = (actual.double() - expected.double()).abs().max().item()
    assert max_diff <= atol, f"max |actual - expected| = {max_diff:.3g} > {atol}"


def cosine_image(height_px: int, width_px: int, terms: list[tuple[int, int, float, float]]):
    """Samples sum(a * cos(2 pi (ky * y + kx * x) + phase)) + 0.3 on an H x W grid over [0, 1)^2."""
    y = torch.arange(height_px, dtype=torch.float64)[:, None] / height_px
    x = torch.arange(width_px, dtype=torch.float64)[None, :] / width_px
    image = torch.full((height_px, width_px), 0.3, dtype=torch.float64)
    for ky, kx, amplitude, phase in terms:
        image = image + amplitude * torch.cos(2 * math.pi * (ky * y + kx * x) + phase)
    return image


@pytest.mark.parametrize(("in_hw", "out_hw"), SHAPES)
def test_lowpass_crop_matches_shift_crop_formulation(in_hw, out_hw):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *in_hw, generator=generator)
    out = lowpass_crop(x, out_hw)
    assert out.shape == (2, 3, *out_hw)
    assert out.dtype == torch.float32
    assert_max_abs_diff(out.double(), reference_lowpass_crop(x, out_hw), atol=1e-5)


def test_lowpass_crop_accepts_int_size():
    x = torch.randn(1, 2, 9, 9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(lowpass_crop(x, 5), lowpass_crop(x, (5, 5)))


@pytest.mark.parametrize("in_hw", [(8, 8), (7, 10)])
def test_lowpass_crop_is_identity_at_full_size(in_hw):
    x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(2))
    assert_max_abs_diff(lowpass_crop(x, in_hw), x, atol=1e-6)


@pytest.mark.parametrize(("in_hw", "out_hw"), SHAPES)
def test_lowpass_crop_preserves_channel_means(in_hw, out_hw):
    x = torch.rand(2, 3, *in_hw, generator=torch.Generator().manual_seed(3)) * 4 - 1
    assert_max_abs_diff(lowpass_crop(x, out_hw).mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((32, 32), (8, 8)), ((31, 24), (9, 8)), ((20, 33), (7, 10))]
)
def test_lowpass_crop_of_band_limited_image_equals_sampling_on_small_grid(in_hw, out_hw):
    # Every term's frequencies are strictly inside the kept band (|k| < m / 2, never the output
    # Nyquist bin), so the crop must equal the same continuous image sampled on the small grid.
    # Wrong indices, a shifted crop, a wrong scale or a sign error in the phase all break this.
    terms = [(1, 0, 0.7, 0.4), (0, 2, -0.5, 1.3), (2, -2, 0.25, -0.8), (-1, 3, 0.4, 2.0)]
    small_max_k = ((out_hw[0] - 1) // 2, (out_hw[1] - 1) // 2)
    assert all(abs(ky) <= small_max_k[0] and abs(kx) <= small_max_k[1] for ky, kx, _, _ in terms)
    big = cosine_image(*in_hw, terms).float().expand(1, 2, *in_hw)
    expected = cosine_image(*out_hw, terms).float().expand(1, 2, *out_hw)
    assert_max_abs_diff(lowpass_crop(big, out_hw), expected, atol=1e-5)


def test_lowpass_crop_halves_a_cosine_at_the_output_nyquist_frequency():
    # The centred crop of an even-sized output keeps bin -m/2 but not +m/2, so of
    # cos(2 pi (m/2) y + phase) only half survives: 0.5 * cos(phase) * (-1)^y on the small grid.
    # (For real inputs, keeping +m/2 instead gives the same real part.)
    phase = 0.6
    image = cosine_image(24, 10, [(4, 0, 1.0, phase)]).float()[None, None]
    alternating = (-1.0) ** torch.arange(8, dtype=torch.float32)[:, None]
    expected = 0.3 + 0.5 * math.cos(phase) * alternating.expand(8, 6)
    assert_max_abs_diff(lowpass_crop(image, (8, 6))[0, 0], expected, atol=1e-5)


def test_lowpass_crop_removes_frequencies_outside_the_band():
    # A cosine at frequency 5 lies outside an 8-px crop's band [-4, 3]: only the mean survives.
    image = cosine_image(32, 32, [(5, 0, 1.0, 0.3)]).float()[None, None]
    assert_max_abs_diff(lowpass_crop(image, 8), torch.full((1, 1, 8, 8), 0.3), atol=1e-5)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_lowpass_crop_is_safe_under_cpu_bf16_autocast(input_dtype):
    x = torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(4)).to(input_dtype)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = lowpass_crop(x, (7, 6))
    assert out.dtype == input_dtype
    expected = reference_lowpass_crop(x.float(), (7, 6))
    atol = 1e-5 if input_dtype == torch.float32 else 3e-2
    assert_max_abs_diff(out.double(), expected, atol=atol)


@pytest.mark.parametrize("bad_size", [0, 9, (4, 11), (4,), 4.0, True])
def test_lowpass_crop_rejects_bad_size(bad_size):
    with pytest.raises(ValueError, match="size"):
        lowpass_crop(torch.zeros(1, 1, 8, 10), bad_size)


def test_lowpass_crop_rejects_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        lowpass_crop(torch.zeros(3, 8, 8), 4)
    with pytest.raises(TypeError, match="floating-point"):
        lowpass_crop(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 4)


def test_resize_antialias_shape_dtype_and_mean():
    rng = np.random.default_rng(0)
    # Smooth-ish content plus noise: the mean of an anti-aliased resize stays close.
    ramp = (
        np.linspace(0, 200, 64)[None, :, None, None] + np.linspace(0, 40, 48)[None, None, :, None]
    )
    images = np.clip(ramp + rng.normal(0, 10, (4, 64, 48, 3)), 0, 255).astype(np.uint8)
    out = resize_antialias(images, 24)
    assert out.shape == (4, 24, 24, 3)
    assert out.dtype == np.uint8
    assert abs(out.mean() - images.mean()) < 1.0
    assert resize_antialias(images, (16, 12)).shape == (4, 16, 12, 3)


def test_resize_antialias_single_channel_and_identity():
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    assert resize_antialias(images, 12).shape == (3, 12, 12, 1)
    np.testing.assert_array_equal(resize_antialias(images, 28), images)


def test_resize_antialias_clamps_bicubic_overshoot():
    # Bicubic rings around a 0 -> 255 step (about -7 and 263 in float); unclamped conversion
    # would wrap those to 249 and 7, breaking the monotone profile.
    images = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    images[:, :, 30:] = 255
    row = resize_antialias(images, 24)[0, 10, :, 0].astype(int)
    assert (np.diff(row) >= 0).all(), row
    assert row[0] == 0 and row[-1] == 255


def test_resize_antialias_accepts_read_only_batches():
    images = np.full((2, 32, 32, 3), 77, dtype=np.uint8)
    images.flags.writeable = False
    np.testing.assert_array_equal(resize_antialias(images, 16), np.full((2, 16, 16, 3), 77))


def test_resize_antialias_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_antialias(np.zeros((1, 8, 8, 3), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="size"):
        resize_antialias(np.zeros((1, 8, 8, 3), dtype=np.uint8), 9)


def test_resize_antialias_tensor_keeps_a_constant_image_and_returns_the_input_at_full_size():
    x = torch.full((2, 3, 20, 20), -0.7)
    assert_max_abs_diff(resize_antialias_tensor(x, 10), torch.full((2, 3, 10, 10), -0.7), atol=1e-6)
    assert resize_antialias_tensor(x, 20) is x


def test_resize_antialias_tensor_is_safe_under_cpu_bf16_autocast():
    x = torch.randn(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_antialias_tensor(x, 14)
    assert out.dtype == torch.float32
    assert_max_abs_diff(out, resize_antialias_tensor(x, 14), atol=0)


def test_downsample_dispatches_by_mode_and_rejects_others():
    x = torch.randn(2, 1, 12, 12)
    assert torch.equal(downsample(x, 6, "fft"), lowpass_crop(x, 6))
    assert torch.equal(downsample(x, 6, "resize"), resize_antialias_tensor(x, 6))
    with pytest.raises(ValueError, match="'fft' or 'resize'"):
        downsample(x, 6, "bilinear")
