"""Alternating flip: each image is mirrored in exactly every other epoch.

One of airbench's extra tricks: "alternating flip (epoch e > 0 flips
exactly the images not flipped in e - 1; ~10% fewer steps)". With independent random flips an
image can be shown the same way several epochs in a row, so a short run sees fewer distinct
views; alternating guarantees both mirror images of every sample within any two consecutive
epochs, while epoch 0's random choice keeps each epoch's flipped set balanced and unpatterned.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_32_BITS = 0xFFFFFFFF
# Odd 27-bit multiplier of a well-mixing 32-bit integer hash; small enough that a 32-bit value
# times it stays below 2**63, so the hash runs in int64 tensor arithmetic on any device.
_MULTIPLIER = 0x45D9F3B


def _mix32(value):
    """A 32-bit integer hash; works on Python ints and on int64 tensors in [0, 2**32)."""
    value = ((value >> 16) ^ value) * _MULTIPLIER & _LOW_32_BITS
    value = ((value >> 16) ^ value) * _MULTIPLIER & _LOW_32_BITS
    return (value >> 16) ^ value


def alternating_flip_mask(indices: Tensor, epoch: int, seed: int) -> Tensor:
    """Which samples to mirror left-right in ``epoch``: random in epoch 0, then alternating.

    Sample ``index`` is flipped in epoch 0 if a hash of ``(seed, index)`` says so (a fair coin
    per sample), and in epoch e exactly when it was not flipped in epoch e - 1. The answer is a
    pure function of ``(seed, index, epoch parity)``: O(1) per sample, no state to checkpoint,
    the same on every worker and after a resume, whatever the batch order.

    Args:
        indices: Global sample indices (any integer dtype, any device, any shape; values
            assumed >= 0, as every row's ``index`` is).
        epoch: Epoch number, >= 0.
        seed: The run's data seed; different seeds give independent epoch-0 choices.

    Returns:
        Bool tensor shaped like ``indices`` on its device: True means flip.

    Raises:
        ValueError: If ``indices`` is not an integer tensor or ``epoch`` is negative.
    """
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    seed_hash = _mix32(_mix32(seed & _LOW_32_BITS) ^ ((seed >> 32) & _LOW_32_BITS))
    indices = indices.to(torch.int64)
    low, high = indices & _LOW_32_BITS, (indices >> 32) & _LOW_32_BITS
    hashed = _mix32(_mix32(low ^ seed_hash) ^ high)
    flipped_in_epoch_0 = (hashed >> 31) & 1
    return (flipped_in_epoch_0 ^ (epoch % 2)).bool()
