"""What every kind of ``rayaccel data prepare`` shares: its error, progress callback and subsets.

A module of its own so that ``prepare`` (the front door, one process) and ``imagefolder`` (the
parallel photo path) both use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(step, rows_done, rows_total)`` as shards are written; ``step`` is the
split's name, or for imagefolder the split and the pass ("train check", "train write")."""


class PrepareError(ValueError):
    """Bad input to ``prepare_dataset``: the message says what was wrong and what would be right."""


def stratified_subset(labels: np.ndarray, limit_per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``limit_per_class`` randomly chosen images of each class."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:limit_per_class]
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))
