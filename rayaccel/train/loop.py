"""The per-worker training loop: restore -> for each epoch -> batches -> step -> report.

It executes a `Plan` and plain settings built by the runner; it never reads the job YAML.
Every rank calls `ray.train.report` once per epoch (a barrier), rank 0 attaches the
checkpoint, and the metrics it reports are already reduced over all workers.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from rayaccel.models import build_model
from rayaccel.plan import Plan
from rayaccel.train.checkpoint import (
    TrainState,
    load_checkpoint,
    new_checkpoint_dir,
    save_checkpoint,
    unwrap,
)
from rayaccel.train.optim import build_optimizer


@dataclass(frozen=True)
class LoopSettings:
    """Plain, picklable arguments of the loop (built from the job by the runner)."""

    plan: dict
    model_name: str
    model_kwargs: dict
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    optimizer: dict
    label_smoothing: float
    precision: str
    seed: int
    eval_every_epochs: int
    checkpoint_every_epochs: int
    log_every_steps: int
    has_val: bool
    torch_threads: int

    def to_dict(self) -> dict:
        return asdict(self)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_loop_per_worker(config: dict) -> dict:
    settings = LoopSettings(**config)
    plan = Plan.from_dict(settings.plan)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)

    model = build_model(
        settings.model_name,
        num_classes=settings.num_classes,
        in_chans=settings.in_chans,
        **settings.model_kwargs,
    )
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, **settings.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    mean = torch.tensor(settings.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(settings.std, device=device).view(1, -1, 1, 1) * 255

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(
                directory, model=model, optimizer=optimizer, scaler=scaler, device=device
            )
        if rank == 0:
            _say(f"[rayaccel] resumed from checkpoint: next epoch {state.next_epoch}")

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if settings.has_val else None
    progress = _Progress(plan, enabled=rank == 0, every_steps=settings.log_every_steps)
    val_metrics: dict = {}

    for epoch in range(state.next_epoch, plan.total_epochs):
        stage = plan.stage_of(epoch)
        model.train()
        started_s = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, count, bad
        batches = train_shard.iter_torch_batches(
            batch_size=stage.per_worker_batch, drop_last=True, prefetch_batches=2
        )
        for step, batch in enumerate(batches):
            if step >= stage.steps_per_epoch:
                break
            lr = plan.lr_at(epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            images, labels, bad_rows = _unpack(batch, device)
            inputs = (images.float() - mean) / std
            with torch.autocast(
                device.type,
                dtype=_AUTOCAST_DTYPES.get(settings.precision, torch.bfloat16),
                enabled=settings.precision in _AUTOCAST_DTYPES,
            ):
                logits = model(inputs)
                loss = F.cross_entropy(
                    logits.float(), labels, label_smoothing=settings.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                count = labels.numel()
                sums += torch.stack(
                    [
                        loss.detach().double() * count,
                        (logits.argmax(1) == labels).sum().double(),
                        torch.tensor(count, dtype=torch.float64, device=device),
                        torch.tensor(bad_rows, dtype=torch.float64, device=device),
                    ]
                )
            progress.step(epoch, step, loss, images_in_step=stage.global_batch)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        epoch_time_s = time.perf_counter() - started_s
        loss_sum, correct, count, bad = sums.tolist()
        state = TrainState(next_epoch=epoch + 1, images_seen=state.images_seen + int(count))

        last = epoch + 1 == plan.total_epochs
        if val_shard is not None and (last or (epoch + 1) % settings.eval_every_epochs == 0):
            val_metrics = evaluate(model, val_shard, mean, std, device, stage.per_worker_batch)
        metrics = {
            "epoch": epoch,
            "stage": stage.index,
            "resolution_px": stage.resolution_px,
            "global_batch": stage.global_batch,
            "lr": plan.lr_at(epoch, stage.steps_per_epoch - 1),
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "train_images": int(count),
            "bad_rows_skipped": int(bad),
            "epoch_time_s": epoch_time_s,
            "images_per_s": count / epoch_time_s,
            "images_seen": state.images_seen,
            **({"val_" + k: v for k, v in val_metrics.items()} if val_metrics else {}),
        }
        val_metrics = {}
        _report(metrics, state, epoch, last, settings, rank, model, optimizer, scaler)
    return {"next_epoch": state.next_epoch, "images_seen": state.images_seen}


def _unpack(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images, labels and the count of bad rows dropped from this batch."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    bad = batch["bad"].to(device).bool()
    bad_rows = int(bad.sum())
    if bad_rows:
        images, labels = images[~bad], labels[~bad]
    return images, labels, bad_rows


@torch.no_grad()
def evaluate(model, shard, mean, std, device, batch_size: int) -> dict:
    """Top-1 accuracy and loss over this worker's part of the validation split, reduced.

    Runs the bare module: DDP would broadcast buffers on every forward, a collective that
    hangs when workers hold different numbers of validation batches.
    """
    net = unwrap(model)
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=False):
        images, labels, _ = _unpack(batch, device)
        logits = net((images.float() - mean) / std).float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] += (logits.argmax(1) == labels).sum()
        sums[2] += labels.numel()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    loss_sum, correct, count = sums.tolist()
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1), "images": int(count)}


def _report(metrics, state, epoch, last, settings, rank, model, optimizer, scaler) -> None:
    due = last or (epoch + 1) % settings.checkpoint_every_epochs == 0
    metrics["checkpointed"] = due
    if not due or rank != 0:
        ray.train.report(metrics)
        return
    directory = new_checkpoint_dir()
    try:
        save_checkpoint(directory, model=model, optimizer=optimizer, scaler=scaler, state=state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Progress:
    """Rank 0's progress line: epoch, step, loss, images/s and the ETA of the whole plan."""

    def __init__(self, plan: Plan, *, enabled: bool, every_steps: int):
        self.plan = plan
        self.enabled = enabled
        self.every_steps = every_steps
        self.window_start_s = time.perf_counter()
        self.window_images = 0

    def step(self, epoch: int, step: int, loss: torch.Tensor, *, images_in_step: int) -> None:
        if not self.enabled:
            return
        self.window_images += images_in_step
        stage = self.plan.stage_of(epoch)
        if (step + 1) % self.every_steps and step + 1 != stage.steps_per_epoch:
            return
        elapsed_s = time.perf_counter() - self.window_start_s
        rate = self.window_images / max(elapsed_s, 1e-9)
        done = (
            sum(
                s.steps_per_epoch * min(max(epoch - s.first_epoch, 0), s.num_epochs)
                for s in self.plan.stages
            )
            + step
            + 1
        )
        remaining_images = (self.plan.total_steps - done) * stage.global_batch
        eta_s = remaining_images / max(rate, 1e-9)
        _say(
            f"[rayaccel] epoch {epoch + 1}/{self.plan.total_epochs} "
            f"step {step + 1}/{stage.steps_per_epoch} loss {loss.item():.4f} "
            f"{rate:,.0f} img/s ETA {_duration(eta_s)}"
        )
        self.window_start_s = time.perf_counter()
        self.window_images = 0


def _say(line: str) -> None:
    # Ray Train patches `print` into a logger that echoes each line twice on the driver.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )
