"""The EfficientTrain++ curriculum through the job config and the plan (no Ray needed)."""

from __future__ import annotations

import math

import pytest
from helpers import REPO_ROOT, shipped_plan

from rayaccel.config import ConfigError, load_job, parse_job
from rayaccel.plan import Plan, format_plan, make_plan


def job_dict(*, image_px=224, workers=8, batch=256, lr=0.1, epochs=300, warmup=5, curriculum=None):
    return {
        "data": {
            "train": "unused",
            "image_size_px": image_px,
            "channels": 3,
            "num_classes": 1000,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "model": {"name": "resnet50"},
        "train": {
            "epochs": epochs,
            "global_batch_size": batch,
            "optimizer": {"name": "sgd", "lr": lr},
            "schedule": {"name": "cosine", "warmup_epochs": warmup},
        },
        "scaling": {"num_workers": workers},
        "run": {"name": "t"},
        "curriculum": curriculum,
    }


def etpp_plan(family="resnet", *, train_samples=1_281_167, **curriculum):
    settings = {"preset": "et++", "family": family, "budget_epochs": 200, **curriculum}
    return make_plan(parse_job(job_dict(curriculum=settings)), train_samples=train_samples)


@pytest.mark.parametrize(
    ("family", "resolutions"),
    [
        ("resnet", [96, 96, 160, 160, 160, 160, 224, 224, 224, 224]),
        ("deit", [96, 96, 160, 160, 160, 160, 192, 192, 224, 224]),
        ("convnext", [160] * 6 + [224] * 4),
    ],
)
def test_preset_stages_and_compute_ratio(family, resolutions):
    plan = etpp_plan(family)
    assert [s.resolution_px for s in plan.stages] == resolutions
    assert [s.randaug_magnitude for s in plan.stages] == list(range(10))
    # The release's RandAugment, which changes images at magnitude 0 too.
    assert {s.randaug_impl for s in plan.stages} == {"timm"}
    assert [s.dataset for s in plan.stages] == [f"train_s{i}" for i in range(10)]
    for stage in plan.stages:
        assert math.isclose(stage.planned_data_epochs, 20 * (224 / stage.resolution_px) ** 2)
    assert math.isclose(plan.planned_compute_relative_to_baseline(), 200 / 300)
    # Whole epochs move the actual compute by well under 1% at ImageNet scale.
    assert abs(plan.compute_relative_to_baseline() - 200 / 300) < 0.005
    assert plan.schedule_progress == "compute" and plan.lowpass_mode == "resize"


def test_preset_replay_factors_and_epochs_count_fresh_passes():
    plan = etpp_plan("resnet")
    assert [s.replay_factor for s in plan.stages] == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]
    first = plan.stages[0]
    # 20 * (224/96)^2 = 108.9 trained-sample epochs at R=4 -> about 27 passes over fresh data.
    assert first.num_epochs in (27, 28)
    assert plan.stages[-1].num_epochs == 20
    assert plan.total_epochs == sum(s.num_epochs for s in plan.stages)


def test_small_images_follow_the_40_30_30_rule():
    job = job_dict(image_px=28, workers=2, batch=128, lr=0.2, epochs=30, warmup=1)
    job["curriculum"] = {"budget_epochs": 20}
    plan = make_plan(parse_job(job), train_samples=60_000)
    assert [s.resolution_px for s in plan.stages] == [12] * 4 + [20] * 3 + [28] * 3
    assert math.isclose(plan.planned_compute_relative_to_baseline(), 20 / 30)


