"""Every method rayaccel has, one record each: the one list the rest of the code iterates.

A record says where the method's section sits in a job (`key`), the section's schema, the
checks that need the rest of the job, and whether it works on segmentation data. The job
schema (`rayaccel.config.job`) is composed from these records, so adding a method means
writing its package and adding its line here. Kept free of torch: validating a job must not
import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayaccel.methods.agvm import config as agvm
from rayaccel.methods.agvm.config import AgvmSection, agvm_problems
from rayaccel.methods.etpp import config as etpp
from rayaccel.methods.etpp.config import (
    CustomCurriculum,
    EtppCurriculum,
    curriculum_problems,
    lr_rule_problems,
    untagged_preset,
)
from rayaccel.methods.infobatch import config as infobatch
from rayaccel.methods.infobatch.config import InfoBatchSection, infobatch_problems
from rayaccel.methods.mixup import config as mixup
from rayaccel.methods.progressive import config as progressive
from rayaccel.methods.progressive.config import ProgressiveCurriculum, progressive_problems
from rayaccel.methods.random_erasing import config as random_erasing
from rayaccel.methods.tricks import config as tricks
from rayaccel.methods.tricks.config import (
    EmaTrick,
    FrozenBnScaleTrick,
    GhostBnTrick,
    LookaheadTrick,
    TtaTrick,
    WhiteningTrick,
    alternating_flip_problems,
    frozen_bn_scale_problems,
    ghost_bn_problems,
    tta_problems,
    whitening_problems,
)


@dataclass(frozen=True)
class MethodSpec:
    """One method as the job sees it.

    Attributes:
        name: The method's name (`rayaccel plan` and the docs use it).
        key: Its section's dotted path in the job, e.g. `infobatch` or `tricks.ema`; methods
            that share a key (the curricula) are variants of one tagged union.
        section: The section's schema (a model, or `bool` for an on/off switch); None with
            `variants`.
        default: The value that means "off".
        variants: For a shared key: `{preset: schema}` of this method's variants.
        untagged: For a shared key: the preset of a mapping that names none.
        checks: Functions of the whole job returning one problem line each (`path: text`);
            they return nothing when the method is off.
        segmentation: Works on segmentation data (it transforms masks with their images).
        summary: One line on what it does.
        settings: `settings(job, plan)`: the plain typed settings a worker gets (an instance
            of `settings_type`), or None when the job does not use the method.
        settings_type: Their dataclass (a worker rebuilds them from a dict by it).
        hooks: `module:function` of `hooks_for(settings, context) -> list[Hook]`, imported
            on the workers only, so the schema stays free of torch.
        model_kwargs: `model_kwargs(job, plan)`: keyword arguments the method adds to the
            model's construction (progressive learning's largest drop-path rate).
        driver: `module:function` of `driver_part(job, plan) -> DriverPart`, what the
            method runs on the driver (Ray actors, a Ray Data row filter); imported by the
            runner only.
        run_summary: `run_summary(records, plan) -> dict`: the method's figures for a
            finished run's `summary.json`, from its epoch records (empty when the records
            carry none of its metrics).
    """

    name: str
    key: str
    section: Any = None
    default: Any = None
    variants: Mapping[str, type] = field(default_factory=dict)
    untagged: Callable[[dict], str] | None = None
    checks: tuple[Callable[[Any], list[str]], ...] = ()
    segmentation: bool = True
    summary: str = ""
    settings: Callable[[Any, Any], Any] | None = None
    settings_type: type | None = None
    hooks: str | None = None
    model_kwargs: Callable[[Any, Any], dict[str, Any]] | None = None
    driver: str | None = None
    run_summary: Callable[[list, Any], dict[str, Any]] | None = None

    def hook_factory(self) -> Callable[[Any, Any], list]:
        """`hooks_for(settings, context)` of the method, imported on the worker (torch)."""
        return _resolve(self.hooks)

    def driver_part(self, job: Any, plan: Any) -> Any:
        """The method's `DriverPart` for a run, or None when it has none or is off."""
        if self.driver is None or not self.enabled(job):
            return None
        return _resolve(self.driver)(job, plan)

    def enabled(self, job: Any) -> bool:
        """Whether `job` (a validated `JobConfig`) uses this method."""
        value = job
        for part in self.key.split("."):
            value = getattr(value, part)
        if self.variants:
            return isinstance(value, tuple(self.variants.values()))
        return value is not None and value is not False


