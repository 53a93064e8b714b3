"""Runs a job: datasets, scaling and run config -> `TorchTrainer.fit()` -> the run folder.

The run folder (`run.storage_path/run.name`, local or any pyarrow URI) holds `job.yaml` (the
resolved job), `plan.json`, `metrics.jsonl` (every epoch, written by a controller-side
callback because Ray Train only keeps metrics that came with a checkpoint), Ray's
checkpoints and `summary.json`. Running the same job name again continues from the latest
checkpoint: Ray Train restores a run from its storage folder, and the loop skips the epochs
the checkpoint already holds.

A curriculum plan gets one training dataset per stage (`train_s0`, `train_s1`, ..., each with
its stage's RandAugment magnitude and, in `resize` mode, its down-sampling) and, in `resize`
mode, one validation dataset per low resolution (`val_96px`, ...), all in one `fit()`: a
worker group restarted by a failure resumes at the right stage because every stage's dataset
is there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import pyarrow.fs as pafs
import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayaccel.config import JobConfig, ResNet9Model, dump_job
from rayaccel.data.metadata import read_meta, resolve_path
from rayaccel.data.pipeline import BAD_ROW_MARK, DecodeSpec, build_dataset
from rayaccel.plan import Plan, make_plan
from rayaccel.train.loop import LoopSettings, train_loop_per_worker


class RunFailed(RuntimeError):
    """Training stopped; the message is the root cause, readable without a traceback."""


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes; a local folder or a URI, always through pyarrow filesystems."""

    location: str

    def _resolved(self, name: str) -> tuple[pafs.FileSystem, str]:
        fs, root = resolve_path(self.location)
        return fs, f"{root}/{name}"

    def write_text(self, name: str, text: str) -> None:
        fs, path = self._resolved(name)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode())

    def read_text(self, name: str) -> str | None:
        fs, path = self._resolved(name)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()

    def read_metrics(self) -> list[dict]:
        text = self.read_text("metrics.jsonl") or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_folder_of(job: JobConfig) -> RunFolder:
    storage = job.run.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
    return RunFolder(f"{storage.rstrip('/')}/{job.run.name}")


