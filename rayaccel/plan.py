"""The plan: everything schedule-like about a job, decided before any worker starts.

`make_plan` is a pure function of the validated job and the dataset size. The training loop
only executes a plan, and `rayaccel plan` prints it, so what a user reads is what runs.

Without a curriculum a plan is one stage at full resolution whose LR schedule runs on epochs.
With an EfficientTrain++ curriculum (`job.curriculum`) it has one stage per curriculum stage,
each with its own resolution, RandAugment magnitude, replay factor R, Early-Large-Batch batch
size and peak LR, and the schedule runs on the fraction of compute spent. Decisions:

- An epoch is one pass over *fresh* data. With replay factor R a step takes
  `ceil(per_worker_batch / R)` fresh samples and fills the batch from the replay buffer, so an
  epoch trains about R times the dataset. A stage whose curriculum asks for `data_epochs`
  (trained-sample passes, `budget share * (full/B)^2`) therefore runs about
  `data_epochs / R` epochs. Epochs are whole: each stage takes at least 1, and the rounding
  error (in equivalent full-resolution epochs) is carried into the next stage, so the compute
  spent up to every stage boundary stays as close to the plan as whole epochs allow. Rounding
  changes the compute actually spent; the plan reports both the planned and the actual
  compute, and the LR schedule follows the actual one. Tiny budgets with many stages are
  dominated by the 1-epoch minimum: prefer fewer stages there.
- Compute is pixels times trained images (the paper's model): a stage costs
  `epochs * steps * global_batch * B^2`; the baseline is `train.epochs` epochs of the plain
  job (`steps * global_batch` images each) at full resolution.
- Warmup is `train.schedule.warmup_epochs` equivalent full-resolution epochs, i.e. the
  fraction `warmup_epochs / budget_epochs` of the compute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from rayaccel.config import CosineSchedule, JobConfig
from rayaccel.core.compute import pixel_compute
from rayaccel.core.schedules import lr_multiplier
from rayaccel.methods.etpp import curriculum as etpp
from rayaccel.methods.etpp.config import EtppCurriculum
from rayaccel.methods.infobatch.scores import first_full_epoch
from rayaccel.methods.mixup.config import plan_problems as mixup_plan_problems
from rayaccel.methods.progressive.config import ProgressiveCurriculum, progressive_settings
from rayaccel.methods.progressive.stages import progressive_stages


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
    # Curriculum fields; the defaults describe a plain full-resolution stage.
    # "timm" | "torchvision" (`rayaccel.data.randaugment`); None means no RandAugment.
    randaug_impl: str | None = None
    randaug_magnitude: float = 0.0
    replay_factor: int = 1
    planned_data_epochs: float = 0.0
    compute_share: float = 1.0
    dataset: str = "train"
    # EfficientNetV2 progressive-learning regularisation; 0 is off.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.num_epochs

    @property
    def fresh_per_worker_batch(self) -> int:
        """Fresh samples each worker takes from Ray Data per step (the rest is replayed)."""
        return -(-self.per_worker_batch // self.replay_factor)

    @property
    def compute_px_images(self) -> int:
        """Pixels times trained images of the whole stage (the compute model)."""
        return pixel_compute(
            self.num_epochs * self.steps_per_epoch * self.global_batch, self.resolution_px
        )


@dataclass(frozen=True)
class Plan:
    """What the loop executes: stages, the LR schedule (in epochs) and the totals."""

    stages: tuple[StagePlan, ...]
    schedule: dict = field(default_factory=dict)
    # The world size the stages' per-worker batches and steps are for; an elastic job plans
    # for its largest group and the loop re-derives them with `for_world_size`.
    num_workers: int = 1
    # Elastic jobs: the smallest group Ray Train may run (None: a fixed worker count).
    min_workers: int | None = None
    train_samples: int = 0
    full_resolution_px: int = 0
    # "epochs" (plain jobs) or "compute" (curriculum: the schedule's unit is the compute fraction).
    schedule_progress: str = "epochs"
    # None, or how a curriculum lowers the frequency content: "fft" or "resize".
    lowpass_mode: str | None = None
    # "progressive" when stages carry EfficientNetV2 regularisation (mixup, dropout, ...).
    curriculum: str | None = None
    baseline_epochs: int = 0
    baseline_images_per_epoch: int = 0
    # InfoBatch: drop probability r of well-learned samples (0 = no pruning) and the first
    # epoch that trains on all data again (annealing).
    prune_ratio: float = 0.0
    first_full_epoch: int = 0

    def prunes(self, epoch: int) -> bool:
        """Whether InfoBatch may drop samples in `epoch` (epoch 0 prunes nothing in practice:
        no sample has a score yet)."""
        return self.prune_ratio > 0 and epoch < self.first_full_epoch

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

    def lr_at(self, epoch: int, step: int, steps_in_epoch: int | None = None) -> float:
        """The learning rate at a step inside an epoch.

        Plain plans run the schedule on fractional epochs; curriculum plans on the fraction of
        compute spent, so the many cheap low-resolution steps do not eat the schedule.
        `steps_in_epoch` is the epoch's true step count when it differs from the plan's (an
        InfoBatch-pruned epoch is shorter): the epoch's stretch of the schedule is then walked
        in that many steps instead of being cut off.
        """
        stage = self.stage_of(epoch)
        steps = steps_in_epoch or stage.steps_per_epoch
        if self.schedule_progress == "compute":
            progress = self.compute_fraction_at(epoch, step, steps)
        else:
            progress = epoch + step / max(steps, 1)
        return stage.peak_lr * lr_multiplier(progress, self.schedule)

    def compute_fraction_at(
        self, epoch: int, step: int, steps_in_epoch: int | None = None
    ) -> float:
        """Fraction of the plan's actual compute spent before `step` of `epoch`, in [0, 1]."""
        stage = self.stage_of(epoch)
        steps = steps_in_epoch or stage.steps_per_epoch
        epoch_in_stage = epoch - stage.first_epoch + step / max(steps, 1)
        return etpp.compute_fraction_at(stage.index, epoch_in_stage, self._curriculum_stages())

    def _curriculum_stages(self, *, planned: bool = False) -> list[etpp.Stage]:
        """The stages as the curriculum planner's records: with the whole epochs the plan
        runs, or (`planned`) the fractional data epochs it planned before rounding."""
        return [
            etpp.Stage(
                index=s.index,
                resolution_px=s.resolution_px,
                randaug_magnitude=s.randaug_magnitude,
                compute_share=s.compute_share,
                data_epochs=s.planned_data_epochs if planned else s.num_epochs,
                replay_factor=s.replay_factor,
                batch_size=s.global_batch,
                lr=s.peak_lr,
            )
            for s in self.stages
        ]

    def compute_relative_to_baseline(self) -> float:
        """Actual training compute relative to the baseline job (all epochs at full size)."""
        baseline = self.baseline_epochs * self.baseline_images_per_epoch
        spent = sum(s.compute_px_images for s in self.stages)
        return spent / max(pixel_compute(baseline, self.full_resolution_px), 1)

    def planned_compute_relative_to_baseline(self) -> float:
        """The curriculum's compute before epochs were rounded to whole numbers."""
        return etpp.compute_ratio(
            self._curriculum_stages(planned=True),
            max(self.baseline_epochs, 1),
            full_px=self.full_resolution_px,
        )

    def val_dataset(self, resolution_px: int) -> str:
        """The validation dataset evaluated at `resolution_px`.

        In resize mode low-resolution evaluation needs its own down-sampled pipeline; otherwise
        the full-resolution "val" serves every resolution (the fft mode crops on the worker).
        """
        if self.lowpass_mode == "resize" and resolution_px != self.full_resolution_px:
            return f"val_{resolution_px}px"
        return "val"

    def compute_relative_to_full(self) -> float:
        """Training compute (images x pixels) relative to all epochs at full resolution."""
        full = pixel_compute(self.total_epochs, self.full_resolution_px)
        spent = sum(pixel_compute(s.num_epochs, s.resolution_px) for s in self.stages)
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
                        "randaug_magnitude": stage.randaug_magnitude,
                        "replay_factor": stage.replay_factor,
                        "pruning": self.prunes(epoch),
                        "lr_start": self.lr_at(epoch, 0),
                        "lr_end": self.lr_at(epoch, stage.steps_per_epoch),
                    }
                )
        return rows

    def for_world_size(self, world_size: int) -> Plan:
        """The plan as a group of `world_size` workers executes it.

        An elastic group can run with fewer workers than planned. The global batch and the
        epochs stay the job's; each worker's share of the batch and the steps per epoch follow
        from the actual world size by the same rule `make_plan` uses, so every epoch still
        trains on (nearly) the whole dataset with the job's global batch.
        """
        if world_size == self.num_workers:
            return self
        stages = []
        for stage in self.stages:
            if stage.global_batch % world_size:
                raise PlanError(
                    f"stage {stage.index}: global batch {stage.global_batch} does not split "
                    f"over {world_size} workers"
                )
            per_worker_batch = stage.global_batch // world_size
            fresh = -(-per_worker_batch // stage.replay_factor)
            rows_per_worker = self.train_samples // world_size
            steps = rows_per_worker // fresh
            if steps == 0:
                raise PlanError(
                    f"train.global_batch_size: stage {stage.index} takes {fresh} fresh samples "
                    f"per worker and step with {world_size} workers, more than the "
                    f"{rows_per_worker} each holds"
                )
            stages.append(replace(stage, per_worker_batch=per_worker_batch, steps_per_epoch=steps))
        return replace(self, stages=tuple(stages), num_workers=world_size)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            **{**data, "stages": tuple(StagePlan(**s) for s in data["stages"])},
        )


