"""Tests for rayaccel.optim.build and rayaccel.train.schedules."""

import math

import pytest
import torch
from torch import nn

from rayaccel.core.schedules import lr_multiplier, piecewise_linear, warmup_cosine
from rayaccel.models import ResNet9
from rayaccel.optim.build import build_optimizer, param_groups, set_lr
from rayaccel.optim.registry import OptimizerHyperparameters


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)
    )


# --- param_groups / build_optimizer / set_lr ---------------------------------------------------


def test_param_groups_split_by_ndim():
    model = ResNet9(num_classes=10, in_chans=3, width_multiplier=0.25)
    decay, no_decay = param_groups(model, weight_decay=5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert decay["lr_scale"] == no_decay["lr_scale"] == 1.0

    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert {id(module.weight), id(module.bias)} <= no_decay_ids
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert id(module.weight) in decay_ids
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])
    assert len(decay_ids) + len(no_decay_ids) == len(list(model.parameters()))


def test_param_groups_skip_frozen_parameters():
    model = _tiny_net()
    model[1].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert all(p is not model[1].weight for group in groups for p in group["params"])


def test_sgd_weight_decay_shrinks_weights_but_not_biases():
    model = _tiny_net()
    optimizer = build_optimizer(
        model, OptimizerHyperparameters(name="sgd", lr=0.1, weight_decay=0.5)
    )
    conv = model[0]
    weight_before, bias_before = conv.weight.detach().clone(), conv.bias.detach().clone()
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    torch.testing.assert_close(conv.bias, bias_before, rtol=0, atol=0)
    # Nesterov SGD, zero gradient: buf = wd*w, step = lr*(wd*w + momentum*buf) = lr*wd*1.9*w.
    torch.testing.assert_close(conv.weight, weight_before * (1 - 0.1 * 0.5 * 1.9))


@pytest.mark.parametrize(
    "name, optimizer_type", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]
)
def test_build_optimizer_sets_initial_lr(name, optimizer_type):
    optimizer = build_optimizer(
        _tiny_net(), OptimizerHyperparameters(name=name, lr=0.2, weight_decay=1e-4)
    )
    assert isinstance(optimizer, optimizer_type)
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:
        assert group["initial_lr"] == group["lr"] == 0.2
    if name == "sgd":
        assert (
            optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "adam"}, "optimizer name"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_build_optimizer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(
            _tiny_net(),
            OptimizerHyperparameters(**{"name": "sgd", "lr": 0.1, "weight_decay": 0.0, **kwargs}),
        )


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_build_optimizer_lars_and_lamb_adapt_all_but_norms_and_biases(name):
    import timm.optim

    optimizer = build_optimizer(
        _tiny_net(), OptimizerHyperparameters(name=name, lr=0.2, weight_decay=1e-4)
    )
    assert isinstance(optimizer, {"lars": timm.optim.Lars, "lamb": timm.optim.Lamb}[name])
    decay, no_decay = optimizer.param_groups
    assert decay["always_adapt"] is True and no_decay["always_adapt"] is False
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert decay["initial_lr"] == 0.2
    if name == "lars":
        assert decay["trust_coeff"] == 0.001 and decay["eps"] == 1e-9
    else:
        assert decay["eps"] == 1e-6


def test_set_lr_scales_the_rate_per_group():
    optimizer = build_optimizer(
        _tiny_net(), OptimizerHyperparameters(name="sgd", lr=0.4, weight_decay=0.0)
    )
    optimizer.param_groups[1]["lr_scale"] = 64.0
    set_lr(optimizer, 0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 6.4])
    set_lr(optimizer, 0.4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.4, 25.6])


def test_set_lr_errors():
    optimizer = build_optimizer(
        _tiny_net(), OptimizerHyperparameters(name="sgd", lr=0.4, weight_decay=0.0)
    )
    with pytest.raises(ValueError, match="learning rate"):
        set_lr(optimizer, -0.1)
    plain = torch.optim.SGD(_tiny_net().parameters(), lr=0.1)
    with pytest.raises(KeyError, match="build_optimizer"):
        set_lr(plain, 0.5)


# --- schedules -----------------------------------------------------------------------------------


COSINE = {"total_epochs": 10.0, "warmup_epochs": 2.0, "final_fraction": 0.1}