def _resolve(path: str) -> Callable:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def one_mixing_method(job: Any) -> list[str]:
    """A job mixes its batches with the `mixup:` section or with a progressive curriculum's
    scheduled alphas, never both: the second would mix already mixed inputs and targets."""
    curriculum = job.curriculum
    if job.mixup is None or not isinstance(curriculum, ProgressiveCurriculum):
        return []
    settings = progressive.progressive_settings(curriculum)
    alphas = [settings[f"{name}_{end}"] for name in ("mixup", "cutmix") for end in ("start", "end")]
    if max(alphas) == 0:
        return []
    return [
        "mixup: the progressive curriculum already mixes (curriculum.mixup_alpha / "
        "cutmix_alpha, or its release's); set those to [0, 0] or remove the mixup section"
    ]


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "etpp",
        key="curriculum",
        variants={"et++": EtppCurriculum, "custom": CustomCurriculum},
        untagged=untagged_preset,
        checks=(curriculum_problems, lr_rule_problems),
        segmentation=False,
        summary="EfficientTrain++: low-frequency crops and RandAugment ramp over compute stages",
        settings=etpp.worker_settings,
        settings_type=etpp.EtppSettings,
        hooks="rayaccel.methods.etpp.hooks:hooks_for",
    ),
    # Before progressive learning: its inputs are erased before mixup mixes them.
    MethodSpec(
        "random_erasing",
        key="random_erasing",
        section=random_erasing.RandomErasingSection,
        segmentation=False,
        summary="random erasing of the normalised inputs (timm)",
        settings=random_erasing.worker_settings,
        settings_type=random_erasing.RandomErasingSettings,
        hooks="rayaccel.methods.random_erasing.hook:hooks_for",
    ),
    MethodSpec(
        "progressive",
        key="curriculum",
        variants={"progressive": ProgressiveCurriculum},
        checks=(progressive_problems,),
        segmentation=False,
        summary="EfficientNetV2 progressive resizing with adaptive regularisation",
        settings=progressive.worker_settings,
        settings_type=progressive.ProgressiveSettings,
        hooks="rayaccel.methods.progressive.hook:hooks_for",
        model_kwargs=progressive.model_kwargs,
    ),
    MethodSpec(
        "mixup",
        key="mixup",
        section=mixup.MixupSection,
        checks=(mixup.mixup_problems, one_mixing_method),
        segmentation=False,
        summary="mixup and cutmix of the training batches into soft targets (timm)",
        settings=mixup.worker_settings,
        settings_type=mixup.MixupSettings,
        hooks="rayaccel.methods.mixup.hook:hooks_for",
    ),
    MethodSpec(
        "ema",
        key="tricks.ema",
        section=EmaTrick,
        summary="EMA of the weights",
        settings=tricks.ema_settings,
        settings_type=tricks.EmaSettings,
        hooks="rayaccel.methods.tricks.ema:hooks_for",
    ),
    MethodSpec(
        "tta",
        key="tricks.tta",
        section=TtaTrick,
        checks=(tta_problems,),
        segmentation=False,
        summary="test-time augmentation",
        settings=tricks.tta_settings,
        settings_type=tricks.TtaSettings,
        hooks="rayaccel.methods.tricks.tta:hooks_for",
    ),
    MethodSpec(
        "ghost_bn",
        key="tricks.ghost_bn",
        section=GhostBnTrick,
        checks=(ghost_bn_problems,),
        summary="ghost batch norm",
        settings=tricks.ghost_bn_settings,
        settings_type=tricks.GhostBnSettings,
        hooks="rayaccel.methods.tricks.ghost_bn:hooks_for",
    ),
    MethodSpec(
        "frozen_bn_scale",
        key="tricks.frozen_bn_scale",
        section=FrozenBnScaleTrick,
        checks=(frozen_bn_scale_problems,),
        summary="fixed BN scales, fast BN biases",
        settings=tricks.frozen_bn_scale_settings,
        settings_type=tricks.FrozenBnScaleSettings,
        hooks="rayaccel.methods.tricks.frozen_bn:hooks_for",
    ),
    MethodSpec(
        "whitening",
        key="tricks.whitening",
        section=WhiteningTrick,
        checks=(whitening_problems,),
        segmentation=False,
        summary="a fixed PCA-whitening first layer",
        settings=tricks.whitening_settings,
        settings_type=tricks.WhiteningSettings,
        hooks="rayaccel.methods.tricks.whitening:hooks_for",
    ),
    MethodSpec(
        "dirac_init",
        key="tricks.dirac_init",
        section=bool,
        default=False,
        summary="identity (Dirac) initialisation of the convolutions",
        settings=tricks.dirac_init_settings,
        settings_type=tricks.DiracInitSettings,
        hooks="rayaccel.methods.tricks.init:hooks_for",
    ),
    MethodSpec(
        "alternating_flip",
        key="tricks.alternating_flip",
        section=bool,
        default=False,
        checks=(alternating_flip_problems,),
        segmentation=False,
        summary="epoch e > 0 flips exactly the images not flipped in e - 1",
    ),
    MethodSpec(
        "lookahead",
        key="tricks.lookahead",
        section=LookaheadTrick,
        summary="Lookahead",
        settings=tricks.lookahead_settings,
        settings_type=tricks.LookaheadSettings,
        hooks="rayaccel.methods.tricks.lookahead:hooks_for",
    ),
    MethodSpec(
        "infobatch",
        key="infobatch",
        section=InfoBatchSection,
        checks=(infobatch_problems,),
        segmentation=False,
        summary="InfoBatch unbiased dynamic data pruning",
        settings=infobatch.worker_settings,
        settings_type=infobatch.InfoBatchSettings,
        hooks="rayaccel.methods.infobatch.hook:hooks_for",
        driver="rayaccel.methods.infobatch.hook:driver_part",
        run_summary=infobatch.run_summary,
    ),
    MethodSpec(
        "agvm",
        key="agvm",
        section=AgvmSection,
        checks=(agvm_problems,),
        summary="AGVM per-component LR modulation for large batches",
        settings=agvm.worker_settings,
        settings_type=agvm.AgvmSettings,
        hooks="rayaccel.methods.agvm.hook:hooks_for",
    ),
)


