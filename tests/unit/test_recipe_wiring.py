"""The fast-training tricks and device data through the job: validation, settings, model,
optimizer and hooks, as the loop builds them (no Ray needed)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from helpers import FIXTURE_TEST, FIXTURE_TRAIN, REPO_ROOT
from torch import nn

from rayaccel.config import ConfigError, parse_job, resolve_data
from rayaccel.data.device import load_device_dataset, worker_rows
from rayaccel.data.pipeline import DecodeSpec
from rayaccel.methods.base import MethodHooks, StepBatch, WorkerContext
from rayaccel.methods.tricks.config import (
    DiracInitSettings,
    EmaSettings,
    FrozenBnScaleSettings,
    GhostBnSettings,
    LookaheadSettings,
    TtaSettings,
    WhiteningSettings,
)
from rayaccel.methods.tricks.ema import EmaHook
from rayaccel.methods.tricks.ghost_bn import GhostBatchNorm2d
from rayaccel.methods.tricks.tta import TtaHook
from rayaccel.methods.tricks.whitening import WhiteningHook
from rayaccel.methods.tricks.worker_augment import WorkerAugmentHook
from rayaccel.models import build_model
from rayaccel.optim.lookahead import Lookahead
from rayaccel.train.loop import setup_hooks, setup_optimizer, training_images
from rayaccel.train.runner import build_run
from rayaccel.train.spec import WorkerAugmentSpec

FAST_JOB = yaml.safe_load((REPO_ROOT / "jobs" / "fashion-mnist-fast.yaml").read_text())
FAST_JOB["data"].update(train=str(FIXTURE_TRAIN), val=str(FIXTURE_TEST))
SPEC = DecodeSpec(image_size_px=28, channels=1, num_classes=10, on_bad_row="fail")


def _job(changes: dict | None = None, *, resolve: bool = True):
    raw = copy.deepcopy(FAST_JOB)
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    job = parse_job(raw, source="fast.yaml")
    return resolve_data(job, source="fast.yaml") if resolve else job


def _context(spec) -> WorkerContext:
    """A worker's context as the trainer makes it (rank 0 of 2, on the CPU)."""
    return WorkerContext(
        rank=0,
        world_size=2,
        device=torch.device("cpu"),
        seed=spec.loop.seed,
        num_classes=spec.model.num_classes,
        optimizer_name=spec.optimizer.name,
        resources={},
        training_images=lambda count: training_images(spec.data, count),
    )


def _problems(changes: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _job(changes)
    return caught.value.problems


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"tricks.ema.every_steps": 0},
            "fast.yaml: tricks.ema.every_steps: must be >= 1, got 0",
        ),
        (
            {"tricks.ghost_bn.virtual_batch_size": 48},
            "fast.yaml: tricks.ghost_bn.virtual_batch_size: must divide the per-worker batch "
            "128 (train.global_batch_size over scaling.num_workers), got 48",
        ),
        (
            {"model": {"name": "resnet18"}},
            "fast.yaml: tricks.whitening: needs a model whose first layer is a 3x3 stride-1 conv "
            "(resnet9); resnet18 is not supported",
        ),
        (
            {"data.augment.horizontal_flip": False},
            "fast.yaml: tricks.alternating_flip: alternates horizontal flips; set "
            "data.augment.horizontal_flip: true",
        ),
        (
            {"tricks.whitening.patch_size": 4},
            "fast.yaml: tricks.whitening.patch_size: must be odd, got 4",
        ),
        (
            {"tricks.tta.translate_px": 28},
            "fast.yaml: tricks.tta.translate_px: must be < data.image_size_px=28, got 28",
        ),
        ({"tricks.lookahead.alpha": 0}, "fast.yaml: tricks.lookahead.alpha: must be > 0, got 0"),
        ({"data.mode": "gpu"}, "fast.yaml: data.mode: must be 'ray' or 'device', got 'gpu'"),
        (
            {
                "curriculum": {"preset": "et++", "budget_epochs": 4},
                "train.schedule": {"name": "cosine"},
            },
            "fast.yaml: curriculum.randaugment: the RandAugment ramp runs in the Ray Data "
            "pipeline; with data.mode: device set it to false (crops, flips and cutout run on "
            "the device), or use data.mode: ray",
        ),
    ],
)
def test_bad_trick_settings_name_their_field(changes, line):
    assert line in _problems(changes)


def test_unknown_trick_lists_the_allowed_ones():
    (line,) = _problems({"tricks.mixup": True})
    assert line == (
        "fast.yaml: tricks.mixup: unknown key; allowed: ema, tta, ghost_bn, frozen_bn_scale, "
        "whitening, dirac_init, alternating_flip, lookahead"
    )


