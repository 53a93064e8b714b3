"""What each training worker trained in an epoch, so a user can audit Ray Data's sharding.

Every worker reports the Ray node it ran on, how many fresh images it trained on (after
bad rows and pruning) and an order-independent digest of their global sample indices; the
controller writes one entry per worker into `metrics.jsonl` (`workers`). Digests add up
over disjoint sets, so the workers' shards were disjoint and together cover the epoch's data
exactly when their `fresh_images` add up to the epoch's size and `combine_digests` of their
digests equals `index_digest` of all the epoch's indices, e.g.
`index_digest(range(train_samples))` for a plain epoch without dropped remainders.

A digest is the sum of a 64-bit mix (splitmix64's finaliser) of every index, modulo 2**64:
two different sets of the same size collide with probability about 2**-64.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_MODULUS = 2**64


def index_digest(indices: Iterable[int] | np.ndarray) -> int:
    """The order-independent digest of a set of non-negative sample indices (an int < 2**64)."""
    x = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), np.uint64)
    # uint64 array arithmetic wraps modulo 2**64, which is what the mix needs.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return int(x.sum(dtype=np.uint64))


def combine_digests(digests: Iterable[int | str]) -> int:
    """The digest of the union of disjoint sets, from their digests (ints or hex strings)."""
    return sum(int(d, 16) if isinstance(d, str) else int(d) for d in digests) % _MODULUS


class ShardAudit:
    """Accumulates one worker's fresh sample indices over an epoch."""

    def __init__(self) -> None:
        self.fresh_images = 0
        self.digest = 0

    def add(self, indices, bad=None) -> None:
        """Counts a batch's indices (a tensor or array), leaving out rows flagged `bad`."""
        indices = _numpy(indices)
        if bad is not None:
            indices = indices[~_numpy(bad).astype(bool)]
        self.fresh_images += int(indices.size)
        self.digest = (self.digest + index_digest(indices)) % _MODULUS

    def facts(self, *, rank: int, node_id: str) -> dict:
        """The worker's entry in the epoch's `workers` list (the digest as 16 hex digits)."""
        return {
            "rank": rank,
            "node_id": node_id,
            "fresh_images": self.fresh_images,
            "index_digest": f"{self.digest:016x}",
        }


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)
