"""Tests of ghost batch norm (32-sample splits)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rayaccel.methods.tricks.ghost_bn import GhostBatchNorm2d, convert_to_ghost_bn


def make_ghost(virtual_batch_size: int) -> GhostBatchNorm2d:
    ghost = GhostBatchNorm2d(3, virtual_batch_size, momentum=0.5)
    with torch.no_grad():
        ghost.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ghost.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    return ghost


@pytest.mark.parametrize(("n_samples", "chunk_sizes"), [(8, [4, 4]), (10, [4, 4, 2]), (3, [3])])
def test_training_output_equals_batch_norm_of_each_chunk(n_samples, chunk_sizes):
    torch.manual_seed(0)
    ghost = make_ghost(4)
    # Chunks with very different statistics, so normalising the whole batch would differ.
    x = torch.randn(n_samples, 3, 5, 5) * torch.arange(1, n_samples + 1).view(-1, 1, 1, 1)
    x.requires_grad_(True)
    out = ghost(x)
    expected = torch.cat(
        [
            F.batch_norm(chunk, None, None, ghost.weight, ghost.bias, training=True, eps=ghost.eps)
            for chunk in x.split(chunk_sizes)
        ]
    )
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert ghost.weight.grad is not None and x.grad is not None


def test_running_stats_average_the_chunk_statistics_once_per_step():
    torch.manual_seed(0)
    ghost = make_ghost(4)
    x = torch.randn(8, 3, 2, 2) + torch.arange(8.0).view(-1, 1, 1, 1)
    ghost(x)
    chunk_means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.split(4)])
    chunk_vars = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in x.split(4)])
    # momentum 0.5 from the initial running mean 0 and running var 1
    torch.testing.assert_close(ghost.running_mean, 0.5 * chunk_means.mean(0))
    torch.testing.assert_close(ghost.running_var, 0.5 + 0.5 * chunk_vars.mean(0))
    assert ghost.num_batches_tracked.item() == 1


def test_eval_uses_running_stats_like_batch_norm():
    torch.manual_seed(0)
    ghost = make_ghost(2)
    for _ in range(3):
        ghost(torch.randn(6, 3, 4, 4) * 2 + 1)
    reference = nn.BatchNorm2d(3)
    reference.load_state_dict(ghost.state_dict())
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(ghost.eval()(x), reference.eval()(x))


def test_convert_replaces_batch_norm_and_keeps_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    model(torch.randn(4, 3, 6, 6))  # non-trivial running statistics
    model[1].weight.requires_grad_(False)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    converted = convert_to_ghost_bn(model, 32)
    assert converted is model
    assert isinstance(model[1], GhostBatchNorm2d) and isinstance(model[2][0], GhostBatchNorm2d)
    assert model[1].virtual_batch_size == 32 and not model[1].training
    assert not model[1].weight.requires_grad and model[1].bias.requires_grad
    torch.testing.assert_close(model(x), before)


def test_rejects_virtual_batch_of_one():
    with pytest.raises(ValueError, match="virtual_batch_size"):
        GhostBatchNorm2d(3, 1)
