"""AGVM as the loop uses it: optimizer groups by component, the half-batch step, mu on LRs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rayaccel.methods.agvm.hook import AgvmHook
from rayaccel.methods.agvm.patterns import DEFAULT_CLASSIFIER_PATTERNS
from rayaccel.methods.base import MethodHooks, StepBatch
from rayaccel.optim.registry import OptimizerHyperparameters
from rayaccel.train.loop import setup_optimizer


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def _setup(optimizer_name="sgd", **agvm):
    torch.manual_seed(0)
    model = _Net()
    settings = {"start_step": 0, "interval": 1, "momentum": 0.0, "clip": (0.5, 10.0), "eps": 1e-6}
    hook = AgvmHook(
        DEFAULT_CLASSIFIER_PATTERNS, optimizer_name=optimizer_name, **{**settings, **agvm}
    )
    # The trainer's own setup: AGVM splits the groups at its `param_groups` point.
    hyper = OptimizerHyperparameters(name=optimizer_name, lr=0.1, weight_decay=1e-4)
    optimizer = setup_optimizer(hyper, model, MethodHooks([hook]))
    return model, optimizer, hook


def _batch(n=8):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n, 6, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return StepBatch(images, labels, torch.arange(n))


def _loss_of_rows(model, batch, outputs):
    def loss_of_rows(images, rows=None):
        part = batch if rows is None else batch.take(rows)
        losses = nn.functional.cross_entropy(model(images), part.labels, reduction="none")
        outputs.append(losses.detach())
        return losses.mean()

    return loss_of_rows


def test_groups_are_split_by_component_and_weight_decay():
    model, optimizer, hook = _setup()
    assert list(hook.components) == ["backbone", "head"]
    assert len(optimizer.param_groups) == 4  # (decay, no decay) x (backbone, head)
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # every group lies in one component


def test_half_batch_step_leaves_the_full_batch_gradient_and_measures_mu():
    model, optimizer, hook = _setup()
    batch = _batch()
    # The ordinary full-batch gradient.
    _loss_of_rows(model, batch, [])(batch.images).backward()
    full = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)

    outputs = []
    assert hook.due()
    hook.backward(model, _loss_of_rows(model, batch, outputs), batch.images, optimizer, lambda x: x)
    for param, expected in zip(model.parameters(), full, strict=True):
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-6)
    assert len(outputs) == 2 and sum(len(o) for o in outputs) == 8
    mu = hook.state.multipliers()
    assert mu["backbone"] == 1.0 and 0.5**0.5 <= mu["head"] <= 10**0.5
    distances = hook.state.distances
    assert math.isclose(
        mu["head"],
        math.sqrt(min(10, max(0.5, (distances["backbone"] + 1e-6) / (distances["head"] + 1e-6)))),
    )

    # The step's base rates, then mu on the head's groups only.
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    hook.before_step(optimizer)
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        expected = 0.1 * (mu["head"] if id(group["params"][0]) in head else 1.0)
        assert math.isclose(group["lr"], expected)


def test_steps_interval_metrics_and_checkpoint_state():
    model, optimizer, hook = _setup(start_step=2, interval=3, momentum=0.97)
    batch = _batch()
    due = []
    for _ in range(8):
        due.append(hook.due())
        hook.after_step()
    due.append(hook.due())
    assert due == [False, False, True, False, False, True, False, False, True]
    # The hook owns the backward pass only when a measurement is due (step 8 here).
    assert hook.backward(
        model, _loss_of_rows(model, batch, []), batch.images, optimizer, lambda x: x
    )
    hook.after_step()
    assert not hook.backward(
        model, _loss_of_rows(model, batch, []), batch.images, optimizer, lambda x: x
    )
    metrics = hook.on_epoch_end()
    assert metrics["agvm/measurements"] == 1 and "agvm/mu/head" in metrics
    assert hook.on_epoch_end()["agvm/measurements"] == 0

    _, _, restored = _setup(start_step=2, interval=3, momentum=0.97)
    restored.load_state_dict(hook.state_dict())
    assert restored.step == 9 and restored.state.multipliers() == hook.state.multipliers()


@pytest.mark.parametrize("optimizer_name", ["adamw", "lamb", "lars"])
def test_every_optimizer_trains_with_agvm(optimizer_name):
    model, optimizer, hook = _setup(optimizer_name)
    batch = _batch(16)
    first = None
    for _ in range(30):
        optimizer.zero_grad(set_to_none=True)
        outputs = []
        hook.backward(
            model, _loss_of_rows(model, batch, outputs), batch.images, optimizer, lambda x: x
        )
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        hook.before_step(optimizer)
        optimizer.step()
        hook.after_step()
        loss = torch.cat(outputs).mean().item()
        first = loss if first is None else first
    assert hook.precondition is (optimizer_name in ("adamw", "lamb"))
    assert loss < first


def test_lamb_with_agvm_takes_the_steps_it_took_before_lamb_came_from_timm():
    # Six measured steps in float64; mu, D and the head's first row as rayaccel's own LAMB
    # (per-parameter step counts) gave them. timm's Lamb counts steps per group, which the
    # preconditioning reads instead.
    torch.manual_seed(0)
    model = _Net().double()
    settings = {"start_step": 0, "interval": 1, "momentum": 0.5, "clip": (0.5, 10.0), "eps": 1e-6}
    hook = AgvmHook(DEFAULT_CLASSIFIER_PATTERNS, optimizer_name="lamb", **settings)
    hyper = OptimizerHyperparameters(name="lamb", lr=0.05, weight_decay=1e-2)
    optimizer = setup_optimizer(hyper, model, MethodHooks([hook]))
    for step in range(6):
        generator = torch.Generator().manual_seed(10 + step)
        images = torch.randn(8, 6, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 3, (8,), generator=generator)
        batch = StepBatch(images, labels, torch.arange(8))
        optimizer.zero_grad(set_to_none=True)
        assert hook.backward(model, _loss_of_rows(model, batch, []), images, optimizer, lambda x: x)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        hook.before_step(optimizer)
        optimizer.step()
        hook.after_step()
    assert hook.state.mu["head"] == pytest.approx(1.0952339728426912, rel=1e-12)
    assert hook.state.distances == pytest.approx(
        {"backbone": 0.8646472306086439, "head": 0.6049359534482142}, rel=1e-12
    )
    before = [0.05623427343462269, -0.30721628391498385, -0.12365188344975077]
    torch.testing.assert_close(
        model.head.weight[0, :3], torch.tensor(before, dtype=torch.float64), rtol=0, atol=1e-15
    )