class MetricsLog(ray.train.UserCallback):
    """Writes every epoch's metrics to `metrics.jsonl` and prints an epoch summary.

    Runs in the Ray Train controller. After a resume the loop re-reports from the
    checkpoint's epoch, so entries at or after the first reported epoch are replaced:
    the file always describes the history of the model that exists.
    """

    def __init__(self, folder: RunFolder, total_epochs: int):
        self.folder = folder
        self.total_epochs = total_epochs
        self.rows: list[dict] | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        row = dict(metrics[0])
        if self.rows is None:
            self.rows = [r for r in self.folder.read_metrics() if r["epoch"] < row["epoch"]]
        row["time_unix_s"] = time.time()
        self.rows.append(row)
        self.folder.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        val = (
            f" val_acc {row['val_acc']:.4f} @{row['val_resolution_px']}px"
            if "val_acc" in row
            else ""
        )
        print(
            f"[rayaccel] epoch {row['epoch'] + 1}/{self.total_epochs} done: "
            f"{row['resolution_px']}px batch {row['global_batch']} "
            f"train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f}{val} "
            f"{row['images_per_s']:,.0f} img/s {row['epoch_time_s']:.1f}s"
            + (" [checkpoint]" if checkpoint is not None else ""),
            flush=True,
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


def build_run(job: JobConfig) -> tuple[Plan, LoopSettings]:
    """The plan and the loop's plain settings for a validated, data-resolved job."""
    train_meta = read_meta(job.data.train)
    plan = make_plan(job, train_samples=train_meta.count)
    model = job.model
    if isinstance(model, ResNet9Model):
        model_kwargs = model.model_dump(exclude={"name"})
    else:
        model_kwargs = dict(model.kwargs)
    optimizer = job.train.optimizer.model_dump()
    optimizer["betas"] = tuple(optimizer["betas"])
    cpus = (job.scaling.resources_per_worker or {}).get("CPU", 1)
    settings = LoopSettings(
        plan=plan.to_dict(),
        model_name=model.name,
        model_kwargs=model_kwargs,
        num_classes=job.data.num_classes,
        in_chans=job.data.channels,
        mean=tuple(job.data.mean),
        std=tuple(job.data.std),
        optimizer=optimizer,
        label_smoothing=job.train.label_smoothing,
        precision=job.train.precision,
        seed=job.train.seed,
        eval_every_epochs=job.train.eval_every_epochs,
        checkpoint_every_epochs=job.run.checkpoint_every_epochs,
        log_every_steps=job.train.log_every_steps,
        has_val=job.data.val is not None,
        torch_threads=max(1, math.floor(cpus)),
        replay_capacity_samples=job.curriculum.replay.capacity_samples if job.curriculum else 0,
        replay_dtype=job.curriculum.replay.dtype if job.curriculum else "uint8",
    )
    return plan, settings


def run_job(job: JobConfig) -> dict:
    """Trains a data-resolved job on the connected (or a new local) Ray cluster.

    Returns the summary also written to `summary.json`.
    """
    started_s = time.time()
    plan, settings = build_run(job)
    folder = run_folder_of(job)
    folder.write_text("job.yaml", dump_job(job))
    folder.write_text("plan.json", json.dumps(plan.to_dict(), indent=2) + "\n")
    print(f"[rayaccel] run folder: {folder.location}", flush=True)

    if not ray.is_initialized():
        ray.init()
    # Ray Data's per-operator progress bars interleave with the epoch lines; the loop's own
    # progress line says what a user needs (set before the trainer copies the context).
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = _datasets(job, plan)
    scaling = job.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker,
        ),
        run_config=RunConfig(
            name=job.run.name,
            storage_path=folder.location.rsplit("/", 1)[0],
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.keep_checkpoints),
            callbacks=[MetricsLog(folder, plan.total_epochs)],
        ),
        datasets=datasets,
        dataset_config=_SplitTrainEqually(),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise RunFailed(_root_cause(err)) from err
    summary = summarize(folder, plan, wall_time_s=time.time() - started_s)
    summary["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    folder.write_text("summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _datasets(job: JobConfig, plan: Plan) -> dict:
    """Ray Data pipelines by name: `train` (or `train_s<i>` per stage) and `val[_<B>px]`."""
    data = job.data
    spec = DecodeSpec(
        image_size_px=data.image_size_px,
        channels=data.channels,
        num_classes=data.num_classes,
        on_bad_row=data.on_bad_row,
        random_crop_padding_px=data.augment.random_crop_padding_px,
        horizontal_flip=data.augment.horizontal_flip,
    )
    common = {
        "preprocess_cpus": job.scaling.preprocess_cpus,
        "decode_batch_rows": data.decode_batch_rows,
    }
    train_meta = read_meta(data.train)
    datasets = {}
    for stage in plan.stages:
        stage_spec = spec
        if plan.lowpass_mode is not None:
            low_res = plan.lowpass_mode == "resize" and stage.resolution_px < data.image_size_px
            stage_spec = dataclasses.replace(
                spec,
                randaug_magnitude=stage.randaug_magnitude,
                output_size_px=stage.resolution_px if low_res else None,
            )
        datasets[stage.dataset] = build_dataset(
            data.train,
            train_meta,
            stage_spec,
            # Distinct seeds so stages do not repeat each other's epoch orders.
            shuffle_seed=job.train.seed + stage.index,
            **common,
        )
    if data.val is not None:
        plain = DecodeSpec(
            image_size_px=data.image_size_px,
            channels=data.channels,
            num_classes=data.num_classes,
            on_bad_row=data.on_bad_row,
        )
        val_meta = read_meta(data.val)
        for resolution_px in sorted({s.resolution_px for s in plan.stages}):
            name = plan.val_dataset(resolution_px)
            output_size_px = None if resolution_px == data.image_size_px else resolution_px
            datasets[name] = build_dataset(
                data.val,
                val_meta,
                dataclasses.replace(plain, output_size_px=output_size_px),
                shuffle_seed=None,
                **common,
            )
        datasets.setdefault(
            "val", build_dataset(data.val, val_meta, plain, shuffle_seed=None, **common)
        )
    return datasets


def summarize(folder: RunFolder, plan: Plan, *, wall_time_s: float) -> dict:
    """Final numbers of a run from its metrics log (which spans resumed attempts)."""
    rows = folder.read_metrics()
    evaluated = [r for r in rows if "val_acc" in r]
    final = evaluated[-1] if evaluated else {}
    return {
        "run_folder": folder.location,
        "epochs_completed": len(rows),
        "epochs_planned": plan.total_epochs,
        "final_val_acc": final.get("val_acc"),
        "final_val_loss": final.get("val_loss"),
        # The resolution the final accuracy was measured at (full size after the last epoch).
        "eval_resolution_px": final.get("val_resolution_px", final.get("resolution_px")),
        "compute_vs_baseline": plan.compute_relative_to_baseline(),
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "images_seen": rows[-1]["images_seen"] if rows else 0,
        "bad_rows_skipped": sum(r.get("bad_rows_skipped", 0) for r in rows),
        "train_time_s": sum(r["epoch_time_s"] for r in rows),
        "wall_time_s": wall_time_s,
    }


def _root_cause(err: BaseException) -> str:
    """The most useful line of a failure: a bad data row if there is one, else the error.

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
            if BAD_ROW_MARK in line:
                return line[line.index(BAD_ROW_MARK) :].strip()
    text = "\n".join(str(e) for e in getattr(err, "worker_failures", {}).values()) or str(err)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors or lines or [repr(err)])[-1].strip()
