"""How the job's one seed becomes a seed per worker and a seed per epoch.

Only rank 0 writes checkpoints, so a worker's generator state cannot be saved for every
worker; instead every random stream is reseeded from `(seed, epoch)` at each epoch start,
which makes a run resumed at an epoch boundary draw exactly like the uninterrupted one on
every worker.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np


def worker_seed(seed: int, rank: int) -> int:
    """A seed distinct per worker of a run (and per run seed)."""
    return seed * 1000 + rank


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed distinct per epoch of one stream (`seed` is already per worker)."""
    return seed * 100_003 + epoch


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's `random` and NumPy's legacy generator seeded with `seed` inside the block,
    their previous states restored after it.

    timm's RandAugment ops and its `Mixup` draw from these global generators; seeding them
    per call from a run's own stream makes those draws reproducible without disturbing
    whatever else uses them.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
