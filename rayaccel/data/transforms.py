"""Geometry of one photo: RandomResizedCrop and the ImageNet evaluation crop, decoded small.

Both are the transforms of every ImageNet recipe (torchvision's references, timm, FFCV, the
EfficientTrain++ release) and give the same pixels as theirs on the same box:
- `rrc_boxes` draws torchvision's `RandomResizedCrop.get_params` boxes (10 tries of a random
  area fraction in `scale` and a log-uniform aspect ratio in `ratio`, else the central crop
  of the nearest allowed ratio), vectorised over a batch and drawn from a NumPy generator so
  a seeded batch gets the same boxes every time.
- `eval_geometry` is timm's evaluation transform: resize the shorter side to
  floor(size / crop_pct) (bilinear, the longer side in proportion), then take the centre
  `size` x `size` crop. crop_pct 1.0 keeps the whole shorter side: the aspect-preserving
  replacement of squashing a photo to a square.

`crop_and_resize` decodes a JPEG at reduced size when the crop will be shrunk anyway:
libjpeg scales the DCT by 1/2, 1/4 or 1/8 while decoding (Pillow's `Image.draft`), which
skips most of the decode work. The scale chosen is the smallest that still gives the crop at
least the output's pixels in both directions, so the final resample only ever shrinks, and
the output differs from a full decode by the resampling path only (libjpeg's scaled IDCT
averages 2x2..8x8 blocks where a full decode and bilinear resize would filter them). Other
formats (PNG) decode at full size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rayaccel.data.codec import MODE_BY_CHANNELS

# torchvision's and timm's RandomResizedCrop defaults.
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)
# torchvision's number of tries before the central-crop fallback.
RRC_ATTEMPTS = 10
# timm's evaluation crop for models whose pretrained config names none.
DEFAULT_CROP_PCT = 0.875


@dataclass(frozen=True)
class Box:
    """A crop in source pixels: left, top, width and height (floats after reduced decoding)."""

    left: float
    top: float
    width: float
    height: float

    def scaled(self, factor_x: float, factor_y: float) -> Box:
        return Box(
            self.left * factor_x,
            self.top * factor_y,
            self.width * factor_x,
            self.height * factor_y,
        )

    def rounded(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) to the nearest pixels, for `Image.crop`."""
        left, top = round(self.left), round(self.top)
        return (left, top, left + max(1, round(self.width)), top + max(1, round(self.height)))


def rrc_boxes(
    widths_px: np.ndarray,
    heights_px: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> list[Box]:
    """One RandomResizedCrop box per image, drawn as torchvision's `get_params` draws them.

    Args:
        widths_px, heights_px: Each image's size.
        scale: Bounds of the crop's area as a fraction of the image's.
        ratio: Bounds of the crop's width / height; drawn log-uniformly.
        rng: The only source of randomness.

    Returns:
        Integer boxes inside their images.
    """
    widths_px = np.asarray(widths_px, dtype=np.int64)
    heights_px = np.asarray(heights_px, dtype=np.int64)
    count = len(widths_px)
    area = (widths_px * heights_px).astype(np.float64)
    fractions = rng.uniform(scale[0], scale[1], size=(count, RRC_ATTEMPTS))
    log_ratios = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, RRC_ATTEMPTS))
    aspect = np.exp(log_ratios)
    target = area[:, None] * fractions
    # np.rint rounds half to even, as Python's round() in torchvision does.
    crop_w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    crop_h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (
        (crop_w > 0)
        & (crop_w <= widths_px[:, None])
        & (crop_h > 0)
        & (crop_h <= heights_px[:, None])
    )
    offsets = rng.random(size=(count, 2))
    boxes = []
    for row in range(count):
        width, height = int(widths_px[row]), int(heights_px[row])
        tries = np.flatnonzero(fits[row])
        if len(tries):
            w, h = int(crop_w[row, tries[0]]), int(crop_h[row, tries[0]])
            # Uniform over the (height - h + 1) x (width - w + 1) positions, as torch.randint.
            top = int(offsets[row, 0] * (height - h + 1))
            left = int(offsets[row, 1] * (width - w + 1))
        else:
            w, h = _central_fallback(width, height, ratio)
            top, left = (height - h) // 2, (width - w) // 2
        boxes.append(Box(left, top, w, h))
    return boxes


