"""The per-worker training loop: restore -> stages -> epochs -> batches -> step -> report.

It executes a `Plan` and plain settings built by the runner; it never reads the job YAML.
Every rank calls `ray.train.report` once per epoch (a barrier), rank 0 attaches the
checkpoint, and the metrics it reports are already reduced over all workers.

Each plan stage reads its own Ray Data dataset (`stage.dataset`, e.g. `train_s0`), so a
curriculum's resolution and RandAugment magnitude change with the stage. Speed-up methods act
at the named points of `rayaccel.methods.base` (replay, low-pass crop, ...); the loop only
calls them. Optimizer state carries across stages. Evaluation runs at the stage's resolution
and, after the last epoch, always at full resolution; `val_resolution_px` says which.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass

import ray.train
import ray.train.torch
import torch

from rayaccel.core.distributed import all_reduce_sum
from rayaccel.core.seeds import worker_seed
from rayaccel.methods.agvm.hook import AgvmHook
from rayaccel.methods.base import StepBatch
from rayaccel.methods.etpp.frequency import downsample
from rayaccel.methods.ordering import build_hooks
from rayaccel.methods.tricks.tta import predict_with_tta
from rayaccel.models import build_model
from rayaccel.models.resolution import fit_to_resolution
from rayaccel.optim.build import set_lr
from rayaccel.plan import Plan
from rayaccel.train import recipe
from rayaccel.train.checkpoint import (
    TrainState,
    load_checkpoint,
    new_checkpoint_dir,
    save_checkpoint,
    unwrap,
)
from rayaccel.train.shard_audit import ShardAudit
from rayaccel.train.task import make_task


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
    # NHWC weights and inputs (`train.channels_last`).
    channels_last: bool = False
    # Replay buffer per worker (used by stages with replay factor > 1).
    replay_capacity_samples: int = 0
    replay_dtype: str = "uint8"
    # Checkpoint (path or URI) to continue from when the run has none of its own: a search
    # trial continues from the previous stage's best checkpoint instead of retraining it.
    start_checkpoint: str | None = None
    # Train only the epochs before this one (a search trial trains one curriculum stage of
    # the full plan, so its LR schedule is the full curriculum's); None: the whole plan.
    stop_epoch: int | None = None
    # "ray" (Ray Data every epoch) or "device" (each worker's part decoded once onto its
    # device); `data_source` is {"train", "val", "spec"} (rayaccel.train.recipe).
    data_mode: str = "ray"
    data_source: dict | None = None
    # Fast-training tricks and progressive learning as plain dicts (None: off); see
    # rayaccel.train.recipe for their keys.
    model_tricks: dict | None = None
    whitening: dict | None = None
    bn_bias: dict | None = None
    lookahead: dict | None = None
    ema: dict | None = None
    tta: dict | None = None
    worker_augment: dict | None = None
    # "classification" or "segmentation" (rayaccel.train.task).
    task: str = "classification"
    # AGVM settings (`AgvmHook` arguments plus `components` name patterns) or None.
    agvm: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_loop_per_worker(config: dict) -> dict:
    config = dict(config)
    # Actor handles travel beside the plain settings (a dataclass copy would deep-copy them).
    infobatch_board = config.pop("infobatch_board", None)
    settings = LoopSettings(**config)
    context = ray.train.get_context()
    # An elastic group may run with fewer workers than planned: the per-worker batch and the
    # steps follow the actual world size, the global batch stays the job's.
    plan = Plan.from_dict(settings.plan).for_world_size(context.get_world_size())
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(settings.torch_threads)
        # Subnormal floats (tiny gradients and activations late in training) take a slow
        # microcode path on x86 CPUs: a curriculum's final 28-px epochs ran 1.2-1.35x slower
        # than the baseline's at identical shapes. Flushing them to zero costs no accuracy.
        torch.set_flush_denormal(True)
    torch.manual_seed(settings.seed)

    device_data = {}
    if settings.data_mode == "device":
        device_data = recipe.load_device_data(
            settings.data_source,
            rank=rank,
            world_size=context.get_world_size(),
            device=device,
            seed=settings.seed,
        )
    task = make_task(settings.task, settings.num_classes)
    model = build_model(
        settings.model_name,
        num_classes=settings.num_classes,
        in_chans=settings.in_chans,
        task=settings.task,
        **settings.model_kwargs,
    )
    model = recipe.transform_model(
        model,
        settings.model_tricks or {},
        whitening=settings.whitening,
        source=settings.data_source,
        mean=settings.mean,
        std=settings.std,
    )
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    agvm_settings = dict(settings.agvm or {})
    optimizer, agvm_layout = recipe.build_recipe_optimizer(
        model,
        settings.optimizer,
        bn_bias=settings.bn_bias,
        lookahead=settings.lookahead,
        agvm_components=agvm_settings.pop("components", None),
    )
    agvm = (
        AgvmHook(*agvm_layout, optimizer_name=settings.optimizer["name"], **agvm_settings)
        if agvm_layout is not None
        else None
    )
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    mean = torch.tensor(settings.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(settings.std, device=device).view(1, -1, 1, 1) * 255
    hooks = build_hooks(
        lowpass_mode=plan.lowpass_mode,
        data_on_device=settings.data_mode == "device",
        replay_capacity_samples=settings.replay_capacity_samples,
        replay_dtype=settings.replay_dtype,
        device=device,
        seed=worker_seed(settings.seed, rank),
        infobatch_board=infobatch_board,
        rank=rank,
        **recipe.recipe_hooks(
            model,
            worker_augment=settings.worker_augment,
            ema=settings.ema,
            progressive=plan.curriculum == "progressive",
            num_classes=settings.num_classes,
            seed=settings.seed,
            rank=rank,
            device=device,
        ),
        agvm=agvm,
    )

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and settings.start_checkpoint is not None:
        checkpoint = ray.train.Checkpoint(settings.start_checkpoint)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(
                directory,
                model=model,
                optimizer=optimizer,
                scaler=scaler,
                device=device,
                methods=hooks,
            )
        if rank == 0:
            _say(f"[rayaccel] resumed from checkpoint: next epoch {state.next_epoch}")

    # Ray Data shards (or device-resident datasets) by name; each name is fetched once
    shards: dict = {}

    def shard(name: str):
        if name not in shards:
            if device_data:
                # One full-resolution copy serves every stage and evaluation resolution; the
                # curriculum's down-sampling runs on the worker (`LowPassCropHook`).
                shards[name] = device_data["train" if name.startswith("train") else "val"]
            else:
                shards[name] = ray.train.get_dataset_shard(name)
        return shards[name]

    progress = _Progress(plan, enabled=rank == 0, every_steps=settings.log_every_steps)
    stage_index = None

    end_epoch = settings.stop_epoch or plan.total_epochs
    for epoch in range(state.next_epoch, end_epoch):
        stage = plan.stage_of(epoch)
        if stage.index != stage_index:
            stage_index = stage.index
            fit_to_resolution(unwrap(model), stage.resolution_px)
            hooks.on_stage_start(stage)
        hooks.on_epoch_start(epoch)
        model.train()
        started_s = time.perf_counter()
        cpu_started_s = time.process_time()
        # Time spent blocked on the next batch: preprocessing that cannot keep up with the
        # accelerator shows here, not as slower steps.
        data_wait_s = 0.0
        # loss, correct, counted (images or pixels), trained images, bad rows, fresh images
        sums = torch.zeros(6, dtype=torch.float64, device=device)
        audit = ShardAudit()  # this worker's share of the epoch, for the `workers` metrics
        batches = shard(stage.dataset).iter_torch_batches(
            batch_size=stage.fresh_per_worker_batch, drop_last=True, prefetch_batches=2
        )
        # A pruned epoch is shorter than the plan's; the LR schedule walks its stretch in the
        # true number of steps (every worker gets an equal share of the epoch's rows).
        epoch_rows = hooks.epoch_samples(plan.train_samples) // context.get_world_size()
        steps = min(stage.steps_per_epoch, epoch_rows // stage.fresh_per_worker_batch)
        waiting_since_s = time.perf_counter()
        for step, batch in enumerate(batches):
            data_wait_s += time.perf_counter() - waiting_since_s
            if step >= steps:
                break
            lr = plan.lr_at(epoch, step, steps)
            set_lr(optimizer, lr)
            fresh = _unpack(batch, device)
            audit.add(batch["index"], batch["bad"])
            step_batch = hooks.on_batch(fresh)
            step_batch.images = (step_batch.images.float() - mean) / std
            step_batch = hooks.on_inputs(step_batch)
            step_batch.images = in_memory_format(step_batch.images, settings.channels_last)
            labels = step_batch.labels
            optimizer.zero_grad(set_to_none=True)
            outputs = []  # (logits, per-sample losses) of each forward pass of the step

            def loss_of_rows(images, rows=None, step_batch=step_batch, outputs=outputs):
                part = step_batch if rows is None else step_batch.take(rows)
                with torch.autocast(
                    device.type,
                    dtype=_AUTOCAST_DTYPES.get(settings.precision, torch.bfloat16),
                    enabled=settings.precision in _AUTOCAST_DTYPES,
                ):
                    logits = model(images)
                    losses = task.losses(
                        logits, part.labels, part.targets, settings.label_smoothing
                    )
                    loss = hooks.on_loss(losses, part).mean()
                outputs.append((logits.detach(), losses.detach()))
                return loss

            # AGVM measures on two half batches (an odd batch, after skipped bad rows, waits).
            if agvm is not None and agvm.due() and labels.shape[0] % 2 == 0:
                agvm.backward(model, loss_of_rows, step_batch.images, optimizer, scaler.scale)
                loss = torch.stack([o[1].mean() for o in outputs]).mean()
            else:
                loss = loss_of_rows(step_batch.images)
                scaler.scale(loss).backward()
            if agvm is not None:
                agvm.scale_lrs(optimizer)
            scaler.step(optimizer)
            scaler.update()
            hooks.after_step()
            with torch.no_grad():
                logits = torch.cat([o[0] for o in outputs])
                losses = torch.cat([o[1] for o in outputs])
                correct, counted = task.correct(logits, labels)
                sums += torch.stack(
                    [
                        # The plain per-sample loss: method weights (InfoBatch) would
                        # inflate it and make runs incomparable.
                        losses.double().sum(),
                        correct,
                        counted,
                        torch.tensor(labels.shape[0], dtype=torch.float64, device=device),
                        batch["bad"].sum().to(device, torch.float64),
                        torch.tensor(fresh.labels.shape[0], dtype=torch.float64, device=device),
                    ]
                )
            progress.step(epoch, step, loss, images_in_step=stage.global_batch, steps=steps)
            waiting_since_s = time.perf_counter()
        all_reduce_sum(sums)
        epoch_time_s = time.perf_counter() - started_s
        # CPU seconds of this worker's process (its threads, including Ray Data's batch
        # prefetching): well below epoch_time_s minus data_wait_s means the worker was waiting
        # for a CPU, not computing.
        worker_cpu_s = time.process_time() - cpu_started_s
        loss_sum, correct, counted, count, bad, fresh_count = sums.tolist()
        state = TrainState(
            next_epoch=epoch + 1,
            images_seen=state.images_seen + int(count),
            fresh_images_seen=state.fresh_images_seen + int(fresh_count),
        )

        last = epoch + 1 == end_epoch
        val_metrics = {}
        if settings.has_val and (last or (epoch + 1) % settings.eval_every_epochs == 0):
            val_px = plan.full_resolution_px if last else stage.resolution_px
            fit_to_resolution(unwrap(model), val_px)
            with hooks.evaluation_weights():
                val_metrics = evaluate(
                    model,
                    shard(plan.val_dataset(val_px)),
                    mean,
                    std,
                    device,
                    stage.per_worker_batch,
                    resolution_px=val_px,
                    task=task,
                    tta=settings.tta,
                    channels_last=settings.channels_last,
                    lowpass_mode=plan.lowpass_mode or "fft",
                )
        metrics = {
            "epoch": epoch,
            "stage": stage.index,
            "resolution_px": stage.resolution_px,
            "global_batch": stage.global_batch,
            "randaug_magnitude": stage.randaug_magnitude,
            "replay_factor": stage.replay_factor,
            "lr": plan.lr_at(epoch, steps - 1, steps),
            "steps": steps,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(counted, 1),
            "train_images": int(count),
            "fresh_images": int(fresh_count),
            "bad_rows_skipped": int(bad),
            "epoch_time_s": epoch_time_s,
            "images_per_s": count / epoch_time_s,
            "data_wait_s": data_wait_s,
            "worker_cpu_s": worker_cpu_s,
            "images_seen": state.images_seen,
            "fresh_images_seen": state.fresh_images_seen,
            "world_size": context.get_world_size(),
            # Lets the driver free the worker group's resources if Ray Train leaves them held
            # (`rayaccel.train.runner.free_placement_group`).
            "placement_group_id": ray.get_runtime_context().get_placement_group_id(),
            # Per worker; the controller's MetricsLog gathers them into one `workers` list.
            "worker": audit.facts(rank=rank, node_id=ray.get_runtime_context().get_node_id()),
            **hooks.on_epoch_end(),
            **({"val_" + k: v for k, v in val_metrics.items()} if val_metrics else {}),
        }
        _report(metrics, state, epoch, last, settings, rank, model, optimizer, scaler, hooks)
    return {
        "next_epoch": state.next_epoch,
        "images_seen": state.images_seen,
        "placement_group_id": ray.get_runtime_context().get_placement_group_id(),
    }


def in_memory_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """NCHW images with the strides of the requested layout.

    `contiguous(memory_format=...)` is not enough: with one channel (grey images) a tensor is
    contiguous in both layouts, so it would keep whichever strides it came with, and the
    first convolution picks its kernel layout from those strides. `clone` sets them.
    """
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    if images.dim() != 4 or images.stride() == _strides_of(images, wanted):
        return images
    return images.clone(memory_format=wanted)


def _strides_of(images: torch.Tensor, memory_format: torch.memory_format) -> tuple:
    n, c, h, w = images.shape
    if memory_format == torch.channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def _unpack(batch: dict, device: torch.device) -> StepBatch:
    """Images, labels and indices of a Ray Data batch, without its bad rows."""
    images = batch["image"].to(device, non_blocking=True)
    # Segmentation batches carry a (N, H, W) class mask; it is what the loss compares with.
    labels = batch["mask" if "mask" in batch else "label"].to(device, non_blocking=True).long()
    indices = batch["index"].to(device, non_blocking=True)
    weights = batch.get("loss_weight")
    weights = weights.to(device, non_blocking=True) if weights is not None else None
    bad = batch["bad"].to(device).bool()
    if bad.any():
        images, labels, indices = images[~bad], labels[~bad], indices[~bad]
        weights = weights[~bad] if weights is not None else None
    return StepBatch(images, labels, indices, weights)


@torch.no_grad()
def evaluate(
    model,
    shard,
    mean,
    std,
    device,
    batch_size: int,
    *,
    resolution_px: int,
    task,
    tta: dict | None = None,
    channels_last: bool = False,
    lowpass_mode: str = "fft",
) -> dict:
    """The task's validation metrics over this worker's part of the split, reduced.

    Classification: top-1 accuracy and loss; segmentation: pixel accuracy (`acc`), `miou`
    and loss (`rayaccel.train.task`). Batches larger than `resolution_px` are low-pass cropped
    to it by `lowpass_mode` (the `fft` mode, and device-resident data in either mode, evaluate
    low-resolution stages on the full-resolution split). With
    `tta` ({"flip", "translate_px"}) the logits are averaged over flipped and shifted views
    (`predict_with_tta`).

    Runs the bare module: DDP would broadcast buffers on every forward, a collective that
    hangs when workers hold different numbers of validation batches.
    """
    net = unwrap(model)
    net.eval()
    sums = task.new_eval(device)
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=False):
        step_batch = _unpack(batch, device)
        images, labels = step_batch.images, step_batch.labels
        inputs = in_memory_format((images.float() - mean) / std, channels_last)
        if inputs.shape[-1] != resolution_px:
            inputs = downsample(inputs, resolution_px, lowpass_mode)
        logits = predict_with_tta(net, inputs, **tta) if tta else net(inputs).float()
        task.eval_add(sums, logits, labels)
    return {**task.eval_result(sums), "resolution_px": resolution_px}


def _report(metrics, state, epoch, last, settings, rank, model, optimizer, scaler, hooks) -> None:
    due = last or (epoch + 1) % settings.checkpoint_every_epochs == 0
    metrics["checkpointed"] = due
    if not due or rank != 0:
        ray.train.report(metrics)
        return
    directory = new_checkpoint_dir()
    try:
        save_checkpoint(
            directory,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            state=state,
            methods=hooks,
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Progress:
    """Rank 0's progress line: epoch, step, loss, images/s and the ETA of the whole plan.

    The ETA extrapolates the compute fraction done per second, so it stays right across
    stages whose steps differ in resolution and batch size.
    """

    def __init__(self, plan: Plan, *, enabled: bool, every_steps: int):
        self.plan = plan
        self.enabled = enabled
        self.every_steps = every_steps
        self.window_start_s = time.perf_counter()
        self.window_images = 0
        self.window_fraction: float | None = None

    def step(
        self, epoch: int, step: int, loss: torch.Tensor, *, images_in_step: int, steps: int
    ) -> None:
        if not self.enabled:
            return
        if self.window_fraction is None:
            self.window_fraction = self.plan.compute_fraction_at(epoch, step, steps)
        self.window_images += images_in_step
        if (step + 1) % self.every_steps and step + 1 != steps:
            return
        elapsed_s = time.perf_counter() - self.window_start_s
        rate = self.window_images / max(elapsed_s, 1e-9)
        fraction = self.plan.compute_fraction_at(epoch, step + 1, steps)
        fraction_per_s = (fraction - self.window_fraction) / max(elapsed_s, 1e-9)
        eta_s = (1 - fraction) / max(fraction_per_s, 1e-12)
        _say(
            f"[rayaccel] epoch {epoch + 1}/{self.plan.total_epochs} "
            f"step {step + 1}/{steps} loss {loss.item():.4f} "
            f"{rate:,.0f} img/s ETA {_duration(eta_s)}"
        )
        self.window_start_s = time.perf_counter()
        self.window_images = 0
        self.window_fraction = fraction


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