def test_warmup_cosine_warmup_values():
    # Linear from exactly 0, as the reference schedules (timm, the EfficientTrain++ release).
    assert warmup_cosine(0.0, **COSINE) == 0.0
    assert warmup_cosine(0.5, **COSINE) == 0.25
    assert warmup_cosine(1.0, **COSINE) == 0.5
    assert warmup_cosine(2.0, **COSINE) == 1.0
    warmup = [warmup_cosine(i * 0.1, **COSINE) for i in range(21)]
    assert all(b > a for a, b in zip(warmup, warmup[1:], strict=False))


def test_warmup_cosine_decay_values():
    assert warmup_cosine(6.0, **COSINE) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint
    assert warmup_cosine(10.0, **COSINE) == pytest.approx(0.1)
    assert warmup_cosine(15.0, **COSINE) == pytest.approx(0.1)  # held after the end
    decay = [warmup_cosine(2.0 + i * 0.08, **COSINE) for i in range(101)]
    assert all(b < a for a, b in zip(decay, decay[1:], strict=False))
    assert warmup_cosine(0.0, total_epochs=5, warmup_epochs=0) == 1.0
    assert warmup_cosine(5.0, total_epochs=5, warmup_epochs=0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "progress, kwargs, message",
    [
        (-0.5, COSINE, "progress_epochs"),
        (math.nan, COSINE, "progress_epochs"),
        (0.0, {"total_epochs": 3, "warmup_epochs": 3}, "warmup_epochs < total_epochs"),
        (0.0, {"total_epochs": 3, "warmup_epochs": -1}, "warmup_epochs"),
        (0.0, {"total_epochs": 3, "warmup_epochs": 1, "final_fraction": 1.5}, "final_fraction"),
    ],
)
def test_warmup_cosine_validation(progress, kwargs, message):
    with pytest.raises(ValueError, match=message):
        warmup_cosine(progress, **kwargs)


TRIANGLE = [(0, 0.0), (5, 1.0), (24, 0.0)]


@pytest.mark.parametrize(
    "progress, expected",
    [(0.0, 0.0), (2.5, 0.5), (5.0, 1.0), (14.5, 0.5), (24.0, 0.0), (30.0, 0.0)],
)
def test_piecewise_linear_interpolates(progress, expected):
    assert piecewise_linear(progress, points=TRIANGLE) == pytest.approx(expected)


def test_piecewise_linear_holds_first_value_before_first_point():
    assert piecewise_linear(1.0, points=[[2, 0.3], [4, 0.7]]) == pytest.approx(0.3)
    assert piecewise_linear(3.0, points=[[2, 0.3], [4, 0.7]]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "points, message",
    [
        ([(0, 1.0)], "at least 2"),
        ("0,1", "at least 2"),
        ([(0, 1.0), (5,)], r"points\[1\] must be a pair"),
        ([(0, 1.0), (5, "x")], r"points\[1\] must be a pair"),
        ([(0, 1.0), (5, math.inf)], r"points\[1\] must be a pair"),
        ([(0, 0.0), (5, 1.0), (5, 0.5)], r"strictly increasing epoch.*points\[2\]"),
        ([(5, 0.0), (1, 1.0)], "strictly increasing"),
        ([(0, 0.0), (5, 2.0)], r"points\[1\] has multiplier 2.0"),
    ],
)
def test_piecewise_linear_validation(points, message):
    with pytest.raises(ValueError, match=message):
        piecewise_linear(1.0, points=points)


def test_lr_multiplier_dispatches_plain_data():
    cosine = {"name": "cosine", **COSINE}
    assert lr_multiplier(6.0, cosine) == warmup_cosine(6.0, **COSINE)
    piecewise = {"name": "piecewise", "points": [[0, 0.0], [5, 1.0], [24, 0.0]]}
    assert lr_multiplier(2.5, piecewise) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"total_epochs": 3, "warmup_epochs": 1}, "'name' must be one of"),
        ({"name": "step", "total_epochs": 3}, "'name' must be one of"),
        ({"name": "cosine", "total_epochs": 3}, r"missing: \['warmup_epochs'\]"),
        (
            {"name": "cosine", "total_epochs": 3, "warmup_epochs": 1, "lr": 0.1},
            r"unexpected: \['lr'\]",
        ),
    ],
)
def test_lr_multiplier_rejects_bad_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        lr_multiplier(0.0, schedule)
