"""Tests of AGVM: component patterns, cosine distances, the mu update and half-batch gradients."""

import datetime
import math
import os
import sys
import time

import pytest
import timm.optim
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rayaccel.methods.agvm.multipliers import (
    AGVMState,
    adam_precondition,
    apply_multipliers,
    component_param_groups,
    gradient_cosine_distance,
    group_parameters,
    half_batch_gradients,
)
from rayaccel.methods.agvm.patterns import DEFAULT_CLASSIFIER_PATTERNS, component_of
from rayaccel.models import ResNet9
from rayaccel.optim.build import param_groups

# --- components --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("conv1.weight", "backbone"),
        ("layer4.1.bn2.bias", "backbone"),
        ("fc.weight", "head"),  # ResNet
        ("head.fc.weight", "head"),  # ConvNeXt, Swin, RegNet
        ("head.norm.bias", "head"),
        ("head.weight", "head"),  # ViT, rayaccel ResNet-9
        ("head_dist.bias", "head"),  # distilled DeiT
        ("classifier.weight", "head"),  # EfficientNet, MobileNet
        ("linear.weight", "head"),  # pytorch-cifar ResNets
        ("fc_norm.weight", "backbone"),  # ViT's pre-head norm is not the classifier
        ("blocks.0.mlp.fc1.weight", "backbone"),
    ],
)
def test_default_patterns_split_timm_classifiers(name, component):
    assert component_of(name) == component
    assert component_of(name, DEFAULT_CLASSIFIER_PATTERNS) == component


def test_custom_patterns_with_regex_and_errors():
    patterns = {
        "backbone": ["backbone.*"],
        "neck": [r"re:neck\.(lateral|output)\d+\..*"],
        "head": ["head.*"],
    }
    assert component_of("backbone.stem.weight", patterns) == "backbone"
    assert component_of("neck.lateral2.weight", patterns) == "neck"
    assert component_of("head.cls.bias", patterns) == "head"
    with pytest.raises(ValueError, match="matches no component"):
        component_of("neck.fuse.weight", patterns)
    with pytest.raises(ValueError, match="make them disjoint"):
        component_of("head.x", {"a": ["head.*"], "b": ["*.x"]})
    with pytest.raises(ValueError, match="only one component may hold"):
        component_of("x", {"a": ["*"], "b": ["*"]})
    with pytest.raises(ValueError, match="not a valid regex"):
        component_of("x", {"a": ["re:("]})
    with pytest.raises(ValueError, match="non-empty list"):
        component_of("x", {"a": []})


def test_group_parameters_on_resnet9_and_component_param_groups():
    model = ResNet9(num_classes=10, in_chans=3, width_multiplier=0.25)
    components = group_parameters(model)
    assert list(components) == ["backbone", "head"]
    assert [p is model.head.weight for p in components["head"]] == [True]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(components["backbone"]) == len(trainable) - 1

    groups, group_component = component_param_groups(param_groups(model, 5e-4), components)
    # The head has no bias, so it appears only in the decay group.
    assert group_component == ["backbone", "head", "backbone"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    assert all(g["lr_scale"] == 1.0 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(trainable)

    with pytest.raises(ValueError, match="matched no trainable parameter"):
        group_parameters(model, {"backbone": ["*"], "neck": ["neck.*"]})
    with pytest.raises(ValueError, match="belongs to no AGVM component"):
        component_param_groups([{"params": [nn.Parameter(torch.ones(1))]}], components)


# --- cosine distance ---------------------------------------------------------------------------


def test_gradient_cosine_distance_values():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    assert gradient_cosine_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert gradient_cosine_distance(a, [-t for t in a]) == pytest.approx(2.0)
    orthogonal = [torch.tensor([0.0, 3.0]), torch.tensor([[0.0]])]
    assert gradient_cosine_distance(a, orthogonal) == pytest.approx(1.0)
    assert gradient_cosine_distance(a, [torch.zeros(2), torch.zeros(1, 1)]) == 1.0

    generator = torch.Generator().manual_seed(0)
    g_a = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    g_b = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    flat_a = torch.cat([t.flatten() for t in g_a])
    flat_b = torch.cat([t.flatten() for t in g_b])
    expected = 1 - torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0).item()
    assert gradient_cosine_distance(g_a, g_b) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="equal length"):
        gradient_cosine_distance(g_a, g_b[:1])
    with pytest.raises(ValueError, match="shape"):
        gradient_cosine_distance(g_a, [g_b[0].T, g_b[1]])


