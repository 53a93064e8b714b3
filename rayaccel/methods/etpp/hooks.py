"""The EfficientTrain++ hooks of a worker: the low-frequency crop and the replay buffer."""

from __future__ import annotations

import torch

from rayaccel.core.seeds import worker_seed
from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.etpp.config import EtppSettings
from rayaccel.methods.etpp.lowpass import LowPassCropHook
from rayaccel.methods.etpp.replay import ReplayHook

_REPLAY_DTYPES = {"uint8": torch.uint8, "fp16": torch.float16}


def hooks_for(settings: EtppSettings, context: WorkerContext) -> list[Hook]:
    hooks: list[Hook] = []
    if settings.crop_on_worker:
        hooks.append(LowPassCropHook(settings.lowpass_mode))
    if settings.replay_capacity_samples > 0:
        hooks.append(
            ReplayHook(
                capacity_samples=settings.replay_capacity_samples,
                dtype=_REPLAY_DTYPES[settings.replay_dtype],
                device=context.device,
                seed=worker_seed(context.seed, context.rank),
            )
        )
    return hooks
