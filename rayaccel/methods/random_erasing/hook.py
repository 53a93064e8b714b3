"""Random erasing as a loop hook around timm's `RandomErasing`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from timm.data.random_erasing import RandomErasing

from rayaccel.core.seeds import epoch_seed, worker_seed
from rayaccel.methods.base import Hook, StepBatch, WorkerContext
from rayaccel.methods.random_erasing.config import RandomErasingSettings


@contextmanager
def seeded_global_rngs(seed: int, device: torch.device) -> Iterator[None]:
    """Python's and torch's global generators seeded with `seed`, restored afterwards.

    timm's transform draws its boxes from `random` and its noise from torch's global
    generator; seeding both per step makes an epoch resumed at its start erase exactly as
    before on every worker, without touching the streams the rest of the run draws from.
    """
    python_state = random.getstate()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class RandomErasingHook(Hook):
    """Erases rectangles of every fresh or replayed input (`on_inputs`, normalised fp32).

    Args:
        settings: The section's values.
        seed: Distinct per worker; each step's draws come from `(seed, epoch, step)`.
        device: Where the inputs live (the noise is drawn there).
    """

    def __init__(self, settings: RandomErasingSettings, *, seed: int, device: torch.device):
        self.erase = RandomErasing(
            probability=settings.probability,
            min_area=settings.min_area,
            max_area=settings.max_area,
            min_aspect=settings.min_aspect,
            mode=settings.mode,
            max_count=settings.max_count,
            device=device,
        )
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        self.step = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        self.step += 1
        if batch.images.shape[0] == 0:
            return batch
        step_seed = epoch_seed(self.seed, self.epoch) * 100_003 + self.step
        with seeded_global_rngs(step_seed, self.device):
            batch.images = self.erase(batch.images.clone())
        return batch


def hooks_for(settings: RandomErasingSettings, context: WorkerContext) -> list[Hook]:
    seed = worker_seed(context.seed, context.rank)
    return [RandomErasingHook(settings, seed=seed, device=context.device)]
