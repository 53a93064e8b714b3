"""Runs a job: datasets, scaling and run config -> `TorchTrainer.fit()` -> the run folder.

The run folder (`run.storage_path/run.name`, local or any pyarrow URI) holds `job.yaml` (the
resolved job), `plan.json`, `metrics.jsonl` (every epoch, written by a controller-side
callback because Ray Train only keeps metrics that came with a checkpoint), Ray's
checkpoints and `summary.json`; with a `tracking:` section, the trackers' files too
(`rayaccel.train.tracking`, another controller-side callback). Running the same job name
again continues from the latest checkpoint: Ray Train restores a run from its storage
folder, and the loop skips the epochs the checkpoint already holds.

A curriculum plan gets one training dataset per stage (`train_s0`, `train_s1`, ..., each with
its stage's RandAugment magnitude and, in `resize` mode, its down-sampling) and, in `resize`
mode, one validation dataset per low resolution (`val_96px`, ...), all in one `fit()`: a
worker group restarted by a failure resumes at the right stage because every stage's dataset
is there.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayaccel.config import JobConfig, dump_job
from rayaccel.config.job import TimmModel
from rayaccel.core.compute import pixel_compute
from rayaccel.core.events import event_line
from rayaccel.core.records import STEP_LOG_KEY, WORKER_FACTS_KEY, EpochRecord
from rayaccel.core.storage import RunFolder, latest_checkpoint
from rayaccel.data.cluster import connect_ray
from rayaccel.data.folder import list_folder, read_split_meta
from rayaccel.data.pipeline import (
    BAD_ROW_MARK,
    BAD_SHARD_MARK,
    EPOCH_CLOCK_KEY,
    DecodeSpec,
    build_dataset,
    start_epoch_clock,
)
from rayaccel.data.transforms import DEFAULT_CROP_PCT, DEFAULT_RATIO
from rayaccel.methods.base import DriverPart
from rayaccel.methods.registry import driver_parts, method_summaries
from rayaccel.models.weights import InitialWeights, WeightsError, initial_weights
from rayaccel.plan import Plan, make_plan
from rayaccel.report import compute_px_images, load_run, write_report
from rayaccel.train.console import RunConsole, local_log_path, result_block
from rayaccel.train.loop import INIT_WEIGHTS_KEY, train_loop_per_worker
from rayaccel.train.spec import ModelSpec, WorkerSpec, build_worker_spec
from rayaccel.train.tracking import Tracking, finish_tracking, tracking_settings


class RunFailed(RuntimeError):
    """Training stopped; the message is the root cause, readable without a traceback."""


def run_folder_of(job: JobConfig) -> RunFolder:
    return RunFolder.of(job.run.storage_path, job.run.name)


class MetricsLog(ray.train.UserCallback):
    """Writes every epoch's metrics to `metrics.jsonl` and prints an epoch summary.

    Runs in the Ray Train controller. After a resume (a new run, or a worker group restarted
    after a failure or an elastic resize) the loop re-reports from the checkpoint's epoch, so
    entries at or after a reported epoch are replaced: the file always describes the history
    of the model that exists. Each row carries `workers`, one entry per training worker
    (rank, node, fresh images, sample index digest; see `rayaccel.train.shard_audit`). With
    `events` the summary is an event line for the driver's console (its epoch table), else
    a readable line.
    """

    def __init__(self, folder: RunFolder, total_epochs: int, *, events: bool = False):
        self.folder = folder
        self.total_epochs = total_epochs
        self.events = events
        self.records: list[EpochRecord] | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        workers = sorted(
            (m[WORKER_FACTS_KEY] for m in metrics if WORKER_FACTS_KEY in m),
            key=lambda w: w["rank"],
        )
        row = {k: v for k, v in metrics[0].items() if k not in (WORKER_FACTS_KEY, STEP_LOG_KEY)}
        record = EpochRecord.from_row(row).replace(workers=tuple(workers), time_unix_s=time.time())
        if self.records is None:
            self.records = self.folder.read_epochs()
        # A restarted (e.g. resized) worker group re-reports from its checkpoint's epoch.
        self.records = [r for r in self.records if r.epoch < record.epoch]
        self.records.append(record)
        self.folder.write_epochs(self.records)
        if self.events:
            shown = {k: row.get(k) for k in EPOCH_TABLE_KEYS}
            line = event_line("epoch", row=shown, checkpoint=checkpoint is not None)
        else:
            line = epoch_line(record, self.total_epochs, checkpointed=checkpoint is not None)
        print(line, flush=True)


# What the console's epoch table shows of a record (`rayaccel.train.console.epoch_row`).
EPOCH_TABLE_KEYS = (
    "epoch",
    "stage",
    "resolution_px",
    "global_batch",
    "train_loss",
    "val_acc",
    "val_miou",
    "val_resolution_px",
    "images_per_s",
    "data_wait_s",
    "epoch_time_s",
)


def epoch_line(record: EpochRecord, total_epochs: int, *, checkpointed: bool) -> str:
    """The console's line for a finished epoch."""
    val = (
        f" val_acc {record.val_acc:.4f} @{record.val_resolution_px}px" if record.evaluated else ""
    ) + (f" val_miou {record.val_miou:.4f}" if record.val_miou is not None else "")
    return (
        f"[rayaccel] epoch {record.epoch + 1}/{total_epochs} done: "
        f"{record.resolution_px}px batch {record.global_batch} "
        f"train_loss {record.train_loss:.4f} train_acc {record.train_acc:.4f}{val} "
        f"{record.images_per_s:,.0f} img/s {record.epoch_time_s:.1f}s"
        + (" [checkpoint]" if checkpointed else "")
    )


