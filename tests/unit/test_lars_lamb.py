"""LARS and LAMB, which are timm's: built through the registry, they take the steps rayaccel's
own implementations took, checked against plain tensor math and against values those
implementations produced on the same inputs."""

import copy
import math

import pytest
import timm.optim
import torch
from torch import nn

from rayaccel.optim.build import adapt_all_but_norms_and_biases, build_optimizer, param_groups
from rayaccel.optim.registry import OptimizerHyperparameters, optimizer_spec


def _tiny_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    # No bias in front of the BN: a bias there has a gradient of rounding noise only, which
    # Adam-type updates blow up to a full step of random sign, so no two implementations agree.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(dtype)


def _set_grads(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    dtype = next(model.parameters()).dtype
    inputs = torch.randn(8, 3, generator=generator, dtype=dtype)
    targets = torch.randn(8, 2, generator=generator, dtype=dtype)
    model.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(inputs), targets).backward()


def _norm(tensor: torch.Tensor) -> float:
    return math.sqrt(float((tensor.double() ** 2).sum()))


def _build(model: nn.Module, name: str, **hyperparameters) -> torch.optim.Optimizer:
    return build_optimizer(model, OptimizerHyperparameters(name=name, **hyperparameters))


def _train(optimizer: torch.optim.Optimizer, model: nn.Module, steps: int):
    grads_per_step = []
    for step in range(steps):
        _set_grads(model, step)
        grads_per_step.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return grads_per_step


# --- the registry builds timm's classes --------------------------------------------------------


@pytest.mark.parametrize(("name", "timm_class"), [("lars", "Lars"), ("lamb", "Lamb")])
def test_registry_builds_timms_class(name, timm_class):
    assert optimizer_spec(name).resolve() is getattr(timm.optim, timm_class)
    optimizer = _build(_tiny_model(), name, lr=0.1, weight_decay=0.01)
    assert type(optimizer) is getattr(timm.optim, timm_class)


def test_lamb_does_not_clip_and_lars_keeps_its_eps():
    lamb = _build(_tiny_model(), "lamb", lr=0.1, weight_decay=0.01)
    assert lamb.defaults["max_grad_norm"] is None  # timm's default would clip at 1.0
    assert lamb.param_groups[0]["eps"] == 1e-6
    lars = _build(_tiny_model(), "lars", lr=0.1, weight_decay=0.01)
    assert lars.param_groups[0]["eps"] == 1e-9  # timm's default is 1e-8


def test_norm_and_bias_groups_get_no_trust_ratio_others_always_do():
    decay, no_decay = adapt_all_but_norms_and_biases(param_groups(_tiny_model(), 0.0))
    assert decay["always_adapt"] is True and no_decay["always_adapt"] is False
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3]), torch.Size([2, 4])]


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_a_decayed_group_of_norms_and_biases_is_refused(name):
    model = _tiny_model()
    groups = [
        {"params": [model[0].weight, model[2].weight], "weight_decay": 0.01, "lr_scale": 1.0},
        {"params": [model[1].bias], "weight_decay": 0.01 / 64, "lr_scale": 64.0},
    ]
    with pytest.raises(ValueError, match="param group 1 holds only norm weights and biases"):
        build_optimizer(
            model, OptimizerHyperparameters(name=name, lr=0.1, weight_decay=0.01), groups=groups
        )


# --- LARS --------------------------------------------------------------------------------------


def _lars_reference(weights, grads_per_step, *, lr, momentum, wd, eta, excluded, nesterov):
    """Plain-math LARS: list of weight tensors, one grad list per step; returns final weights."""
    weights = [w.clone().double() for w in weights]
    buffers = [None] * len(weights)
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            g = g.double()
            if not excluded[i]:
                w_norm, g_norm = _norm(w), _norm(g)
                ratio = eta * w_norm / (g_norm + wd * w_norm + 1e-9)
                g = ratio * (g + wd * w)
            buffers[i] = g.clone() if buffers[i] is None else momentum * buffers[i] + g
            step = g + momentum * buffers[i] if nesterov else buffers[i]
            weights[i] = w - lr * step
    return weights


