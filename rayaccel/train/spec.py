"""What a worker is told: plain, typed settings built once on the driver.

`build_worker_spec(job, plan)` is the one place where a validated `JobConfig` becomes what
the workers run; the trainer (`rayaccel.train.loop`) never reads the job. The spec crosses
into Ray Train as a plain dict (`to_dict`) and is rebuilt on every worker (`from_dict`), so a
field renamed on one side fails the round trip in a unit test, not on a worker after Ray
started. Each method's settings are its own frozen dataclass (`rayaccel.methods.registry`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from rayaccel.config import JobConfig, ResNet9Model
from rayaccel.core.storage import absolute_location
from rayaccel.methods.registry import method_model_kwargs, method_settings, method_spec
from rayaccel.optim.registry import OptimizerHyperparameters
from rayaccel.plan import Plan


@dataclass(frozen=True)
class ModelSpec:
    """`build_model(name, num_classes=, in_chans=, task=, **kwargs)` and its memory layout."""

    name: str
    kwargs: dict[str, Any]
    num_classes: int
    in_chans: int
    task: str
    # NHWC weights and inputs (`train.channels_last`).
    channels_last: bool
    # The first weights, which the driver reads once and ships to the workers
    # (`rayaccel.train.runner.initial_weights`): timm's pretrained ones, or a file or run
    # folder (absolute path or URI); neither: random.
    pretrained: bool = False
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class WorkerAugmentSpec:
    """Augmentation of fresh uint8 batches on the worker (`WorkerAugmentHook` arguments)."""

    crop_padding_px: int
    flip: str
    cutout_px: int
    samples_per_choice: int


@dataclass(frozen=True)
class DataSpec:
    """Where a worker's batches come from and how they are normalised.

    Attributes:
        mode: "ray" (Ray Data shards every epoch) or "device" (each worker's part of the
            splits decoded once onto its device).
        train, val: The splits' locations (absolute paths or URIs); val None: no evaluation.
        decode: `DecodeSpec` fields for reading rows on the worker (device mode, samples).
        mean, std: Per-channel normalisation, in [0, 1] units.
        worker_augment: Crops, flips and cutout on the worker; None: none.
    """

    mode: str
    train: str
    val: str | None
    decode: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    worker_augment: WorkerAugmentSpec | None


@dataclass(frozen=True)
class LoopSpec:
    """How the trainer steps, evaluates, logs and checkpoints.

    Attributes:
        precision: "fp32", "bf16" or "fp16" (autocast; fp16 with a grad scaler).
        label_smoothing: Of the training loss.
        seed: The job's seed.
        eval_every_epochs: Evaluate every this many epochs (and always after the last).
        checkpoint_every_epochs: Checkpoint every this many epochs (and after the last).
        log_every_steps: Rank 0's progress line every this many steps.
        torch_threads: Intra-op threads of a CPU worker (its reserved CPUs).
        start_checkpoint: Continue from this checkpoint when the run has none of its own (a
            search trial continues the previous stage's best); None: start fresh.
        stop_epoch: Train only the epochs before this one (a search trial trains one stage
            of the full plan, so its LR schedule is the full curriculum's); None: all.
        console_events: Rank 0 prints its progress as event lines for the driver's console
            (`rayaccel.core.events`) instead of readable lines.
    """

    precision: str
    label_smoothing: float
    seed: int
    eval_every_epochs: int
    checkpoint_every_epochs: int
    log_every_steps: int
    torch_threads: int
    start_checkpoint: str | None = None
    stop_epoch: int | None = None
    console_events: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the trainer runs: the plan, the model, the optimizer, the data, the loop,
    and each method's settings as `(method name, settings)` pairs in registry order."""

    plan: Plan
    model: ModelSpec
    optimizer: OptimizerHyperparameters
    data: DataSpec
    loop: LoopSpec
    methods: tuple[tuple[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (what Ray Train's `train_loop_config` carries)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["plan"] = self.plan.to_dict()
        fields["methods"] = [
            {"method": name, "settings": dataclasses.asdict(settings)}
            for name, settings in self.methods
        ]
        for name in ("model", "optimizer", "data", "loop"):
            fields[name] = dataclasses.asdict(fields[name])
        return fields

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSpec:
        methods = tuple(
            (entry["method"], _build(method_spec(entry["method"]).settings_type, entry["settings"]))
            for entry in data["methods"]
        )
        return cls(
            plan=Plan.from_dict(data["plan"]),
            model=_build(ModelSpec, data["model"]),
            optimizer=_build(OptimizerHyperparameters, data["optimizer"]),
            data=_build(DataSpec, data["data"]),
            loop=_build(LoopSpec, data["loop"]),
            methods=methods,
        )

    def replace_loop(self, **changes: Any) -> WorkerSpec:
        return dataclasses.replace(self, loop=dataclasses.replace(self.loop, **changes))


def _build(cls: type, data: dict[str, Any]) -> Any:
    """A dataclass from `asdict` output: nested dataclasses and tuples restored."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        values[field.name] = _value(hints[field.name], data[field.name])
    return cls(**values)


def _value(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        _, inner = typing.get_args(annotation)
        return {key: _value(inner, item) for key, item in value.items()}
    return value


def job_model_kwargs(job: JobConfig) -> dict[str, Any]:
    """The job's own `build_model` kwargs (the methods' are added to them in the spec)."""
    model = job.model
    if isinstance(model, ResNet9Model):
        return model.model_dump(exclude={"name", "pretrained", "init_checkpoint"})
    kwargs = dict(model.kwargs)
    if job.data.task == "segmentation" and model.fpn_channels is not None:
        kwargs["fpn_channels"] = model.fpn_channels
    return kwargs


def build_worker_spec(job: JobConfig, plan: Plan) -> WorkerSpec:
    """The spec of a validated, data-resolved job and its plan (the only job reader here)."""
    data, model, train = job.data, job.model, job.train
    model_kwargs = job_model_kwargs(job)
    optimizer = train.optimizer
    cpus = (job.scaling.resources_per_worker or {}).get("CPU", 1)
    return WorkerSpec(
        plan=plan,
        model=ModelSpec(
            name=model.name,
            kwargs={**model_kwargs, **method_model_kwargs(job, plan)},
            num_classes=data.num_classes,
            in_chans=data.channels,
            task=data.task or "classification",
            channels_last=train.channels_last,
            pretrained=model.pretrained,
            init_checkpoint=(
                absolute_location(model.init_checkpoint)
                if model.init_checkpoint is not None
                else None
            ),
        ),
        optimizer=OptimizerHyperparameters(
            name=optimizer.name,
            lr=optimizer.lr,
            weight_decay=optimizer.weight_decay,
            momentum=optimizer.momentum,
            nesterov=optimizer.nesterov,
            betas=tuple(optimizer.betas),
            trust_coefficient=optimizer.trust_coefficient,
        ),
        data=DataSpec(
            mode=data.mode,
            train=absolute_location(data.train),
            val=absolute_location(data.val) if data.val is not None else None,
            decode={
                "image_size_px": data.image_size_px,
                "channels": data.channels,
                "num_classes": data.num_classes,
                "on_bad_row": data.on_bad_row,
            },
            mean=tuple(data.mean),
            std=tuple(data.std),
            worker_augment=_worker_augment(job),
        ),
        loop=LoopSpec(
            precision=train.precision,
            label_smoothing=train.label_smoothing,
            seed=train.seed,
            eval_every_epochs=train.eval_every_epochs,
            checkpoint_every_epochs=job.run.checkpoint_every_epochs,
            log_every_steps=train.log_every_steps,
            torch_threads=max(1, math.floor(cpus)),
        ),
        methods=method_settings(job, plan),
    )


def _worker_augment(job: JobConfig) -> WorkerAugmentSpec | None:
    """What of the augmentation runs on the worker instead of in Ray Data.

    Flips move to the worker when they alternate (by sample index and epoch) or when the
    data lives on the device; crops move there only in device mode; cutout always runs there.
    """
    augment = job.data.augment
    device_mode = job.data.mode == "device"
    alternating = job.tricks.alternating_flip
    flip = "none"
    if augment.horizontal_flip and (alternating or device_mode):
        flip = "alternating" if alternating else "random"
    spec = WorkerAugmentSpec(
        crop_padding_px=augment.random_crop_padding_px if device_mode else 0,
        flip=flip,
        cutout_px=augment.cutout_px,
        samples_per_choice=augment.samples_per_choice,
    )
    if spec.crop_padding_px == 0 and flip == "none" and spec.cutout_px == 0:
        return None
    return spec
