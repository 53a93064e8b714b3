"""Tests of alternating flip: each image is flipped exactly every other epoch."""

import pytest
import torch

from rayaccel.methods.tricks.flip import alternating_flip_mask

INDICES = torch.arange(10_000)


def test_each_image_is_flipped_exactly_every_other_epoch():
    masks = torch.stack([alternating_flip_mask(INDICES, epoch, seed=3) for epoch in range(6)])
    assert torch.all(masks[1:] != masks[:-1])
    assert torch.all(masks.sum(0) == 3)  # flipped in 3 of 6 epochs


def test_epoch_0_is_a_fair_unpatterned_coin_per_sample():
    mask = alternating_flip_mask(INDICES, 0, seed=3)
    assert 0.47 < mask.float().mean() < 0.53
    # Not a simple function of the index: agrees with index parity and with the neighbouring
    # index about half the time.
    assert 0.47 < (mask == (INDICES % 2 == 1)).float().mean() < 0.53
    assert 0.47 < (mask[1:] == mask[:-1]).float().mean() < 0.53


def test_depends_only_on_seed_index_and_epoch_parity():
    permutation = torch.randperm(len(INDICES), generator=torch.Generator().manual_seed(0))
    mask = alternating_flip_mask(INDICES, 2, seed=3)
    torch.testing.assert_close(
        alternating_flip_mask(INDICES[permutation], 4, seed=3), mask[permutation]
    )
    torch.testing.assert_close(
        alternating_flip_mask(INDICES.view(100, 100), 0, seed=3), mask.view(100, 100)
    )
    other_seed = alternating_flip_mask(INDICES, 2, seed=4)
    assert 0.47 < (mask == other_seed).float().mean() < 0.53


def test_indices_beyond_32_bits_are_distinguished():
    high = alternating_flip_mask(INDICES + 2**40, 0, seed=3)
    assert 0.47 < (high == alternating_flip_mask(INDICES, 0, seed=3)).float().mean() < 0.53


@pytest.mark.parametrize(("indices", "epoch"), [(torch.zeros(3), 0), (torch.arange(3), -1)])
def test_rejects_bad_arguments(indices, epoch):
    with pytest.raises(ValueError, match="indices|epoch"):
        alternating_flip_mask(indices, epoch, seed=0)
