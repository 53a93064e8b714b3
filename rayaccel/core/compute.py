"""The compute model: a training step costs its images times its pixels per image.

Convolutions and (patch-embedded) attention spend work in proportion to the number of input
pixels, so an epoch of N images at B x B px costs N * B^2. Plans, reports and searches all
count compute this way, which is what makes "0.67x the baseline" comparable between a
curriculum and a plain run.
"""

from __future__ import annotations


def pixel_compute(images: float, resolution_px: int) -> float:
    """The compute of `images` images at `resolution_px` x `resolution_px` px."""
    return images * resolution_px**2
