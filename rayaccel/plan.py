"""The plan: everything schedule-like about a job, decided before any worker starts.

`make_plan` is a pure function of the validated job and the dataset size. The training loop
only executes a plan, and `rayaccel plan` prints it, so what a user reads is what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rayaccel.config import CosineSchedule, JobConfig
from rayaccel.train.schedules import lr_multiplier


@dataclass(frozen=True)
class StagePlan:
    """A run of consecutive epochs that share resolution and batch size."""

    index: int
    first_epoch: int
    num_epochs: int
    resolution_px: int
    global_batch: int
    per_worker_batch: int
    steps_per_epoch: int
    peak_lr: float

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.num_epochs


@dataclass(frozen=True)
class Plan:
    """What the loop executes: stages, the LR schedule (in epochs) and the totals."""

    stages: tuple[StagePlan, ...]
    schedule: dict = field(default_factory=dict)
    num_workers: int = 1
    train_samples: int = 0
    full_resolution_px: int = 0

    @property
    def total_epochs(self) -> int:
        return self.stages[-1].end_epoch

    @property
    def total_steps(self) -> int:
        return sum(s.steps_per_epoch * s.num_epochs for s in self.stages)

    def stage_of(self, epoch: int) -> StagePlan:
        for stage in self.stages:
            if stage.first_epoch <= epoch < stage.end_epoch:
                return stage
        raise IndexError(f"epoch {epoch} is outside the plan (0..{self.total_epochs - 1})")

    def lr_at(self, epoch: int, step: int) -> float:
        """The learning rate at a step inside an epoch (schedules run on fractional epochs)."""
        stage = self.stage_of(epoch)
        progress_epochs = epoch + step / max(stage.steps_per_epoch, 1)
        return stage.peak_lr * lr_multiplier(progress_epochs, self.schedule)

    def compute_relative_to_full(self) -> float:
        """Training compute (images x pixels) relative to all epochs at full resolution."""
        full = self.full_resolution_px**2 * self.total_epochs
        spent = sum(s.num_epochs * s.resolution_px**2 for s in self.stages)
        return spent / full

    def epoch_rows(self) -> list[dict]:
        """One row per epoch: what `rayaccel plan` prints and the loop follows."""
        rows = []
        for stage in self.stages:
            for epoch in range(stage.first_epoch, stage.end_epoch):
                rows.append(
                    {
                        "epoch": epoch,
                        "stage": stage.index,
                        "resolution_px": stage.resolution_px,
                        "global_batch": stage.global_batch,
                        "per_worker_batch": stage.per_worker_batch,
                        "steps": stage.steps_per_epoch,
                        "lr_start": self.lr_at(epoch, 0),
                        "lr_end": self.lr_at(epoch, stage.steps_per_epoch),
                    }
                )
        return rows

    def to_dict(self) -> dict:
        return {
            "stages": [asdict(s) for s in self.stages],
            "schedule": dict(self.schedule),
            "num_workers": self.num_workers,
            "train_samples": self.train_samples,
            "full_resolution_px": self.full_resolution_px,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            stages=tuple(StagePlan(**s) for s in data["stages"]),
            schedule=dict(data["schedule"]),
            num_workers=data["num_workers"],
            train_samples=data["train_samples"],
            full_resolution_px=data["full_resolution_px"],
        )


class PlanError(ValueError):
    """A job whose numbers cannot make a single training step."""


def make_plan(job: JobConfig, *, train_samples: int) -> Plan:
    """Turns a validated job and its dataset size into the epoch/step/batch/LR plan.

    Every worker sees `train_samples // num_workers` rows per epoch (Ray Data's equal
    streaming split) and drops its last partial batch, so all workers take the same number of
    steps, which DDP and `ray.train.report` both require.
    """
    workers = job.scaling.num_workers
    batch = job.train.global_batch_size
    per_worker_batch = batch // workers
    rows_per_worker = train_samples // workers
    steps = rows_per_worker // per_worker_batch
    if steps == 0:
        raise PlanError(
            f"train.global_batch_size: {batch} is larger than the training set allows "
            f"({train_samples} samples over {workers} workers = {rows_per_worker} each); "
            f"use at most {rows_per_worker * workers}"
        )
    schedule = job.train.schedule.model_dump()
    if isinstance(job.train.schedule, CosineSchedule):
        schedule["total_epochs"] = job.train.epochs
    stage = StagePlan(
        index=0,
        first_epoch=0,
        num_epochs=job.train.epochs,
        resolution_px=job.data.image_size_px,
        global_batch=batch,
        per_worker_batch=per_worker_batch,
        steps_per_epoch=steps,
        peak_lr=job.train.optimizer.lr,
    )
    return Plan(
        stages=(stage,),
        schedule=schedule,
        num_workers=workers,
        train_samples=train_samples,
        full_resolution_px=job.data.image_size_px,
    )


def format_plan(plan: Plan) -> str:
    """The plan as a fixed-width table with totals underneath."""
    header = ("epoch", "stage", "res_px", "batch", "per_worker", "steps", "lr_start", "lr_end")
    lines = ["{:>5} {:>5} {:>6} {:>6} {:>10} {:>6} {:>10} {:>10}".format(*header)]
    for row in plan.epoch_rows():
        lines.append(
            f"{row['epoch']:>5} {row['stage']:>5} {row['resolution_px']:>6} "
            f"{row['global_batch']:>6} {row['per_worker_batch']:>10} {row['steps']:>6} "
            f"{row['lr_start']:>10.4g} {row['lr_end']:>10.4g}"
        )
    lines.append(
        f"total: {plan.total_epochs} epochs, {plan.total_steps} steps, "
        f"{plan.train_samples} training samples on {plan.num_workers} worker(s); "
        f"compute {plan.compute_relative_to_full():.3f}x of all epochs at "
        f"{plan.full_resolution_px}px"
    )
    return "\n".join(lines)