@pytest.mark.parametrize("weight_decay", [5e-4, 0.0])
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_steps_match_hand_computation(nesterov, weight_decay):
    model = _tiny_model()
    initial = [p.detach().clone() for p in model.parameters()]
    # A large trust coefficient so the trust ratio visibly matters.
    optimizer = _build(
        model,
        "lars",
        lr=0.5,
        weight_decay=weight_decay,
        momentum=0.9,
        nesterov=nesterov,
        trust_coefficient=0.02,
    )
    grads_per_step = _train(optimizer, model, 2)
    excluded = [p.ndim <= 1 for p in model.parameters()]
    assert excluded == [False, True, True, False, True]
    expected = _lars_reference(
        initial,
        grads_per_step,
        lr=0.5,
        momentum=0.9,
        wd=weight_decay,
        eta=0.02,
        excluded=excluded,
        nesterov=nesterov,
    )
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach().double(), want, rtol=1e-5, atol=1e-7)


def test_lars_zero_weight_uses_ratio_one():
    model = _tiny_model()
    with torch.no_grad():
        model[2].weight.zero_()  # a zeroed head still moves
    optimizer = _build(model, "lars", lr=0.1, weight_decay=0.0, momentum=0.0)
    _set_grads(model, 0)
    grad = model[2].weight.grad.clone()
    optimizer.step()
    torch.testing.assert_close(model[2].weight.detach(), -0.1 * grad)


# --- LAMB --------------------------------------------------------------------------------------


def _lamb_reference(weights, grads_per_step, *, lr, betas, eps, wd, excluded, bias_correction):
    weights = [w.clone().double() for w in weights]
    first = [torch.zeros_like(w) for w in weights]
    second = [torch.zeros_like(w) for w in weights]
    beta1, beta2 = betas
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            g = g.double()
            first[i] = beta1 * first[i] + (1 - beta1) * g
            second[i] = beta2 * second[i] + (1 - beta2) * g * g
            c1, c2 = (1 - beta1**t, 1 - beta2**t) if bias_correction else (1.0, 1.0)
            r = (first[i] / c1) / (torch.sqrt(second[i] / c2) + eps)
            if not excluded[i]:
                r = r + wd * w
                w_norm, r_norm = _norm(w), _norm(r)
                r = r * (w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0)
            weights[i] = w - lr * r
    return weights


@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_steps_match_hand_computation(bias_correction, weight_decay):
    model = _tiny_model(torch.float64)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = _build(model, "lamb", lr=0.05, weight_decay=weight_decay, betas=(0.8, 0.95))
    for group in optimizer.param_groups:
        group["bias_correction"] = bias_correction
    grads_per_step = _train(optimizer, model, 3)
    expected = _lamb_reference(
        initial,
        grads_per_step,
        lr=0.05,
        betas=(0.8, 0.95),
        eps=1e-6,
        wd=weight_decay,
        excluded=[False, True, True, False, True],
        bias_correction=bias_correction,
    )
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach(), want, rtol=1e-12, atol=1e-12)


# First rows of the first weight after 20 steps in float64, as rayaccel's own LARS and LAMB
# computed them (lr 0.5, momentum 0.9, Nesterov, eta 0.02, decay 0.01; lr 0.05, betas
# (0.8, 0.95), decay 0.01) before they were replaced by timm's.
_BEFORE = {
    "lars": [0.06605890111364346, 0.26653162613724174, -0.4801040572177269],
    "lamb": [0.26511843719921147, 0.18161436264252306, -0.5563518706040781],
}
_SETTINGS = {
    "lars": {"lr": 0.5, "momentum": 0.9, "nesterov": True, "trust_coefficient": 0.02},
    "lamb": {"lr": 0.05, "betas": (0.8, 0.95)},
}


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_twenty_steps_equal_rayaccels_own_implementation(name):
    model = _tiny_model(torch.float64)
    _train(_build(model, name, weight_decay=0.01, **_SETTINGS[name]), model, 20)
    torch.testing.assert_close(
        model[0].weight[0], torch.tensor(_BEFORE[name], dtype=torch.float64), rtol=0, atol=1e-14
    )


# --- both: checkpoint round trip ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_state_dict_round_trip_through_torch_save_continues_identically(name, tmp_path):
    model = _tiny_model()
    optimizer = _build(model, name, lr=0.05, weight_decay=0.01)
    _train(optimizer, model, 2)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")

    restored_model = copy.deepcopy(model)
    restored = _build(restored_model, name, lr=0.05, weight_decay=0.01)
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=False))
    if name == "lamb":
        assert [int(g["step"]) for g in restored.param_groups] == [2, 2]
    for step in range(2, 4):
        for each_model, each_optimizer in ((model, optimizer), (restored_model, restored)):
            _set_grads(each_model, step)
            each_optimizer.step()
    for param, restored_param in zip(model.parameters(), restored_model.parameters(), strict=True):
        torch.testing.assert_close(param, restored_param, rtol=0, atol=0)
