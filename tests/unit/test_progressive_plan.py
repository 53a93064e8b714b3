"""EfficientNetV2 progressive learning through the job, the plan and the stage hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from helpers import FIXTURE_TEST, FIXTURE_TRAIN, REPO_ROOT, shipped_plan

from rayaccel.config import ConfigError, parse_job, resolve_data
from rayaccel.methods.base import StepBatch
from rayaccel.methods.progressive.hook import RegularisationHook
from rayaccel.models import build_model
from rayaccel.plan import format_plan, make_plan
from rayaccel.train.runner import build_run


def job_dict(curriculum: dict, *, image_px=384, epochs=350, model="efficientnetv2_rw_s") -> dict:
    return {
        "data": {
            "train": "unused",
            "image_size_px": image_px,
            "channels": 3,
            "num_classes": 1000,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "model": {"name": model},
        "train": {
            "epochs": epochs,
            "global_batch_size": 4096,
            "optimizer": {"name": "sgd", "lr": 0.5},
        },
        "scaling": {"num_workers": 8},
        "run": {"name": "t"},
        "curriculum": curriculum,
    }


def stage_values(plan, *fields):
    return [tuple(getattr(s, f) for f in fields) for s in plan.stages]


def test_release_s_stages_move_every_value_linearly():
    plan = make_plan(
        parse_job(job_dict({"preset": "progressive", "release": "s"})),
        train_samples=1_281_167,
    )
    assert plan.curriculum == "progressive" and plan.full_resolution_px == 300
    assert [s.resolution_px for s in plan.stages] == [128, 184, 240, 300]
    assert [s.num_epochs for s in plan.stages] == [87, 87, 88, 88]
    assert [s.first_epoch for s in plan.stages] == [0, 87, 174, 262]
    assert [s.randaug_magnitude for s in plan.stages] == pytest.approx([5, 20 / 3, 25 / 3, 10])
    assert [s.dropout_rate for s in plan.stages] == pytest.approx(
        [0.1, 0.1667, 0.2333, 0.3], abs=1e-4
    )
    assert [s.drop_path_rate for s in plan.stages] == pytest.approx([0.2] * 4)
    assert [s.mixup_alpha for s in plan.stages] == [0.0] * 4
    assert [s.dataset for s in plan.stages] == ["train_s0", "train_s1", "train_s2", "train_s3"]
    # One LR schedule over all epochs, as the plain job.
    assert plan.schedule["total_epochs"] == 350
    assert plan.val_dataset(300) == "val" and plan.val_dataset(184) == "val_184px"


def test_release_l_clips_randaugment_to_timms_maximum_and_overrides_win():
    plan = make_plan(
        parse_job(
            job_dict(
                {"preset": "progressive", "release": "l", "num_stages": 3, "cutmix_alpha": [0, 1]}
            )
        ),
        train_samples=1_281_167,
    )
    # 5 -> 20 over 3 stages is 5, 12.5, 20 in the release's units; rayaccel's scale ends at 10.
    assert [s.randaug_magnitude for s in plan.stages] == [5, 10, 10]
    assert [s.mixup_alpha for s in plan.stages] == [0, 0.25, 0.5]
    assert [s.cutmix_alpha for s in plan.stages] == [0, 0.5, 1]
    assert [s.resolution_px for s in plan.stages] == [128, 256, 384]


def test_custom_progression_on_small_images_and_its_plan_table():
    curriculum = {
        "preset": "progressive",
        "num_stages": 4,
        "size_px": [16, 28],
        "size_multiple_px": 4,
        "randaug_magnitude": [0, 6],
        "mixup_alpha": [0, 0.3],
    }
    job = parse_job(job_dict(curriculum, image_px=28, epochs=8, model="resnet9"))
    plan = make_plan(job, train_samples=4096)
    assert stage_values(plan, "resolution_px", "num_epochs", "randaug_magnitude") == [
        (16, 2, 0),
        (20, 2, 2),
        (24, 2, 4),
        (28, 2, 6),
    ]
    assert [s.mixup_alpha for s in plan.stages] == pytest.approx([0, 0.1, 0.2, 0.3])
    assert [s.dropout_rate for s in plan.stages] == [0.0] * 4
    table = format_plan(plan)
    lines = table.splitlines()
    assert lines[0].split() == [
        "stage", "epochs", "res_px", "randaug", "mixup", "cutmix", "dropout", "drop_path",
        "batch", "steps", "lr_start", "lr_end",
    ]  # fmt: skip
    assert lines[2].split()[:6] == ["1", "2-3", "20", "2", "0.1", "0"]
    assert "final evaluation is at 28px" in table


@pytest.mark.parametrize(
    ("curriculum", "changes", "message"),
    [
        (
            {"size_px": [16, 28], "dropout_rate": [0, 0.2]},
            {"model": "resnet9"},
            "curriculum.dropout_rate: resnet9 has no dropout or drop path to schedule",
        ),
        (
            {"size_px": [16, 32]},
            {"image_px": 28, "model": "resnet9"},
            "curriculum.size_px: stages resize down from data.image_size_px=28; sizes must be "
            "<= 28, got [16, 32]",
        ),
        (
            {"size_px": [16, 28], "num_stages": 4},
            {"image_px": 28, "epochs": 3, "model": "resnet9"},
            "train.epochs: a progressive curriculum of 4 stages needs at least one epoch per "
            "stage, got 3",
        ),
        ({}, {}, "curriculum: size_px: required without a release"),
        ({"release": "xl"}, {}, "curriculum.release: must be 's', 'm' or 'l', got 'xl'"),
        ({"release": "s", "dropout_rate": [0, 1]}, {}, "curriculum.dropout_rate: rates must be"),
        ({"release": "s", "randaug_magnitude": [5, 15]}, {}, "magnitudes must be in [0, 10]"),
    ],
)
def test_impossible_progressions_name_their_field(curriculum, changes, message):
    with pytest.raises(ConfigError) as caught:
        parse_job(job_dict({"preset": "progressive", **curriculum}, **changes))
    assert any(message in line for line in caught.value.problems), caught.value.problems


def test_timm_drop_path_is_built_at_the_largest_rate_and_set_per_stage():
    raw = job_dict({"preset": "progressive", "release": "s"}, model="resnet18")
    raw["model"]["kwargs"] = {"drop_path_rate": 0.1}
    with pytest.raises(ConfigError) as caught:
        parse_job(raw)
    assert any("model.kwargs.drop_path_rate: set by curriculum" in p for p in caught.value.problems)

    curriculum = {
        "preset": "progressive",
        "size_px": [20, 28],
        "num_stages": 2,
        "dropout_rate": [0.1, 0.3],
        "drop_path_rate": [0.0, 0.2],
        "mixup_alpha": [0.0, 0.4],
    }
    raw = yaml.safe_load((REPO_ROOT / "jobs" / "quickstart.yaml").read_text())
    raw["data"].update(train=str(FIXTURE_TRAIN), val=str(FIXTURE_TEST))
    raw.update(model={"name": "resnet18"}, curriculum=curriculum)
    job = resolve_data(parse_job(raw))
    plan, spec = build_run(job)
    assert spec.model.kwargs == {"drop_path_rate": 0.2}
    model = build_model("resnet18", num_classes=10, in_chans=1, **spec.model.kwargs)
    hook = RegularisationHook(num_classes=10, label_smoothing=0.1, seed=0)
    hook.attach(model)
    drop_paths = [m for m in model.modules() if type(m).__name__ == "DropPath"]
    hook.on_stage_start(plan.stages[0])
    assert model.drop_rate == pytest.approx(0.1)
    assert all(m.drop_prob == 0 for m in drop_paths)
    images = torch.randn(8, 1, 20, 20)
    batch = hook.on_inputs(StepBatch(images.clone(), torch.arange(8) % 10, torch.arange(8)))
    assert batch.targets is None and torch.equal(batch.images, images)  # mixup 0 in stage 0

    hook.on_stage_start(plan.stages[1])
    assert model.drop_rate == pytest.approx(0.3)
    assert max(m.drop_prob for m in drop_paths) == pytest.approx(0.2)
    hook.on_epoch_start(4)
    batch = hook.on_inputs(StepBatch(images.clone(), torch.arange(8) % 10, torch.arange(8)))
    assert batch.targets.shape == (8, 10)
    assert torch.allclose(batch.targets.sum(1), torch.ones(8))
    assert not torch.equal(batch.images, images)
    # Reseeded from (seed, epoch): the same epoch mixes the same way after a resume.
    hook.on_epoch_start(4)
    again = hook.on_inputs(StepBatch(images.clone(), torch.arange(8) % 10, torch.arange(8)))
    assert torch.equal(again.images, batch.images)
    assert np.isfinite(batch.images.numpy()).all()


def test_shipped_progressive_job_plans():
    plan = shipped_plan(REPO_ROOT / "jobs" / "imagenet-efficientnetv2-s-progressive.yaml")
    assert [s.resolution_px for s in plan.stages] == [128, 184, 240, 300]
    assert plan.stages[-1].randaug_magnitude == 10
