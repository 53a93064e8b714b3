"""Tests of the weight EMA: its average, its warm-up rules and that both are timm's
`ModelEmaV3(exclude_buffers=True)` where timm has them."""

import copy

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from rayaccel.methods.tricks.ema import ModelEma


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def set_weights(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(value)
        model[1].running_mean.fill_(10 * value)


def test_average_matches_closed_form_and_updates_only_every_k_steps():
    model = make_model()
    set_weights(model, 0.0)
    momentum, every_steps = 0.9, 3
    ema = ModelEma(model, momentum=momentum, every_steps=every_steps, warmup="none")
    updated_at = []
    for step in range(1, 10):
        set_weights(model, float(step))  # the weights after optimizer step `step`
        if ema.update(step):
            updated_at.append(step)
    assert updated_at == [3, 6, 9]
    assert ema.num_updates == 3
    # ema_k = m^k * w_0 + (1 - m) * sum_j m^(k - j) * w_j over the weights seen at updates.
    seen = [3.0, 6.0, 9.0]
    expected = sum((1 - momentum) * momentum ** (len(seen) - 1 - j) * w for j, w in enumerate(seen))
    for average in ema.averaged.values():
        torch.testing.assert_close(average, torch.full_like(average, expected))
    # Buffers are copied from the live model, not averaged.
    torch.testing.assert_close(ema.copied["1.running_mean"], torch.full((2,), 90.0))
    assert ema.copied["1.num_batches_tracked"].dtype == torch.int64


# --- warm-up rules -----------------------------------------------------------------------------


def _momenta(warmup: str, momentum: float, updates: int) -> list[float]:
    ema = ModelEma(make_model(), momentum=momentum, every_steps=1, warmup=warmup)
    momenta = []
    for step in range(1, updates + 1):
        momenta.append(ema.next_momentum())
        ema.update(step)
    return momenta


@pytest.mark.parametrize(
    ("warmup", "formula"),
    [
        ("none", lambda m, n: m),
        ("timm", lambda m, n: min(m, 1 - n ** (-2 / 3))),
        ("tensorflow", lambda m, n: min(m, (1 + (n - 1)) / (10 + (n - 1)))),
    ],
)
def test_each_warmup_rule_gives_its_formulas_momenta(warmup, formula):
    momenta = _momenta(warmup, 0.99, 1200)
    assert momenta == pytest.approx([formula(0.99, n) for n in range(1, 1201)], rel=1e-12)


def test_warmup_rules_reach_the_momentum_where_documented():
    timm, tensorflow = _momenta("timm", 0.99, 1000), _momenta("tensorflow", 0.99, 891)
    assert timm[0] == 0.0 and tensorflow[0] == 0.1
    # The CIFAR-10 recipe's 194 updates: TensorFlow's rule ends at 0.956, timm's at 0.970.
    assert tensorflow[193] == pytest.approx(0.9557, abs=1e-4)
    assert timm[193] == pytest.approx(0.9702, abs=1e-4)
    assert timm[998] < 0.99 and timm[999] == pytest.approx(0.99)
    assert tensorflow[889] < 0.99 and tensorflow[890] == pytest.approx(0.99)


def _train_step(model: nn.Module, step: int) -> None:
    """A deterministic change of every weight and BN statistic, as an optimizer step makes."""
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator))
    model.train()
    model(torch.randn(8, 2, generator=generator))  # moves the BN running statistics


@pytest.mark.parametrize("every_steps", [1, 3])
def test_timm_rule_equals_model_ema_v3_with_its_warmup(every_steps):
    torch.manual_seed(0)
    model = make_model()
    ours = ModelEma(model, momentum=0.99, every_steps=every_steps, warmup="timm")
    theirs = ModelEmaV3(model, decay=0.99, use_warmup=True, exclude_buffers=True)
    updates = 0
    for step in range(1, 31):
        _train_step(model, step)
        if ours.update(step):
            updates += 1
            theirs.update(model, step=updates)  # timm's step counts its updates
    assert updates == 30 // every_steps
    for name, param in theirs.module.named_parameters():
        torch.testing.assert_close(ours.averaged[name], param, rtol=0, atol=0)
    for name, buffer in theirs.module.named_buffers():
        torch.testing.assert_close(ours.copied[name], buffer, rtol=0, atol=0)


