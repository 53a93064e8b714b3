"""LR scaling rules, LARS/LAMB and AGVM through the job config and the plan (no Ray needed)."""

from __future__ import annotations

import math

import pytest
from test_curriculum_plan import job_dict

from rayaccel.config import ConfigError, parse_job
from rayaccel.plan import PlanError, make_plan

SAMPLES = 1_281_167


def _job(*, batch=1024, lr=0.1, scaling=None, curriculum=None, **sections):
    raw = job_dict(batch=batch, lr=lr, workers=8, epochs=90, warmup=2, curriculum=curriculum)
    if scaling is not None:
        raw["train"]["lr_scaling"] = scaling
    raw.update(sections)
    return raw


def _peak_lr(**kwargs) -> float:
    return make_plan(parse_job(_job(**kwargs)), train_samples=SAMPLES).stages[0].peak_lr


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        (None, 0.1),
        ({"rule": "linear", "base_batch": 256}, 0.4),
        ({"rule": "sqrt", "base_batch": 256}, 0.2),
        ({"rule": "fitted", "base_batch": 256, "alpha": 0.75}, 0.1 * 4**0.75),
        ({"rule": "none", "base_batch": 256}, 0.1),
        ({"rule": "linear", "base_batch": 256, "lr_max": 0.3}, 0.3),
    ],
)
def test_rule_sets_the_plans_peak_lr(scaling, expected):
    assert math.isclose(_peak_lr(scaling=scaling), expected)


def test_linear_rule_at_32k_is_capped_and_warmup_grows_per_doubling():
    scaling = {"rule": "linear", "base_batch": 256, "lr_max": 10.0, "scale_warmup": True}
    job = parse_job(_job(batch=32768, scaling=scaling))
    assert math.isclose(job.peak_lr, 10.0)  # 0.1 * 128 = 12.8, capped
    assert math.isclose(job.warmup_epochs, 2 * 7)  # log2(128) doublings x 2 epochs
    plan = make_plan(job, train_samples=SAMPLES)
    assert plan.schedule["warmup_epochs"] == 14
    assert math.isclose(plan.lr_at(7, 0), 10.0 * 0.5, rel_tol=1e-2)  # halfway up the warmup


def test_early_large_batch_stages_follow_the_jobs_rule():
    curriculum = {
        "preset": "custom",
        "budget_epochs": 60,
        "max_global_batch": 4096,
        "stages": [{"resolution_px": 112}, {"resolution_px": 224}],
    }
    scaling = {"rule": "linear", "base_batch": 256}
    plan = make_plan(
        parse_job(_job(batch=1024, scaling=scaling, curriculum=curriculum)), train_samples=SAMPLES
    )
    low, full = plan.stages
    assert full.global_batch == 1024 and math.isclose(full.peak_lr, 0.4)
    # batch_B = 1024 * (224/112)^2 = 4096: the linear rule gives 4x the full-resolution rate.
    assert low.global_batch == 4096 and math.isclose(low.peak_lr, 1.6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train.lr_scaling": {"rule": "fitted", "base_batch": 256}}, "needs alpha"),
        (
            {"train.lr_scaling": {"rule": "sqrt", "base_batch": 256, "alpha": 0.7}},
            "alpha is only used by rule 'fitted'",
        ),
        ({"train.lr_scaling": {"rule": "cubic", "base_batch": 256}}, "train.lr_scaling.rule"),
        ({"train.optimizer.name": "lars", "train.optimizer.trust_coefficient": 0}, "trust_coeff"),
        ({"agvm": {"interval": 0}}, "agvm.interval"),
        ({"agvm": {"components": {"a": ["*"], "b": ["*"]}}}, "catch-all"),
        ({"agvm": {"clip": [2, 10]}}, "agvm.clip"),
        ({"train.global_batch_size": 1032, "scaling.num_workers": 8, "agvm": {}}, "even"),
    ],
)
def test_bad_large_batch_settings_name_their_field(change, message):
    raw = _job()
    for path, value in change.items():
        node = raw
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    with pytest.raises(ConfigError, match=message):
        parse_job(raw)


def test_lr_alpha_and_lr_scaling_together_are_rejected():
    curriculum = {"preset": "et++", "budget_epochs": 60, "lr_alpha": 0.7}
    raw = _job(scaling={"rule": "sqrt", "base_batch": 256}, curriculum=curriculum)
    with pytest.raises(ConfigError, match="curriculum.lr_alpha"):
        parse_job(raw)


def test_agvm_rejects_a_stage_with_an_odd_per_worker_batch():
    curriculum = {
        "preset": "custom",
        "budget_epochs": 60,
        "stages": [{"resolution_px": 112, "global_batch_size": 1800}, {"resolution_px": 224}],
    }
    job = parse_job(_job(curriculum=curriculum, agvm={}))
    with pytest.raises(PlanError, match="agvm: .* stage 0 .* 225"):
        make_plan(job, train_samples=SAMPLES)


def _segmentation(**changes):
    raw = _job(batch=64)
    raw["data"]["task"] = "segmentation"
    raw["model"] = {"name": "resnet18"}
    raw.update(changes)
    return raw


def test_segmentation_jobs_reject_per_image_methods():
    with pytest.raises(ConfigError) as err:
        parse_job(
            _segmentation(
                model={"name": "resnet9"},
                infobatch={},
                tricks={"tta": {}},
                curriculum={"preset": "et++", "budget_epochs": 60},
            )
        )
    text = str(err.value)
    for field in ("model.name", "infobatch", "tricks.tta", "curriculum"):
        assert f"{field}:" in text
    assert parse_job(_segmentation(agvm={})).data.task == "segmentation"


def test_fpn_channels_only_with_segmentation():
    raw = _job()
    raw["data"]["task"] = "classification"
    raw["model"] = {"name": "resnet18", "fpn_channels": 32}
    with pytest.raises(ConfigError, match="model.fpn_channels: only used with segmentation"):
        parse_job(raw)


def test_a_dumped_timm_job_parses_again():
    import yaml

    from rayaccel.config import dump_job

    with_curriculum = _job(
        scaling={"rule": "sqrt", "base_batch": 256},
        curriculum={"preset": "et++", "budget_epochs": 60},
    )
    for raw in (_job(agvm={}), _segmentation(agvm={}), with_curriculum):
        job = parse_job(raw)
        assert parse_job(yaml.safe_load(dump_job(job))) == job
