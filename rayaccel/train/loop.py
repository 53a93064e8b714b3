"""The per-worker trainer: set up, then for each epoch of the plan train, evaluate, report.

It runs a `WorkerSpec` built on the driver (`rayaccel.train.spec`); it never reads the job.
Setup has one step per piece (hooks, data, model, optimizer, restore), then `fit` walks the
plan's epochs: `train_epoch` (its steps in `train_step`), `evaluate` when due, and one
`ray.train.report` per epoch on every rank (a barrier), with the checkpoint attached by rank 0.
The metrics it reports are already reduced over all workers.

Each plan stage reads its own Ray Data dataset (`stage.dataset`, e.g. `train_s0`), so a
curriculum's resolution and RandAugment magnitude change with the stage. Methods act only at
the named points of `rayaccel.methods.base`, in the order of `rayaccel.methods.ordering`.
Optimizer state carries across stages. Evaluation runs at the stage's resolution and, after
the last epoch, always at full resolution; `val_resolution_px` says which.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import ray.train
import ray.train.torch
import torch

from rayaccel.core.distributed import all_reduce_sum, barrier
from rayaccel.core.events import event_line, format_duration
from rayaccel.core.records import STEP_LOG_KEY, WORKER_FACTS_KEY, EpochRecord
from rayaccel.core.seeds import worker_seed
from rayaccel.data.device import DeviceDataset, load_device_dataset, load_rows
from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import EPOCH_CLOCK_KEY, DecodeSpec
from rayaccel.methods.base import MethodHooks, StepBatch, WorkerContext
from rayaccel.methods.etpp.frequency import downsample
from rayaccel.methods.ordering import build_hooks
from rayaccel.methods.tricks.worker_augment import WorkerAugmentHook
from rayaccel.models import build_model
from rayaccel.models.resolution import fit_to_resolution
from rayaccel.models.weights import InitialWeights, load_initial_weights
from rayaccel.optim.build import build_optimizer, param_groups, set_lr
from rayaccel.optim.registry import OptimizerHyperparameters
from rayaccel.plan import Plan, StagePlan
from rayaccel.train.checkpoint import (
    TrainState,
    load_checkpoint,
    new_checkpoint_dir,
    save_checkpoint,
    unwrap,
)
from rayaccel.train.shard_audit import ShardAudit
from rayaccel.train.spec import DataSpec, LoopSpec, ModelSpec, WorkerSpec
from rayaccel.train.task import make_task

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# `resources` key of the object ref to the run's `InitialWeights` (read once by the driver).
INIT_WEIGHTS_KEY = "initial_weights"


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point: `config` is `WorkerSpec.to_dict()` plus `resources`."""
    config = dict(config)
    # Actor handles travel beside the plain spec (a dataclass copy would deep-copy them).
    resources = config.pop("resources", {})
    trainer = Trainer.setup(WorkerSpec.from_dict(config), resources)
    return trainer.fit()


# ---------------------------------------------------------------- setup steps
def setup_device(loop: LoopSpec) -> torch.device:
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(loop.torch_threads)
        # Subnormal floats (tiny gradients and activations late in training) take a slow
        # microcode path on x86 CPUs: a curriculum's final 28-px epochs ran 1.2-1.35x slower
        # than the baseline's at identical shapes. Flushing them to zero costs no accuracy.
        torch.set_flush_denormal(True)
    return device


def setup_device_data(
    data: DataSpec, *, rank: int, world_size: int, device: torch.device, seed: int
) -> dict[str, DeviceDataset]:
    """With `data.mode: device`, this worker's parts of the splits on its device, by the
    dataset names the plan uses; otherwise none (Ray Data shards)."""
    if data.mode != "device":
        return {}
    spec = DecodeSpec(**data.decode)
    datasets = {
        "train": load_device_dataset(
            data.train,
            spec,
            rank=rank,
            world_size=world_size,
            device=device,
            train=True,
            shuffle_seed=worker_seed(seed, rank),
        )
    }
    if data.val is not None:
        datasets["val"] = load_device_dataset(
            data.val, spec, rank=rank, world_size=world_size, device=device, train=False
        )
    return datasets


