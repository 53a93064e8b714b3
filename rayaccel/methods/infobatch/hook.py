"""InfoBatch on Ray: the score board as an actor, the Ray Data keep filter and the loop hook.

Where each piece runs and why:

- `ScoreBoard` is a Ray actor created by the runner next to the driver (zero CPUs). It owns
  the `InfoBatchScoreBoard` (4 bytes per sample) and, once per epoch, puts the epoch's
  `EpochSelection` (2 bits per sample) into the object store.
- `keep_rows` runs in Ray Data right after the parquet read, before the shuffle and the
  decode, so a pruned image is never decoded, augmented, shipped or trained on. The datasets of
  a `fit()` are fixed, so the filter cannot be rebuilt per epoch; instead it asks the actor for
  the current selection (a small call returning an object reference) and caches the selection
  per process. Ray Data's `streaming_split` hands every row to exactly one worker, so the
  workers' shards are disjoint and together hold the epoch's keep set.
- `InfoBatchHook` runs in every training worker: rank 0 plans the epoch before anyone reads
  (a barrier follows), the loss is weighted by the row's `loss_weight` column, and every worker
  sends its (int64 index, float32 loss) pairs to the actor at the epoch's end and waits at a
  barrier for the others, so both the checkpoint rank 0 then saves and the next epoch's plan
  hold all of them.

The actor's state (scores, seed, counters) travels in every checkpoint through the hook's
`state_dict`; each epoch's random draws are a function of (seed, epoch, scores), so a resumed
run plans its next epoch exactly as the uninterrupted run did.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor

from rayaccel.core.distributed import barrier
from rayaccel.methods.base import DriverPart, Hook, StepBatch, WorkerContext
from rayaccel.methods.infobatch.config import InfoBatchSettings
from rayaccel.methods.infobatch.scores import (
    EpochSelection,
    InfoBatchScoreBoard,
    weight_losses,
)

WEIGHT_COLUMN = "loss_weight"


@ray.remote(num_cpus=0)
class ScoreBoard:
    """The run's InfoBatch score board, reachable from Ray Data tasks and training workers."""

    def __init__(
        self, num_samples: int, *, prune_ratio, delta, total_epochs, seed, selection="exact"
    ) -> None:
        self.board = InfoBatchScoreBoard(
            num_samples,
            selection=selection,
            prune_ratio=prune_ratio,
            delta=delta,
            total_epochs=total_epochs,
            seed=seed,
        )
        self.epoch = -1
        self.selection_ref: ray.ObjectRef | None = None
        self.summary: dict[str, Any] = {}

    def plan_epoch(self, epoch: int) -> dict[str, Any]:
        """Decides `epoch`'s keep set and publishes it to the filters; returns its summary."""
        selection = self.board.plan_epoch(epoch)
        self.epoch = epoch
        self.selection_ref = ray.put(selection)
        self.summary = {
            "epoch": epoch,
            "num_kept": selection.num_kept,
            "num_samples": selection.num_samples,
            "fraction_pruned": selection.fraction_pruned,
            "mean_weight": selection.mean_weight,
            "annealed": selection.annealed,
            "keep_digest": keep_digest(selection.keep_indices),
        }
        return self.summary

    def current(self) -> tuple[int, dict[str, Any], list[ray.ObjectRef]]:
        """The planned epoch, its summary and its selection (the reference wrapped in a list
        so that the caller decides whether to fetch it)."""
        if self.selection_ref is None:
            raise RuntimeError("InfoBatch: no epoch planned yet; the loop plans before reading")
        return self.epoch, self.summary, [self.selection_ref]

    def update(self, indices: np.ndarray, losses: np.ndarray) -> None:
        self.board.update(indices, losses)

    def bookkeeping_seconds(self) -> float:
        return self.board.bookkeeping_seconds

    def state_dict(self) -> dict[str, Any]:
        return self.board.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.board.load_state_dict(state)


def keep_digest(keep_indices: np.ndarray) -> str:
    """A short order-independent fingerprint of a keep set, for metrics and audits."""
    import hashlib

    return hashlib.sha1(np.sort(keep_indices).astype(np.int64).tobytes()).hexdigest()[:16]


# Per-process cache of the current selection: Ray Data reuses worker processes, so one fetch
# per epoch and process serves every batch.
_cached: dict[str, tuple[int, EpochSelection]] = {}


