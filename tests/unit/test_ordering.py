"""The ordering rules between methods' hooks, each on a scrambled list of real hooks."""

from __future__ import annotations

import torch

from rayaccel.methods import ordering
from rayaccel.methods.agvm.hook import AgvmHook
from rayaccel.methods.etpp.lowpass import LowPassCropHook
from rayaccel.methods.etpp.replay import ReplayHook
from rayaccel.methods.infobatch.hook import InfoBatchHook
from rayaccel.methods.mixup.config import MixupSettings
from rayaccel.methods.mixup.hook import MixupHook
from rayaccel.methods.progressive.hook import RegularisationHook
from rayaccel.methods.tricks.ema import EmaHook
from rayaccel.methods.tricks.frozen_bn import FrozenBnScaleHook
from rayaccel.methods.tricks.ghost_bn import GhostBnHook
from rayaccel.methods.tricks.init import DiracInitHook
from rayaccel.methods.tricks.whitening import WhiteningHook
from rayaccel.methods.tricks.worker_augment import WorkerAugmentHook

CPU = torch.device("cpu")


def _hooks() -> dict[str, object]:
    return {
        "augment": WorkerAugmentHook(flip="random", seed=0, flip_seed=0, device=CPU),
        "lowpass": LowPassCropHook("fft"),
        "replay": ReplayHook(capacity_samples=8, dtype=torch.uint8, device=CPU, seed=0),
        "mixup": RegularisationHook(num_classes=10, label_smoothing=0.1, seed=0),
        "timm_mixup": MixupHook(
            MixupSettings(1.0, 1.0, None, 1.0, 0.5, "batch", True, 0.1, 10, None), seed=0
        ),
        "ema": EmaHook(momentum=0.9, every_steps=1, warmup="timm"),
        "dirac": DiracInitHook(),
        "whitening": WhiteningHook(patch_size=3, eps=0.01, sample_images=8, training_images=None),
        "ghost": GhostBnHook(8),
        "frozen": FrozenBnScaleHook(scale=1.0, bias_lr_multiplier=64, bias_wd_divisor=64),
        "agvm": AgvmHook(
            {"backbone": ["*"]},
            optimizer_name="sgd",
            start_step=0,
            interval=1,
            momentum=0.9,
            clip=(0.5, 10),
            eps=1e-6,
        ),
        "infobatch": InfoBatchHook(board=None, rank=0),
    }


def _names(hooks, ordered) -> list[str]:
    by_id = {id(hook): name for name, hook in hooks.items()}
    return [by_id[id(hook)] for hook in ordered]


def _apply(rule, names: list[str]) -> list[str]:
    hooks = _hooks()
    return _names(hooks, rule([hooks[name] for name in names]))


def test_augmentation_first():
    assert _apply(ordering.augmentation_first, ["replay", "ema", "augment"]) == [
        "augment",
        "replay",
        "ema",
    ]


def test_lowpass_before_replay():
    assert _apply(ordering.lowpass_before_replay, ["ema", "replay", "lowpass"]) == [
        "ema",
        "lowpass",
        "replay",
    ]
    assert _apply(ordering.lowpass_before_replay, ["lowpass", "ema", "replay"]) == [
        "lowpass",
        "ema",
        "replay",
    ]


def test_mixing_after_replay_and_the_crop():
    assert _apply(ordering.mixing_after_replay, ["mixup", "lowpass", "replay", "ema"]) == [
        "lowpass",
        "replay",
        "mixup",
        "ema",
    ]
    assert _apply(ordering.mixing_after_replay, ["timm_mixup", "replay", "ema"]) == [
        "replay",
        "timm_mixup",
        "ema",
    ]
    # Already after them: left where it is.
    assert _apply(ordering.mixing_after_replay, ["replay", "ema", "mixup"]) == [
        "replay",
        "ema",
        "mixup",
    ]


def test_model_transforms_in_recipe_order():
    names = ["ema", "frozen", "ghost", "whitening", "dirac", "agvm"]
    assert _apply(ordering.model_transforms_in_recipe_order, names) == [
        "ema",
        "dirac",
        "whitening",
        "ghost",
        "frozen",
        "agvm",
    ]


def test_agvm_splits_the_final_groups():
    assert _apply(ordering.agvm_splits_the_final_groups, ["agvm", "frozen", "ema"]) == [
        "frozen",
        "ema",
        "agvm",
    ]


def test_infobatch_last():
    assert _apply(ordering.infobatch_last, ["infobatch", "replay", "agvm"]) == [
        "replay",
        "agvm",
        "infobatch",
    ]


def test_all_rules_together_give_the_runs_order():
    scrambled = ["infobatch", "agvm", "frozen", "mixup", "ema", "replay", "dirac", "lowpass"]
    scrambled += ["whitening", "augment", "ghost"]
    ordered = _apply(ordering.order_hooks, scrambled)
    assert ordered[0] == "augment" and ordered[-1] == "infobatch"
    assert ordered.index("lowpass") < ordered.index("replay") < ordered.index("mixup")
    transforms = [n for n in ordered if n in ("dirac", "whitening", "ghost", "frozen")]
    assert transforms == ["dirac", "whitening", "ghost", "frozen"]
    assert ordered.index("frozen") < ordered.index("agvm")