# --- AGVMState ---------------------------------------------------------------------------------


def _state(**overrides) -> AGVMState:
    kwargs = dict(start_step=0, interval=1)
    kwargs.update(overrides)
    return AGVMState(["backbone", "head"], **kwargs)


def test_equal_variance_keeps_mu_at_one():
    state = _state()
    for _ in range(5):
        assert state.update({"backbone": 0.4, "head": 0.4})
    assert state.multipliers() == pytest.approx({"backbone": 1.0, "head": 1.0})


def test_mu_direction_follows_the_variance_ratio():
    # AGVM's rule: mu_k = sqrt((D_0 + eps) / (D_k + eps)). A head noisier than the backbone
    # (larger D) gets a smaller LR; a head cleaner than the backbone gets a larger one.
    noisier_head = _state(momentum=0.0)
    noisier_head.update({"backbone": 0.2, "head": 0.3})
    assert noisier_head.multipliers()["head"] == pytest.approx(math.sqrt(0.200001 / 0.300001))
    assert 0.5**0.5 < noisier_head.multipliers()["head"] < 1

    noisier_backbone = _state(momentum=0.0)
    noisier_backbone.update({"backbone": 0.3, "head": 0.2})
    assert noisier_backbone.multipliers()["head"] == pytest.approx(math.sqrt(0.300001 / 0.200001))
    assert 1 < noisier_backbone.multipliers()["head"] < 10**0.5
    assert noisier_head.multipliers()["backbone"] == noisier_backbone.multipliers()["backbone"] == 1


def test_clip_bounds_apply_before_the_square_root():
    state = _state(momentum=0.0)
    state.update({"backbone": 1.0, "head": 0.001})  # ratio ~1000 -> 10
    assert state.multipliers()["head"] == pytest.approx(math.sqrt(10.0))
    state.update({"backbone": 0.1, "head": 1.9})  # ratio ~0.053 -> 0.5
    assert state.multipliers()["head"] == pytest.approx(math.sqrt(0.5))
    # eps keeps D_k = 0 finite: (0.5 + 1e-6) / 1e-6 is clipped to 10 too.
    state.update({"backbone": 0.5, "head": 0.0})
    assert state.multipliers()["head"] == pytest.approx(math.sqrt(10.0))


def test_momentum_smoothing_sequence():
    state = _state()
    measurements = [(0.5, 0.25), (0.5, 1.0), (0.2, 0.2)]
    expected_mu = 1.0
    for backbone_d, head_d in measurements:
        state.update({"backbone": backbone_d, "head": head_d})
        ratio = (backbone_d + 1e-6) / (head_d + 1e-6)
        expected_mu = 0.97 * expected_mu + 0.03 * math.sqrt(min(10, max(0.5, ratio)))
        assert state.multipliers()["head"] == pytest.approx(expected_mu, rel=1e-12)
    # 1 -> 0.97 + 0.03 sqrt(2) -> ... by hand for the first step:
    first = _state()
    first.update({"backbone": 0.5, "head": 0.25})
    assert first.multipliers()["head"] == pytest.approx(
        0.97 + 0.03 * math.sqrt(0.500001 / 0.250001)
    )
    assert state.num_updates == 3
    assert state.metrics()["agvm/mu/head"] == pytest.approx(expected_mu)
    assert state.metrics()["agvm/distance/head"] == 0.2


def test_due_schedule_state_dict_and_skips():
    state = _state(start_step=10, interval=5)
    assert [step for step in range(30) if state.due(step)] == [10, 15, 20, 25]
    assert math.isnan(state.metrics()["agvm/distance/backbone"])

    state.update({"backbone": 0.3, "head": 0.9})
    assert not state.update({"backbone": math.nan, "head": 0.9})
    assert state.num_skipped == 1 and state.num_updates == 1

    restored = _state(start_step=10, interval=5)
    restored.load_state_dict(state.state_dict())
    assert restored.state_dict() == state.state_dict()
    for each in (state, restored):
        each.update({"backbone": 0.1, "head": 0.4})
    assert restored.multipliers() == state.multipliers()

    with pytest.raises(ValueError, match="resume with the job's AGVM patterns"):
        AGVMState(["backbone", "neck"], start_step=0, interval=1).load_state_dict(
            state.state_dict()
        )
    with pytest.raises(ValueError, match="one D per component"):
        state.update({"backbone": 0.1})
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        state.update({"backbone": 0.1, "head": 2.5})
    with pytest.raises(ValueError, match="clip"):
        _state(clip=(1.5, 10.0))
    with pytest.raises(ValueError, match="interval"):
        _state(interval=0)


