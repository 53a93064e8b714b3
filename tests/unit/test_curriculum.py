"""Tests of the EfficientTrain++ curriculum arithmetic."""

import math

import pytest

from rayaccel.methods.etpp.curriculum import (
    FAMILIES,
    compute_fraction_at,
    compute_ratio,
    etpp_magnitudes,
    etpp_replay_factors,
    etpp_resolutions,
    plan_stages,
)


def plan(resolutions, full_px=224, **overrides):
    """plan_stages with ImageNet-like defaults: 8 workers, batch 256 at lr 0.1."""
    kwargs = dict(
        full_px=full_px,
        budget_epochs=200,
        magnitudes=etpp_magnitudes(len(resolutions)),
        replay_factors=etpp_replay_factors(resolutions, full_px),
        batch_full=256,
        lr_full=0.1,
        max_batch=1024,
        lr_max=0.4,
        num_workers=8,
    )
    kwargs.update(overrides)
    return plan_stages(resolutions, **kwargs)


@pytest.mark.parametrize("family", ["resnet", "swin", "cswin"])
def test_resnet_swin_cswin_preset(family):
    assert etpp_resolutions(family) == [96, 96, 160, 160, 160, 160, 224, 224, 224, 224]


def test_deit_and_convnext_presets():
    assert etpp_resolutions("deit") == [96, 96, 160, 160, 160, 160, 192, 192, 224, 224]
    assert etpp_resolutions("convnext") == [160] * 6 + [224] * 4


def test_card_rule_40_30_30_for_larger_images():
    assert etpp_resolutions("generic", 256) == [96] * 4 + [176] * 3 + [256] * 3
    # A known family at a non-224 size also follows the rule; generic at 224 too.
    assert etpp_resolutions("deit", 384) == [96] * 4 + [240] * 3 + [384] * 3
    assert etpp_resolutions("generic") == [96] * 4 + [160] * 3 + [224] * 3


@pytest.mark.parametrize(
    ("full_px", "expected_low_mid"), [(32, (14, 24)), (28, (12, 20)), (64, (28, 46)), (8, (8, 8))]
)
def test_small_image_variant_scales_the_low_size(full_px, expected_low_mid):
    low_px, mid_px = expected_low_mid
    assert etpp_resolutions("generic", full_px) == [low_px] * 4 + [mid_px] * 3 + [full_px] * 3


def test_resolution_rule_is_continuous_at_224():
    assert etpp_resolutions("generic", 223)[0] == 96 == etpp_resolutions("generic", 225)[0]


def test_etpp_resolutions_rejects_bad_arguments():
    with pytest.raises(ValueError, match="family must be one of") as error:
        etpp_resolutions("vgg")
    assert all(family in str(error.value) for family in FAMILIES)
    with pytest.raises(ValueError, match="full_px"):
        etpp_resolutions("generic", 7)


def test_magnitudes_rise_linearly():
    assert etpp_magnitudes() == [float(k) for k in range(10)]
    assert etpp_magnitudes(4, 9) == [0.0, 3.0, 6.0, 9.0]
    assert etpp_magnitudes(1) == [9.0]
    with pytest.raises(ValueError, match="n_stages"):
        etpp_magnitudes(0)


def test_replay_factors_match_release_and_thresholds():
    assert etpp_replay_factors(etpp_resolutions("resnet"), 224) == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]
    assert etpp_replay_factors(etpp_resolutions("deit"), 224) == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]
    assert etpp_replay_factors(etpp_resolutions("convnext"), 224) == [2] * 6 + [1] * 4
    assert etpp_replay_factors([112, 113, 168, 169], 224) == [4, 2, 2, 1]


def test_data_epochs_follow_equal_compute():
    stages = plan(etpp_resolutions("resnet"))
    assert [s.index for s in stages] == list(range(10))
    assert math.isclose(stages[0].data_epochs, 20 * (224 / 96) ** 2, rel_tol=1e-12)
    assert math.isclose(stages[2].data_epochs, 20 * (224 / 160) ** 2, rel_tol=1e-12)
    assert stages[-1].data_epochs == 20
    assert all(s.compute_share == 0.1 for s in stages)
    assert [s.randaug_magnitude for s in stages] == list(range(10))
    assert [s.replay_factor for s in stages] == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("family", ["resnet", "deit", "convnext"])
def test_compute_ratio_is_budget_over_baseline(family):
    stages = plan(etpp_resolutions(family))
    assert abs(compute_ratio(stages, 300) - 200 / 300) < 1e-9


