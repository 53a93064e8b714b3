"""Mixup/CutMix: timm's targets and images exactly, label smoothing applied once, the
soft-target loss against timm's, the off switch, and the section's errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_config import BASE_JOB
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from rayaccel.config import ConfigError, parse_job, resolve_data
from rayaccel.methods.base import StepBatch, WorkerContext
from rayaccel.methods.infobatch.hook import InfoBatchHook
from rayaccel.methods.mixup.config import MixupSettings, first_unmixed_epoch
from rayaccel.methods.mixup.hook import MixupHook
from rayaccel.methods.ordering import build_hooks
from rayaccel.methods.random_erasing.hook import RandomErasingHook
from rayaccel.plan import PlanError, make_plan
from rayaccel.train.runner import build_run
from rayaccel.train.task import ClassificationTask

NUM_CLASSES = 10
SMOOTHING = 0.1


def _settings(**changes) -> MixupSettings:
    values = dict(
        mixup_alpha=0.8,
        cutmix_alpha=0.0,
        cutmix_minmax=None,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        correct_lam=True,
        label_smoothing=SMOOTHING,
        num_classes=NUM_CLASSES,
        first_unmixed_epoch=None,
    )
    return MixupSettings(**{**values, **changes})


def _batch(size: int = 8, seed: int = 0) -> StepBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 1, 12, 12, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return StepBatch(images, labels, torch.arange(size))


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


def test_mixed_targets_are_timms_mixup_target_smoothed_once_for_the_drawn_lambda():
    hook = MixupHook(_settings(), seed=3)
    hook.on_epoch_start(2)
    batch = _batch()
    images, labels = batch.images.clone(), batch.labels.clone()
    mixed = hook.on_inputs(batch)

    # timm's batch mode draws the apply-or-not choice, then lambda, from NumPy's generator.
    state = np.random.RandomState(_step_seed(3, 2, 1))
    state.rand()  # below prob 1: the batch is mixed
    lam = float(state.beta(0.8, 0.8))
    expected = mixup_target(labels, NUM_CLASSES, lam=lam, smoothing=SMOOTHING)
    assert torch.allclose(mixed.targets, expected)
    assert torch.allclose(mixed.images, images * lam + images.flip(0) * (1 - lam), atol=1e-6)
    # Each row: lam * smoothed one-hot of its label + (1 - lam) * its partner's (row N-1-i).
    off = SMOOTHING / NUM_CLASSES
    own = torch.full((8, NUM_CLASSES), off).scatter_(1, labels[:, None], 1 - SMOOTHING + off)
    assert torch.allclose(mixed.targets, lam * own + (1 - lam) * own.flip(0))
    assert torch.allclose(mixed.targets.sum(1), torch.ones(8))


def test_the_loss_does_not_smooth_soft_targets_a_second_time():
    task = ClassificationTask(NUM_CLASSES)
    logits = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % NUM_CLASSES
    # prob 0: no batch is mixed, the targets are timm's smoothed one-hot labels.
    batch = MixupHook(_settings(prob=0.0), seed=0).on_inputs(
        StepBatch(torch.randn(8, 1, 4, 4), labels, torch.arange(8))
    )
    soft = task.losses(logits, labels, batch.targets, SMOOTHING)
    hard = task.losses(logits, labels, None, SMOOTHING)
    assert torch.allclose(soft, hard, atol=1e-6)
    assert torch.allclose(
        soft, F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    )


def test_per_sample_soft_losses_average_to_timms_soft_target_cross_entropy():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(16, NUM_CLASSES, generator=generator) * 3
    targets = torch.softmax(torch.randn(16, NUM_CLASSES, generator=generator), dim=1)
    losses = ClassificationTask(NUM_CLASSES).losses(logits, torch.zeros(16).long(), targets, 0.1)
    assert losses.shape == (16,)
    assert torch.allclose(losses.mean(), SoftTargetCrossEntropy()(logits, targets))
    assert torch.allclose(losses, -(targets * torch.log_softmax(logits, 1)).sum(1))
    # InfoBatch's weights multiply these per-sample losses (here: rows 0-7 kept at 1/(1-r)).
    weights = torch.cat([torch.full((8,), 2.0), torch.ones(8)])
    batch = StepBatch(torch.zeros(16, 1, 2, 2), torch.zeros(16).long(), torch.arange(16), weights)
    weighted = InfoBatchHook(board=None, rank=0).on_loss(losses, batch)
    assert torch.allclose(weighted, losses * weights)


def test_cutmix_pastes_the_partners_box_and_weights_by_its_area():
    hook = MixupHook(_settings(mixup_alpha=0.0, cutmix_alpha=1.0), seed=0)
    batch = _batch()
    images, labels = batch.images.clone(), batch.labels.clone()
    mixed = hook.on_inputs(batch)
    changed = (mixed.images != images).any(0).any(0)  # the box, in pixels
    from_partner = mixed.images == images.flip(0)
    assert bool(from_partner[..., changed].all())
    lam = 1 - changed.sum().item() / changed.numel()
    expected = mixup_target(labels, NUM_CLASSES, lam=lam, smoothing=SMOOTHING)
    assert torch.allclose(mixed.targets, expected)


def test_an_epoch_resumed_at_its_start_mixes_the_same_and_numpys_generator_is_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = MixupHook(_settings(cutmix_alpha=1.0), seed=5)
    first.on_epoch_start(1)
    outs = [first.on_inputs(_batch(seed=i)) for i in range(3)]
    again = MixupHook(_settings(cutmix_alpha=1.0), seed=5)
    again.on_epoch_start(1)
    for i, out in enumerate(outs):
        repeat = again.on_inputs(_batch(seed=i))
        assert torch.equal(repeat.images, out.images) and torch.equal(repeat.targets, out.targets)
    assert np.array_equal(np.random.get_state()[1], before)


def test_an_odd_batch_mixes_all_but_its_last_sample():
    batch = _batch(size=7)
    last_image, last_label = batch.images[-1].clone(), batch.labels[-1].item()
    mixed = MixupHook(_settings(), seed=0).on_inputs(batch)
    assert torch.equal(mixed.images[-1], last_image)
    expected = mixup_target(torch.tensor([last_label]), NUM_CLASSES, smoothing=SMOOTHING)
    assert torch.allclose(mixed.targets[-1:], expected)
    assert not torch.allclose(mixed.targets[:-1].max(1).values, expected.max())


def test_from_the_first_unmixed_epoch_batches_train_on_their_labels():
    hook = MixupHook(_settings(first_unmixed_epoch=3), seed=0)
    hook.on_epoch_start(2)
    assert hook.on_inputs(_batch()).targets is not None
    assert hook.on_epoch_end() == {"mixup/active": 1.0}
    hook.on_epoch_start(3)
    batch = _batch()
    images = batch.images.clone()
    out = hook.on_inputs(batch)
    assert out.targets is None and torch.equal(out.images, images)
    assert hook.on_epoch_end() == {"mixup/active": 0.0}


def _job(**sections):
    job = copy.deepcopy(BASE_JOB)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(job.get(name), dict):
            job[name] = {**job[name], **value}
        else:
            job[name] = value
    return job


def _problems(**sections) -> list[str]:
    with pytest.raises(ConfigError) as error:
        resolve_data(parse_job(_job(**sections)))
    return [line.removeprefix("job: ") for line in error.value.problems]


def test_off_epoch_counts_equivalent_full_resolution_epochs():
    plain = resolve_data(parse_job(_job(mixup={"off_epoch": 6})))
    plan = make_plan(plain, train_samples=4000)
    assert first_unmixed_epoch(plan, 6) == 6
    assert first_unmixed_epoch(plan, 5.5) == 6  # whole epochs, as timm switches
    assert first_unmixed_epoch(plan, None) is None
    _, spec = build_run(plain)
    assert dict(spec.methods)["mixup"].first_unmixed_epoch == 6
    assert dict(spec.methods)["mixup"].label_smoothing == SMOOTHING
    # A curriculum's 14-px epochs cost a quarter of a 28-px one.
    curriculum = {
        "preset": "custom",
        "budget_epochs": 4,
        "randaugment": False,
        "stages": [{"resolution_px": 14}, {"resolution_px": 28}],
    }
    job = resolve_data(parse_job(_job(curriculum=curriculum, mixup={"off_epoch": 3})))
    plan = make_plan(job, train_samples=4000)
    costs = [s.resolution_px**2 / 28**2 for s in plan.stages for _ in range(s.num_epochs)]
    expected = next(e for e in range(len(costs)) if sum(costs[:e]) >= 3)
    assert first_unmixed_epoch(plan, 3) == expected
    assert expected > 3  # more plan epochs than equivalent ones


def test_the_section_reaches_the_job_with_timms_defaults():
    section = parse_job(_job(mixup={})).mixup
    assert (section.mixup_alpha, section.cutmix_alpha, section.prob) == (1.0, 0.0, 1.0)
    assert (section.switch_prob, section.mode, section.correct_lam) == (0.5, "batch", True)


@pytest.mark.parametrize(
    ("sections", "line"),
    [
        (
            {"mixup": {}, "train": {"global_batch_size": 30}},
            "train.global_batch_size: mixup pairs each sample with another of its worker's "
            "batch and needs an even per-worker batch, but 30 over 2 workers gives 15; use a "
            "multiple of 4",
        ),
        (
            {"mixup": {}, "train": {"global_batch_size": 60}, "scaling": {"num_workers": [2, 4]}},
            "train.global_batch_size: mixup pairs each sample with another of its worker's "
            "batch and needs an even per-worker batch, but 60 over 4 workers gives 15; use a "
            "multiple of 24 (even per worker at every group size scaling.num_workers allows)",
        ),
        (
            {"mixup": {"off_epoch": 8}},
            "mixup.off_epoch: must be < train.epochs=8 (the run's length in equivalent "
            "full-resolution epochs) to switch mixing off, got 8; remove it to mix until the end",
        ),
        (
            {"mixup": {"mixup_alpha": 0}},
            "mixup: mixup_alpha and cutmix_alpha are both 0, so nothing is mixed; set one > 0 "
            "(DeiT's recipe: mixup_alpha 0.8, cutmix_alpha 1.0) or remove the section",
        ),
        (
            {"mixup": {"cutmix_alpha": 1.0, "cutmix_minmax": [0.2, 0.8]}},
            "mixup: cutmix_alpha: not used with cutmix_minmax (timm draws the box sides from "
            "that range and fixes the CutMix alpha at 1); remove one of them",
        ),
        (
            {"mixup": {"cutmix_minmax": [0.8, 0.2]}},
            "mixup.cutmix_minmax: must be [min, max] fractions of the image side with "
            "0 < min < max <= 1, got [0.8, 0.2]",
        ),
        (
            {"mixup": {"mode": "half"}},
            "mixup.mode: must be 'batch', 'pair' or 'elem', got 'half'",
        ),
        (
            {
                "mixup": {},
                "curriculum": {
                    "preset": "progressive",
                    "size_px": [20, 28],
                    "num_stages": 2,
                    "mixup_alpha": [0, 0.2],
                },
            },
            "mixup: the progressive curriculum already mixes (curriculum.mixup_alpha / "
            "cutmix_alpha, or its release's); set those to [0, 0] or remove the mixup section",
        ),
    ],
)
def test_impossible_settings_are_refused_with_the_field_to_change(sections, line):
    assert line in _problems(**sections)


def test_the_120_elastic_batch_is_accepted_and_a_progressive_run_without_alphas_may_mix():
    parse_job(_job(mixup={}, train={"global_batch_size": 120}, scaling={"num_workers": [2, 3]}))
    curriculum = {"preset": "progressive", "size_px": [20, 28], "num_stages": 2}
    assert parse_job(_job(mixup={}, curriculum=curriculum)).mixup is not None


def test_segmentation_data_is_refused():
    job = _job(mixup={})
    job["model"] = {"name": "resnet18"}
    job["data"]["task"] = "segmentation"
    with pytest.raises(ConfigError) as error:
        parse_job(job)
    assert any(
        p.startswith("job: mixup: not supported with segmentation data")
        for p in error.value.problems
    )


def test_an_early_large_batch_stage_with_an_odd_per_worker_batch_is_refused_at_plan():
    # 128 * (28/20)^2 = 250.9 -> 250 over 2 workers: 125 per worker.
    curriculum = {
        "preset": "custom",
        "budget_epochs": 2,
        "randaugment": False,
        "max_global_batch": 512,
        "stages": [{"resolution_px": 20}, {"resolution_px": 28}],
    }
    job = resolve_data(parse_job(_job(curriculum=curriculum, mixup={})))
    with pytest.raises(
        PlanError,
        match=r"stage 0's batch: .*250 over 2 workers gives 125; use a multiple of 4 "
        r"\(e.g. curriculum.max_global_batch: 248 caps",
    ):
        make_plan(job, train_samples=4000)


def test_a_cutmix_range_without_a_whole_pixel_side_is_refused_at_plan():
    job = resolve_data(parse_job(_job(mixup={"cutmix_minmax": [0.2, 0.21]})))
    with pytest.raises(PlanError, match=r"mixup.cutmix_minmax: at stage 0's 28 px it allows no"):
        make_plan(job, train_samples=4000)


def test_random_erasing_runs_before_mixing_as_in_timms_data_path():
    job = resolve_data(parse_job(_job(mixup={}, random_erasing={})))
    _, spec = build_run(job)
    context = WorkerContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        seed=0,
        num_classes=NUM_CLASSES,
        optimizer_name="sgd",
        resources={},
        training_images=None,
    )
    hooks = build_hooks(spec.methods, context).hooks
    assert [type(hook) for hook in hooks] == [RandomErasingHook, MixupHook]
