"""The order of the methods' hooks in a run, and the rules that fix it.

Hooks start in registry order (`rayaccel.methods.registry`), after the worker-side
augmentation; then each rule below moves the hooks it is about, in turn. Every point of the
trainer passes through the hooks in the resulting order (`MethodHooks`), so where two methods
act at the same point, the rule between them is one function here, with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rayaccel.methods.agvm.hook import AgvmHook
from rayaccel.methods.base import Hook, MethodHooks, WorkerContext
from rayaccel.methods.etpp.lowpass import LowPassCropHook
from rayaccel.methods.etpp.replay import ReplayHook
from rayaccel.methods.infobatch.hook import InfoBatchHook
from rayaccel.methods.mixup.hook import MixupHook
from rayaccel.methods.progressive.hook import RegularisationHook
from rayaccel.methods.registry import method_spec
from rayaccel.methods.tricks.frozen_bn import FrozenBnScaleHook
from rayaccel.methods.tricks.ghost_bn import GhostBnHook
from rayaccel.methods.tricks.init import DiracInitHook
from rayaccel.methods.tricks.whitening import WhiteningHook
from rayaccel.methods.tricks.worker_augment import WorkerAugmentHook

Rule = Callable[[list[Hook]], list[Hook]]


def _of(hooks: list[Hook], kind: type) -> list[Hook]:
    return [hook for hook in hooks if isinstance(hook, kind)]


def _others(hooks: list[Hook], *kinds: type) -> list[Hook]:
    return [hook for hook in hooks if not isinstance(hook, kinds)]


def _before(hooks: list[Hook], first: type, then: type) -> list[Hook]:
    """`first`'s hooks moved to just before the first of `then`'s (unchanged if already)."""
    moving = _of(hooks, first)
    rest = _others(hooks, first)
    anchor = next((i for i, hook in enumerate(rest) if isinstance(hook, then)), None)
    if not moving or anchor is None or hooks.index(moving[-1]) < hooks.index(rest[anchor]):
        return hooks
    return rest[:anchor] + moving + rest[anchor:]


def _after(hooks: list[Hook], later: type, earlier: tuple[type, ...]) -> list[Hook]:
    """`later`'s hooks moved to just after the last of `earlier`'s (unchanged if already)."""
    moving = _of(hooks, later)
    rest = _others(hooks, later)
    anchor = max((i for i, hook in enumerate(rest) if isinstance(hook, earlier)), default=None)
    if not moving or anchor is None or hooks.index(moving[0]) > hooks.index(rest[anchor]):
        return hooks
    return rest[: anchor + 1] + moving + rest[anchor + 1 :]


def augmentation_first(hooks: list[Hook]) -> list[Hook]:
    """Worker-side crops, flips and cutout come first: a uint8 replay buffer then stores
    augmented pixels, exactly as Ray Data's pipeline would have delivered them."""
    return _of(hooks, WorkerAugmentHook) + _others(hooks, WorkerAugmentHook)


def lowpass_before_replay(hooks: list[Hook]) -> list[Hook]:
    """The low-frequency crop runs before replay: an fp16 buffer stores cropped inputs, and a
    uint8 buffer's replayed pixels are cropped together with the fresh ones."""
    return _before(hooks, LowPassCropHook, ReplayHook)


def mixing_after_replay(hooks: list[Hook]) -> list[Hook]:
    """Mixup and cutmix (the `mixup:` section's and progressive learning's) run after the
    low-frequency crop and replay, on the assembled batch, so replayed samples meet new
    partners instead of being stored mixed."""
    return _after(hooks, (MixupHook, RegularisationHook), (LowPassCropHook, ReplayHook))


# The myrtle.ai recipe's order of its model transforms.
_MODEL_TRANSFORMS = (DiracInitHook, WhiteningHook, GhostBnHook, FrozenBnScaleHook)


def model_transforms_in_recipe_order(hooks: list[Hook]) -> list[Hook]:
    """Dirac init, then the whitening conv, then ghost BN, then the frozen BN scale.

    The whitening conv's filters are computed from data and must not be Dirac-initialised,
    so it comes after the init; ghost BN and the frozen scale commute (`freeze_bn_scale` also
    freezes ghost BNs). The transforms keep the slot of the first of them.
    """
    transforms = sorted(
        (hook for hook in hooks if isinstance(hook, _MODEL_TRANSFORMS)),
        key=lambda hook: next(
            i for i, kind in enumerate(_MODEL_TRANSFORMS) if isinstance(hook, kind)
        ),
    )
    if not transforms:
        return hooks
    slot = next(i for i, hook in enumerate(hooks) if isinstance(hook, _MODEL_TRANSFORMS))
    rest = _others(hooks, *_MODEL_TRANSFORMS)
    return rest[:slot] + transforms + rest[slot:]


def agvm_splits_the_final_groups(hooks: list[Hook]) -> list[Hook]:
    """AGVM splits the optimizer's groups by component after every other method made its own
    groups (frozen-BN biases), so each group ends up with exactly one multiplier."""
    return _others(hooks, AgvmHook) + _of(hooks, AgvmHook) if _of(hooks, AgvmHook) else hooks


def infobatch_last(hooks: list[Hook]) -> list[Hook]:
    """InfoBatch comes last: it records the losses of exactly the samples trained (replayed
    ones included, each with the weight it arrived with) and weights the final losses."""
    return _others(hooks, InfoBatchHook) + _of(hooks, InfoBatchHook)


RULES: tuple[Rule, ...] = (
    augmentation_first,
    lowpass_before_replay,
    mixing_after_replay,
    model_transforms_in_recipe_order,
    agvm_splits_the_final_groups,
    infobatch_last,
)


def order_hooks(hooks: Sequence[Hook]) -> list[Hook]:
    """The hooks in the order every rule of `RULES` asks for."""
    ordered = list(hooks)
    for rule in RULES:
        ordered = rule(ordered)
    return ordered


def build_hooks(
    methods: Sequence[tuple[str, Any]],
    context: WorkerContext,
    *,
    data_hooks: Sequence[Hook] = (),
) -> MethodHooks:
    """The run's hooks: each method's (`hooks_for(settings, context)`) and the worker-side
    augmentation's, in the order of the rules.

    Args:
        methods: `(method name, settings)` pairs, as the worker spec carries them.
        context: What the hook factories may use on this worker.
        data_hooks: Hooks of the data pipeline on the worker (crops, flips, cutout).
    """
    hooks = list(data_hooks)
    for name, settings in methods:
        hooks.extend(method_spec(name).hook_factory()(settings, context))
    return MethodHooks(order_hooks(hooks))
