"""InfoBatch (ICLR 2024): unbiased dynamic data pruning by per-sample training loss.

Each epoch, samples whose latest loss is below the mean loss ("well learned") are dropped with
probability ``prune_ratio`` (r); the surviving well-learned samples get loss weight 1/(1-r), so
the expected gradient of an epoch equals the full-data gradient. The last ``1 - delta`` of the
epochs train on all data with weight 1 ("annealing").

Where the pieces run:

- The driver owns one :class:`InfoBatchScoreBoard` (4 bytes per sample). Before each epoch it
  calls :meth:`InfoBatchScoreBoard.plan_epoch`, which returns an :class:`EpochSelection`: two bit
  masks (2 bits per sample, 3.5 MB for 14M samples) cheap enough to ship to every Ray Data task.
- Ray Data filters rows right after reading with :meth:`EpochSelection.filter_batch` (a
  ``map_batches`` function on the ``index`` column) so pruned images are never decoded or
  augmented. The filter is a per-row function of the global index, and Ray Data's
  ``streaming_split`` hands every row to exactly one worker, so the workers' shards are disjoint
  and together hold exactly the epoch's keep set; no separate shard assignment exists.
- Workers train with :func:`weight_losses` (averaged over the batch) and send their ``(int64 index, float32 loss)`` pairs
  to the board, which calls :meth:`InfoBatchScoreBoard.update` (``rayaccel.methods.infobatch.hook``
  holds the Ray side: the board actor, the Ray Data filter and the loop hook).

Decisions where the paper and reference code leave room:

- Unseen samples have score NaN and are never pruned (``NaN < mean`` is false); the mean is taken
  over scored samples only. Epoch 0 therefore prunes nothing, and neither are samples a run has
  not scored yet (e.g. rows an equal streaming split dropped).
- ``selection="exact"`` (the default, as the reference release): of the n well-learned samples
  exactly ``int((1 - r) * n)`` are kept, a uniformly random subset, each weighing 1/(1-r) (the
  release's weight; the expected weight of a well-learned sample is then 1 to within 1/n).
  ``selection="bernoulli"``: each is dropped independently with probability r, which makes the
  expected weight exactly 1 but lets the kept count vary by about ``sqrt(n r (1-r))``, which
  widens the per-epoch spread of the weighted loss (sd 0.24% of the sum against 0.14%, 20,000
  samples at r = 0.5). Either way
  :attr:`EpochSelection.num_kept` is known before the epoch starts, so the loop can size its
  step-based schedules from it.
- Randomness comes from ``np.random.default_rng([seed, epoch])`` with one uniform draw per sample
  in index order (the exact count keeps the well-learned samples with the smallest draws), so an
  epoch's keep set depends only on (seed, epoch, scores): a resumed run reproduces it whatever
  was planned before, and no RNG state needs saving beyond the seed.
- Pruning runs while ``epoch + 1 <= delta * total_epochs``, as the release's sampler does; the
  first full-data epoch is ``floor(delta * total_epochs)`` (δ=0.875: 8 epochs → 7, 10 epochs →
  8, 90 epochs → 78). A product like 0.7 * 10 = 6.999999999999999 is rounded to 9 decimals
  first, so it counts as 7.
- The prune ratio is capped at 0.9 (weight at most 10), the release's bound: beyond it one
  epoch's weighted-loss sum drifts by percents.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rayaccel.methods.infobatch.config import MAX_PRUNE_RATIO

SELECTIONS = ("exact", "bernoulli")


def first_full_epoch(delta: float, total_epochs: int) -> int:
    """First annealed (full-data) epoch: ``floor(delta * total_epochs)`` (the release prunes
    while ``epoch + 1 <= delta * total_epochs``), rounded to 9 decimals first so that e.g.
    0.7 * 10 = 6.999999999999999 counts as 7."""
    return math.floor(round(delta * total_epochs, 9))


def _check_indices(indices: np.ndarray, num_samples: int, what: str) -> None:
    """Raise if ``indices`` is not a 1-D int64 array of valid sample indices.

    Floating-point or narrow index columns corrupt indices silently (float32 rounds above 2**24),
    so only int64 is accepted rather than cast.
    """
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        got = indices.dtype if isinstance(indices, np.ndarray) else type(indices).__name__
        raise TypeError(
            f"{what} must be a numpy int64 array, got {got}; create the index column as int64 "
            "(e.g. .astype(np.int64)) so indices above 2**24 are not rounded"
        )
    if indices.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_samples):
        position = int(np.flatnonzero((indices < 0) | (indices >= num_samples))[0])
        raise ValueError(
            f"{what}[{position}] = {int(indices[position])} is outside the dataset's index range "
            f"[0, {num_samples}); was the board built with the right num_samples?"
        )


def _bits_at(packed: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Look up bits of a little-endian ``np.packbits`` mask at ``indices`` (O(len(indices)))."""
    return ((packed[indices >> 3] >> (indices & 7).astype(np.uint8)) & 1).astype(bool)