class PlanError(ValueError):
    """A job whose numbers cannot make a single training step."""


def make_plan(job: JobConfig, *, train_samples: int) -> Plan:
    """Turns a validated job and its dataset size into the epoch/step/batch/LR plan.

    InfoBatch pruning is an epoch-level property on top of any plan: which epochs may prune.
    How many samples a pruned epoch keeps depends on the training losses, so the plan's step
    counts are upper bounds there and the loop walks each epoch's stretch of the LR schedule in
    the epoch's true number of steps (`Plan.lr_at(..., steps_in_epoch)`).
    """
    plan = _make_plan(job, train_samples=train_samples)
    if job.agvm is not None:
        odd = [st for st in plan.stages if st.per_worker_batch % 2]
        if odd:
            raise PlanError(
                f"agvm: splits each worker's batch into two halves, but stage {odd[0].index} "
                f"gives each of {plan.num_workers} workers {odd[0].per_worker_batch} samples; "
                "use even per-worker batches (curriculum.max_global_batch or the stage's "
                "global_batch_size)"
            )
    scaling = job.scaling
    if scaling.min_workers < scaling.max_workers:
        plan = replace(plan, min_workers=scaling.min_workers)
        for world_size in range(scaling.min_workers, scaling.max_workers):
            plan.for_world_size(world_size)  # raises PlanError if a group size cannot train
    if job.mixup is not None:
        problems = mixup_plan_problems(plan, job.mixup.cutmix_minmax)
        if problems:
            raise PlanError(problems[0])
    if job.infobatch is None:
        return plan
    return replace(
        plan,
        prune_ratio=job.infobatch.prune_ratio,
        first_full_epoch=first_full_epoch(job.infobatch.delta, plan.total_epochs),
    )