class _SplitTrainEqually(DataConfig):
    """Training datasets split equally (same step count on every worker); validation
    datasets (`val`, `val_<B>px`) split without dropping the remainder, so every validation
    image is counted exactly once."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train calls this once per dataset name, with a one-entry dict.
        others = {name: ds for name, ds in datasets.items() if not name.startswith("val")}
        output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
        for name, dataset in datasets.items():
            if not name.startswith("val"):
                continue
            val = dataset.copy(dataset)
            val.context.execution_options = self._resolve_execution_options(name)
            for i, split in enumerate(val.streaming_split(world_size, equal=False)):
                output[i][name] = split
        return output


def build_run(job: JobConfig, *, train_images: int | None = None) -> tuple[Plan, WorkerSpec]:
    """The plan and the workers' spec of a validated, data-resolved job.

    Args:
        job: The job, its data fields resolved.
        train_images: Images in the training split; None reads them from its metadata (a
            plan of absent data passes the count its stated facts give).
    """
    if train_images is None:
        train_images = _split_meta(job, "train").count
    plan = make_plan(job, train_samples=train_images)
    return plan, build_worker_spec(job, plan)


def run_job(
    job: JobConfig,
    *,
    start_checkpoint: str | None = None,
    stop_epoch: int | None = None,
    callbacks: tuple[ray.train.UserCallback, ...] = (),
    console: bool = False,
    verbose: bool = False,
) -> dict:
    """Trains a data-resolved job on the connected (or a new local) Ray cluster.

    Args:
        job: The validated job with its data fields resolved.
        start_checkpoint: Checkpoint (path or URI) the run starts from when its folder has
            none yet (a search trial continues a previous stage's best checkpoint).
        stop_epoch: Stop before this epoch of the plan; None trains the whole plan.
        callbacks: More Ray Train callbacks, e.g. Ray Tune's `TuneReportCallback`.
        console: Show the run on rayaccel's console (`rayaccel.train.console`): a start
            line, progress, the epoch table and the result block, with Ray's own output in
            the run folder's `ray.log` (`verbose`: on the console too). Without it (a Tune
            trial, a benchmark) the run prints readable lines among Ray's.

    Returns the summary also written to `summary.json`.
    """
    started_s = time.time()
    plan, spec = build_run(job)
    spec = spec.replace_loop(
        start_checkpoint=start_checkpoint, stop_epoch=stop_epoch, console_events=console
    )
    folder = run_folder_of(job)
    folder.write_text("job.yaml", dump_job(job))
    folder.write_text("plan.json", json.dumps(plan.to_dict(), indent=2) + "\n")
    # Read once here, before Ray starts: a hub out of reach fails in a line, and nodes
    # without internet get the weights through the object store. A resumed run (or a trial
    # continuing a checkpoint) restores its own weights instead.
    resuming = start_checkpoint is not None or latest_checkpoint(folder.location) is not None
    weights = None if resuming else _initial_weights(spec.model)
    fit = functools.partial(
        _fit, job, plan, spec, folder, callbacks, weights=weights, started_s=started_s
    )
    if not console:
        print(f"[rayaccel] run folder: {folder.location}", flush=True)
        connect_ray()
        return fit(events=False)
    log_path, upload = local_log_path(folder.location)
    view = RunConsole(
        total_epochs=plan.total_epochs,
        ray_log_path=log_path,
        upload=(lambda data: folder.write_bytes("ray.log", data)) if upload else None,
        verbose=verbose,
        keep_after_close=True,
    )
    with view:
        for line in start_lines(job, plan, folder):
            view.say(line)
        connect_ray()
        view.attach()
        try:
            summary = fit(events=True)
        except RunFailed as err:
            raise RunFailed(
                f"{err}\n(Ray's own output, worker tracebacks included: {folder.location}/ray.log)"
            ) from err
        view.finish(result_block(summary, ray_log=f"{folder.location}/ray.log"))
    return summary


def start_lines(job: JobConfig, plan: Plan, folder: RunFolder) -> list[str]:
    """What the console says when a run starts: the job, its plan, its methods, its folder."""
    from rayaccel.methods.registry import methods_line
    from rayaccel.plan import format_plan

    scaling = job.scaling
    device = "GPU" if scaling.use_gpu else "CPU"
    done = len(folder.read_metrics())
    lines = [
        f"rayaccel run {job.run.name}: {scaling.num_workers} {device} worker(s); "
        + format_plan(plan).splitlines()[-1].removeprefix("total: "),
        methods_line(job),
        f"run folder: {folder.location} (Ray's own output: ray.log)",
    ]
    if done:
        lines.append(f"continuing: {done} of {plan.total_epochs} epochs are in metrics.jsonl")
    return lines


def _fit(
    job: JobConfig,
    plan: Plan,
    spec: WorkerSpec,
    folder: RunFolder,
    callbacks: tuple[ray.train.UserCallback, ...],
    *,
    weights: InitialWeights | None,
    started_s: float,
    events: bool,
) -> dict:
    """Builds the datasets and the trainer, trains, and writes the summary and the plots."""
    # Ray Data's per-operator progress bars interleave with the epoch lines; the loop's own
    # progress line says what a user needs (set before the trainer copies the context).
    ray.data.DataContext.get_current().enable_progress_bars = False
    parts = driver_parts(job, plan)
    resources = {k: v for part in parts for k, v in part.resources.items()}
    # Device mode: every worker decodes its part of the splits itself, once.
    datasets = {}
    if job.data.mode != "device":
        resources[EPOCH_CLOCK_KEY] = start_epoch_clock()
        datasets = _datasets(job, plan, spec, parts, resources[EPOCH_CLOCK_KEY])
    if weights is not None:
        resources[INIT_WEIGHTS_KEY] = ray.put(weights)
    scaling = job.scaling
    tracking = tracking_settings(job, plan, end_epoch=spec.loop.stop_epoch or plan.total_epochs)
    if tracking.enabled:
        callbacks = (Tracking(folder, tracking), *callbacks)
    loop_config = spec.to_dict()
    loop_config["resources"] = resources
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker,
            placement_strategy=scaling.placement_strategy,
            elastic_resize_monitor_interval_s=scaling.resize_check_interval_s,
        ),
        run_config=RunConfig(
            name=job.run.name,
            storage_path=folder.location.rsplit("/", 1)[0],
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.keep_checkpoints),
            callbacks=[MetricsLog(folder, plan.total_epochs, events=events), *callbacks],
        ),
        datasets=datasets,
        dataset_config=_SplitTrainEqually(),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise RunFailed(_root_cause(err)) from err
    finally:
        for part in parts:
            if part.release is not None:
                part.release()
        if EPOCH_CLOCK_KEY in resources:
            ray.kill(resources[EPOCH_CLOCK_KEY])
    free_placement_group((result.return_value or {}).get("placement_group_id"))
    summary = summarize(folder, plan, wall_time_s=time.time() - started_s)
    summary["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    # When this attempt started: with the epochs' report times it gives the wall time to any
    # epoch (a resumed run's `wall_time_s` and this cover its last attempt only).
    summary["started_unix_s"] = started_s
    folder.write_text("summary.json", json.dumps(summary, indent=2) + "\n")
    _write_plots(folder)
    finish_tracking(folder, tracking, checkpoint=summary["checkpoint"])
    return summary


def _initial_weights(model: ModelSpec) -> InitialWeights | None:
    try:
        return initial_weights(
            model.name,
            in_chans=model.in_chans,
            task=model.task,
            pretrained=model.pretrained,
            init_checkpoint=model.init_checkpoint,
            **model.kwargs,
        )
    except WeightsError as err:
        field = "model.pretrained" if model.pretrained else "model.init_checkpoint"
        raise WeightsError(f"{field}: {err}") from None


def _write_plots(folder: RunFolder) -> None:
    """The report's plots in the run folder; a finished run never fails because of them."""
    try:
        write_report([load_run(folder.location)], folder.write_bytes, table=False)
    except Exception as err:  # plots are a convenience; the run is done and saved
        print(f"[rayaccel] warning: could not write the plots: {err!r}", file=sys.stderr)


