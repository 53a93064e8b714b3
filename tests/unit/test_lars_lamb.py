"""LARS and LAMB against updates computed by hand with plain tensor math."""

import copy
import math

import pytest
import torch
from torch import nn

from rayaccel.optim.build import exclude_norms_and_biases, param_groups
from rayaccel.optim.lamb import LAMB
from rayaccel.optim.lars import LARS


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)


def _set_grads(model: nn.Module, step: int) -> None:
    inputs, targets = _batch(step)
    model.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(inputs), targets).backward()


def _norm(tensor: torch.Tensor) -> float:
    return math.sqrt(float((tensor.double() ** 2).sum()))


# --- LARS --------------------------------------------------------------------------------------


def test_lars_single_tensor_by_hand():
    # ||w|| = 5, ||g|| = 1: ratio = 0.001 * 5 / (1 + 0.1 * 5) = 1/300.
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    weight.grad = torch.tensor([[0.6, 0.8]])
    LARS([weight], lr=1.0, momentum=0.0, weight_decay=0.1).step()
    expected = torch.tensor([[3.0, 4.0]]) - (1 / 300) * torch.tensor([[0.6 + 0.3, 0.8 + 0.4]])
    torch.testing.assert_close(weight.detach(), expected)


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


def _grads_of_two_steps(model: nn.Module, optimizer: torch.optim.Optimizer):
    grads_per_step = []
    for step in range(2):
        _set_grads(model, step)
        grads_per_step.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return grads_per_step


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_on_tiny_model_match_hand_computation(nesterov):
    model = _tiny_model()
    initial = [p.detach().clone() for p in model.parameters()]
    groups = exclude_norms_and_biases(param_groups(model, weight_decay=5e-4), "lars")
    # A large trust coefficient so the trust ratio visibly matters.
    optimizer = LARS(groups, lr=0.5, momentum=0.9, trust_coefficient=0.02, nesterov=nesterov)
    grads_per_step = _grads_of_two_steps(model, optimizer)

    excluded = [p.ndim <= 1 for p in model.parameters()]
    assert excluded == [False, True, True, True]
    expected = _lars_reference(
        initial,
        grads_per_step,
        lr=0.5,
        momentum=0.9,
        wd=5e-4,
        eta=0.02,
        excluded=excluded,
        nesterov=nesterov,
    )
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach().double(), want, rtol=1e-5, atol=1e-7)


def test_lars_excluded_group_gets_no_trust_ratio_and_no_decay():
    weight = nn.Parameter(torch.tensor([2.0, -1.0]))
    weight.grad = torch.tensor([0.5, 0.25])
    LARS(
        [{"params": [weight], "lars_exclude": True}], lr=0.1, momentum=0.0, weight_decay=0.5
    ).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([2.0 - 0.05, -1.0 - 0.025]))


def test_lars_zero_weight_or_zero_grad_uses_ratio_one():
    weight = nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.ones(2, 2)
    LARS([weight], lr=0.1, momentum=0.0).step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), -0.1))

    weight = nn.Parameter(torch.ones(2, 2))
    weight.grad = torch.zeros(2, 2)
    LARS([weight], lr=0.1, momentum=0.0, weight_decay=0.5).step()
    # Ratio 1: the decay term alone, unscaled.
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 1 - 0.1 * 0.5))


def test_lars_param_groups_flag_norms_and_biases():
    model = _tiny_model()
    decay, no_decay = exclude_norms_and_biases(param_groups(model, weight_decay=1e-4), "lars")
    assert decay["lars_exclude"] is False and decay["weight_decay"] == 1e-4
    assert no_decay["lars_exclude"] is True and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 3])]
    assert len(no_decay["params"]) == 3


def test_lars_validates_hyperparameters():
    params = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="lr"):
        LARS(params, lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        LARS(params, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(params, lr=0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="nesterov"):
        LARS(params, lr=0.1, momentum=0.0, nesterov=True)


# --- LAMB --------------------------------------------------------------------------------------


def test_lamb_single_tensor_first_step_by_hand():
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so with eps = 0 the Adam direction is
    # sign(g) = [1, -1]; r = [1, -1] + 0.1 * [3, 4] = [1.3, -0.6]; ratio = 5 / ||r||.
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([0.6, -0.8])
    LAMB([weight], lr=0.01, eps=0.0, weight_decay=0.1).step()
    update = torch.tensor([1.3, -0.6])
    expected = torch.tensor([3.0, 4.0]) - 0.01 * (5 / math.sqrt(1.3**2 + 0.6**2)) * update
    torch.testing.assert_close(weight.detach(), expected)


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


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_two_steps_on_tiny_model_match_hand_computation(bias_correction):
    model = _tiny_model()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = LAMB(
        exclude_norms_and_biases(param_groups(model, weight_decay=0.01), "lamb"),
        lr=0.05,
        betas=(0.8, 0.95),
        bias_correction=bias_correction,
    )
    grads_per_step = _grads_of_two_steps(model, optimizer)
    expected = _lamb_reference(
        initial,
        grads_per_step,
        lr=0.05,
        betas=(0.8, 0.95),
        eps=1e-6,
        wd=0.01,
        excluded=[False, True, True, True],
        bias_correction=bias_correction,
    )
    for param, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach().double(), want, rtol=1e-5, atol=1e-7)


def test_lamb_excluded_group_is_plain_adam_and_zero_weight_gets_ratio_one():
    weight = nn.Parameter(torch.tensor([2.0, -1.0]))
    weight.grad = torch.tensor([0.5, -0.25])
    LAMB([{"params": [weight], "lamb_exclude": True}], lr=0.1, eps=0.0, weight_decay=0.5).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([2.0 - 0.1, -1.0 + 0.1]))

    zero = nn.Parameter(torch.zeros(3))
    zero.grad = torch.tensor([1.0, -2.0, 4.0])
    LAMB([zero], lr=0.1, eps=0.0).step()
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, 0.1, -0.1]))


def test_lamb_param_groups_flag_norms_and_biases():
    decay, no_decay = exclude_norms_and_biases(
        param_groups(_tiny_model(), weight_decay=0.02), "lamb"
    )
    assert decay["lamb_exclude"] is False and decay["weight_decay"] == 0.02
    assert no_decay["lamb_exclude"] is True and no_decay["weight_decay"] == 0.0


def test_lamb_validates_hyperparameters():
    params = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="betas"):
        LAMB(params, lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        LAMB(params, lr=0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="lr"):
        LAMB(params, lr=-1.0)


# --- both: checkpoint round trip ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda model: LARS(
            exclude_norms_and_biases(param_groups(model, 1e-3), "lars"),
            lr=0.3,
            trust_coefficient=0.01,
        ),
        lambda model: LAMB(exclude_norms_and_biases(param_groups(model, 0.01), "lamb"), lr=0.02),
    ],
    ids=["lars", "lamb"],
)
def test_state_dict_round_trip_continues_identically(make_optimizer):
    model = _tiny_model()
    optimizer = make_optimizer(model)
    for step in range(2):
        _set_grads(model, step)
        optimizer.step()

    restored_model = copy.deepcopy(model)
    restored = make_optimizer(restored_model)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step in range(2, 4):
        for each_model, each_optimizer in ((model, optimizer), (restored_model, restored)):
            _set_grads(each_model, step)
            each_optimizer.step()
    for param, restored_param in zip(model.parameters(), restored_model.parameters(), strict=True):
        torch.testing.assert_close(param, restored_param, rtol=0, atol=0)