def keep_rows(batch: dict[str, np.ndarray], board) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: drops this epoch's pruned rows, adds `loss_weight`."""
    epoch, _, (selection_ref,) = ray.get(board.current.remote())
    key = board._actor_id.hex()
    cached = _cached.get(key)
    if cached is None or cached[0] != epoch:
        cached = (epoch, ray.get(selection_ref))
        _cached[key] = cached
    batch = {name: np.asarray(column) for name, column in batch.items()}
    batch["index"] = batch["index"].astype(np.int64, copy=False)
    return cached[1].filter_batch(batch, weight_column=WEIGHT_COLUMN)


class InfoBatchHook(Hook):
    """The training worker's side of InfoBatch.

    Args:
        board: The `ScoreBoard` actor handle.
        rank: This worker's world rank (rank 0 plans epochs and restores the board).
    """

    def __init__(self, board, *, rank: int) -> None:
        self.board = board
        self.rank = rank
        self.summary: dict[str, Any] = {}
        self.indices: list[Tensor] = []
        self.losses: list[Tensor] = []
        self.update_s = 0.0
        self.bookkeeping_before_s = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        started_s = time.perf_counter()
        if self.rank == 0:
            self.bookkeeping_before_s = ray.get(self.board.bookkeeping_seconds.remote())
            ray.get(self.board.plan_epoch.remote(epoch))
        # Nobody may start reading the epoch before its keep set is published.
        barrier()
        epoch_planned, self.summary, _ = ray.get(self.board.current.remote())
        if epoch_planned != epoch:
            raise RuntimeError(
                f"InfoBatch: board planned epoch {epoch_planned}, loop is at {epoch}"
            )
        self.indices, self.losses = [], []
        self.update_s = time.perf_counter() - started_s

    def epoch_samples(self, samples: int) -> int:
        """Rows the epoch's Ray Data pass yields: the keep set, not the whole dataset."""
        return self.summary.get("num_kept", samples)

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        # Scores are the plain (unweighted) losses; int64 indices and float32 losses travel
        # separately so no index is ever rounded by a low-precision loss dtype.
        self.indices.append(batch.indices.detach().to(torch.int64))
        self.losses.append(losses.detach().float())
        if batch.weights is None:
            return losses
        return weight_losses(losses, batch.weights)

    def on_epoch_end(self) -> dict[str, float]:
        started_s = time.perf_counter()
        if self.indices:
            indices = torch.cat(self.indices).cpu().numpy()
            losses = torch.cat(self.losses).cpu().numpy()
            ray.get(self.board.update.remote(indices, losses))
        # Every worker's scores must be on the board before any rank goes on: rank 0 saves the
        # board into this epoch's checkpoint right after this hook, before the report barrier,
        # and a resumed run must plan its next epoch from the same scores as this run does.
        barrier()
        self.indices, self.losses = [], []
        self.update_s += time.perf_counter() - started_s
        if self.rank != 0:
            return {}
        board_s = ray.get(self.board.bookkeeping_seconds.remote()) - self.bookkeeping_before_s
        return {
            "infobatch/fraction_pruned": self.summary["fraction_pruned"],
            "infobatch/kept_samples": self.summary["num_kept"],
            "infobatch/mean_weight": self.summary["mean_weight"],
            "infobatch/annealed": self.summary["annealed"],
            "infobatch/keep_digest": self.summary["keep_digest"],
            # Planning and score updates on the board plus this worker's plan/update calls.
            "infobatch/bookkeeping_s": board_s + self.update_s,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"board": ray.get(self.board.state_dict.remote())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rank == 0 and "board" in state:
            ray.get(self.board.load_state_dict.remote(state["board"]))


def hooks_for(settings: InfoBatchSettings, context: WorkerContext) -> list[Hook]:
    return [InfoBatchHook(context.resources["infobatch_board"], rank=context.rank)]


def driver_part(job: Any, plan: Any) -> DriverPart:
    """The run's score board, handed to the workers, and the row filter that drops the
    epoch's pruned rows in Ray Data. A fresh board starts every `fit()`; a resumed run's
    loop restores the scores from its checkpoint before planning the next epoch."""
    board = ScoreBoard.remote(
        plan.train_samples,
        prune_ratio=job.infobatch.prune_ratio,
        selection=job.infobatch.selection,
        delta=job.infobatch.delta,
        total_epochs=plan.total_epochs,
        seed=job.train.seed,
    )
    return DriverPart(
        resources={"infobatch_board": board},
        row_filter=keep_rows,
        row_filter_kwargs={"board": board},
        release=lambda: ray.kill(board),
    )