def _make_plan(job: JobConfig, *, train_samples: int) -> Plan:
    """The plan without pruning.

    Every worker sees `train_samples // num_workers` rows per epoch (Ray Data's equal
    streaming split) and drops its last partial batch, so all workers take the same number of
    steps, which DDP and `ray.train.report` both require. Elastic jobs plan for their largest
    group (`Plan.for_world_size` re-derives smaller ones).
    """
    workers = job.scaling.max_workers
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
    if isinstance(job.curriculum, ProgressiveCurriculum):
        return _progressive_plan(job, train_samples, steps_per_epoch=steps)
    if job.curriculum is not None:
        return _curriculum_plan(job, train_samples, baseline_images_per_epoch=steps * batch)
    schedule = _epoch_schedule(job)
    stage = StagePlan(
        index=0,
        first_epoch=0,
        num_epochs=job.train.epochs,
        resolution_px=job.data.image_size_px,
        global_batch=batch,
        per_worker_batch=per_worker_batch,
        steps_per_epoch=steps,
        peak_lr=job.peak_lr,
    )
    return Plan(
        stages=(stage,),
        schedule=schedule,
        num_workers=workers,
        train_samples=train_samples,
        full_resolution_px=job.data.image_size_px,
        baseline_epochs=job.train.epochs,
        baseline_images_per_epoch=steps * batch,
    )


