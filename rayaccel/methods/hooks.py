"""The named points where speed-up methods plug into the training loop.

The loop reads top to bottom and calls, in this order:

    on_stage_start(stage)      a new plan stage begins (also on resume in the middle of one)
    on_epoch_start(epoch)      before the first batch of an epoch
    on_batch(batch)            a fresh uint8 batch arrived from Ray Data (replay: uint8 buffer)
    on_inputs(batch)           after normalisation, float32, before autocast
                               (low-pass crop, then replay with an fp16 buffer; later mixup)
    on_loss(losses, batch)     per-sample losses -> per-sample losses to average (InfoBatch)
    after_step()               after the optimizer step (EMA)
    on_epoch_end() -> dict     namespaced metrics, e.g. {"replay/buffer_samples": 4096}
    state_dict() / load_state_dict(state)   checkpointed with the model (rank 0's copy)
    evaluation_weights()       a context the loop evaluates in (EMA swaps its weights in)

A method subclasses `Hook` and overrides only the points it needs; each point passes through
every hook in the order `build_hooks` gives, which is where ordering rules between methods
live. Hooks get plain arguments from the runner and never read the job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rayaccel.core.seeds import epoch_seed
from rayaccel.methods.frequency import downsample
from rayaccel.methods.replay import ReplayBuffer


@dataclass
class StepBatch:
    """What one step trains on: uint8 pixels at `on_batch`, normalised inputs at `on_inputs`."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    # Per-sample loss weights (InfoBatch's 1 or 1/(1-r)); None means all 1.
    weights: Tensor | None = None
    # Soft (N, num_classes) targets replacing `labels` in the loss (mixup/cutmix); None: labels.
    targets: Tensor | None = None

    def take(self, rows: Tensor) -> StepBatch:
        """The batch's `rows` (e.g. one half of it for AGVM's two backward passes)."""

        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor[rows]

        return StepBatch(
            self.images[rows],
            self.labels[rows],
            self.indices[rows],
            pick(self.weights),
            pick(self.targets),
        )


class Hook:
    """A method's view of the loop; every point defaults to doing nothing."""

    def on_stage_start(self, stage: Any) -> None:
        """`stage` is a `rayaccel.plan.StagePlan` (resolution_px, replay_factor, ...)."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def epoch_samples(self, samples: int) -> int:
        """How many training rows this epoch's Ray Data pass yields (pruning makes it fewer)."""
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        return losses

    def after_step(self) -> None:
        pass

    def on_epoch_end(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def evaluation_weights(self) -> AbstractContextManager:
        """Context the loop evaluates in (EMA swaps its averaged weights in)."""
        return nullcontext()


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


class ReplayHook(Hook):
    """EfficientTrain++ replay: each step is one fresh chunk plus samples from a FIFO buffer.

    The buffer lives on this worker's device and is emptied at every stage start (samples of an
    earlier stage have another resolution and a weaker augmentation). With dtype `uint8` it
    holds raw pixels at `on_batch`; with `float16` it holds normalised, already low-pass cropped
    inputs at `on_inputs`, as the release does (no recomputation for replayed samples).

    Draws are reseeded from `(seed, epoch)` at every epoch start: only rank 0 writes
    checkpoints, so a generator state could not be saved for every worker, but a seed derived
    from the epoch makes a run resumed at an epoch boundary replay exactly like the original on
    all workers. The buffer's contents are not checkpointed (they can be gigabytes); a resumed
    epoch starts with an empty buffer, which `ReplayBuffer.mix` handles.

    Args:
        capacity_samples: Buffer size in samples.
        dtype: `torch.uint8` or `torch.float16`.
        device: The worker's device.
        seed: Distinct per worker (e.g. `job seed * 1000 + rank`).
    """

    def __init__(
        self, *, capacity_samples: int, dtype: torch.dtype, device: torch.device, seed: int
    ):
        if dtype not in (torch.uint8, torch.float16):
            raise ValueError(f"dtype must be torch.uint8 or torch.float16, got {dtype}")
        self.capacity_samples = capacity_samples
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self.replay_factor = 1
        self.batch_size = 0
        self.epoch = 0
        self.buffer: ReplayBuffer | None = None

    def on_stage_start(self, stage: Any) -> None:
        self.replay_factor = stage.replay_factor
        self.batch_size = stage.per_worker_batch
        self.buffer = None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.buffer is not None:
            self.buffer.reseed(self._epoch_seed())

    def on_batch(self, batch: StepBatch) -> StepBatch:
        return self._mix(batch) if self.dtype == torch.uint8 else batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        return self._mix(batch) if self.dtype == torch.float16 else batch

    def on_epoch_end(self) -> dict[str, float]:
        return {"replay/buffer_samples": len(self.buffer) if self.buffer is not None else 0}

    def _epoch_seed(self) -> int:
        return epoch_seed(self.seed, self.epoch)

    def _mix(self, batch: StepBatch) -> StepBatch:
        if self.replay_factor == 1 or batch.labels.numel() == 0:
            return batch
        sample_shape = tuple(batch.images.shape[1:])
        if self.buffer is None or self.buffer.sample_shape != sample_shape:
            self.buffer = ReplayBuffer(
                self.capacity_samples,
                sample_shape,
                dtype=self.dtype,
                device=self.device,
                seed=self._epoch_seed(),
            )
        images, labels, indices, weights = self.buffer.mix_weighted(
            batch.images,
            batch.labels,
            batch.indices,
            batch.weights,
            replay_factor=self.replay_factor,
            batch_size=self.batch_size,
        )
        return StepBatch(images, labels, indices, weights if batch.weights is not None else None)


class MethodHooks:
    """Calls every hook at each point, in order; the loop holds one of these."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_stage_start(self, stage: Any) -> None:
        for hook in self.hooks:
            hook.on_stage_start(stage)

    def on_epoch_start(self, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(epoch)

    def epoch_samples(self, samples: int) -> int:
        for hook in self.hooks:
            samples = hook.epoch_samples(samples)
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_batch(batch)
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_inputs(batch)
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        for hook in self.hooks:
            losses = hook.on_loss(losses, batch)
        return losses

    def after_step(self) -> None:
        for hook in self.hooks:
            hook.after_step()

    def on_epoch_end(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for hook in self.hooks:
            metrics.update(hook.on_epoch_end())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {type(hook).__name__: hook.state_dict() for hook in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.load_state_dict(state.get(type(hook).__name__, {}))

    def evaluation_weights(self) -> AbstractContextManager:
        stack = ExitStack()
        for hook in self.hooks:
            stack.enter_context(hook.evaluation_weights())
        return stack


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
    # Rules of the recipe hooks (`rayaccel.methods.recipe_hooks`): worker augmentation comes
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
        from rayaccel.train.pruning import InfoBatchHook

        hooks.append(InfoBatchHook(infobatch_board, rank=rank))
    return MethodHooks(hooks)