def training_images(data: DataSpec, count: int) -> torch.Tensor:
    """The first `count` training images, normalised, as float32 on the CPU.

    Read from storage the same way on every worker, so every worker computes the same
    statistics from them (the whitening conv's filters). Bad rows are left out.
    """
    meta = read_meta(data.train)
    rows = torch.arange(min(count, meta.count)).numpy()
    arrays = load_rows(data.train, meta, DecodeSpec(**data.decode), rows)
    images = torch.from_numpy(arrays["image"][arrays["bad"] == 0]).float()
    mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std).view(1, -1, 1, 1) * 255
    return (images - mean) / std


def setup_hooks(spec: WorkerSpec, context: WorkerContext) -> MethodHooks:
    """Every method's hooks and the worker-side augmentation's, in the rules' order."""
    augment = spec.data.worker_augment
    data_hooks = []
    if augment is not None:
        data_hooks.append(
            WorkerAugmentHook(
                crop_padding_px=augment.crop_padding_px,
                flip=augment.flip,
                cutout_px=augment.cutout_px,
                samples_per_choice=augment.samples_per_choice,
                seed=worker_seed(context.seed, context.rank),
                flip_seed=context.seed,
                device=context.device,
            )
        )
    return build_hooks(spec.methods, context, data_hooks=data_hooks)


def setup_model(
    model: ModelSpec,
    hooks: MethodHooks,
    initial_weights: InitialWeights | None = None,
    *,
    rank: int = 0,
) -> torch.nn.Module:
    """The model, from `initial_weights` if given (rank 0 says what was loaded), as the
    methods transform it, in its memory layout (not yet wrapped by DDP: `prepare_model`
    then broadcasts rank 0's weights, whitening filters included)."""
    net = build_model(
        model.name,
        num_classes=model.num_classes,
        in_chans=model.in_chans,
        task=model.task,
        **model.kwargs,
    )
    if initial_weights is not None:
        # Before the methods transform the model: EMA copies and re-parametrisations must
        # start from the loaded weights.
        report = load_initial_weights(net, initial_weights)
        if rank == 0:
            _say(report)
    net = hooks.transform_model(net)
    if model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def setup_optimizer(
    hyper: OptimizerHyperparameters, model: torch.nn.Module, hooks: MethodHooks
) -> torch.optim.Optimizer:
    """The job's optimizer over the methods' parameter groups, wrapped by the methods."""
    bare = unwrap(model)
    groups = hooks.param_groups(
        bare,
        param_groups(bare, hyper.weight_decay),
        lr=hyper.lr,
        weight_decay=hyper.weight_decay,
    )
    return hooks.wrap_optimizer(build_optimizer(model, hyper, groups=groups))