def test_fast_job_spec_is_plain_and_complete():
    _, spec = build_run(_job())
    assert spec.data.mode == "device"
    assert spec.data.train == str(FIXTURE_TRAIN)
    assert spec.data.worker_augment == WorkerAugmentSpec(
        crop_padding_px=2, flip="alternating", cutout_px=0, samples_per_choice=1
    )
    assert dict(spec.methods) == {
        "ema": EmaSettings(momentum=0.99, every_steps=5, warmup="tensorflow"),
        "tta": TtaSettings(flip=True, translate_px=0),
        "ghost_bn": GhostBnSettings(virtual_batch_size=32),
        "frozen_bn_scale": FrozenBnScaleSettings(
            scale=1.0, bias_lr_multiplier=64.0, bias_wd_divisor=64.0
        ),
        "whitening": WhiteningSettings(patch_size=3, eps=0.01, sample_images=5000),
        "dirac_init": DiracInitSettings(),
        "lookahead": LookaheadSettings(k=5, alpha=0.5),
    }
    assert spec.model.kwargs["activation"] == "celu"
    assert spec.model.kwargs["pool_before_activation"] is True


def test_ray_mode_keeps_crops_in_ray_data_and_moves_only_alternating_flips():
    job = _job({"data.mode": "ray", "data.augment.cutout_px": 6})
    _, spec = build_run(job)
    assert spec.data.worker_augment == WorkerAugmentSpec(
        crop_padding_px=0, flip="alternating", cutout_px=6, samples_per_choice=1
    )
    plain = _job({"data.mode": "ray", "tricks": {}})
    assert build_run(plain)[1].data.worker_augment is None


