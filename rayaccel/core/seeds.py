"""How the job's one seed becomes a seed per worker and a seed per epoch.

Only rank 0 writes checkpoints, so a worker's generator state cannot be saved for every
worker; instead every random stream is reseeded from `(seed, epoch)` at each epoch start,
which makes a run resumed at an epoch boundary draw exactly like the uninterrupted one on
every worker.
"""

from __future__ import annotations


def worker_seed(seed: int, rank: int) -> int:
    """A seed distinct per worker of a run (and per run seed)."""
    return seed * 1000 + rank


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed distinct per epoch of one stream (`seed` is already per worker)."""
    return seed * 100_003 + epoch