def free_placement_group(placement_group_id: str | None) -> bool:
    """Removes a finished run's worker placement group if it is still held; True if it was.

    Ray Train frees it through a cleaner actor that asks the state API whether the run's
    controller is alive. Where that query fails (several Ray instances on one machine: it
    cannot tell which to ask) the group keeps its CPUs until the driver exits, and the next
    runs of a Tune search wait for them forever.
    """
    if not placement_group_id:
        return False
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    info = ray.util.placement_group_table().get(placement_group_id)
    if info is None or info["state"] != "CREATED":
        return False
    remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(placement_group_id)))
    print(f"[rayaccel] freed placement group {placement_group_id} the run left held", flush=True)
    return True


def _datasets(job: JobConfig, plan: Plan, spec: WorkerSpec, parts: list[DriverPart], clock) -> dict:
    """Ray Data pipelines by name: `train` (or `train_s<i>` per stage) and `val[_<B>px]`.

    A method's row filter (InfoBatch's) makes training pipelines drop the epoch's pruned rows
    right after reading (before the shuffle and the decode), each kept row carrying its loss
    weight. `clock` is the run's epoch clock: every training pipeline orders and augments
    its epoch from it.
    """
    data = job.data
    worker_flip = spec.data.worker_augment.flip if spec.data.worker_augment else "none"
    rrc = data.augment.random_resized_crop
    plain = DecodeSpec(
        image_size_px=data.image_size_px,
        channels=data.channels,
        num_classes=data.num_classes,
        on_bad_row=data.on_bad_row,
        task=data.task or "classification",
        crop_pct=eval_crop_pct(job),
        reduced_decode=data.reduced_decode,
    )
    decode = dataclasses.replace(
        plain,
        random_crop_padding_px=data.augment.random_crop_padding_px,
        # Flips the worker does (alternating by sample index and epoch) are not done here.
        horizontal_flip=data.augment.horizontal_flip and worker_flip == "none",
        rrc_scale=None if rrc is None else rrc.scale,
        rrc_ratio=DEFAULT_RATIO if rrc is None else rrc.ratio,
        augment_policy=data.augment.auto_augment,
        # timm's geometric ops fill with the mean pixel, as timm's ImageNet recipe does.
        randaug_fill=tuple(round(255 * m) for m in spec.data.mean),
    )
    common = {
        "preprocess_cpus": job.scaling.preprocess_cpus,
        "decode_batch_rows": data.decode_batch_rows,
        "window_rows": data.shuffle_window_rows,
        "clock": clock,
    }
    train_meta = _split_meta(job, "train")
    # A run-time image folder: the workers' tasks read its files from this listing, in the
    # object store once for every stage's pipeline.
    listings = {}
    if data.source == "imagefolder":
        listings = {"listing": ray.put(list_folder(data.train))}
    filters = [part for part in parts if part.row_filter is not None]
    if len(filters) > 1:
        raise ValueError("only one method may filter the training rows")
    pruning = {}
    if filters:
        pruning = {
            "row_filter": filters[0].row_filter,
            "row_filter_kwargs": filters[0].row_filter_kwargs,
        }
    datasets = {}
    for stage in plan.stages:
        stage_spec = decode
        if plan.lowpass_mode is not None:
            low_res = plan.lowpass_mode == "resize" and stage.resolution_px < data.image_size_px
            stage_spec = dataclasses.replace(
                decode,
                randaug_impl=stage.randaug_impl,
                randaug_magnitude=stage.randaug_magnitude,
                output_size_px=stage.resolution_px if low_res else None,
                rrc_output_px=(
                    stage.resolution_px
                    if low_res and rrc is not None and rrc.resize_to == "stage"
                    else None
                ),
            )
        datasets[stage.dataset] = build_dataset(
            data.train,
            train_meta,
            stage_spec,
            # Distinct seeds so stages do not repeat each other's epoch orders.
            shuffle_seed=job.train.seed + stage.index,
            shuffle=data.shuffle,
            **common,
            **pruning,
            **listings,
        )
    if data.val is not None:
        val_meta = _split_meta(job, "val")
        if data.source == "imagefolder":
            listings = {"listing": ray.put(list_folder(data.val, train_meta.classes))}
        # One pipeline per resolution the plan evaluates at ("val" is the full size).
        sizes_px = {plan.val_dataset(s.resolution_px): s.resolution_px for s in plan.stages}
        sizes_px["val"] = data.image_size_px
        cache = data.cache_val and _val_fits(val_meta.count, data.channels, sizes_px.values())
        for name, size_px in sizes_px.items():
            val = build_dataset(
                data.val,
                val_meta,
                dataclasses.replace(
                    plain, output_size_px=None if size_px == data.image_size_px else size_px
                ),
                shuffle_seed=None,
                **common,
                **listings,
            )
            # Decoded once: later evaluations read the object store instead of decoding.
            datasets[name] = val.materialize() if cache else val
    return datasets


