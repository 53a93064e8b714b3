"""Tests of the weight EMA (METHODS.md section 4: EMA every 5 steps, momentum 0.99)."""

import pytest
import torch
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
    ema = ModelEma(model, momentum=momentum, every_steps=every_steps)
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


def test_weights_applied_evaluates_with_average_then_restores_live_weights():
    model = make_model()
    set_weights(model, 1.0)
    ema = ModelEma(model, momentum=0.5, every_steps=1)
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
    ema = ModelEma(model, momentum=0.9, every_steps=1)
    set_weights(model, 2.0)
    ema.update(1)
    restored = ModelEma(model, momentum=0.5, every_steps=7)
    restored.load_state_dict(ema.state_dict())
    assert (restored.momentum, restored.every_steps, restored.num_updates) == (0.9, 1, 1)
    set_weights(model, 5.0)
    ema.update(2)
    restored.update(2)
    for name, average in ema.averaged.items():
        torch.testing.assert_close(restored.averaged[name], average)


def test_load_state_dict_rejects_another_model():
    state = ModelEma(make_model()).state_dict()
    with pytest.raises(ValueError, match="build ModelEma from the same model"):
        ModelEma(nn.Linear(2, 2)).load_state_dict(state)


@pytest.mark.parametrize(("momentum", "every_steps"), [(1.0, 5), (-0.1, 5), (0.9, 0)])
def test_rejects_bad_arguments(momentum, every_steps):
    with pytest.raises(ValueError, match="momentum|every_steps"):
        ModelEma(make_model(), momentum=momentum, every_steps=every_steps)
