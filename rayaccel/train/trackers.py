"""The tracker writers `rayaccel.train.tracking` drives: TensorBoard, MLflow, W&B.

Each writer takes an epoch's scalars (x: epochs trained, 1 after the first epoch) and rank 0's
logged steps (x: images trained so far), and keeps its files in the tracking folder
(`TrackingFiles.local_dir`). Their libraries are imported here only, when a job asks for them.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pyarrow.fs as pafs

from rayaccel.core.storage import resolve_path

if TYPE_CHECKING:
    from rayaccel.train.tracking import (
        MlflowSettings,
        TrackingFiles,
        TrackingSettings,
        TrackingState,
        WandbSettings,
    )

# The epoch scalars TensorBoard's HParams view and MLflow's run table compare runs by.
HPARAM_METRICS = ("val_acc", "val_loss", "train_loss", "train_acc")
# What the driver logs as MLflow artifacts from the run folder when the run has finished.
_ARTIFACT_NAMES = ("summary.json", "job.yaml", "plan.json")


class Writer(Protocol):
    def log_epoch(
        self, epoch: int, scalars: dict[str, float], steps: list[tuple[int, dict[str, float]]]
    ) -> None: ...

    def close(self) -> None: ...


def open_writers(
    settings: TrackingSettings, files: TrackingFiles, state: TrackingState
) -> dict[str, Writer]:
    """A writer per tracker the settings ask for; one that cannot open warns and is left out.

    `state` gets the run ids of new MLflow and W&B runs.
    """
    openers = {
        "tensorboard": (settings.tensorboard, lambda: TensorBoardWriter(settings, files, state)),
        "mlflow": (settings.mlflow is not None, lambda: MlflowWriter(settings, files, state)),
        "wandb": (settings.wandb is not None, lambda: WandbWriter(settings, files, state)),
    }
    writers: dict[str, Writer] = {}
    for name, (wanted, opener) in openers.items():
        if not wanted:
            continue
        try:
            writers[name] = opener()
        except Exception as err:  # tracking never stops a training run
            warn(f"{name} tracking is off for this run: {err!r}")
    return writers


class TensorBoardWriter:
    """Event files in `<run folder>/tensorboard`, one per controller (a resumed job adds one).

    Events are written synchronously: `SummaryWriter.flush()` does not drain its queue, so a
    killed job would lose the epochs it had reported.
    """

    def __init__(self, settings: TrackingSettings, files: TrackingFiles, state: TrackingState):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.summary import hparams, text

        logdir = files.path("tensorboard")
        os.makedirs(logdir, exist_ok=True)
        # Nanoseconds after the name's seconds: TensorBoard reads a folder's files in name
        # order, and one written later must come later even within the same second.
        self.events = EventsWriter(os.path.join(logdir, "events"), f".{time.time_ns()}")
        if "tensorboard" not in state.trackers:
            # Indented: TensorBoard renders text as Markdown, and the plan is a table.
            plan = "\n".join("    " + line for line in settings.plan_text.splitlines())
            metrics = {name: 0.0 for name in HPARAM_METRICS}
            self._write([text("plan", plan), *hparams(settings.params, metrics)[:2]], 0)
            state.trackers["tensorboard"] = {"next_epoch": 0}

    def _write(self, summaries: list, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        for summary in summaries:
            self.events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.events.flush()

    def log_epoch(self, epoch, scalars, steps) -> None:
        from tensorboardX.summary import scalar

        for images, values in steps:
            self._write([scalar(name, value) for name, value in values.items()], images)
        self._write([scalar(name, value) for name, value in scalars.items()], epoch)

    def close(self) -> None:
        self.events.close()


def _mlflow_client(settings: MlflowSettings, files: TrackingFiles):
    """The MLflow client of the settings' store and the experiment's id (created if new)."""
    # MLflow's and Alembic's INFO lines (creating the SQLite tables) are not the user's news.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    artifact_location = None
    uri = settings.tracking_uri
    if uri is None:
        store = files.path("mlflow")
        os.makedirs(store, exist_ok=True)
        uri = f"sqlite:///{store}/mlflow.db"
        artifact_location = Path(store, "artifacts").as_uri()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    return client, client.create_experiment(
        settings.experiment, artifact_location=artifact_location
    )


class MlflowWriter:
    """One MLflow run per rayaccel run: params and the plan once, metrics per epoch."""

    def __init__(self, settings: TrackingSettings, files: TrackingFiles, state: TrackingState):
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.client, experiment_id = _mlflow_client(settings.mlflow, files)
        self.run_id = state.run_id("mlflow")
        if self.run_id is not None:
            # Interrupted (still RUNNING) or finished and now trained further.
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(
            experiment_id,
            run_name=settings.run_name,
            tags={"rayaccel.run_folder": files.folder.location},
        )
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in settings.params.items()]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = params[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(self.run_id, params=chunk)
        self.client.log_text(self.run_id, settings.plan_text + "\n", "plan.txt")
        state.set_run_id("mlflow", self.run_id)

    def log_epoch(self, epoch, scalars, steps) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, epoch) for k, v in scalars.items()]
        metrics += [Metric(k, v, now_ms, images) for images, s in steps for k, v in s.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            chunk = metrics[start : start + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk)

    def close(self) -> None:
        """The driver's `finish_mlflow` ends the run, once the summary exists."""