def _central_fallback(width: int, height: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the whole image, narrowed to the nearest allowed ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def eval_geometry(width_px: int, height_px: int, size_px: int, crop_pct: float):
    """timm's evaluation transform as (resized width, resized height) and the crop box in
    the resized image (left, top, right, bottom)."""
    scale_size_px = math.floor(size_px / crop_pct)
    # torchvision's Resize(int): the shorter side becomes scale_size_px, the longer one
    # int(scale_size_px * long / short).
    if width_px <= height_px:
        resized = (scale_size_px, int(scale_size_px * height_px / width_px))
    else:
        resized = (int(scale_size_px * width_px / height_px), scale_size_px)
    # torchvision's CenterCrop rounds the offsets.
    left = int(round((resized[0] - size_px) / 2.0))
    top = int(round((resized[1] - size_px) / 2.0))
    return resized, (left, top, left + size_px, top + size_px)


def crop_and_resize(
    image: Image.Image,
    box: Box,
    output_px: tuple[int, int],
    channels: int,
    *,
    reduced_decode: bool,
) -> np.ndarray:
    """`crop_and_resize_image` as a (height, width, channels) uint8 array."""
    pixels = np.asarray(
        crop_and_resize_image(image, box, output_px, channels, reduced_decode=reduced_decode)
    )
    return pixels.reshape(output_px[1], output_px[0], channels)


def crop_and_resize_image(
    image: Image.Image,
    box: Box,
    output_px: tuple[int, int],
    channels: int,
    *,
    reduced_decode: bool,
) -> Image.Image:
    """`box` of a lazily opened image, resampled (bilinear, antialiased) to `output_px`.

    Args:
        image: From `codec.open_image`, not yet decoded.
        box: The crop in the image's full-size pixels.
        output_px: (width, height) of the result.
        channels: 1 or 3: the result's mode is "L" or "RGB".
        reduced_decode: Let a JPEG decode at the smallest DCT scale that still covers the
            crop at the output size (see the module docstring).

    Raises:
        ValueError: if the image cannot be decoded (truncated or corrupt).
    """
    mode = MODE_BY_CHANNELS[channels]
    try:
        full_w, full_h = image.size
        if reduced_decode and image.format == "JPEG":
            # The reduced image must keep >= output pixels across the crop in both directions.
            wanted = (
                math.ceil(full_w * output_px[0] / box.width),
                math.ceil(full_h * output_px[1] / box.height),
            )
            if wanted[0] < full_w and wanted[1] < full_h:
                image.draft(mode, wanted)
                box = box.scaled(image.size[0] / full_w, image.size[1] / full_h)
        if image.mode != mode:
            image = image.convert(mode)
        # Crop, then resize: the filter sees only the crop's pixels, as torchvision's
        # `resized_crop`. A reduced decode's box has fractional edges: it is resampled
        # exactly from a crop one pixel wider on each side (Pillow's `box`).
        edges = (box.left, box.top, box.left + box.width, box.top + box.height)
        if all(float(edge).is_integer() for edge in edges):
            region, inner = image.crop(box.rounded()), None
        else:
            outer = (
                max(0, math.floor(edges[0]) - 1),
                max(0, math.floor(edges[1]) - 1),
                min(image.size[0], math.ceil(edges[2]) + 1),
                min(image.size[1], math.ceil(edges[3]) + 1),
            )
            region = image.crop(outer)
            inner = tuple(edge - outer[i % 2] for i, edge in enumerate(edges))
        return region.resize(output_px, Image.Resampling.BILINEAR, box=inner)
    except OSError as error:
        raise ValueError(f"not a decodable image ({error})") from error


def eval_crop(
    image: Image.Image, size_px: int, crop_pct: float, channels: int, *, reduced_decode: bool
) -> np.ndarray:
    """timm's evaluation transform of one lazily opened image, (size, size, channels) uint8."""
    mode = MODE_BY_CHANNELS[channels]
    try:
        full_w, full_h = image.size
        resized_px, crop = eval_geometry(full_w, full_h, size_px, crop_pct)
        if reduced_decode and image.format == "JPEG" and resized_px[0] < full_w:
            image.draft(mode, resized_px)
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != resized_px:
            image = image.resize(resized_px, Image.Resampling.BILINEAR)
        pixels = np.asarray(image.crop(crop))
    except OSError as error:
        raise ValueError(f"not a decodable image ({error})") from error
    return pixels.reshape(size_px, size_px, channels)