def method_problems(job: Any) -> list[str]:
    """Every method's checks on a job, in registry order."""
    return [problem for spec in METHODS for check in spec.checks for problem in check(job)]


def method_settings(job: Any, plan: Any) -> tuple[tuple[str, Any], ...]:
    """`(method name, settings)` of every method the job uses, in registry order."""
    chosen = []
    for spec in METHODS:
        settings = spec.settings(job, plan) if spec.settings is not None else None
        if settings is not None:
            chosen.append((spec.name, settings))
    return tuple(chosen)


def method_model_kwargs(job: Any, plan: Any) -> dict[str, Any]:
    """Keyword arguments the job's methods add to the model's construction."""
    kwargs: dict[str, Any] = {}
    for spec in METHODS:
        if spec.model_kwargs is not None:
            kwargs.update(spec.model_kwargs(job, plan))
    return kwargs


def method_spec(name: str) -> MethodSpec:
    """The record of method `name`; unknown names fail with the registered ones."""
    for spec in METHODS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown method {name!r}; registered: {[s.name for s in METHODS]}")


def methods_line(job: Any) -> str:
    """The methods a job uses, as `rayaccel plan` prints them."""
    used = [f"{spec.name} ({spec.key})" for spec in METHODS if spec.enabled(job)]
    return "methods: " + (", ".join(used) if used else "none (the baseline)")


def driver_parts(job: Any, plan: Any) -> list[Any]:
    """The `DriverPart` of every method the job uses that runs something on the driver."""
    return [part for spec in METHODS if (part := spec.driver_part(job, plan)) is not None]


def method_summaries(records: list, plan: Any) -> dict[str, Any]:
    """Every method's figures for `summary.json` (`MethodSpec.run_summary`)."""
    summary: dict[str, Any] = {}
    for spec in METHODS:
        if spec.run_summary is not None:
            summary.update(spec.run_summary(records, plan))
    return summary