def _curriculum_plan(job: JobConfig, train_samples: int, *, baseline_images_per_epoch: int):
    """The EfficientTrain++ plan: `plan_stages` resolved into whole epochs and steps."""
    curriculum = job.curriculum
    full_px = job.data.image_size_px
    workers = job.scaling.max_workers
    batch = job.train.global_batch_size
    lr = job.peak_lr
    # train.lr_scaling, when given, is the one LR rule of the job: its exponent and cap also
    # give the Early-Large-Batch stages their rates.
    scaling = job.train.lr_scaling
    if scaling is not None:
        lr_alpha = scaling.exponent
    else:
        lr_alpha = 0.5 if curriculum.lr_alpha is None else curriculum.lr_alpha
    lr_cap = curriculum.lr_max or (scaling.lr_max if scaling is not None else None)
    if isinstance(curriculum, EtppCurriculum):
        resolutions = etpp.etpp_resolutions(curriculum.family, full_px)
        magnitudes = etpp.etpp_magnitudes(len(resolutions))
        replay_factors = etpp.etpp_replay_factors(resolutions, full_px)
        shares, overrides = None, {}
    else:
        resolutions = [s.resolution_px for s in curriculum.stages]
        magnitudes = [s.randaug_magnitude for s in curriculum.stages]
        replay_factors = [s.replay_factor for s in curriculum.stages]
        shares = [s.share for s in curriculum.stages]
        overrides = {
            i: s.global_batch_size
            for i, s in enumerate(curriculum.stages)
            if s.global_batch_size is not None
        }
    randaug_impl = curriculum.randaugment_impl
    if not curriculum.randaugment:
        magnitudes = [0.0] * len(resolutions)
        randaug_impl = None
    max_batch = curriculum.max_global_batch or batch
    # No cap means the largest LR the square-root rule can produce for these batches.
    lr_max = lr_cap or lr * (max([max_batch, *overrides.values()]) / batch) ** lr_alpha
    try:
        stages = etpp.plan_stages(
            resolutions,
            full_px=full_px,
            budget_epochs=curriculum.budget_epochs,
            magnitudes=magnitudes,
            replay_factors=replay_factors,
            batch_full=batch,
            lr_full=lr,
            max_batch=max_batch,
            lr_max=max(lr_max, lr),
            # Early-Large-Batch batches must split over every elastic group size.
            num_workers=job.scaling.worker_multiple,
            batch_overrides=overrides,
            compute_shares=shares,
            lr_alpha=lr_alpha,
        )
    except ValueError as err:
        raise PlanError(f"curriculum: {err}") from None

    rows_per_worker = train_samples // workers
    planned = []
    first_epoch = 0
    carry_epochs = 0.0  # planned minus spent compute so far, in equivalent full-res epochs
    for stage in stages:
        per_worker_batch = stage.batch_size // workers
        fresh = -(-per_worker_batch // stage.replay_factor)
        steps = rows_per_worker // fresh
        if steps == 0:
            raise PlanError(
                f"curriculum: stage {stage.index} takes {fresh} fresh samples per worker and "
                f"step (batch {stage.batch_size}, replay {stage.replay_factor}x), more than "
                f"the {rows_per_worker} each of {workers} workers holds; lower "
                "curriculum.max_global_batch or the stage's global_batch_size"
            )
        area_ratio = stage.resolution_px**2 / full_px**2
        wanted_epochs = stage.data_epochs * area_ratio + carry_epochs
        epoch_cost = stage.replay_factor * area_ratio
        num_epochs = max(1, round(wanted_epochs / epoch_cost))
        carry_epochs = wanted_epochs - num_epochs * epoch_cost
        planned.append(
            StagePlan(
                index=stage.index,
                first_epoch=first_epoch,
                num_epochs=num_epochs,
                resolution_px=stage.resolution_px,
                global_batch=stage.batch_size,
                per_worker_batch=per_worker_batch,
                steps_per_epoch=steps,
                peak_lr=stage.lr,
                randaug_impl=randaug_impl,
                randaug_magnitude=stage.randaug_magnitude,
                replay_factor=stage.replay_factor,
                planned_data_epochs=stage.data_epochs,
                dataset=f"train_s{stage.index}",
            )
        )
        first_epoch += num_epochs
    total = sum(s.compute_px_images for s in planned)
    planned = [
        StagePlan(**{**asdict(s), "compute_share": s.compute_px_images / total}) for s in planned
    ]
    schedule = job.train.schedule
    return Plan(
        stages=tuple(planned),
        schedule={
            "name": "cosine",
            "total_epochs": 1.0,
            "warmup_epochs": job.warmup_epochs / curriculum.budget_epochs,
            "final_fraction": schedule.final_fraction,
        },
        num_workers=workers,
        train_samples=train_samples,
        full_resolution_px=full_px,
        schedule_progress="compute",
        lowpass_mode=curriculum.mode,
        baseline_epochs=job.train.epochs,
        baseline_images_per_epoch=baseline_images_per_epoch,
    )


def _progressive_plan(job: JobConfig, train_samples: int, *, steps_per_epoch: int) -> Plan:
    """EfficientNetV2 progressive learning: `progressive_stages` as plan stages.

    Batch, steps and peak LR are the plain job's in every stage and the LR schedule runs on
    epochs (the stages split `train.epochs`). Each stage has its own Ray Data pipeline that
    resizes to the stage's size after augmenting; evaluation at the end is at the last
    stage's size, which is the plan's full resolution. RandAugment magnitudes above timm's
    maximum of 10 (the M and L releases' 15 and 20) are clipped to 10.
    """
    workers = job.scaling.max_workers
    batch = job.train.global_batch_size
    settings = progressive_settings(job.curriculum)
    stages = progressive_stages(**settings, total_epochs=job.train.epochs)
    total = sum(pixel_compute(s.epochs, s.size_px) for s in stages)
    planned = tuple(
        StagePlan(
            index=s.index,
            first_epoch=s.start_epoch,
            num_epochs=s.epochs,
            resolution_px=s.size_px,
            global_batch=batch,
            per_worker_batch=batch // workers,
            steps_per_epoch=steps_per_epoch,
            peak_lr=job.peak_lr,
            # EfficientNetV2's own RandAugment is neither; rayaccel keeps torchvision's here.
            randaug_impl="torchvision",
            randaug_magnitude=min(s.randaug_magnitude, 10.0),
            planned_data_epochs=float(s.epochs),
            compute_share=pixel_compute(s.epochs, s.size_px) / total,
            dataset=f"train_s{s.index}",
            mixup_alpha=s.mixup_alpha,
            cutmix_alpha=s.cutmix_alpha,
            dropout_rate=s.dropout_rate,
            drop_path_rate=s.drop_path_rate,
        )
        for s in stages
    )
    schedule = _epoch_schedule(job)
    return Plan(
        stages=planned,
        schedule=schedule,
        num_workers=workers,
        train_samples=train_samples,
        full_resolution_px=stages[-1].size_px,
        lowpass_mode="resize",
        baseline_epochs=job.train.epochs,
        baseline_images_per_epoch=steps_per_epoch * batch,
        curriculum="progressive",
    )


def _epoch_schedule(job: JobConfig) -> dict:
    """The job's LR schedule over epochs (cosine warmup lengthened by `scale_warmup`)."""
    # JSON-plain values (lists, not tuples): a plan travels to the workers and into plan.json.
    schedule = job.train.schedule.model_dump(mode="json")
    if isinstance(job.train.schedule, CosineSchedule):
        schedule["total_epochs"] = job.train.epochs
        schedule["warmup_epochs"] = job.warmup_epochs
    return schedule


def format_plan(plan: Plan) -> str:
    """The plan as a fixed-width table with totals underneath (per stage for a curriculum)."""
    if plan.curriculum == "progressive":
        return _format_progressive_plan(plan)
    table = (
        _format_curriculum_plan(plan)
        if plan.schedule_progress == "compute"
        else _format_epochs(plan)
    )
    if plan.prune_ratio > 0:
        weight = 1 / (1 - plan.prune_ratio)
        last_pruned, total = plan.first_full_epoch, plan.total_epochs
        annealing = (
            f"epochs {last_pruned + 1}-{total} train on all data"
            if last_pruned < total
            else "no epoch trains on all data (delta = 1)"
        )
        table += (
            f"\nInfoBatch: epochs 1-{last_pruned} drop a share {plan.prune_ratio:g} of the "
            f"below-mean-loss samples (kept ones weigh {weight:.4g}); {annealing}. "
            "Epoch 1 prunes nothing (no losses yet); steps and compute above are the unpruned "
            "upper bounds."
        )
    return table


def _format_epochs(plan: Plan) -> str:
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
        f"{plan.train_samples} training samples on {_workers_text(plan)}; "
        f"compute {plan.compute_relative_to_full():.3f}x of all epochs at "
        f"{plan.full_resolution_px}px"
    )
    return "\n".join(lines)


