"""Image bytes <-> uint8 pixel arrays, the one format shards store images in.

Shards keep each image as an encoded PNG or JPEG so a shard is a fraction of the raw pixel size
and any tool can open a row. ``decode_image`` runs once per image in the Ray Data hot path, so it
does the minimum: open, convert the mode only when it differs, and view the buffer as an array.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

ENCODINGS = ("png", "jpeg")
MODE_BY_CHANNELS = {1: "L", 3: "RGB"}


def encode_image(pixels: np.ndarray, encoding: str = "png", jpeg_quality: int = 90) -> bytes:
    """Encode one image.

    Args:
        pixels: uint8 array shaped (H, W) or (H, W, C) with C 1 (grey) or 3 (RGB).
        encoding: "png" (lossless: decoding gives back ``pixels`` exactly) or "jpeg" (lossy,
            several times smaller for photographs).
        jpeg_quality: JPEG quality 1-95; ignored for PNG.

    Returns:
        The encoded file's bytes.

    Raises:
        ValueError: if the array's dtype or shape, the encoding or the quality is not supported.
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"encode_image needs uint8 pixels, got dtype {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(
            f"encode_image needs pixels shaped (H, W), (H, W, 1) or (H, W, 3), got {pixels.shape}"
        )
    image = Image.fromarray(pixels)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG")
    elif encoding == "jpeg":
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in [1, 95], got {jpeg_quality}")
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return buffer.getvalue()


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Decode one encoded image to pixels.

    Args:
        data: PNG or JPEG bytes (any format PIL reads works).
        channels: 1 for grey or 3 for RGB; the image is converted when its mode differs, so a
            shard's consumer always gets the channel count its metadata promises.

    Returns:
        uint8 array shaped (H, W, channels).

    Raises:
        ValueError: if ``data`` is empty, not an image, or truncated.
    """
    mode = MODE_BY_CHANNELS.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = open_image(data)
    try:
        if image.mode != mode:
            image = image.convert(mode)
        pixels = np.asarray(image)
    except OSError as error:
        raise ValueError(f"not a decodable image ({error})") from error
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def channel_problem(image: Image.Image, channels: int) -> str | None:
    """Why a shard's image does not have the channel count its split's metadata promises, or
    None. `rayaccel data prepare` stores every image in that mode, so another one means the
    shard and its metadata.json disagree (decoding would convert it silently, and the split's
    per-channel mean/std would then describe other pixels)."""
    bands = image.getbands()
    if len(bands) == channels:
        return None
    return (
        f"image has {len(bands)} channels (mode {image.mode}) but the split's metadata.json "
        f"says channels: {channels}"
    )


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded image (only the header is read until its pixels are needed).

    Raises:
        ValueError: if ``data`` is empty or not an image.
    """
    if not data:
        raise ValueError("not a decodable image (empty bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError("not a decodable image (cannot identify image file)") from None
    except OSError as error:
        raise ValueError(f"not a decodable image ({error})") from error
