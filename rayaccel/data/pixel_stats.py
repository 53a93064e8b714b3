"""Exact per-channel pixel mean and std of a split, mergeable across parallel tasks.

Sums are kept as Python ints, so no rounding accumulates however many images a split holds, and
the sums of shards built in separate processes add up to exactly the sums of one process.
"""

from __future__ import annotations

import math

import numpy as np

_GREY_LEVELS = np.arange(256, dtype=np.int64)


class PixelStats:
    """Pixel count, per-channel sum and per-channel sum of squares of uint8 images."""

    def __init__(self, channels: int):
        self.channels = channels
        self.pixel_count = 0
        self.sums = [0] * channels
        self.square_sums = [0] * channels

    def add(self, pixels: np.ndarray) -> None:
        """Adds one uint8 image (H, W) or (H, W, C)."""
        flat = pixels.reshape(-1, self.channels)
        self.pixel_count += flat.shape[0]
        for channel in range(self.channels):
            # A histogram per channel: 256 counts give both sums exactly, without squaring
            # every pixel in 64-bit integers.
            counts = np.bincount(flat[:, channel], minlength=256)
            self.sums[channel] += int(counts @ _GREY_LEVELS)
            self.square_sums[channel] += int(counts @ (_GREY_LEVELS * _GREY_LEVELS))

    def merge(self, other: PixelStats) -> None:
        """Adds another split part's sums (e.g. one shard built by another task)."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels}-channel stats into {self.channels}")
        self.pixel_count += other.pixel_count
        self.sums = [a + b for a, b in zip(self.sums, other.sums, strict=True)]
        self.square_sums = [a + b for a, b in zip(self.square_sums, other.square_sums, strict=True)]

    def to_dict(self) -> dict:
        """JSON-ready sums (Python ints are exact in JSON)."""
        return {"pixel_count": self.pixel_count, "sums": self.sums, "square_sums": self.square_sums}

    @classmethod
    def from_dict(cls, fields: dict) -> PixelStats:
        stats = cls(len(fields["sums"]))
        stats.pixel_count = int(fields["pixel_count"])
        stats.sums = [int(x) for x in fields["sums"]]
        stats.square_sums = [int(x) for x in fields["square_sums"]]
        return stats

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Mean and population std per channel, in [0, 1] pixel units."""
        n = self.pixel_count
        if n == 0:
            return [0.0] * self.channels, [0.0] * self.channels
        means = [total / (n * 255) for total in self.sums]
        stds = [
            math.sqrt((n * square_total - total * total) / (n * n * 255 * 255))
            for total, square_total in zip(self.sums, self.square_sums, strict=True)
        ]
        return means, stds