def test_early_large_batch_and_sqrt_lr_through_the_plan():
    plan = etpp_plan("resnet", max_global_batch=1000, lr_max=0.15)
    by_px = {s.resolution_px: s for s in plan.stages}
    # 96 px: 256 * (224/96)^2 = 1393 -> capped at 1000 (a multiple of 8 workers).
    assert by_px[96].global_batch == 1000 and by_px[96].per_worker_batch == 125
    # 160 px: 256 * 1.96 = 501.76 -> 496, a multiple of 8.
    assert by_px[160].global_batch == 496
    assert by_px[224].global_batch == 256
    assert by_px[96].peak_lr == 0.15  # 0.1 * sqrt(1000/256) = 0.198, capped
    assert math.isclose(by_px[160].peak_lr, 0.1 * math.sqrt(496 / 256))
    assert by_px[224].peak_lr == 0.1
    # Replay: each worker takes ceil(per_worker / R) fresh samples per step.
    assert by_px[96].fresh_per_worker_batch == 32  # ceil(125 / 4)
    assert by_px[96].steps_per_epoch == (1_281_167 // 8) // 32


def test_without_max_global_batch_the_batch_stays_and_lr_is_uncapped():
    plan = etpp_plan("resnet")
    assert {s.global_batch for s in plan.stages} == {256}
    assert {s.peak_lr for s in plan.stages} == {0.1}


def test_custom_stages_shares_overrides_and_randaugment_off():
    job = job_dict(image_px=28, workers=2, batch=128, lr=0.2, epochs=8, warmup=1)
    job["curriculum"] = {
        "mode": "fft",
        "budget_epochs": 4,
        "randaugment": False,
        "max_global_batch": 512,
        "stages": [
            {"resolution_px": 14, "randaug_magnitude": 3, "share": 2, "replay_factor": 2},
            {"resolution_px": 28, "global_batch_size": 64},
        ],
    }
    plan = make_plan(parse_job(job), train_samples=4000)
    low, full = plan.stages
    assert math.isclose(low.planned_data_epochs, 4 * 2 / 3 * 4)  # share 2/3, (28/14)^2 = 4
    assert math.isclose(full.planned_data_epochs, 4 / 3)
    assert low.randaug_magnitude == full.randaug_magnitude == 0
    # Off, not timm's magnitude 0 (which would still apply AutoContrast, Equalize...).
    assert low.randaug_impl is full.randaug_impl is None
    assert "randaug: off" in format_plan(plan)
    assert (low.global_batch, full.global_batch) == (512, 64)
    assert math.isclose(full.peak_lr, 0.2 * math.sqrt(64 / 128))
    assert plan.lowpass_mode == "fft" and plan.val_dataset(14) == "val"


def test_randaugment_impl_reaches_every_stage_and_the_table():
    timm = etpp_plan()
    torchvision = etpp_plan(randaugment_impl="torchvision")
    assert {s.randaug_impl for s in torchvision.stages} == {"torchvision"}
    assert "rand-m{M}-mstd0.5-inc1" in format_plan(timm)
    assert "torchvision's RandAugment" in format_plan(torchvision)
    with pytest.raises(ConfigError, match="randaugment_impl"):
        etpp_plan(randaugment_impl="kornia")


def test_lr_follows_the_compute_fraction_across_stages():
    plan = etpp_plan("resnet", max_global_batch=1024)
    warmup = 5 / 200
    assert plan.schedule["warmup_epochs"] == warmup
    # Stage boundaries sit at the cumulative compute shares, whatever the step counts.
    boundary = plan.stages[2]
    expected = sum(s.compute_share for s in plan.stages[:2])
    assert math.isclose(plan.compute_fraction_at(boundary.first_epoch, 0), expected)
    multipliers = []
    for stage in plan.stages:
        for epoch in (stage.first_epoch, stage.end_epoch - 1):
            for step in (0, stage.steps_per_epoch // 2, stage.steps_per_epoch):
                fraction = plan.compute_fraction_at(epoch, step)
                multiplier = plan.lr_at(epoch, min(step, stage.steps_per_epoch)) / stage.peak_lr
                multipliers.append((fraction, multiplier))
    multipliers.sort()
    after_warmup = [m for f, m in multipliers if f >= warmup]
    assert all(b <= a + 1e-12 for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    # Cosine on compute: half way through the compute the multiplier is about 0.5.
    middle = min(multipliers, key=lambda fm: abs(fm[0] - (0.5 + warmup / 2)))
    assert abs(middle[1] - 0.5) < 0.05
    last = plan.stages[-1]
    assert plan.lr_at(last.end_epoch - 1, last.steps_per_epoch) < 1e-6


def test_rounding_carries_the_error_and_reports_actual_compute():
    job = job_dict(image_px=28, workers=2, batch=128, lr=0.2, epochs=8, warmup=1)
    job["curriculum"] = {
        "budget_epochs": 5.333,
        "stages": [
            {"resolution_px": 14, "replay_factor": 2},
            {"resolution_px": 20},
            {"resolution_px": 28},
        ],
    }
    plan = make_plan(parse_job(job), train_samples=4000)
    assert [s.num_epochs for s in plan.stages] == [4, 3, 2]
    assert abs(plan.compute_relative_to_baseline() - 2 / 3) < 0.05
    assert math.isclose(sum(s.compute_share for s in plan.stages), 1)
    text = format_plan(plan)
    for column in ("res_px", "randaug", " R ", "batch", "peak_lr", "compute"):
        assert column in text
    assert f"compute {plan.compute_relative_to_baseline():.3f}x of the baseline" in text
    assert "planned 0.667x" in text


def test_plan_round_trips_through_a_dict():
    plan = etpp_plan("deit", max_global_batch=1024)
    assert Plan.from_dict(plan.to_dict()) == plan


def test_without_curriculum_the_plan_is_one_full_resolution_stage():
    job = job_dict(image_px=28, workers=2, batch=128, lr=0.2, epochs=8, warmup=1)
    plan = make_plan(parse_job(job), train_samples=4000)
    (stage,) = plan.stages
    assert (stage.dataset, stage.replay_factor, stage.resolution_px) == ("train", 1, 28)
    assert plan.schedule_progress == "epochs" and plan.lowpass_mode is None
    assert plan.schedule == {
        "name": "cosine",
        "warmup_epochs": 1.0,
        "final_fraction": 0.0,
        "total_epochs": 8,
    }
    assert stage.fresh_per_worker_batch == stage.per_worker_batch == 64
    assert "epoch stage res_px" in format_plan(plan)


@pytest.mark.parametrize(
    ("curriculum", "message"),
    [
        (
            {"budget_epochs": 4, "stages": [{"resolution_px": 32}]},
            "curriculum.stages.0.resolution_px: must be <= data.image_size_px=28, got 32",
        ),
        (
            {"budget_epochs": 4, "stages": [{"resolution_px": 14, "replay_factor": 8}]},
            "curriculum.stages.0.replay_factor: needs a per-worker batch >= 8",
        ),
        (
            {"budget_epochs": 4, "stages": [{"resolution_px": 14, "global_batch_size": 5}]},
            "curriculum.stages.0.global_batch_size: must be a multiple of scaling.num_workers=2",
        ),
        (
            {"budget_epochs": 4, "preset": "ours"},
            "curriculum.preset: must be 'et++', 'custom' or 'progressive'",
        ),
        ({"budget_epochs": 4, "family": "vgg"}, "curriculum.family"),
        ({"budget_epochs": 4, "max_global_batch": 4}, "curriculum.max_global_batch: must be >="),
        ({"budget_epochs": 4, "lr_max": 0.1}, "curriculum.lr_max: must be >= train.optimizer.lr"),
        ({"budget_epochs": 0.5}, "train.schedule.warmup_epochs: counts equivalent full-res"),
        ({"budget_epochs": 4, "mode": "dct"}, "curriculum.mode"),
        ({"budget_epochs": 4, "replay": {"dtype": "fp32"}}, "curriculum.replay.dtype"),
        (
            {"budget_epochs": 4, "stages": [{"resolution_px": 14, "size": 3}]},
            "curriculum.stages.0.size: unknown key; allowed: resolution_px",
        ),
    ],
)
def test_impossible_curricula_name_their_yaml_path(curriculum, message):
    job = job_dict(
        image_px=28, workers=2, batch=8, lr=0.2, epochs=8, warmup=1, curriculum=curriculum
    )
    with pytest.raises(ConfigError) as error:
        parse_job(job)
    assert any(message in line for line in error.value.problems), error.value.problems


def test_preset_replay_needs_room_in_the_per_worker_batch():
    job = job_dict(image_px=224, workers=8, batch=16, curriculum={"budget_epochs": 200})
    with pytest.raises(ConfigError, match="replays stage 0 4x, which needs a per-worker batch"):
        parse_job(job)


def test_piecewise_schedules_are_refused_with_a_curriculum():
    job = job_dict(curriculum={"budget_epochs": 200})
    job["train"]["schedule"] = {"name": "piecewise", "points": [[0, 0.1], [300, 0.0]]}
    with pytest.raises(ConfigError, match="train.schedule: a curriculum drives warmup"):
        parse_job(job)


@pytest.mark.parametrize(
    ("name", "compute_ratio"),
    [
        ("imagenet-resnet50-etpp.yaml", 200 / 300),
        ("imagenet-deit-s-etpp.yaml", 200 / 300),
        ("fashion-mnist-etpp.yaml", None),
        # whole epochs: 10 at 24 px, 7 at 28 px
        ("fashion-mnist-etpp-device.yaml", (10 * (24 / 28) ** 2 + 7) / 24),
        ("quickstart-etpp.yaml", None),
    ],
)
def test_shipped_curriculum_jobs_plan(name, compute_ratio):
    assert load_job(REPO_ROOT / "jobs" / name, check_paths=False).curriculum is not None
    plan = shipped_plan(REPO_ROOT / "jobs" / name)  # from the job's data.card or fixture
    assert plan.stages[-1].resolution_px == plan.full_resolution_px
    if compute_ratio is not None:
        assert abs(plan.compute_relative_to_baseline() - compute_ratio) < 0.005
    else:
        assert plan.compute_relative_to_baseline() < 0.8


def test_vision_transformers_must_follow_the_resolution():
    job = job_dict(curriculum={"budget_epochs": 200})
    job["model"] = {"name": "deit_small_patch16_224"}
    with pytest.raises(ConfigError, match="model.kwargs.dynamic_img_size"):
        parse_job(job)
    job["model"]["kwargs"] = {"dynamic_img_size": True}
    assert parse_job(job).curriculum.family == "generic"