def test_the_model_gets_every_trick_and_the_optimizer_its_groups():
    _, spec = build_run(_job())
    torch.manual_seed(0)
    hooks = setup_hooks(spec, _context(spec))
    model = build_model(spec.model.name, num_classes=10, in_chans=1, **spec.model.kwargs)
    original_conv = model.layer1[0][0]
    model = hooks.transform_model(model)  # what `setup_model` does after building it
    whiten, mix = model.prep[0]
    assert whiten.weight.shape == (9, 1, 3, 3) and not whiten.weight.requires_grad
    assert mix.kernel_size == (1, 1) and mix.out_channels == 16
    # Dirac: the first in_channels filters of a qualifying conv are identities.
    assert model.layer1[0][0] is original_conv
    identity = torch.zeros(3, 3)
    identity[1, 1] = 1
    assert torch.equal(original_conv.weight[0, 0], identity)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, GhostBatchNorm2d) for m in norms)
    assert all(m.virtual_batch_size == 32 and not m.weight.requires_grad for m in norms)
    assert all(torch.all(m.weight == 1) for m in norms)

    optimizer = setup_optimizer(spec.optimizer, model, hooks)
    assert isinstance(optimizer, Lookahead) and optimizer.k == 5
    scales = {g["lr_scale"]: g for g in optimizer.param_groups if g["params"]}
    bn_biases = {id(m.bias) for m in norms}
    assert {id(p) for p in scales[64.0]["params"]} == bn_biases
    assert scales[64.0]["weight_decay"] == pytest.approx(5e-4 / 64)
    # The whitened model still trains: one step moves the loss.
    images = torch.rand(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_whitening_decorrelates_the_training_patches():
    _, spec = build_run(_job())
    images = training_images(spec.data, 500)
    model = build_model("resnet9", num_classes=10, in_chans=1, width_multiplier=0.25)
    hook = WhiteningHook(
        patch_size=3, eps=1e-2, sample_images=500, training_images=lambda n: images[:n]
    )
    hook.transform_model(model)
    whiten = model.prep[0][0]
    with torch.no_grad():
        out = nn.functional.conv2d(images, whiten.weight)  # interior patches only
    channels = out.transpose(0, 1).reshape(9, -1)
    covariance = torch.cov(channels)
    off_diagonal = covariance - torch.diag(torch.diag(covariance))
    assert off_diagonal.abs().max() < 0.05
    assert torch.diag(covariance).max() < 1.0 + 1e-3


def test_device_data_is_disjoint_equal_and_reshuffled_every_epoch():
    parts = [
        load_device_dataset(
            str(FIXTURE_TRAIN),
            SPEC,
            rank=rank,
            world_size=3,
            device=torch.device("cpu"),
            train=True,
            shuffle_seed=rank,
        )
        for rank in range(3)
    ]
    held = [set(p.tensors["index"].tolist()) for p in parts]
    assert [len(h) for h in held] == [4000 // 3] * 3
    assert not (held[0] & held[1]) and not (held[1] & held[2])
    first, second = (
        torch.cat([b["index"] for b in parts[0].iter_torch_batches(batch_size=100, drop_last=True)])
        for _ in range(2)
    )
    assert len(first) == 1300 and not torch.equal(first, second)
    assert set(first.tolist()) <= held[0]
    val = worker_rows(1000, 2, 3, equal=False)
    assert len(val) == 333 and val[0] == 2


def _flipped_each_epoch(hook: WorkerAugmentHook, dataset, epochs: int) -> dict[int, list[bool]]:
    """Per sample index, whether the hook mirrored it in each epoch (images compared)."""
    tensors = dataset.tensors
    pixels = {int(i): img for i, img in zip(tensors["index"], tensors["image"], strict=True)}
    seen: dict[int, list[bool]] = {}
    for epoch in range(epochs):
        hook.on_epoch_start(epoch)
        for batch in dataset.iter_torch_batches(batch_size=128):
            step = StepBatch(batch["image"].clone(), batch["label"], batch["index"])
            out = hook.on_batch(step).images
            for index, image in zip(batch["index"].tolist(), out, strict=True):
                original = pixels[index]
                if torch.equal(original, original.flip(-1)):
                    continue  # symmetric: a flip is invisible
                assert torch.equal(image, original) or torch.equal(image, original.flip(-1))
                seen.setdefault(index, []).append(torch.equal(image, original.flip(-1)))
    return seen


def test_alternating_flip_mirrors_each_image_exactly_every_other_epoch():
    dataset = load_device_dataset(
        str(FIXTURE_TEST),
        SPEC,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        train=False,
        shuffle_seed=3,
    )
    hook = WorkerAugmentHook(flip="alternating", seed=1, flip_seed=0, device=torch.device("cpu"))
    seen = _flipped_each_epoch(hook, dataset, epochs=4)
    assert len(seen) > 900
    for flips in seen.values():
        assert flips == [flips[0], not flips[0], flips[0], not flips[0]]
    share_flipped_first = sum(f[0] for f in seen.values()) / len(seen)
    assert 0.4 < share_flipped_first < 0.6
    # Random flips, by contrast, repeat the same view in consecutive epochs for some images.
    random_hook = WorkerAugmentHook(flip="random", seed=1, flip_seed=0, device=torch.device("cpu"))
    random_seen = _flipped_each_epoch(random_hook, dataset, epochs=2)
    assert any(f[0] == f[1] for f in random_seen.values())


def test_device_mode_augmentation_crops_flips_and_cuts_out_on_the_worker():
    hook = WorkerAugmentHook(
        crop_padding_px=2,
        flip="random",
        cutout_px=6,
        samples_per_choice=4,
        seed=0,
        flip_seed=0,
        device=torch.device("cpu"),
    )
    hook.on_epoch_start(0)
    images = torch.full((16, 1, 8, 8), 200, dtype=torch.uint8)
    out = hook.on_batch(StepBatch(images.clone(), torch.zeros(16), torch.arange(16))).images
    assert out.dtype == torch.uint8 and out.shape == images.shape
    zeros = (out == 0).flatten(1).sum(1)
    # Cutout zeroes a square (partly off the border) in every image, crops add zero borders.
    assert bool((zeros > 0).all())
    # One choice per group of 4 consecutive samples: identical outputs within a group.
    assert all(torch.equal(out[i], out[i - i % 4]) for i in range(16))
    hook.on_epoch_start(0)
    again = hook.on_batch(StepBatch(images.clone(), torch.zeros(16), torch.arange(16))).images
    assert torch.equal(out, again)  # reseeded from (seed, epoch): a resumed epoch repeats


def test_ema_hook_averages_swaps_for_evaluation_and_checkpoints():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    hooks = MethodHooks([EmaHook(momentum=0.99, every_steps=2, warmup="tensorflow")])
    hooks.attach(model)
    start = model.weight.detach().clone()
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        hooks.after_step()
    live = model.weight.detach().clone()
    # TensorFlow's warm-up momenta (1/10, then 2/11) instead of 0.99: the average left the
    # initial weights.
    expected = 0.1 * start + 0.9 * (start + 2.0)  # update 1 at step 2 (weights +2)
    expected = (2 / 11) * expected + (9 / 11) * (start + 4.0)  # update 2 at step 4 (+4)
    with hooks.evaluation_weights():
        assert torch.allclose(model.weight, expected)
    assert torch.equal(model.weight, live)
    state = hooks.state_dict()["EmaHook"]
    assert state["steps"] == 4 and state["ema"]["num_updates"] == 2
    fresh = EmaHook(momentum=0.99, every_steps=2, warmup="tensorflow")
    fresh.attach(nn.Linear(4, 2))
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.ema.averaged["weight"], expected) and fresh.steps == 4
    assert hooks.on_epoch_end() == {"ema/updates": 2}


def test_tta_evaluation_averages_the_flipped_view():
    from rayaccel.train.loop import evaluate
    from rayaccel.train.task import ClassificationTask

    class Shard:
        def iter_torch_batches(self, *, batch_size, drop_last):
            yield {
                "image": torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4),
                "label": torch.tensor([0, 1]),
                "index": torch.tensor([0, 1]),
                "bad": torch.zeros(2, dtype=torch.uint8),
            }

    class LeftHalf(nn.Module):  # logit 0: left-half mean, logit 1: right-half mean
        def forward(self, x):
            return torch.stack([x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3))], 1)

    mean, std = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    args = (LeftHalf(), Shard(), mean, std, torch.device("cpu"), 2)
    task = ClassificationTask(num_classes=2)
    plain = evaluate(*args, resolution_px=4, task=task)
    predict = MethodHooks([TtaHook(flip=True, translate_px=0)]).predict
    tta = evaluate(*args, resolution_px=4, task=task, predict=predict)
    # Averaged with its mirror, each image's two logits are equal: argmax picks class 0.
    assert plain["acc"] == 0.5 and tta["acc"] == 0.5
    assert tta["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item())
