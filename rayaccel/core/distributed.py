"""Collectives that also work outside a process group (one worker, unit tests)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def in_process_group() -> bool:
    """True inside an initialised torch.distributed group (a Ray Train worker group)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over the workers in place; unchanged outside a process group."""
    if in_process_group():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Waits for every worker; returns at once outside a process group."""
    if in_process_group():
        dist.barrier()
