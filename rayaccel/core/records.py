"""One epoch of a run as a typed record: what the workers report, `metrics.jsonl` holds, and
`summary.json`, `rayaccel report`, the searches and the benchmarks read.

The record's fields are the loop's own numbers, each name carrying its unit (`_s`, `_px`,
`_per_s`, `images`); the methods' numbers ride along in `method_metrics` under namespaced
keys (`infobatch/kept_samples`, `agvm/mu/<component>`), because the loop does not know them.
On disk a record is one flat JSON object per line, its keys the field names and the method
keys beside them: Ray Tune and Ray Train's report see the same flat names (`val_acc`), and a
log written by an older version still reads (`EpochRecord.from_row` leaves what it lacks at
None and keeps keys it does not know in `extra`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Method metrics are namespaced by their method: `<method>/<name>`.
METHOD_KEY_SEPARATOR = "/"
# Each worker's report carries its own shard facts under this key; the driver gathers them
# into the record's `workers` (so they are not a field of any one worker's record).
WORKER_FACTS_KEY = "worker"
# Rank 0's report also carries the steps its progress line printed (epoch, loss, lr, images/s)
# for the trackers (`rayaccel.train.tracking`); metrics.jsonl does not keep them.
STEP_LOG_KEY = "logged_steps"


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes:
        epoch: Zero-based epoch index; `stage` the curriculum stage it belongs to.
        resolution_px: Side of the training inputs; `global_batch` images per optimizer step
            over all workers (fresh and replayed).
        randaug_magnitude, replay_factor: The stage's augmentation strength and replay
            multiplier (0 and 1 without a curriculum).
        lr: The learning rate of the epoch's last step; `steps` the optimizer steps it took.
        train_loss, train_acc: Means over the epoch's trained samples (accuracy: of pixels for
            segmentation).
        train_images: Images trained this epoch, replayed ones included; `fresh_images` read
            from the dataset; `bad_rows_skipped` corrupt rows dropped.
        epoch_time_s: Wall time of the training pass; `images_per_s` its throughput;
            `data_wait_s` rank 0's time blocked on the next batch, `first_batch_wait_s` the
            part of it before the epoch's first batch (the epoch boundary's fixed cost);
            `worker_cpu_s` rank 0's process CPU time.
        images_seen, fresh_images_seen: Cumulative over the run, restored on resume.
        world_size: Training workers in this epoch (changes in an elastic run).
        checkpointed: Whether a checkpoint was kept after this epoch.
        val_acc, val_loss, val_miou: The evaluation after this epoch (None when there was
            none; `val_miou` for segmentation only), measured at `val_resolution_px` on
            `val_images` images.
        method_metrics: The methods' own numbers, keyed `<method>/<name>`.
        workers: One entry per worker (rank, node, fresh images, sample digest), gathered by
            the driver (`rayaccel.train.shard_audit`).
        time_unix_s: When the driver logged the epoch.
        placement_group_id: The worker group's placement group (the driver frees it if Ray
            Train leaves it held).
        extra: Keys of the row this version does not know (a newer writer's fields).
    """

    epoch: int
    stage: int = 0
    resolution_px: int | None = None
    global_batch: int | None = None
    randaug_magnitude: float = 0.0
    replay_factor: int = 1
    lr: float | None = None
    steps: int | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    train_images: int = 0
    fresh_images: int = 0
    bad_rows_skipped: int = 0
    epoch_time_s: float = 0.0
    images_per_s: float = 0.0
    data_wait_s: float | None = None
    first_batch_wait_s: float | None = None
    worker_cpu_s: float | None = None
    images_seen: int = 0
    fresh_images_seen: int = 0
    world_size: int | None = None
    checkpointed: bool = False
    val_acc: float | None = None
    val_loss: float | None = None
    val_miou: float | None = None
    val_resolution_px: int | None = None
    val_images: int | None = None
    method_metrics: dict[str, Any] = field(default_factory=dict)
    workers: tuple[dict, ...] = ()
    time_unix_s: float | None = None
    placement_group_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluated(self) -> bool:
        """Whether the epoch ended with an evaluation."""
        return self.val_acc is not None

    @property
    def eval_resolution_px(self) -> int | None:
        """The resolution of this epoch's evaluation (older logs wrote none: the stage's)."""
        if self.val_resolution_px is not None:
            return self.val_resolution_px
        return self.resolution_px

    def metric(self, key: str, default: Any = None) -> Any:
        """A method's metric (`infobatch/kept_samples`), or `default` when it has none."""
        return self.method_metrics.get(key, default)

    def to_row(self) -> dict[str, Any]:
        """The flat JSON object of `metrics.jsonl` (fields that are None are left out)."""
        row: dict[str, Any] = {}
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            if spec.name in ("method_metrics", "extra"):
                row.update(value)
            elif spec.name == "workers":
                if value:
                    row["workers"] = list(value)
            elif value is not None:
                row[spec.name] = value
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpochRecord:
        """The record of a `metrics.jsonl` row or a Ray Train report, tolerant of old logs."""
        known: dict[str, Any] = {}
        method_metrics: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in row.items():
            if key in _FIELD_NAMES and key not in ("method_metrics", "extra"):
                known[key] = tuple(value) if key == "workers" else value
            elif METHOD_KEY_SEPARATOR in key:
                method_metrics[key] = value
            else:
                extra[key] = value
        if "epoch" not in known:
            raise ValueError(f"an epoch record needs `epoch`; the row has {sorted(row)}")
        return cls(**known, method_metrics=method_metrics, extra=extra)

    def replace(self, **changes: Any) -> EpochRecord:
        return dataclasses.replace(self, **changes)


_FIELDS = dataclasses.fields(EpochRecord)
_FIELD_NAMES = frozenset(spec.name for spec in _FIELDS)


def records_of(rows: list[dict[str, Any]]) -> list[EpochRecord]:
    """The records of `metrics.jsonl` rows, in order."""
    return [EpochRecord.from_row(row) for row in rows]