def restore(loop: LoopSpec, *, model, optimizer, scaler, device, hooks, rank: int) -> TrainState:
    """The run's latest checkpoint (or `loop.start_checkpoint`) loaded; a fresh state without."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop.start_checkpoint is not None:
        checkpoint = ray.train.Checkpoint(loop.start_checkpoint)
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(
            directory, model=model, optimizer=optimizer, scaler=scaler, device=device, methods=hooks
        )
    if rank == 0:
        _say(f"[rayaccel] resumed from checkpoint: next epoch {state.next_epoch}")
    return state


# ---------------------------------------------------------------- the trainer
@dataclass
class Trainer:
    """One worker's run: what setup built, and the loop over the plan's epochs."""

    spec: WorkerSpec
    plan: Plan
    rank: int
    world_size: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    hooks: MethodHooks
    task: object
    mean: torch.Tensor
    std: torch.Tensor
    device_data: dict[str, DeviceDataset]
    state: TrainState
    shards: dict = field(default_factory=dict)
    stage_index: int | None = None
    # The run's epoch clock actor (Ray Data mode): the training pipelines' order and
    # augmentation follow the epoch it holds.
    epoch_clock: Any = None

    @classmethod
    def setup(cls, spec: WorkerSpec, resources: dict) -> Trainer:
        """This Ray Train worker's trainer, restored from the run's latest checkpoint."""
        context = ray.train.get_context()
        # A restarted worker group restores its checkpoint instead (`restore`).
        weights_ref = resources.get(INIT_WEIGHTS_KEY)
        fresh = ray.train.get_checkpoint() is None and spec.loop.start_checkpoint is None
        trainer = cls.build(
            spec,
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=setup_device(spec.loop),
            resources=resources,
            prepare_model=ray.train.torch.prepare_model,
            initial_weights=ray.get(weights_ref) if weights_ref is not None and fresh else None,
        )
        trainer.state = restore(
            spec.loop,
            model=trainer.model,
            optimizer=trainer.optimizer,
            scaler=trainer.scaler,
            device=trainer.device,
            hooks=trainer.hooks,
            rank=trainer.rank,
        )
        return trainer

    @classmethod
    def build(
        cls,
        spec: WorkerSpec,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        resources: dict,
        prepare_model=lambda model: model,
        initial_weights: InitialWeights | None = None,
    ) -> Trainer:
        """The setup steps in order: seed, device data, hooks, model, optimizer, scaler.

        `prepare_model` wraps the model for the worker group (Ray Train's, which moves it to
        the device and wraps it in DDP); the default keeps it as it is. `initial_weights`:
        the model's first weights; None: random.
        """
        seed = spec.loop.seed
        torch.manual_seed(seed)
        device_data = setup_device_data(
            spec.data, rank=rank, world_size=world_size, device=device, seed=seed
        )
        hooks = setup_hooks(
            spec,
            WorkerContext(
                rank=rank,
                world_size=world_size,
                device=device,
                seed=seed,
                num_classes=spec.model.num_classes,
                optimizer_name=spec.optimizer.name,
                resources=resources,
                training_images=functools.partial(training_images, spec.data),
            ),
        )
        model = prepare_model(setup_model(spec.model, hooks, initial_weights, rank=rank))
        optimizer = setup_optimizer(spec.optimizer, model, hooks)
        hooks.attach(unwrap(model))
        return cls(
            spec=spec,
            # An elastic group may run with fewer workers than planned: the per-worker batch
            # and the steps follow the actual world size, the global batch stays the job's.
            plan=spec.plan.for_world_size(world_size),
            rank=rank,
            world_size=world_size,
            device=device,
            model=model,
            optimizer=optimizer,
            scaler=torch.amp.GradScaler(device.type, enabled=spec.loop.precision == "fp16"),
            hooks=hooks,
            task=make_task(spec.model.task, spec.model.num_classes),
            mean=torch.tensor(spec.data.mean, device=device).view(1, -1, 1, 1) * 255,
            std=torch.tensor(spec.data.std, device=device).view(1, -1, 1, 1) * 255,
            device_data=device_data,
            state=TrainState(),
            epoch_clock=resources.get(EPOCH_CLOCK_KEY),
        )

    def shard(self, name: str):
        """A Ray Data shard (or device-resident dataset) by name, fetched once."""
        if name not in self.shards:
            if self.device_data:
                # One full-resolution copy serves every stage and evaluation resolution; the
                # curriculum's down-sampling runs on the worker (`LowPassCropHook`).
                split = "train" if name.startswith("train") else "val"
                self.shards[name] = self.device_data[split]
            else:
                self.shards[name] = ray.train.get_dataset_shard(name)
        return self.shards[name]

    def fit(self) -> dict:
        """Every epoch of the plan from the restored one, each reported to Ray Train."""
        loop = self.spec.loop
        progress = _Progress(
            self.plan,
            enabled=self.rank == 0,
            every_steps=loop.log_every_steps,
            events=loop.console_events,
        )
        end_epoch = loop.stop_epoch or self.plan.total_epochs
        runtime = ray.get_runtime_context()
        for epoch in range(self.state.next_epoch, end_epoch):
            last = epoch + 1 == end_epoch
            record, audit = self.run_epoch(epoch, progress, last=last)
            record = record.replace(
                checkpointed=last or (epoch + 1) % loop.checkpoint_every_epochs == 0,
                # Lets the driver free the worker group's resources if Ray Train leaves them
                # held (`rayaccel.train.runner.free_placement_group`).
                placement_group_id=runtime.get_placement_group_id(),
            )
            # Per worker; the controller's MetricsLog gathers them into the `workers` list.
            worker = audit.facts(rank=self.rank, node_id=runtime.get_node_id())
            metrics = {**record.to_row(), WORKER_FACTS_KEY: worker}
            if self.rank == 0:  # its shown steps, for the trackers (`rayaccel.train.tracking`)
                metrics[STEP_LOG_KEY] = [
                    {**shown, "lr": self.plan.lr_at(epoch, shown["step"] - 1, shown["steps"])}
                    for shown in progress.take_logged()
                ]
            self.report(metrics, record.checkpointed)
        return {
            "next_epoch": self.state.next_epoch,
            "images_seen": self.state.images_seen,
            "placement_group_id": runtime.get_placement_group_id(),
        }

    def report(self, metrics: dict, checkpoint_due: bool) -> None:
        """Reports an epoch to Ray Train, with rank 0's checkpoint when one is due (every
        worker reports: Ray Train gathers one report per worker)."""
        if not checkpoint_due or self.rank != 0:
            ray.train.report(metrics)
            return
        directory = new_checkpoint_dir()
        try:
            save_checkpoint(
                directory,
                model=self.model,
                optimizer=self.optimizer,
                scaler=self.scaler,
                state=self.state,
                methods=self.hooks,
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def run_epoch(
        self, epoch: int, progress: _Progress, *, last: bool
    ) -> tuple[EpochRecord, ShardAudit]:
        """Trains `epoch` (starting its stage if it is the first of one) and evaluates when
        due; its metrics, and this worker's share of the epoch."""
        stage = self.plan.stage_of(epoch)
        if stage.index != self.stage_index:
            self.stage_index = stage.index
            fit_to_resolution(unwrap(self.model), stage.resolution_px)
            self.hooks.on_stage_start(stage)
        if self.epoch_clock is not None:
            if self.rank == 0:
                ray.get(self.epoch_clock.set.remote(epoch))
            # Nobody may start reading the epoch before the clock shows it.
            barrier()
        self.hooks.on_epoch_start(epoch)
        trained, audit = self.train_epoch(epoch, stage, progress)
        val_metrics = {}
        every = self.spec.loop.eval_every_epochs
        if self.spec.data.val is not None and (last or (epoch + 1) % every == 0):
            val_px = self.plan.full_resolution_px if last else stage.resolution_px
            val_metrics = self.evaluate(val_px, stage.per_worker_batch)
        record = EpochRecord(
            epoch=epoch,
            stage=stage.index,
            resolution_px=stage.resolution_px,
            global_batch=stage.global_batch,
            randaug_magnitude=stage.randaug_magnitude,
            replay_factor=stage.replay_factor,
            **trained,
            images_seen=self.state.images_seen,
            fresh_images_seen=self.state.fresh_images_seen,
            world_size=self.world_size,
            method_metrics=self.hooks.on_epoch_end(),
            **{"val_" + k: v for k, v in val_metrics.items()},
        )
        return record, audit

    def train_epoch(
        self, epoch: int, stage: StagePlan, progress: _Progress
    ) -> tuple[dict, ShardAudit]:
        """One pass over the stage's dataset: the epoch's metrics, reduced over workers, and
        this worker's share of it."""
        self.model.train()
        started_s = time.perf_counter()
        cpu_started_s = time.process_time()
        # Time spent blocked on the next batch: preprocessing that cannot keep up with the
        # accelerator shows here, not as slower steps.
        data_wait_s = 0.0
        # loss, correct, counted (images or pixels), trained images, bad rows, fresh images
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        audit = ShardAudit()  # this worker's share of the epoch, for the `workers` metrics
        batches = self.shard(stage.dataset).iter_torch_batches(
            batch_size=stage.fresh_per_worker_batch, drop_last=True, prefetch_batches=2
        )
        # A pruned epoch is shorter than the plan's; the LR schedule walks its stretch in the
        # true number of steps (every worker gets an equal share of the epoch's rows).
        epoch_rows = self.hooks.epoch_samples(self.plan.train_samples) // self.world_size
        steps = min(stage.steps_per_epoch, epoch_rows // stage.fresh_per_worker_batch)
        waiting_since_s = time.perf_counter()
        # The epoch boundary's fixed cost: starting the pipeline until the first batch.
        first_batch_wait_s = None
        for step, batch in enumerate(batches):
            data_wait_s += time.perf_counter() - waiting_since_s
            if first_batch_wait_s is None:
                first_batch_wait_s = data_wait_s
            if step >= steps:
                break
            set_lr(self.optimizer, self.plan.lr_at(epoch, step, steps))
            audit.add(batch["index"], batch["bad"])
            loss = self.train_step(batch, sums)
            progress.step(epoch, step, loss, images_in_step=stage.global_batch, steps=steps)
            waiting_since_s = time.perf_counter()
        all_reduce_sum(sums)
        epoch_time_s = time.perf_counter() - started_s
        # CPU seconds of this worker's process (its threads, including Ray Data's batch
        # prefetching): well below epoch_time_s minus data_wait_s means the worker was waiting
        # for a CPU, not computing.
        worker_cpu_s = time.process_time() - cpu_started_s
        loss_sum, correct, counted, count, bad, fresh_count = sums.tolist()
        self.state = TrainState(
            next_epoch=epoch + 1,
            images_seen=self.state.images_seen + int(count),
            fresh_images_seen=self.state.fresh_images_seen + int(fresh_count),
        )
        return {
            "lr": self.plan.lr_at(epoch, steps - 1, steps),
            "steps": steps,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(counted, 1),
            "train_images": int(count),
            "fresh_images": int(fresh_count),
            "bad_rows_skipped": int(bad),
            "epoch_time_s": epoch_time_s,
            "images_per_s": count / epoch_time_s,
            "data_wait_s": data_wait_s,
            "first_batch_wait_s": first_batch_wait_s,
            "worker_cpu_s": worker_cpu_s,
        }, audit

    def train_step(self, batch: dict, sums: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a fresh batch (the methods may add replayed samples, crop,
        mix, weight the losses or own the backward pass); adds its counts to `sums`."""
        hooks, precision = self.hooks, self.spec.loop.precision
        fresh = _unpack(batch, self.device)
        step_batch = hooks.on_batch(fresh)
        step_batch.images = (step_batch.images.float() - self.mean) / self.std
        step_batch = hooks.on_inputs(step_batch)
        images = in_memory_format(step_batch.images, self.spec.model.channels_last)
        labels = step_batch.labels
        self.optimizer.zero_grad(set_to_none=True)
        outputs = []  # (logits, per-sample losses) of each forward pass of the step

        def loss_of_rows(images, rows=None):
            part = step_batch if rows is None else step_batch.take(rows)
            with torch.autocast(
                self.device.type,
                dtype=_AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                enabled=precision in _AUTOCAST_DTYPES,
            ):
                logits = self.model(images)
                losses = self.task.losses(
                    logits, part.labels, part.targets, self.spec.loop.label_smoothing
                )
                loss = hooks.on_loss(losses, part).mean()
            outputs.append((logits.detach(), losses.detach()))
            return loss

        if hooks.backward(self.model, loss_of_rows, images, self.optimizer, self.scaler.scale):
            loss = torch.stack([o[1].mean() for o in outputs]).mean()
        else:
            loss = loss_of_rows(images)
            self.scaler.scale(loss).backward()
        hooks.before_step(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        hooks.after_step()
        with torch.no_grad():
            logits = torch.cat([o[0] for o in outputs])
            losses = torch.cat([o[1] for o in outputs])
            correct, counted = self.task.correct(logits, labels, step_batch.targets)
            sums += torch.stack(
                [
                    # The plain per-sample loss: method weights (InfoBatch) would inflate it
                    # and make runs incomparable.
                    losses.double().sum(),
                    correct,
                    counted,
                    torch.tensor(labels.shape[0], dtype=torch.float64, device=self.device),
                    batch["bad"].sum().to(self.device, torch.float64),
                    torch.tensor(fresh.labels.shape[0], dtype=torch.float64, device=self.device),
                ]
            )
        return loss

    def evaluate(self, resolution_px: int, batch_size: int) -> dict:
        """Validation metrics at `resolution_px`, with the methods' evaluation weights."""
        fit_to_resolution(unwrap(self.model), resolution_px)
        with self.hooks.evaluation_weights():
            return evaluate(
                self.model,
                self.shard(self.plan.val_dataset(resolution_px)),
                self.mean,
                self.std,
                self.device,
                batch_size,
                resolution_px=resolution_px,
                task=self.task,
                predict=self.hooks.predict,
                channels_last=self.spec.model.channels_last,
                lowpass_mode=self.plan.lowpass_mode or "fft",
            )


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
    predict=None,
    channels_last: bool = False,
    lowpass_mode: str = "fft",
) -> dict:
    """The task's validation metrics over this worker's part of the split, reduced.

    Classification: top-1 accuracy and loss; segmentation: pixel accuracy (`acc`), `miou`
    and loss (`rayaccel.train.task`). Batches larger than `resolution_px` are low-pass cropped
    to it by `lowpass_mode` (the `fft` mode, and device-resident data in either mode, evaluate
    low-resolution stages on the full-resolution split). `predict(net, inputs)` gives the
    logits (the hooks' `predict`: test-time augmentation); None: the plain forward pass.

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
        logits = predict(net, inputs) if predict is not None else net(inputs).float()
        task.eval_add(sums, logits, labels)
    return {**task.eval_result(sums), "resolution_px": resolution_px}


class _Progress:
    """Rank 0's progress: epoch, step, loss, images/s and the ETA of the whole plan.

    The ETA extrapolates the plan's compute fraction done per second of steady training, so
    it stays right across stages whose steps differ in resolution and batch size. Each
    epoch's first step is not steady: its time holds the previous epoch's evaluation and
    checkpoint and the pipeline's warm-up (the wait for the epoch's first batch). Those
    boundaries are measured apart and each remaining epoch is charged their mean, so the
    ETA does not swing from minutes to seconds within an epoch. The first boundary (model
    build, first pipeline start) happens once and is not charged again.

    With `events`, each progress point is an event line for the driver's console
    (`rayaccel.core.events`); without (a Ray Tune trial), a readable line.
    """

    def __init__(self, plan: Plan, *, enabled: bool, every_steps: int, events: bool = False):
        self.plan = plan
        self.enabled = enabled
        self.every_steps = every_steps
        self.events = events
        self.last_s = time.perf_counter()
        self.last_fraction: float | None = None
        self.steady_s = 0.0
        self.steady_fraction = 0.0
        self.boundaries_s: list[float] = []
        self.window_s = 0.0
        self.window_images = 0
        # The shown steps since the last report: step, epoch images so far, loss, images/s.
        self.logged: list[dict] = []

    def step(
        self, epoch: int, step: int, loss: torch.Tensor, *, images_in_step: int, steps: int
    ) -> None:
        if not self.enabled:
            return
        now_s = time.perf_counter()
        fraction = self.plan.compute_fraction_at(epoch, step + 1, steps)
        if step == 0 or self.last_fraction is None:
            self.boundaries_s.append(now_s - self.last_s)
        else:
            self.steady_s += now_s - self.last_s
            self.steady_fraction += fraction - self.last_fraction
            self.window_s += now_s - self.last_s
            self.window_images += images_in_step
        self.last_s, self.last_fraction = now_s, fraction
        if (step + 1) % self.every_steps and step + 1 != steps:
            return
        rate = self.window_images / self.window_s if self.window_s > 0 else None
        eta_s = self.eta_s(fraction, epochs_left=self.plan.total_epochs - epoch - 1)
        self.window_s, self.window_images = 0.0, 0
        self.logged.append(
            {
                "step": step + 1,
                "steps": steps,
                "images": (step + 1) * images_in_step,
                "loss": loss.item(),
                **({} if rate is None else {"images_per_s": rate}),
            }
        )
        if self.events:
            _say(
                event_line(
                    "step",
                    epoch=epoch,
                    epochs=self.plan.total_epochs,
                    step=step + 1,
                    steps=steps,
                    loss=round(loss.item(), 5),
                    images_per_s=None if rate is None else round(rate, 1),
                    eta_s=None if eta_s is None else round(eta_s, 1),
                )
            )
            return
        _say(
            f"[rayaccel] epoch {epoch + 1}/{self.plan.total_epochs} "
            f"step {step + 1}/{steps} loss {loss.item():.4f}"
            + ("" if rate is None else f" {rate:,.0f} img/s")
            + ("" if eta_s is None else f" ETA {format_duration(eta_s)}")
        )

    def eta_s(self, fraction: float, *, epochs_left: int) -> float | None:
        """Seconds left: the steady rate over what remains, plus each remaining epoch's
        boundary at the mean measured after the first; None before a steady step."""
        if self.steady_s <= 0 or self.steady_fraction <= 0:
            return None
        later = self.boundaries_s[1:]
        boundary_s = sum(later) / len(later) if later else 0.0
        return (1 - fraction) * self.steady_s / self.steady_fraction + epochs_left * boundary_s

    def take_logged(self) -> list[dict]:
        """The steps printed since the last call."""
        logged, self.logged = self.logged, []
        return logged


def _say(line: str) -> None:
    # Ray Train patches `print` into a logger that echoes each line twice on the driver.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