def _format_progressive_plan(plan: Plan) -> str:
    header = (
        "stage", "epochs", "res_px", "randaug", "mixup", "cutmix", "dropout", "drop_path",
        "batch", "steps", "lr_start", "lr_end",
    )  # fmt: skip
    template = "{:>5} {:>7} {:>6} {:>7} {:>6} {:>6} {:>7} {:>9} {:>6} {:>6} {:>9} {:>9}"
    lines = [template.format(*header)]
    for stage in plan.stages:
        lines.append(
            template.format(
                stage.index,
                f"{stage.first_epoch}-{stage.end_epoch - 1}",
                stage.resolution_px,
                f"{stage.randaug_magnitude:.3g}",
                f"{stage.mixup_alpha:.3g}",
                f"{stage.cutmix_alpha:.3g}",
                f"{stage.dropout_rate:.3g}",
                f"{stage.drop_path_rate:.3g}",
                stage.global_batch,
                stage.steps_per_epoch,
                f"{plan.lr_at(stage.first_epoch, 0):.4g}",
                f"{plan.lr_at(stage.end_epoch - 1, stage.steps_per_epoch):.4g}",
            )
        )
    lines += [
        "progressive learning (EfficientNetV2): images resized to res_px in Ray Data after "
        f"augmenting; the final evaluation is at {plan.full_resolution_px}px",
        f"total: {plan.total_epochs} epochs, {plan.total_steps} steps, {plan.train_samples} "
        f"training samples on {_workers_text(plan)}; compute "
        f"{plan.compute_relative_to_full():.3f}x of all epochs at {plan.full_resolution_px}px",
    ]
    return "\n".join(lines)


