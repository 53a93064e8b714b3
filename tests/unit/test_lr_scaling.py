"""Tests of the large-batch learning-rate scaling rules and the power-law fit."""

import math

import numpy as np
import pytest

from rayaccel.optim.lr_scaling import (
    LR_RULES,
    fit_power_law,
    linear_warmup_epochs_for,
    scale_lr,
)


@pytest.mark.parametrize(
    ("rule", "alpha", "expected"),
    [
        ("linear", None, 0.4),
        ("sqrt", None, 0.2),
        ("fitted", 0.75, 0.1 * 4**0.75),
        ("fitted", 0.0, 0.1),
        ("none", None, 0.1),
    ],
)
def test_rule_values_at_four_times_the_base_batch(rule, alpha, expected):
    lr = scale_lr(0.1, batch=1024, base_batch=256, rule=rule, alpha=alpha)
    assert lr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("rule", ["linear", "sqrt", "none"])
def test_base_batch_gives_base_lr(rule):
    assert scale_lr(0.3, batch=512, base_batch=512, rule=rule) == pytest.approx(0.3)


def test_smaller_batches_scale_down():
    assert scale_lr(0.8, batch=64, base_batch=256, rule="linear") == pytest.approx(0.2)
    assert scale_lr(0.8, batch=64, base_batch=256, rule="sqrt") == pytest.approx(0.4)


def test_goyal_8k_and_32k_linear_values():
    # Goyal et al.: 0.1 per 256 images -> 3.2 at 8k; LARS-era 32k would need 12.8 uncapped.
    assert scale_lr(0.1, batch=8192, base_batch=256, rule="linear") == pytest.approx(3.2)
    assert scale_lr(0.1, batch=32768, base_batch=256, rule="linear") == pytest.approx(12.8)


def test_cap_applies_only_above_lr_max():
    assert scale_lr(0.1, batch=8192, base_batch=256, rule="linear", lr_max=2.0) == 2.0
    assert scale_lr(0.1, batch=512, base_batch=256, rule="linear", lr_max=2.0) == pytest.approx(0.2)
    assert scale_lr(0.1, batch=4096, base_batch=256, rule="fitted", alpha=0.9, lr_max=1.0) == 1.0


def test_rule_and_alpha_are_validated():
    with pytest.raises(ValueError, match="rule must be one of"):
        scale_lr(0.1, batch=512, base_batch=256, rule="cubic")
    with pytest.raises(ValueError, match="needs a finite alpha"):
        scale_lr(0.1, batch=512, base_batch=256, rule="fitted")
    with pytest.raises(ValueError, match="alpha is only used"):
        scale_lr(0.1, batch=512, base_batch=256, rule="sqrt", alpha=0.5)
    with pytest.raises(ValueError, match="base_lr"):
        scale_lr(0.0, batch=512, base_batch=256, rule="linear")
    with pytest.raises(ValueError, match="batch"):
        scale_lr(0.1, batch=0, base_batch=256, rule="linear")
    with pytest.raises(ValueError, match="lr_max"):
        scale_lr(0.1, batch=512, base_batch=256, rule="linear", lr_max=-1.0)
    assert set(LR_RULES) == {"linear", "sqrt", "fitted", "none"}


@pytest.mark.parametrize(
    ("batch", "expected_epochs"),
    [(128, 1.0), (256, 1.0), (384, 1.0), (512, 1.0), (1024, 2.0), (8192, 5.0), (32768, 7.0)],
)
def test_warmup_grows_by_one_base_warmup_per_doubling(batch, expected_epochs):
    assert linear_warmup_epochs_for(batch, 256, 1.0) == pytest.approx(expected_epochs)


def test_warmup_scales_with_base_and_zero_stays_zero():
    assert linear_warmup_epochs_for(4096, 256, 2.5) == pytest.approx(10.0)
    assert linear_warmup_epochs_for(4096, 256, 0) == 0
    with pytest.raises(ValueError, match="base_warmup_epochs"):
        linear_warmup_epochs_for(4096, 256, -1.0)


def test_fit_recovers_exact_power_law():
    batches = [256, 512, 1024, 4096, 16384]
    best_lrs = [0.05 * (b / 256) ** 0.62 for b in batches]
    lr_base, alpha = fit_power_law(batches, best_lrs, base_batch=256)
    assert lr_base == pytest.approx(0.05, rel=1e-9)
    assert alpha == pytest.approx(0.62, rel=1e-9)
    # lr_base refers to base_batch even when base_batch was not searched.
    lr_base_128, alpha_128 = fit_power_law(batches, best_lrs, base_batch=128)
    assert alpha_128 == pytest.approx(0.62, rel=1e-9)
    assert lr_base_128 == pytest.approx(0.05 * 0.5**0.62, rel=1e-9)
    assert scale_lr(
        lr_base, batch=2048, base_batch=256, rule="fitted", alpha=alpha
    ) == pytest.approx(0.05 * 8**0.62, rel=1e-9)


def test_fit_recovers_alpha_from_noisy_search_results():
    rng = np.random.default_rng(0)
    batches = np.repeat([256, 512, 1024, 2048, 4096, 8192], 4).tolist()
    # A search on a grid spaced by sqrt(2) is off by up to ~20%: multiplicative noise.
    best_lrs = [0.1 * (b / 256) ** 0.5 * math.exp(rng.normal(0, 0.15)) for b in batches]
    lr_base, alpha = fit_power_law(batches, best_lrs, base_batch=256)
    assert alpha == pytest.approx(0.5, abs=0.06)
    assert lr_base == pytest.approx(0.1, rel=0.15)


def test_fit_validates_its_input():
    with pytest.raises(ValueError, match="must align"):
        fit_power_law([256, 512], [0.1], base_batch=256)
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        fit_power_law([256, 256], [0.1, 0.12], base_batch=256)
    with pytest.raises(ValueError, match=r"best_lrs\[1\]"):
        fit_power_law([256, 512], [0.1, 0.0], base_batch=256)