@pytest.mark.parametrize("warmup", ["none", "tensorflow"])
def test_average_equals_model_ema_v3_excluding_buffers_at_the_same_momenta(warmup):
    torch.manual_seed(0)
    model = make_model()
    ours = ModelEma(model, momentum=0.9, every_steps=2, warmup=warmup)
    theirs = ModelEmaV3(copy.deepcopy(model), exclude_buffers=True)
    for step in range(1, 21):
        _train_step(model, step)
        if step % 2 == 0:
            theirs.decay = ours.next_momentum()
            theirs.update(model)  # no step: timm uses `decay` as it is
        ours.update(step)
    for name, param in theirs.module.named_parameters():
        torch.testing.assert_close(ours.averaged[name], param, rtol=0, atol=0)
    for name, buffer in theirs.module.named_buffers():
        torch.testing.assert_close(ours.copied[name], buffer, rtol=0, atol=0)


# --- evaluation, dtypes, checkpoints ------------------------------------------------------------


def test_weights_applied_evaluates_with_average_then_restores_live_weights():
    model = make_model()
    set_weights(model, 1.0)
    ema = ModelEma(model, momentum=0.5, every_steps=1, warmup="none")
    set_weights(model, 3.0)
    ema.update(1)  # average 0.5 * 1 + 0.5 * 3 = 2
    with ema.weights_applied(model):
        assert torch.all(model[0].weight == 2.0)
        assert torch.all(model[1].running_mean == 30.0)
    assert torch.all(model[0].weight == 3.0)


def test_average_is_float32_for_a_half_precision_model():
    model = make_model().half()
    ema = ModelEma(model)
    assert all(t.dtype == torch.float32 for t in ema.averaged.values())
    ema.copy_to(model)
    assert model[0].weight.dtype == torch.float16


def test_state_dict_round_trip_continues_identically():
    model = make_model()
    set_weights(model, 1.0)
    ema = ModelEma(model, momentum=0.9, every_steps=1, warmup="tensorflow")
    set_weights(model, 2.0)
    ema.update(1)
    restored = ModelEma(model, momentum=0.5, every_steps=7, warmup="none")
    restored.load_state_dict(ema.state_dict())
    assert (restored.momentum, restored.every_steps, restored.num_updates) == (0.9, 1, 1)
    assert restored.warmup == "tensorflow" and restored.next_momentum() == ema.next_momentum()
    set_weights(model, 5.0)
    ema.update(2)
    restored.update(2)
    for name, average in ema.averaged.items():
        torch.testing.assert_close(restored.averaged[name], average)


def test_a_state_saved_without_a_warmup_rule_keeps_the_jobs():
    model = make_model()
    state = ModelEma(model, warmup="timm").state_dict()
    del state["warmup"]
    restored = ModelEma(model, warmup="tensorflow")
    restored.load_state_dict(state)
    assert restored.warmup == "tensorflow"


def test_load_state_dict_rejects_another_model():
    state = ModelEma(make_model()).state_dict()
    with pytest.raises(ValueError, match="build ModelEma from the same model"):
        ModelEma(nn.Linear(2, 2)).load_state_dict(state)


@pytest.mark.parametrize(
    ("momentum", "every_steps", "warmup"),
    [(1.0, 5, "timm"), (-0.1, 5, "timm"), (0.9, 0, "timm"), (0.9, 5, "keras")],
)
def test_rejects_bad_arguments(momentum, every_steps, warmup):
    with pytest.raises(ValueError, match="momentum|every_steps|warmup"):
        ModelEma(make_model(), momentum=momentum, every_steps=every_steps, warmup=warmup)