_RANDAUG_TEXT = {
    "timm": "timm's rand-m{M}-mstd0.5-inc1 (each of 2 ops with p 0.5; changes images at M 0 too)",
    "torchvision": "torchvision's RandAugment (both ops always; M 0 is off)",
    None: "off (curriculum.randaugment: false)",
}


def _format_curriculum_plan(plan: Plan) -> str:
    header = (
        "stage", "res_px", "epochs", "data_ep", "randaug", "R", "batch", "per_worker", "fresh",
        "steps", "peak_lr", "lr_start", "compute",
    )  # fmt: skip
    template = "{:>5} {:>6} {:>6} {:>7} {:>7} {:>3} {:>6} {:>10} {:>5} {:>6} {:>9} {:>9} {:>7}"
    lines = [template.format(*header)]
    for stage in plan.stages:
        lines.append(
            template.format(
                stage.index,
                stage.resolution_px,
                stage.num_epochs,
                f"{stage.planned_data_epochs:.2f}",
                f"{stage.randaug_magnitude:g}" if stage.randaug_impl else "off",
                stage.replay_factor,
                stage.global_batch,
                stage.per_worker_batch,
                stage.fresh_per_worker_batch,
                stage.steps_per_epoch,
                f"{stage.peak_lr:.4g}",
                f"{plan.lr_at(stage.first_epoch, 0):.4g}",
                f"{stage.compute_share:.3f}",
            )
        )
    warmup = plan.schedule["warmup_epochs"]
    lines += [
        "epochs: passes over fresh data (each trains ~R x the dataset); data_ep: planned "
        "trained-sample epochs, budget share x (full/B)^2; fresh: Ray Data samples per worker "
        "and step",
        f"randaug: {_RANDAUG_TEXT[plan.stages[0].randaug_impl]}",
        f"low-frequency mode: {plan.lowpass_mode}; LR: warmup for {warmup:.3f} of the compute, "
        "then cosine, both on the fraction of compute spent",
        f"total: {plan.total_epochs} epochs, {plan.total_steps} steps, {plan.train_samples} "
        f"training samples on {_workers_text(plan)}; compute "
        f"{plan.compute_relative_to_baseline():.3f}x of the baseline ({plan.baseline_epochs} "
        f"epochs at {plan.full_resolution_px}px; planned "
        f"{plan.planned_compute_relative_to_baseline():.3f}x before rounding epochs)",
    ]
    return "\n".join(lines)


def _workers_text(plan: Plan) -> str:
    if plan.min_workers is None:
        return f"{plan.num_workers} worker(s)"
    return (
        f"{plan.min_workers}-{plan.num_workers} workers (elastic; per-worker batch and steps "
        f"shown for {plan.num_workers}, the loop derives them from the running group's size)"
    )