def _split_meta(job: JobConfig, split: str):
    """The metadata of a data split of either source (`rayaccel.data.folder`)."""
    classes = None
    if split == "val" and job.data.source == "imagefolder":
        classes = _split_meta(job, "train").classes
    return read_split_meta(
        getattr(job.data, split),
        source=job.data.source,
        classes=classes,
        **job.data.split_statistics(),
    )


def _val_fits(count: int, channels: int, resolutions) -> bool:
    """Whether every decoded validation copy fits in a quarter of the object store."""
    needed_bytes = sum(count * channels * px * px for px in resolutions)
    return needed_bytes <= 0.25 * ray.cluster_resources().get("object_store_memory", 0)


def data_line(job: JobConfig) -> str:
    """The augmentation, epoch order and evaluation crop, as `rayaccel plan` prints them."""
    data = job.data
    augment = data.augment
    parts = []
    rrc = augment.random_resized_crop
    if rrc is not None:
        to = "each stage's px" if rrc.resize_to == "stage" else f"{data.image_size_px}px"
        parts.append(
            f"RandomResizedCrop scale {list(rrc.scale)} ratio "
            f"[{rrc.ratio[0]:.3g}, {rrc.ratio[1]:.3g}] to {to}"
        )
    if augment.random_crop_padding_px:
        parts.append(f"{augment.random_crop_padding_px}px-padded random crop")
    if augment.horizontal_flip:
        parts.append("flip")
    if augment.auto_augment:
        parts.append(augment.auto_augment)
    order = (
        f"windows of {data.shuffle_window_rows} rows"
        if data.shuffle == "windows"
        else "full shuffle"
    )
    crop_pct = eval_crop_pct(job)
    size_px = data.image_size_px
    evaluation = (
        f"shorter side to {math.floor(size_px / crop_pct)}px, centre {size_px}px "
        f"(crop_pct {crop_pct:g})"
        if size_px
        else f"crop_pct {crop_pct:g}"
    )
    return (
        f"data: {', '.join(parts) or 'no augmentation'}; epoch order: {order}; "
        f"evaluation: {evaluation}"
    )


