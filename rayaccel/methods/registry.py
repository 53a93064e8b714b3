"""Every method rayaccel has, one record each: the one list the rest of the code iterates.

A record says where the method's section sits in a job (`key`), the section's schema, the
checks that need the rest of the job, and whether it works on segmentation data. The job
schema (`rayaccel.config.job`) is composed from these records, so adding a method means
writing its package and adding its line here. Kept free of torch: validating a job must not
import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayaccel.methods.agvm.config import AgvmSection, agvm_problems
from rayaccel.methods.etpp.config import (
    CustomCurriculum,
    EtppCurriculum,
    curriculum_problems,
    lr_rule_problems,
    untagged_preset,
)
from rayaccel.methods.infobatch.config import InfoBatchSection, infobatch_problems
from rayaccel.methods.progressive.config import ProgressiveCurriculum, progressive_problems
from rayaccel.methods.tricks.config import (
    EmaTrick,
    FrozenBnScaleTrick,
    GhostBnTrick,
    LookaheadTrick,
    TtaTrick,
    WhiteningTrick,
    alternating_flip_problems,
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

    def enabled(self, job: Any) -> bool:
        """Whether `job` (a validated `JobConfig`) uses this method."""
        value = job
        for part in self.key.split("."):
            value = getattr(value, part)
        if self.variants:
            return isinstance(value, tuple(self.variants.values()))
        return value is not None and value is not False


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "etpp",
        key="curriculum",
        variants={"et++": EtppCurriculum, "custom": CustomCurriculum},
        untagged=untagged_preset,
        checks=(curriculum_problems, lr_rule_problems),
        segmentation=False,
        summary="EfficientTrain++: low-frequency crops and RandAugment ramp over compute stages",
    ),
    MethodSpec(
        "progressive",
        key="curriculum",
        variants={"progressive": ProgressiveCurriculum},
        checks=(progressive_problems,),
        segmentation=False,
        summary="EfficientNetV2 progressive resizing with adaptive regularisation",
    ),
    MethodSpec("ema", key="tricks.ema", section=EmaTrick, summary="EMA of the weights"),
    MethodSpec(
        "tta",
        key="tricks.tta",
        section=TtaTrick,
        checks=(tta_problems,),
        segmentation=False,
        summary="test-time augmentation",
    ),
    MethodSpec(
        "ghost_bn",
        key="tricks.ghost_bn",
        section=GhostBnTrick,
        checks=(ghost_bn_problems,),
        summary="ghost batch norm",
    ),
    MethodSpec(
        "frozen_bn_scale",
        key="tricks.frozen_bn_scale",
        section=FrozenBnScaleTrick,
        summary="fixed BN scales, fast BN biases",
    ),
    MethodSpec(
        "whitening",
        key="tricks.whitening",
        section=WhiteningTrick,
        checks=(whitening_problems,),
        segmentation=False,
        summary="a fixed PCA-whitening first layer",
    ),
    MethodSpec(
        "dirac_init",
        key="tricks.dirac_init",
        section=bool,
        default=False,
        summary="identity (Dirac) initialisation of the convolutions",
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
    MethodSpec("lookahead", key="tricks.lookahead", section=LookaheadTrick, summary="Lookahead"),
    MethodSpec(
        "infobatch",
        key="infobatch",
        section=InfoBatchSection,
        checks=(infobatch_problems,),
        segmentation=False,
        summary="InfoBatch unbiased dynamic data pruning",
    ),
    MethodSpec(
        "agvm",
        key="agvm",
        section=AgvmSection,
        checks=(agvm_problems,),
        summary="AGVM per-component LR modulation for large batches",
    ),
)


def method_problems(job: Any) -> list[str]:
    """Every method's checks on a job, in registry order."""
    return [problem for spec in METHODS for check in spec.checks for problem in check(job)]
