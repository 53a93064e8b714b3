"""Tests of frozen BN scale and the BN-bias optimizer groups (lr x64, wd /64)."""

import pytest
import torch
from torch import nn

from rayaccel.methods.tricks.frozen_bn import bn_bias_param_groups, freeze_bn_scale
from rayaccel.methods.tricks.ghost_bn import GhostBatchNorm2d
from rayaccel.optim.build import set_lr


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
