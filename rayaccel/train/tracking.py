"""Experiment tracking: every epoch of a run in TensorBoard, MLflow and W&B, logged once.

Ray Train 2.60 has no logger callback of its own (Tune's are refused by Train's RunConfig),
so `Tracking` is a Ray Train `UserCallback`: it runs in the Train controller, the one place
that sees every epoch's report, and it outlives worker-group restarts. Rank 0 attaches the
steps its progress line printed to its epoch report (`STEP_LOG_KEY`), so the same single
writer also logs per-step scalars. When `TorchTrainer.fit()` returns, the driver's
`finish_tracking` adds what only exists then: `summary.json`, the plots and the checkpoint.

Each tracker remembers in `<run folder>/tracking.json` the next epoch it has not logged and
its run id, so a resumed job (a second `rayaccel run` of the same folder) continues the same
MLflow and W&B runs and TensorBoard folder, and logs each epoch exactly once. An epoch reported
again (a restart from a checkpoint older than the last logged epoch, only possible with
`run.checkpoint_every_epochs` > 1) keeps its first values in the trackers; `metrics.jsonl`
holds the retrained ones. A tracker that fails warns once and is off for the rest of the run:
tracking never fails or loses a training run.

The trackers write local files; a run folder on a URI (`s3://`) gets them through a local
mirror (`TrackingFiles`) uploaded after every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray.train

from rayaccel.core.records import STEP_LOG_KEY, WORKER_FACTS_KEY, EpochRecord
from rayaccel.core.storage import RunFolder, resolve_path
from rayaccel.train.trackers import finish_mlflow, open_writers, say, warn

# Where each tracker's files live in the run folder (and its local mirror).
TRACKING_DIRS = ("tensorboard", "mlflow", "wandb")
STATE_FILE = "tracking.json"
# The record's numbers that are not per-epoch scalars (identifiers, flags, clocks).
_NOT_SCALARS = frozenset({"epoch", "stage", "checkpointed", "time_unix_s", "placement_group_id"})


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str | None  # None: a SQLite store in the run folder
    experiment: str


@dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None
    mode: str


@dataclass(frozen=True)
class TrackingSettings:
    """What the trackers log, as plain values (built from the job by `tracking_settings`).

    Attributes:
        run_name: The run's name (MLflow's and W&B's run name).
        end_epoch: The epoch the run stops before; its last epoch closes the writers.
        params: The resolved job, flattened (`flatten_params`): MLflow params, TensorBoard
            hparams, W&B config.
        plan_text: The plan as `rayaccel plan` prints it.
    """

    run_name: str
    end_epoch: int
    params: dict[str, Any]
    plan_text: str
    tensorboard: bool = False
    mlflow: MlflowSettings | None = None
    wandb: WandbSettings | None = None

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None or self.wandb is not None


def tracking_settings(job, plan, *, end_epoch: int) -> TrackingSettings:
    """The `tracking:` section of a validated job as plain settings."""
    from rayaccel.plan import format_plan

    section = job.tracking
    return TrackingSettings(
        run_name=job.run.name,
        end_epoch=end_epoch,
        params=flatten_params(job.model_dump(mode="json")),
        plan_text=format_plan(plan),
        tensorboard=section.tensorboard,
        mlflow=(
            MlflowSettings(section.mlflow.tracking_uri, section.mlflow.experiment)
            if section.mlflow is not None
            else None
        ),
        wandb=(
            WandbSettings(section.wandb.project, section.wandb.entity, section.wandb.mode)
            if section.wandb is not None
            else None
        ),
    )


# ---------------------------------------------------------------- pure parts
def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as `a.b.c` keys; lists and None as their JSON text (trackers take
    only numbers, booleans and strings), empty mappings left out."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """The record's numbers a tracker plots per epoch: the loop's (`train_loss`, `val_acc`,
    `lr`, `images_per_s`, `resolution_px`, `global_batch`, `epoch_time_s`, `data_wait_s`, ...)
    and the methods' (`infobatch/kept_samples`); None, flags and non-numbers left out."""
    row = {k: v for k, v in record.to_row().items() if k not in _NOT_SCALARS}
    return {
        key: float(value)
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def step_scalars(record: EpochRecord, steps: list[dict]) -> list[tuple[int, dict[str, float]]]:
    """Rank 0's logged steps of the epoch as (images trained in the run so far, scalars).

    The x axis is images, not optimizer steps: the records carry the run's image count
    across resumes, and steps per epoch change with a curriculum's batch size.
    """
    start_images = record.images_seen - record.train_images
    return [
        (
            start_images + int(entry["images"]),
            {f"step/{k}": float(entry[k]) for k in ("loss", "lr", "images_per_s") if k in entry},
        )
        for entry in steps
    ]


@dataclass
class TrackingState:
    """Per tracker: the next epoch it has not logged, and its run id (MLflow, W&B)."""

    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> TrackingState:
        return cls(json.loads(text)["trackers"] if text else {})

    def to_json(self) -> str:
        return json.dumps({"trackers": self.trackers}, indent=2) + "\n"

    def is_new(self, tracker: str, epoch: int) -> bool:
        """Whether `tracker` has not logged `epoch` yet (every epoch is logged once)."""
        return epoch >= self.trackers.get(tracker, {}).get("next_epoch", 0)

    def logged(self, tracker: str, epoch: int) -> None:
        entry = self.trackers.setdefault(tracker, {})
        entry["next_epoch"] = max(entry.get("next_epoch", 0), epoch + 1)

    def run_id(self, tracker: str) -> str | None:
        return self.trackers.get(tracker, {}).get("run_id")

    def set_run_id(self, tracker: str, run_id: str) -> None:
        self.trackers.setdefault(tracker, {})["run_id"] = run_id


# ---------------------------------------------------------------- files
class TrackingFiles:
    """The trackers' local folder: the run folder itself, or for a URI run folder a local
    mirror of its tracking files, pulled once and pushed after every write."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.remote = "://" in folder.location and not folder.location.startswith("file://")
        if self.remote:
            digest = hashlib.sha1(folder.location.encode()).hexdigest()[:16]
            self.local_dir = os.path.join(tempfile.gettempdir(), "rayaccel-tracking", digest)
        else:
            self.local_dir = resolve_path(folder.location)[1]

    def pull(self) -> None:
        if not self.remote:
            return
        # The run folder is the truth: a mirror left by an earlier run there is dropped.
        shutil.rmtree(self.local_dir, ignore_errors=True)
        fs, root = resolve_path(self.folder.location)
        for name in (*TRACKING_DIRS, STATE_FILE):
            _copy_tree(fs, f"{root}/{name}", pafs.LocalFileSystem(), self.path(name))

    def push(self) -> None:
        if not self.remote:
            return
        fs, root = resolve_path(self.folder.location)
        for name in (*TRACKING_DIRS, STATE_FILE):
            _copy_tree(pafs.LocalFileSystem(), self.path(name), fs, f"{root}/{name}")

    def path(self, name: str) -> str:
        return os.path.join(self.local_dir, name)

    def read_state(self) -> TrackingState:
        path = self.path(STATE_FILE)
        if not os.path.exists(path):
            return TrackingState()
        with open(path) as f:
            return TrackingState.from_json(f.read())

    def write_state(self, state: TrackingState) -> None:
        os.makedirs(self.local_dir, exist_ok=True)
        with open(self.path(STATE_FILE), "w") as f:
            f.write(state.to_json())


def _copy_tree(
    source_fs: pafs.FileSystem, source: str, target_fs: pafs.FileSystem, target: str
) -> None:
    """Copies a file, or a folder's files, creating the folders they need (pyarrow's
    `copy_files` does not create them on a local target); an absent source copies nothing."""
    info = source_fs.get_file_info(source)
    if info.type == pafs.FileType.File:
        pairs = [(source, target)]
    elif info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(source, recursive=True)
        pairs = [
            (entry.path, target + entry.path[len(source) :])
            for entry in source_fs.get_file_info(selector)
            if entry.type == pafs.FileType.File
        ]
    else:
        return
    for from_path, to_path in pairs:
        target_fs.create_dir(to_path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(from_path, to_path, source_fs, target_fs)


# ---------------------------------------------------------------- the callback
class Tracking(ray.train.UserCallback):
    """Logs every reported epoch to the job's trackers, once (see the module docstring)."""

    def __init__(self, folder: RunFolder, settings: TrackingSettings):
        self.folder = folder
        self.settings = settings
        # Opened in the controller on the first report (this object is pickled there).
        self.writers: dict | None = None
        self.files: TrackingFiles | None = None
        self.state: TrackingState | None = None
        self.stopped = False

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self.stopped:
            return
        try:
            self._log(metrics)
        except Exception as err:  # tracking never stops a training run
            warn(f"tracking stopped: {err!r}")
            self.stopped = True

    def _log(self, metrics: list[dict]) -> None:
        row = {k: v for k, v in metrics[0].items() if k not in (WORKER_FACTS_KEY, STEP_LOG_KEY)}
        record = EpochRecord.from_row(row)
        if self.writers is None:
            self.files = TrackingFiles(self.folder)
            self.files.pull()
            self.state = self.files.read_state()
            self.writers = open_writers(self.settings, self.files, self.state)
            # Epochs a tracker missed: a job killed between metrics.jsonl and the trackers, or
            # tracking turned on when the job was resumed (their steps are not kept).
            for missed in self.folder.read_epochs():
                if missed.epoch < record.epoch:
                    self._log_record(missed, [], announce=False)
        steps = step_scalars(record, metrics[0].get(STEP_LOG_KEY, []))
        self._log_record(record, steps, announce=True)
        if record.epoch + 1 >= self.settings.end_epoch:
            for name, writer in list(self.writers.items()):
                self._guarded(name, writer.close)
        self.files.write_state(self.state)
        self.files.push()

    def _log_record(self, record: EpochRecord, steps: list, *, announce: bool) -> None:
        """`record` to every tracker that has not logged its epoch yet."""
        scalars = epoch_scalars(record)
        for name, writer in list(self.writers.items()):
            if not self.state.is_new(name, record.epoch):
                if announce:
                    say(
                        f"[rayaccel] {name}: epoch {record.epoch + 1} is logged already; it "
                        "keeps its first values (metrics.jsonl has the retrained ones)"
                    )
                continue
            if self._guarded(name, writer.log_epoch, record.epoch + 1, scalars, steps):
                self.state.logged(name, record.epoch)

    def _guarded(self, name: str, call, *args) -> bool:
        """Runs a writer's call; a failure warns and turns that tracker off. True if it ran."""
        try:
            call(*args)
            return True
        except Exception as err:
            warn(f"{name} tracking stopped: {err!r}")
            del self.writers[name]
            return False


def finish_tracking(
    folder: RunFolder, settings: TrackingSettings, *, checkpoint: str | None
) -> None:
    """After `fit()`: the run folder's summary, plots and job in MLflow, the final
    checkpoint as its tag, and the run marked finished. Never raises."""
    if settings.mlflow is None:
        return
    try:
        files = TrackingFiles(folder)
        files.pull()
        state = files.read_state()
        if state.run_id("mlflow") is None:
            return
        finish_mlflow(settings.mlflow, files, state.run_id("mlflow"), checkpoint=checkpoint)
        files.push()
    except Exception as err:
        warn(f"mlflow: could not log the run's artifacts: {err!r}")