@dataclasses.dataclass(frozen=True, eq=False)
class EpochSelection:
    """Which samples one epoch trains on, and with what loss weight.

    Weights take only two values, 1 and 1/(1-r), so the selection is stored as two bit masks
    (2 bits per sample) and pickles small enough to ship to every Ray Data task. The index and
    weight arrays are expanded lazily on the driver when needed.

    Attributes:
        epoch: The epoch this selection is for.
        num_samples: Size of the dataset's index space.
        annealed: True for full-data epochs (no pruning; every weight 1).
        upweight: The weight 1/(1-r) of kept well-learned samples (1.0 when annealed).
        score_threshold: Mean score below which samples counted as well learned; NaN when no
            sample had a score yet or the epoch is annealed.
        num_kept: Number of samples trained on this epoch.
        num_upweighted: Number of kept samples carrying ``upweight``.
        keep_bits: Little-endian packed keep mask, ``ceil(num_samples / 8)`` bytes.
        upweight_bits: Little-endian packed mask of the kept samples carrying ``upweight``.
    """

    epoch: int
    num_samples: int
    annealed: bool
    upweight: float
    score_threshold: float
    num_kept: int
    num_upweighted: int
    keep_bits: np.ndarray
    upweight_bits: np.ndarray

    def __getstate__(self) -> dict[str, Any]:
        # Ship only the bit masks; the expanded arrays (12 bytes per kept sample) stay local.
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @property
    def fraction_pruned(self) -> float:
        """Share of the dataset skipped this epoch."""
        return 1.0 - self.num_kept / self.num_samples

    @property
    def mean_weight(self) -> float:
        """Mean loss weight over the kept samples (how much the loss scale is inflated)."""
        if self.num_kept == 0:
            return 0.0
        num_plain = self.num_kept - self.num_upweighted
        return (num_plain + self.num_upweighted * self.upweight) / self.num_kept

    @functools.cached_property
    def keep_indices(self) -> np.ndarray:
        """Sorted int64 indices of the kept samples."""
        keep = np.unpackbits(self.keep_bits, count=self.num_samples, bitorder="little")
        return np.flatnonzero(keep).astype(np.int64, copy=False)

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """float32 loss weights aligned with :attr:`keep_indices`."""
        upweighted = _bits_at(self.upweight_bits, self.keep_indices)
        return np.where(upweighted, np.float32(self.upweight), np.float32(1.0))

    def weight_of(self, indices: np.ndarray) -> np.ndarray:
        """Loss weight of each sample in ``indices``: 0 if pruned, else 1 or 1/(1-r).

        Args:
            indices: 1-D int64 sample indices.

        Returns:
            float32 array aligned with ``indices``.
        """
        _check_indices(indices, self.num_samples, "indices")
        keep = _bits_at(self.keep_bits, indices)
        upweighted = _bits_at(self.upweight_bits, indices)
        weights = keep.astype(np.float32)
        weights[upweighted] = np.float32(self.upweight)
        return weights

    def keep_filter(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decide which rows of a data batch to keep, from the batch's global sample indices.

        Args:
            indices: 1-D int64 sample indices of the batch's rows.

        Returns:
            ``(keep, weights)``: a bool mask aligned with ``indices`` and the float32 loss weights
            of the kept rows, aligned with ``indices[keep]``.
        """
        weights = self.weight_of(indices)
        keep = weights > 0
        return keep, weights[keep]

    def filter_batch(
        self,
        batch: Mapping[str, np.ndarray],
        *,
        index_column: str = "index",
        weight_column: str = "loss_weight",
    ) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` function (``batch_format="numpy"``): drop pruned rows.

        Args:
            batch: Columns of equal length, including the int64 ``index_column``.
            index_column: Column holding each row's global sample index.
            weight_column: Name of the added float32 column with each kept row's loss weight.

        Returns:
            The kept rows of every column plus ``weight_column``.

        Raises:
            KeyError: If ``index_column`` is missing.
            ValueError: If ``weight_column`` already exists.
        """
        if index_column not in batch:
            raise KeyError(
                f"batch has no index column {index_column!r} (columns: {sorted(batch)}); "
                "every row must carry its global sample index"
            )
        if weight_column in batch:
            raise ValueError(f"batch already has a column named {weight_column!r}")
        keep, weights = self.keep_filter(batch[index_column])
        kept = {name: column[keep] for name, column in batch.items()}
        kept[weight_column] = weights
        return kept


class InfoBatchScoreBoard:
    """Per-sample scores and per-epoch keep/weight decisions for InfoBatch, held by the driver.

    Memory is 4 bytes per sample (float32 scores); planning an epoch is a handful of vectorised
    passes with about 6 bytes per sample of temporaries (measured), updates cost O(batch).

    Attributes:
        last_planned_epoch: Epoch of the latest :meth:`plan_epoch` call, -1 before the first.
        bookkeeping_seconds: Wall-clock seconds spent so far in :meth:`plan_epoch` and
            :meth:`update`, for the per-epoch "pruning bookkeeping" metric (take differences).

    Args:
        num_samples: Size of the dataset's global index space (indices ``0..num_samples-1``).
        prune_ratio: Share r of the well-learned samples dropped each epoch, in [0, 0.9].
        selection: ``"exact"`` (keep exactly ``int((1 - r) n)`` of the n well-learned samples)
            or ``"bernoulli"`` (drop each with probability r).
        delta: Fraction of the epochs that prune, in (0, 1]; the rest train on all data.
        total_epochs: Epochs in the run; sets where annealing begins.
        seed: Non-negative seed; with the epoch it determines every random decision.

    Raises:
        ValueError: If any argument is out of range.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        total_epochs: int,
        seed: int,
        selection: str = "exact",
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0 <= prune_ratio <= MAX_PRUNE_RATIO:
            raise ValueError(
                f"prune_ratio must be in [0, {MAX_PRUNE_RATIO}], got {prune_ratio}; kept samples "
                "weigh 1/(1-r), and above 10 one epoch's weighted loss drifts by percents"
            )
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if not 0 < delta <= 1:
            raise ValueError(f"delta must be in (0, 1], got {delta}")
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = int(num_samples)
        self.prune_ratio = float(prune_ratio)
        self.delta = float(delta)
        self.total_epochs = int(total_epochs)
        self.seed = int(seed)
        self.selection = selection
        self._scores = np.full(self.num_samples, np.nan, dtype=np.float32)
        self.last_planned_epoch = -1
        self.bookkeeping_seconds = 0.0

    @property
    def first_full_epoch(self) -> int:
        """First annealed epoch (see :func:`first_full_epoch`)."""
        return first_full_epoch(self.delta, self.total_epochs)

    @property
    def scores(self) -> np.ndarray:
        """Read-only view of the float32 scores (NaN = not scored yet)."""
        view = self._scores.view()
        view.flags.writeable = False
        return view

    @property
    def nbytes(self) -> int:
        """Bytes held by the board's arrays."""
        return self._scores.nbytes

    def plan_epoch(self, epoch: int) -> EpochSelection:
        """Decide which samples ``epoch`` trains on and their loss weights.

        Depends only on (seed, epoch, current scores), never on earlier calls.

        Args:
            epoch: Zero-based epoch in ``[0, total_epochs)``.

        Returns:
            The epoch's selection.

        Raises:
            ValueError: If ``epoch`` is outside ``[0, total_epochs)``.
        """
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch must be in [0, total_epochs={self.total_epochs}), got {epoch}")
        start_s = time.perf_counter()
        num_bytes = (self.num_samples + 7) // 8
        if epoch >= self.first_full_epoch or self.prune_ratio == 0:
            selection = EpochSelection(
                epoch=epoch,
                num_samples=self.num_samples,
                annealed=epoch >= self.first_full_epoch,
                upweight=1.0,
                score_threshold=math.nan,
                num_kept=self.num_samples,
                num_upweighted=0,
                # Padding bits past num_samples are never read: lookups are range-checked.
                keep_bits=np.full(num_bytes, 0xFF, dtype=np.uint8),
                upweight_bits=np.zeros(num_bytes, dtype=np.uint8),
            )
        else:
            selection = self._prune(epoch)
        self.last_planned_epoch = epoch
        self.bookkeeping_seconds += time.perf_counter() - start_s
        return selection

    def _prune(self, epoch: int) -> EpochSelection:
        scored = ~np.isnan(self._scores)
        num_scored = int(np.count_nonzero(scored))
        # Summing in float64 keeps the mean exact enough over 14M float32 losses.
        threshold = (
            float(np.mean(self._scores, where=scored, dtype=np.float64)) if num_scored else math.nan
        )
        del scored
        well_learned = self._scores < threshold  # False for NaN scores and a NaN threshold
        # One draw per sample in index order, so sample i's draw depends only on (seed, epoch, i).
        uniform = np.random.default_rng([self.seed, epoch]).random(
            self.num_samples, dtype=np.float32
        )
        if self.selection == "exact":
            dropped = _all_but_smallest(uniform, well_learned, keep_share=1.0 - self.prune_ratio)
        else:
            dropped = uniform < self.prune_ratio
            dropped &= well_learned
        del uniform
        upweighted = np.logical_xor(well_learned, dropped, out=well_learned)  # kept & well learned
        num_dropped = int(np.count_nonzero(dropped))
        num_upweighted = int(np.count_nonzero(upweighted))
        keep = np.logical_not(dropped, out=dropped)
        return EpochSelection(
            epoch=epoch,
            num_samples=self.num_samples,
            annealed=False,
            upweight=float(np.float32(1.0 / (1.0 - self.prune_ratio))),
            score_threshold=threshold,
            num_kept=self.num_samples - num_dropped,
            num_upweighted=num_upweighted,
            keep_bits=np.packbits(keep, bitorder="little"),
            upweight_bits=np.packbits(upweighted, bitorder="little"),
        )

    def update(self, indices: np.ndarray, losses: np.ndarray) -> None:
        """Set the scores of ``indices`` to their latest training losses.

        Args:
            indices: 1-D int64 sample indices (e.g. from :func:`gather_losses`).
            losses: Per-sample losses aligned with ``indices``; stored as float32. If an index
                repeats, its last loss wins.

        Raises:
            TypeError: If ``indices`` is not an int64 array.
            ValueError: If an index is out of range, lengths differ, or a loss is not finite.
        """
        start_s = time.perf_counter()
        _check_indices(indices, self.num_samples, "indices")
        losses = np.asarray(losses, dtype=np.float32)
        if losses.shape != indices.shape:
            raise ValueError(
                f"losses must align with indices, got shapes {losses.shape} and {indices.shape}"
            )
        finite = np.isfinite(losses)
        if not finite.all():
            position = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"losses[{position}] = {losses[position]} for sample {int(indices[position])} is "
                "not finite; a NaN score would read as 'never seen' and inf would skew the mean"
            )
        # numpy does not promise which duplicate a fancy assignment keeps; unique() on the
        # reversed array picks each index's last occurrence explicitly.
        unique_indices, reversed_positions = np.unique(indices[::-1], return_index=True)
        self._scores[unique_indices] = losses[::-1][reversed_positions]
        self.bookkeeping_seconds += time.perf_counter() - start_s

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: config, scores and counters.

        No RNG state is stored because each epoch's generator is rebuilt from (seed, epoch).
        """
        return {
            "num_samples": self.num_samples,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "total_epochs": self.total_epochs,
            "seed": self.seed,
            "selection": self.selection,
            "scores": self._scores.copy(),
            "last_planned_epoch": self.last_planned_epoch,
            "bookkeeping_seconds": self.bookkeeping_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore scores and counters saved by :meth:`state_dict`.

        The configuration must match the board's: a changed seed, ratio or epoch count would
        silently give a resumed run different keep sets than the interrupted one.

        Raises:
            ValueError: If a configuration field differs or the scores have the wrong shape.
        """
        # Checkpoints written before the exact count existed pruned by Bernoulli draws.
        state = {"selection": "bernoulli", **state}
        for name in ("num_samples", "prune_ratio", "delta", "total_epochs", "seed", "selection"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"checkpoint has {name}={state[name]!r} but this board was built with "
                    f"{name}={getattr(self, name)!r}; build the board with the checkpoint's value"
                )
        scores = np.asarray(state["scores"], dtype=np.float32)
        if scores.shape != (self.num_samples,):
            raise ValueError(
                f"checkpoint scores have shape {scores.shape}, expected ({self.num_samples},)"
            )
        self._scores = scores.copy()
        self.last_planned_epoch = int(state["last_planned_epoch"])
        self.bookkeeping_seconds = float(state["bookkeeping_seconds"])


