"""The order of the methods' hooks in the loop, and the rules that fix it."""

from __future__ import annotations

import torch

from rayaccel.methods.base import Hook, MethodHooks
from rayaccel.methods.etpp.lowpass import LowPassCropHook
from rayaccel.methods.etpp.replay import ReplayHook
from rayaccel.methods.infobatch.hook import InfoBatchHook


def build_hooks(
    *,
    lowpass_mode: str | None,
    data_on_device: bool = False,
    replay_capacity_samples: int,
    replay_dtype: str,
    device: torch.device,
    seed: int,
    infobatch_board=None,
    rank: int = 0,
    worker_augment: Hook | None = None,
    regularisation: Hook | None = None,
    ema: Hook | None = None,
    agvm: Hook | None = None,
) -> MethodHooks:
    """The hooks of a run, in the order their rules require.

    Rule: the low-pass crop runs before replay, so an fp16 buffer stores cropped inputs and a
    uint8 buffer's replayed pixels are cropped together with the fresh ones.

    Args:
        lowpass_mode: "fft" adds the on-device FFT crop; "resize" adds the on-device
            down-sampling only with `data_on_device` (otherwise Ray Data resizes); None adds
            nothing.
        data_on_device: The run keeps its data on the device (`data.mode: device`).
        replay_capacity_samples: Replay buffer size in samples; 0 disables replay.
        replay_dtype: "uint8" or "fp16".
        device: The worker's device.
        seed: Per-worker seed of the replay draws.
        infobatch_board: The run's InfoBatch `ScoreBoard` actor, or None without pruning.
        rank: This worker's world rank.

    Rule: InfoBatch comes last, so it records the losses of exactly the samples trained
    (replayed ones included: a replayed sample carries the weight it arrived with).
    """
    # Rules of the recipe hooks (`rayaccel.methods.tricks.worker_augment`): worker augmentation comes
    # first, so a uint8 replay buffer stores augmented pixels like Ray Data's; regularisation
    # (mixup/cutmix) after the low-pass crop and replay, so replayed samples get new partners;
    # the EMA's only point is after the optimizer step, so its place is free.
    hooks: list[Hook] = [worker_augment] if worker_augment is not None else []
    if lowpass_mode == "fft" or (lowpass_mode == "resize" and data_on_device):
        hooks.append(LowPassCropHook(lowpass_mode))
    if replay_capacity_samples > 0:
        dtype = {"uint8": torch.uint8, "fp16": torch.float16}[replay_dtype]
        hooks.append(
            ReplayHook(
                capacity_samples=replay_capacity_samples, dtype=dtype, device=device, seed=seed
            )
        )
    # AGVM only counts steps and reports mu here (the loop calls its backward and LR scaling).
    hooks += [hook for hook in (regularisation, ema, agvm) if hook is not None]
    if infobatch_board is not None:
        hooks.append(InfoBatchHook(infobatch_board, rank=rank))
    return MethodHooks(hooks)
