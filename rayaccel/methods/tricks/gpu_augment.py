"""Batched data augmentation as tensor ops on the device that holds the data.

Moving "data and augmentation on the GPU (random crop from 4-px padding,
flip, cutout; one random choice per group of shuffled samples)" is the first and largest step
of the myrtle.ai ResNet-9 recipe: for a CIFAR-size dataset that fits in device memory, a few
whole-batch tensor ops replace a per-image CPU pipeline. Every function takes ``(N, C, H, W)``
uint8 or floating-point images on any device and a ``torch.Generator`` on that same device,
and makes its random choices in a handful of batched draws.

Random choices are per sample by default. ``samples_per_choice = g`` shares one choice between
``g`` consecutive samples, as the record runs did to keep the number of distinct crops small;
on an already shuffled batch consecutive samples form random groups. Gather-based cropping
costs the same either way, so per-sample choices (more distinct views) are the default.
"""

from __future__ import annotations

import torch
from torch import Tensor

PADDING_MODES = ("reflect", "constant")


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(x.shape)}")


def _draw(
    n_samples: int,
    high: int,
    n_values: int,
    samples_per_choice: int,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """``(n_samples, n_values)`` ints in ``[0, high)``, one draw per group of samples."""
    if not isinstance(samples_per_choice, int) or samples_per_choice < 1:
        raise ValueError(f"samples_per_choice must be an int >= 1, got {samples_per_choice!r}")
    n_choices = -(-n_samples // samples_per_choice)
    values = torch.randint(high, (n_choices, n_values), generator=generator, device=device)
    return values.repeat_interleave(samples_per_choice, dim=0)[:n_samples]


def random_crop_from_padding(
    x: Tensor,
    padding_px: int,
    generator: torch.Generator,
    *,
    padding_mode: str = "reflect",
    samples_per_choice: int = 1,
) -> Tensor:
    """Random ``H x W`` crops of the images padded by ``padding_px`` on every side.

    Equal to padding with ``torch.nn.functional.pad`` and slicing each sample at an offset
    drawn uniformly from ``[0, 2 * padding_px]`` in both directions, but the padded batch is
    never built: source rows and columns are computed (reflected or masked at the border) and
    read with two ``gather`` ops, so any offsets cost one pass over the batch and uint8 works.
    Reflect padding is the default because it adds no artificial black border for the model to
    learn about; ``"constant"`` pads with zeros.

    Args:
        x: Images ``(N, C, H, W)``, uint8 or floating point.
        padding_px: Padding on each side, >= 0 (4 in the recipe); reflect needs it < ``min(H, W)``.
        generator: Source of the offsets, on ``x``'s device.
        padding_mode: ``"reflect"`` or ``"constant"`` (zeros).
        samples_per_choice: Consecutive samples sharing one offset.

    Returns:
        Crops shaped and typed like ``x``.

    Raises:
        ValueError: If an argument is out of range.
    """
    _check_images(x)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    n_samples, n_channels, height_px, width_px = x.shape
    # Reflection mirrors the image once, so it cannot reach further than H - 1 or W - 1.
    max_padding = min(height_px, width_px) - 1 if padding_mode == "reflect" else float("inf")
    if not isinstance(padding_px, int) or not 0 <= padding_px <= max_padding:
        raise ValueError(
            f"padding_px must be an int in [0, {max_padding}] for {padding_mode} padding of "
            f"{height_px}x{width_px} images, got {padding_px!r}"
        )
    if padding_px == 0:
        return x
    offsets = _draw(n_samples, 2 * padding_px + 1, 2, samples_per_choice, generator, x.device)
    out = x
    valid = None
    for dim, size in ((2, height_px), (3, width_px)):
        positions = torch.arange(size, device=x.device)
        source = offsets[:, dim - 2, None] - padding_px + positions  # (N, size)
        if padding_mode == "reflect":
            source = source.abs()
            source = torch.where(source >= size, 2 * (size - 1) - source, source)
        else:
            inside = (source >= 0) & (source < size)
            inside = inside[:, :, None] if dim == 2 else inside[:, None, :]
            valid = inside if valid is None else valid & inside
            source = source.clamp(0, size - 1)
        shape = [n_samples, 1, 1, 1]
        shape[dim] = size
        index = source.view(shape).expand(n_samples, n_channels, *out.shape[2:])
        out = out.gather(dim, index)
    if valid is not None:
        out = out.masked_fill(~valid[:, None], 0)
    return out


def random_flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirrors left-right the samples where ``mask`` is True.

    The mask comes from the caller, e.g. ``alternating_flip_mask`` or
    ``torch.rand(N, generator=g, device=d) < 0.5``, so flip policies stay separate.

    Args:
        x: Images ``(N, C, H, W)``.
        mask: Bool ``(N,)`` on ``x``'s device.

    Returns:
        Images shaped and typed like ``x``.

    Raises:
        ValueError: If ``mask`` is not a bool tensor of length N.
    """
    _check_images(x)
    if mask.dtype != torch.bool or mask.shape != (x.shape[0],):
        raise ValueError(
            f"mask must be a bool tensor shaped ({x.shape[0]},), got dtype {mask.dtype} and "
            f"shape {tuple(mask.shape)}"
        )
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def cutout(
    x: Tensor, size_px: int, generator: torch.Generator, *, samples_per_choice: int = 1
) -> Tensor:
    """Zeroes one ``size_px x size_px`` square per sample, clipped at the image border.

    The square's centre pixel is drawn uniformly over the whole image (rows ``top = cy -
    size_px // 2`` up to ``top + size_px``), so squares near the border are partly outside and
    erase less, as in DeVries and Taylor's cutout. Zero means black for uint8 pixels and the
    dataset mean for normalised inputs.

    Args:
        x: Images ``(N, C, H, W)``, uint8 or floating point.
        size_px: Side of the square, >= 1 (8 px for CIFAR in the myrtle.ai recipe).
        generator: Source of the centres, on ``x``'s device.
        samples_per_choice: Consecutive samples sharing one square.

    Returns:
        Images shaped and typed like ``x``.

    Raises:
        ValueError: If ``size_px`` or ``samples_per_choice`` is out of range.
    """
    _check_images(x)
    if not isinstance(size_px, int) or size_px < 1:
        raise ValueError(f"size_px must be an int >= 1, got {size_px!r}")
    n_samples, _, height_px, width_px = x.shape
    centres = _draw(
        n_samples, height_px * width_px, 1, samples_per_choice, generator, x.device
    ).squeeze(1)
    top = centres // width_px - size_px // 2
    left = centres % width_px - size_px // 2
    rows = torch.arange(height_px, device=x.device) - top[:, None]  # (N, H)
    cols = torch.arange(width_px, device=x.device) - left[:, None]  # (N, W)
    in_rows = (rows >= 0) & (rows < size_px)
    in_cols = (cols >= 0) & (cols < size_px)
    erased = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(erased, 0)
