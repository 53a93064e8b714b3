"""Tests of the Lookahead optimizer wrapper."""

import pytest
import torch

from rayaccel.optim.lookahead import Lookahead


def make(theta_0: float = 1.0, *, k: int = 2, alpha: float = 0.5):
    theta = torch.nn.Parameter(torch.tensor([theta_0]))
    return theta, Lookahead(torch.optim.SGD([theta], lr=0.5), k=k, alpha=alpha)


def train(theta, optimizer, n_steps: int) -> list[float]:
    """SGD with lr 0.5 on f = theta^2 / 2 (gradient theta) halves theta each inner step."""
    values = []
    for _ in range(n_steps):
        optimizer.zero_grad()
        (theta.square().sum() / 2).backward()
        optimizer.step()
        values.append(theta.item())
    return values


def test_matches_hand_computed_sequence():
    # Inner steps 1 -> 0.5 -> 0.25; sync: phi = 1 + 0.5 * (0.25 - 1) = 0.625 = theta.
    # Then 0.3125 -> 0.15625; sync: phi = 0.625 + 0.5 * (0.15625 - 0.625) = 0.390625.
    theta, optimizer = make()
    assert train(theta, optimizer, 5) == [0.5, 0.625, 0.3125, 0.390625, 0.1953125]


def test_alpha_one_is_the_inner_optimizer():
    theta, optimizer = make(alpha=1.0)
    assert train(theta, optimizer, 3) == [0.5, 0.25, 0.125]


def test_state_dict_resume_continues_identically():
    theta, optimizer = make(k=3)
    reference = train(theta, optimizer, 6)
    theta, optimizer = make(k=3)
    train(theta, optimizer, 2)
    state = optimizer.state_dict()
    resumed_theta, resumed = make(theta.item(), k=5, alpha=0.9)
    resumed.load_state_dict(state)
    assert (resumed.k, resumed.alpha, resumed.inner_steps) == (3, 0.5, 2)
    assert train(resumed_theta, resumed, 4) == reference[2:]


def test_param_groups_are_the_inner_optimizers():
    _, optimizer = make()
    optimizer.param_groups[0]["lr"] = 0.1
    assert optimizer.optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(("k", "alpha"), [(0, 0.5), (5, 0.0), (5, 1.5)])
def test_rejects_bad_arguments(k, alpha):
    theta = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="k must|alpha must"):
        Lookahead(torch.optim.SGD([theta], lr=0.1), k=k, alpha=alpha)
