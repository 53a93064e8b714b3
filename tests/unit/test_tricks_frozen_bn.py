"""Tests of frozen BN scale and the BN-bias optimizer groups (lr x64, wd /64)."""

import pytest
import torch
from test_curriculum_plan import job_dict
from torch import nn

from rayaccel.config import ConfigError, parse_job
from rayaccel.methods.tricks.frozen_bn import bn_bias_param_groups, freeze_bn_scale
from rayaccel.methods.tricks.ghost_bn import GhostBatchNorm2d
from rayaccel.optim.build import build_optimizer, set_lr
from rayaccel.optim.registry import OptimizerHyperparameters


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        GhostBatchNorm2d(4, 2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def ids(params) -> list[int]:
    return [id(param) for param in params]


def test_frozen_scale_is_fixed_and_gets_no_gradient():
    model = make_model()
    assert freeze_bn_scale(model, scale=0.5) == 2
    for norm in (model[1], model[2]):
        assert torch.all(norm.weight == 0.5) and not norm.weight.requires_grad
    model(torch.randn(4, 1, 6, 6)).sum().backward()
    assert model[1].weight.grad is None
    assert model[1].bias.grad is not None


def test_param_groups_split_weights_bn_biases_and_the_rest():
    model = make_model()
    freeze_bn_scale(model)
    weights, bn_biases, no_decay = bn_bias_param_groups(model, 0.1, 5e-4)
    assert ids(weights["params"]) == ids([model[0].weight, model[4].weight])
    assert ids(bn_biases["params"]) == ids([model[1].bias, model[2].bias])
    assert ids(no_decay["params"]) == ids([model[4].bias])
    assert bn_biases["lr"] == pytest.approx(6.4) and bn_biases["lr_scale"] == 64.0
    assert bn_biases["weight_decay"] == pytest.approx(5e-4 / 64)
    assert (weights["lr"], weights["weight_decay"], no_decay["weight_decay"]) == (0.1, 5e-4, 0.0)


def test_sgd_keeps_frozen_scale_and_set_lr_keeps_the_bias_ratio():
    model = make_model()
    freeze_bn_scale(model)
    optimizer = torch.optim.SGD(bn_bias_param_groups(model, 0.1, 5e-4), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 6, 6)).square().sum().backward()
    optimizer.step()
    assert torch.all(model[1].weight == 1.0)
    set_lr(optimizer, 0.05)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 3.2, 0.05])


def test_rejects_non_positive_multiplier():
    with pytest.raises(ValueError, match="bias_lr_multiplier"):
        bn_bias_param_groups(make_model(), 0.1, 5e-4, bias_lr_multiplier=0)


# --- under LARS and LAMB -----------------------------------------------------------------------


def _job_with(optimizer: dict) -> dict:
    raw = job_dict()
    raw["train"]["optimizer"] = optimizer
    raw["tricks"] = {"frozen_bn_scale": {}}
    return raw


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_validate_refuses_the_bn_bias_decay_lars_and_lamb_would_drop(name):
    raw = _job_with({"name": name, "lr": 0.1, "weight_decay": 6.4e-3})
    with pytest.raises(ConfigError) as error:
        parse_job(raw)
    assert str(error.value).count("tricks.frozen_bn_scale:") == 1
    assert f"train.optimizer.name={name} cannot apply" in str(error.value)
    assert "weight decay train.optimizer.weight_decay / bias_wd_divisor = 0.0001" in str(
        error.value
    )


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4},
        {"name": "adamw", "lr": 0.1, "weight_decay": 5e-4},
        {"name": "lars", "lr": 0.1, "weight_decay": 0.0},
        {"name": "lamb", "lr": 0.1, "weight_decay": 0.0},
    ],
)
def test_validate_accepts_what_can_apply_the_bn_bias_settings(optimizer):
    assert parse_job(_job_with(optimizer)).tricks.frozen_bn_scale is not None


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_build_with_the_bias_groups_only_without_decay(name):
    hyper = {"name": name, "lr": 0.1}
    model = make_model()
    freeze_bn_scale(model)
    groups = bn_bias_param_groups(model, 0.1, 6.4e-3)
    with pytest.raises(ValueError, match="param group 1 holds only norm weights and biases"):
        build_optimizer(
            model, OptimizerHyperparameters(**hyper, weight_decay=6.4e-3), groups=groups
        )

    # Without decay the 64x bias rate still applies, as plain Adam/momentum steps on the biases.
    optimizer = build_optimizer(
        model,
        OptimizerHyperparameters(**hyper, weight_decay=0.0),
        groups=bn_bias_param_groups(model, 0.1, 0.0),
    )
    assert [g["always_adapt"] for g in optimizer.param_groups] == [True, False, False]
    set_lr(optimizer, 0.01)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.64, 0.01])