@pytest.mark.parametrize("full_px", [256, 32, 28])
def test_compute_ratio_for_card_rule_schedules(full_px):
    stages = plan(etpp_resolutions("generic", full_px), full_px=full_px)
    assert abs(compute_ratio(stages, 300) - 200 / 300) < 1e-9
    shares_at_low = sum(
        s.compute_share for s in stages if s.resolution_px == stages[0].resolution_px
    )
    assert math.isclose(shares_at_low, 0.4)


def test_non_square_images_use_the_area_ratio():
    stages = plan([(96, 64), (160, 128), (192, 128)], full_px=(192, 128), replay_factors=[1, 1, 1])
    assert math.isclose(stages[0].data_epochs, 200 / 3 * (192 * 128) / (96 * 64))
    assert abs(compute_ratio(stages, 300) - 200 / 300) < 1e-9
    assert abs(compute_ratio(stages, 300, full_px=(192, 128)) - 200 / 300) < 1e-9


def test_early_large_batch_rounds_down_to_worker_multiple_and_caps():
    stages = plan([96, 160, 224], max_batch=1000)
    # 96 px: 256 * 5.44 = 1393 -> capped at 1000 (a multiple of 8).
    # 160 px: 256 * 1.96 = 501.76 -> 496.
    assert [s.batch_size for s in stages] == [1000, 496, 256]
    assert [s.batch_size for s in plan([96], max_batch=1003, replay_factors=[1])] == [1000]


def test_early_large_batch_is_exact_when_float_would_round_down():
    # 100 * (224 / 160) ** 2 is 195.99999999999997 in floats; the exact batch is 196.
    stages = plan([160], batch_full=100, num_workers=4, replay_factors=[1])
    assert stages[0].batch_size == 196


def test_lr_follows_square_root_rule_with_cap():
    stages = plan([96, 160, 224], lr_max=0.15)
    assert stages[0].batch_size == 1024 and stages[0].lr == 0.15
    assert math.isclose(stages[1].lr, 0.1 * math.sqrt(496 / 256))
    assert stages[2].lr == 0.1


def test_batch_overrides_replace_the_rule():
    stages = plan([96, 160, 224], batch_overrides={0: 2048, 1: 256}, lr_max=0.25)
    assert [s.batch_size for s in stages] == [2048, 256, 256]
    # 0.1 * sqrt(2048 / 256) = 0.283 is above lr_max.
    assert stages[0].lr == 0.25 and stages[1].lr == 0.1
    with pytest.raises(ValueError, match=r"batch_overrides\[1\].*500"):
        plan([96, 160, 224], batch_overrides={1: 500})
    with pytest.raises(ValueError, match="batch_overrides keys"):
        plan([96, 160, 224], batch_overrides={3: 512})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"magnitudes": [0, 1]}, r"magnitudes must have one entry per stage \(3\)"),
        ({"replay_factors": [4, 2, 0]}, r"replay_factors\[2\].*0"),
        ({"budget_epochs": 0}, "budget_epochs.*0"),
        ({"batch_full": 250}, "batch_full.*250"),
        ({"max_batch": 128}, "max_batch.*128"),
        ({"lr_max": 0.05}, "lr_max.*0.05"),
        ({"num_workers": 0}, "num_workers.*0"),
        ({"full_px": 128}, r"resolutions\[1\].*160"),
    ],
)
def test_plan_stages_rejects_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=message):
        plan([96, 160, 224], **overrides)


def test_plan_stages_rejects_replay_factor_above_per_worker_batch():
    with pytest.raises(ValueError, match=r"stage 0: per-worker batch 1 .* replay_factors\[0\] = 4"):
        plan([96, 224], batch_full=64, max_batch=64, num_workers=64)


def test_compute_fraction_is_monotone_from_zero_to_one():
    stages = plan(etpp_resolutions("resnet"))
    fractions = [
        compute_fraction_at(stage.index, stage.data_epochs * t / 4, stages)
        for stage in stages
        for t in range(5)
    ]
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False))
    assert math.isclose(compute_fraction_at(0, stages[0].data_epochs / 2, stages), 0.05)
    # The end of a stage is the start of the next one.
    assert math.isclose(compute_fraction_at(3, stages[3].data_epochs, stages), 0.4)
    assert math.isclose(compute_fraction_at(4, 0.0, stages), 0.4)


def test_compute_fraction_rejects_out_of_range_points():
    stages = plan([96, 224])
    with pytest.raises(ValueError, match="stage_index.*2"):
        compute_fraction_at(2, 0.0, stages)
    with pytest.raises(ValueError, match="epoch_in_stage.*-1"):
        compute_fraction_at(0, -1.0, stages)
    with pytest.raises(ValueError, match="epoch_in_stage"):
        compute_fraction_at(1, stages[1].data_epochs + 1, stages)