def eval_crop_pct(job: JobConfig) -> float:
    """data.eval_crop_pct, else the timm model's pretrained crop_pct with RandomResizedCrop
    (what its published accuracy was measured with; 0.875 when it names none), else 1.0."""
    data = job.data
    if data.eval_crop_pct is not None:
        return data.eval_crop_pct
    if data.augment.random_resized_crop is None:
        return 1.0
    if isinstance(job.model, TimmModel):
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(job.model.name)
        if pretrained is not None and pretrained.crop_pct:
            return float(pretrained.crop_pct)
    return DEFAULT_CROP_PCT


def summarize(folder: RunFolder, plan: Plan, *, wall_time_s: float) -> dict:
    """Final numbers of a run from its metrics log (which spans resumed attempts)."""
    records = folder.read_epochs()
    evaluated = [r for r in records if r.evaluated]
    final = evaluated[-1] if evaluated else None
    last = records[-1] if records else None
    summary = {
        "run_folder": folder.location,
        "epochs_completed": len(records),
        "epochs_planned": plan.total_epochs,
        "final_val_acc": final.val_acc if final else None,
        "final_val_loss": final.val_loss if final else None,
        # Segmentation: `final_val_acc` is pixel accuracy and this the mean IoU.
        **({"final_val_miou": final.val_miou} if final and final.val_miou is not None else {}),
        # The resolution the final accuracy was measured at (full size after the last epoch).
        "eval_resolution_px": final.eval_resolution_px if final else None,
        "compute_vs_baseline": plan.compute_relative_to_baseline(),
        "final_train_loss": last.train_loss if last else None,
        "images_seen": last.images_seen if last else 0,
        "bad_rows_skipped": sum(r.bad_rows_skipped for r in records),
        "train_time_s": sum(r.epoch_time_s for r in records),
        "wall_time_s": wall_time_s,
        **method_summaries(records, plan),
    }
    if records and plan.baseline_epochs:
        # Measured compute (images trained x pixels): pruning makes it less than planned.
        spent = compute_px_images(records)[-1]
        baseline = pixel_compute(
            plan.baseline_epochs * plan.baseline_images_per_epoch, plan.full_resolution_px
        )
        summary["compute_vs_baseline_measured"] = spent / max(baseline, 1)
    return summary


def _root_cause(err: BaseException) -> str:
    """The most useful line of a failure: a bad data row or shard if there is one, else the
    error.

    Worker exceptions arrive wrapped (Ray Data task error -> worker error -> group error),
    and the group error's own text is truncated, so every wrapped exception is searched.
    """
    texts = []
    pending = [err, *getattr(err, "worker_failures", {}).values()]
    while pending:
        exc = pending.pop()
        texts.append(str(exc))
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        pending.extend(getattr(exc, "worker_failures", {}).values())
    for text in texts:
        for line in text.splitlines():
            for mark in (BAD_ROW_MARK, BAD_SHARD_MARK):
                if mark in line:
                    return line[line.index(mark) :].strip()
    text = "\n".join(str(e) for e in getattr(err, "worker_failures", {}).values()) or str(err)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors or lines or [repr(err)])[-1].strip()