def test_apply_multipliers_scales_current_group_lrs():
    params = [nn.Parameter(torch.ones(1)) for _ in range(3)]
    optimizer = torch.optim.SGD([{"params": [p]} for p in params], lr=0.1)
    apply_multipliers(optimizer, ["backbone", "head", "backbone"], {"backbone": 1.0, "head": 2.0})
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.2, 0.1])
    with pytest.raises(ValueError, match="no multiplier"):
        apply_multipliers(optimizer, ["backbone", "neck", "backbone"], {"backbone": 1.0})
    with pytest.raises(ValueError, match="3 param groups"):
        apply_multipliers(optimizer, ["backbone"], {"backbone": 1.0})


# --- half-batch gradients ----------------------------------------------------------------------


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh()))
    model.add_module("head", nn.Linear(8, 3))
    return model


def _data(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=generator), torch.randint(
        0, 3, (batch,), generator=generator
    )


def _loss_fn(model):
    return lambda inputs, labels: nn.functional.cross_entropy(model(inputs), labels)


def _grads_of(model, inputs, labels) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_half_batch_path_leaves_the_full_batch_gradient_on_one_worker():
    model = _mlp()
    inputs, labels = _data(12)
    full = _grads_of(model, inputs, labels)
    first_half = _grads_of(model, inputs[:6], labels[:6])
    second_half = _grads_of(model, inputs[6:], labels[6:])

    components = group_parameters(model)
    # Stale gradients must not leak into the result.
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    result = half_batch_gradients(model, _loss_fn(model), inputs, labels, components)

    for param, want in zip(model.parameters(), full, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-5, atol=1e-7)
    backbone_a, backbone_b = result.gradients["backbone"]
    head_a, head_b = result.gradients["head"]
    for got, want in zip(backbone_a + head_a, first_half, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(backbone_b + head_b, second_half, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        full_loss = nn.functional.cross_entropy(model(inputs), labels)
    torch.testing.assert_close(result.loss, full_loss)
    distances = result.distances()
    assert set(distances) == {"backbone", "head"} and all(0 < d < 2 for d in distances.values())
    assert distances["head"] == pytest.approx(
        gradient_cosine_distance(first_half[4:], second_half[4:]), rel=1e-5
    )


def test_half_batch_path_with_tuple_targets_and_loss_scaling():
    model = _mlp()
    inputs, labels = _data(8)
    weights = torch.linspace(0.5, 1.5, 8)

    def weighted_loss(batch_inputs, targets):
        batch_labels, batch_weights = targets
        losses = nn.functional.cross_entropy(model(batch_inputs), batch_labels, reduction="none")
        return (losses * batch_weights).mean()

    model.zero_grad(set_to_none=True)
    weighted_loss(inputs, (labels, weights)).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    half_batch_gradients(
        model,
        weighted_loss,
        inputs,
        (labels, weights),
        group_parameters(model),
        scale_loss=lambda loss: loss * 1024.0,
    )
    for param, want in zip(model.parameters(), full, strict=True):
        torch.testing.assert_close(param.grad, want * 1024.0, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="even per-worker batch"):
        half_batch_gradients(model, weighted_loss, inputs[:7], (labels[:7], weights[:7]), {})
    with pytest.raises(ValueError, match="targets must have 8 rows"):
        half_batch_gradients(model, weighted_loss, inputs, (labels, weights[:6]), {})
    with pytest.raises(ValueError, match="not a trainable parameter"):
        half_batch_gradients(
            model, weighted_loss, inputs, (labels, weights), {"x": [nn.Parameter(torch.ones(1))]}
        )


def test_adam_preconditioning_of_half_gradients():
    model = _mlp()
    inputs, labels = _data(8)
    components = group_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)

    # Before the first step there are no second moments: identity.
    raw = half_batch_gradients(model, _loss_fn(model), inputs, labels, components)
    pre = half_batch_gradients(
        model, _loss_fn(model), inputs, labels, components, precondition=optimizer
    )
    for got, want in zip(pre.gradients["head"][0], raw.gradients["head"][0], strict=True):
        torch.testing.assert_close(got, want)

    optimizer.step()
    raw = half_batch_gradients(model, _loss_fn(model), inputs, labels, components)
    pre = half_batch_gradients(
        model, _loss_fn(model), inputs, labels, components, precondition=optimizer
    )
    for param, raw_a, pre_a in zip(
        components["head"], raw.gradients["head"][0], pre.gradients["head"][0], strict=True
    ):
        second_moment = optimizer.state[param]["exp_avg_sq"]
        expected = raw_a / ((second_moment / (1 - 0.99)).sqrt() + 1e-8)
        torch.testing.assert_close(pre_a, expected)
    # .grad itself is never preconditioned.
    for param in model.parameters():
        assert param.grad is not None
    torch.testing.assert_close(
        components["head"][0].grad,
        (raw.gradients["head"][0][0] + raw.gradients["head"][1][0]) / 2,
    )

    # timm's Lamb counts steps per group, not per parameter, and may turn bias correction off.
    head_weight = components["head"][0]
    lamb = timm.optim.Lamb(model.parameters(), lr=1e-3, betas=(0.9, 0.99), max_grad_norm=None)
    lamb.step()
    lamb.step()
    assert "step" not in lamb.state[head_weight] and int(lamb.param_groups[0]["step"]) == 2
    torch.testing.assert_close(
        adam_precondition([head_weight], [head_weight.grad], lamb)[0],
        head_weight.grad / ((lamb.state[head_weight]["exp_avg_sq"] / (1 - 0.99**2)).sqrt() + 1e-6),
    )
    lamb.param_groups[0]["bias_correction"] = False
    torch.testing.assert_close(
        adam_precondition([head_weight], [head_weight.grad], lamb)[0],
        head_weight.grad / (lamb.state[head_weight]["exp_avg_sq"].sqrt() + 1e-6),
    )

    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    with pytest.raises(ValueError, match="Adam-type optimizers only"):
        adam_precondition(components["head"], [p.grad for p in components["head"]], sgd)


def _check_half_batch_on_rank(rank: int, world_size: int) -> None:
    global_inputs, global_labels = _data(8 * world_size)
    reference = _mlp()
    model = DistributedDataParallel(_mlp())
    components = group_parameters(model)
    assert list(components) == ["backbone", "head"]
    local = slice(8 * rank, 8 * (rank + 1))
    result = half_batch_gradients(
        model, _loss_fn(model), global_inputs[local], global_labels[local], components
    )

    # .grad is the mean gradient of one backward over the whole global batch.
    full = _grads_of(reference, global_inputs, global_labels)
    for param, want in zip(model.module.parameters(), full, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-5, atol=1e-7)

    # g_A is the gradient of the global half A: every rank's first 4 samples.
    first_rows = torch.cat([torch.arange(8 * r, 8 * r + 4) for r in range(world_size)])
    second_rows = first_rows + 4
    want_a = _grads_of(reference, global_inputs[first_rows], global_labels[first_rows])
    want_b = _grads_of(reference, global_inputs[second_rows], global_labels[second_rows])
    got_a = result.gradients["backbone"][0] + result.gradients["head"][0]
    got_b = result.gradients["backbone"][1] + result.gradients["head"][1]
    for got, want in zip(got_a + got_b, want_a + want_b, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # Every rank measures the same D, so every rank's mu stays identical.
    distances = torch.tensor(list(result.distances().values()), dtype=torch.float64)
    gathered = [torch.empty_like(distances) for _ in range(world_size)]
    dist.all_gather(gathered, distances)
    assert all(torch.equal(gathered[0], other) for other in gathered)


def _half_batch_on_rank(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    # A failed check raises here, and `spawn` reports it with its traceback.
    _check_half_batch_on_rank(rank, world_size)
    dist.barrier()
    # Both ranks have passed every check. Exit without tearing gloo down: its teardown has
    # aborted finished, passing ranks ("terminate called without an active exception",
    # SIGABRT), even after the barrier and with the DDP model freed first (CI, 2026-11-23).
    # os._exit skips the C++ destructors where that happens; exit code 0 tells `spawn` that
    # this rank succeeded. The pause lets the peer finish reading the barrier's last message
    # before this rank's sockets close.
    time.sleep(1.0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# A hang guard, not a speed check: on an idle machine this takes ~3 s, but with the cores
# oversubscribed the two children's torch imports alone have taken over 60 s.
@pytest.mark.timeout(180)
def test_half_batch_path_with_two_gloo_workers(tmp_path):
    torch_mp.spawn(_half_batch_on_rank, args=(2, str(tmp_path / "rendezvous")), nprocs=2, join=True)
