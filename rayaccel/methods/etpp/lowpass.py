"""The EfficientTrain++ low-frequency crop as a loop hook (the pure functions are in `frequency`)."""

from __future__ import annotations

from typing import Any

from rayaccel.methods.base import Hook, StepBatch
from rayaccel.methods.etpp.frequency import downsample


class LowPassCropHook(Hook):
    """EfficientTrain++ on the worker: the inputs low-pass cropped to the stage's B.

    Mode `fft` is the exact FFT crop; mode `resize` the anti-aliased bicubic down-sampling,
    here only for device-resident data (with Ray Data, `resize` happens in the CPU pipeline).
    Runs on normalised fp32 inputs (both disable autocast themselves); batches already at B
    (full-resolution stages) pass through untouched.
    """

    def __init__(self, mode: str = "fft") -> None:
        if mode not in ("fft", "resize"):
            raise ValueError(f"mode must be 'fft' or 'resize', got {mode!r}")
        self.mode = mode
        self.size_px: int | None = None

    def on_stage_start(self, stage: Any) -> None:
        self.size_px = stage.resolution_px

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        if batch.images.shape[-1] != self.size_px or batch.images.shape[-2] != self.size_px:
            batch.images = downsample(batch.images, self.size_px, self.mode)
        return batch