def _all_but_smallest(
    uniform: np.ndarray, candidates: np.ndarray, *, keep_share: float
) -> np.ndarray:
    """The drop mask that keeps exactly ``int(keep_share * n)`` of the n ``candidates``: those
    with the smallest draws in ``uniform``, a uniformly random subset since the draws are iid
    (equal draws at the cut are taken in index order).

    Finds the cut with an in-place partition of the candidates' draws: linear time and about
    2 bytes per sample of temporaries, where sorting index arrays would take 16.
    """
    draws = uniform[candidates]
    num_kept = int(round(keep_share * draws.size, 9))
    if num_kept == 0:
        return candidates.copy()
    draws.partition(num_kept - 1)
    cut = draws[num_kept - 1]
    del draws
    kept = uniform < cut
    kept &= candidates
    missing = num_kept - int(np.count_nonzero(kept))
    if missing:
        at_cut = np.flatnonzero((uniform == cut) & candidates)[:missing]
        kept[at_cut] = True
    dropped = np.logical_xor(candidates, kept, out=kept)  # candidates not kept
    return dropped


def weight_losses(per_sample_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample ``loss * weight``; the trainer averages them over the batch.

    Dividing by the batch size (not by the sum of weights) is what keeps pruning unbiased:
    summed over an epoch, each sample contributes ``weight * grad / batch_size``, and since a
    well-learned sample survives with probability 1-r and carries weight 1/(1-r), its expected
    contribution equals the unpruned ``grad / batch_size``. Normalising by the sum of weights
    would cancel the 1/(1-r) and shrink the well-learned samples' share of the update by
    (1-r); a plain sum would tie the step size to the batch size.

    bf16/fp16 losses from autocast are weighted in float32; float64 losses stay float64.

    Raises:
        ValueError: If the tensors are not 1-D of equal length.
    """
    if per_sample_loss.shape != weights.shape or per_sample_loss.ndim != 1:
        raise ValueError(
            "per_sample_loss and weights must be 1-D of equal length, got "
            f"{tuple(per_sample_loss.shape)} and {tuple(weights.shape)}"
        )
    dtype = torch.promote_types(per_sample_loss.dtype, torch.float32)
    weights = weights.to(device=per_sample_loss.device, dtype=dtype)
    return per_sample_loss.to(dtype) * weights