def finish_mlflow(
    settings: MlflowSettings, files: TrackingFiles, run_id: str, *, checkpoint: str | None
) -> None:
    """Logs the run folder's summary, job, plan and plots as artifacts, the final checkpoint
    as the `rayaccel.checkpoint` tag, and marks the run finished."""
    client, _ = _mlflow_client(settings, files)
    fs, root = resolve_path(files.folder.location)
    names = [
        info.base_name
        for info in fs.get_file_info(pafs.FileSelector(root))
        if info.type == pafs.FileType.File
        and (info.base_name in _ARTIFACT_NAMES or info.base_name.endswith(".png"))
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for name in sorted(names):
            local = f"{root}/{name}"
            if files.remote:
                local = os.path.join(scratch, name)
                pafs.copy_files(f"{root}/{name}", local, fs, pafs.LocalFileSystem())
            client.log_artifact(run_id, local)
    client.set_tag(run_id, "rayaccel.checkpoint", checkpoint or "none")
    client.set_terminated(run_id, "FINISHED")


class WandbWriter:
    """A W&B run (offline by default) whose files are in `<run folder>/wandb`; a resumed job
    continues it by its id (`wandb sync` merges the offline parts)."""

    def __init__(self, settings: TrackingSettings, files: TrackingFiles, state: TrackingState):
        import wandb

        wandb_settings: WandbSettings = settings.wandb
        run_id = state.run_id("wandb") or uuid.uuid4().hex[:12]
        os.makedirs(files.local_dir, exist_ok=True)
        self.run = wandb.init(
            project=wandb_settings.project,
            entity=wandb_settings.entity,
            mode=wandb_settings.mode,
            dir=files.local_dir,
            id=run_id,
            name=settings.run_name,
            config=settings.params,
            resume="allow",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("epoch")
        self.run.define_metric("images")
        self.run.define_metric("step/*", step_metric="images")
        self.defined: set[str] = set()
        state.set_run_id("wandb", run_id)

    def log_epoch(self, epoch, scalars, steps) -> None:
        for images, values in steps:
            self.run.log({**values, "images": images})
        for name in scalars.keys() - self.defined:
            self.run.define_metric(name, step_metric="epoch")
            self.defined.add(name)
        self.run.log({**scalars, "epoch": epoch})

    def close(self) -> None:
        self.run.finish()


def say(line: str) -> None:
    """A tracking line for the user (rayaccel's console shows the controller's `[rayaccel]`
    lines)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    """A tracking problem; tracking never raises into the run. On stdout: the console reads
    the controller's stdout lines."""
    say(f"[rayaccel] warning: {line}")
