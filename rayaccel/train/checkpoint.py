"""What a checkpoint holds, and how a worker writes and restores it.

Everything needed to continue as if never stopped: model, optimizer, grad scaler, the plan
position (the LR schedule is a pure function of it, so the position *is* the scheduler
state), images seen, and the RNG states of Python, NumPy and torch.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rayaccel.core.storage import CHECKPOINT_STATE_FILE as STATE_FILE


@dataclass
class TrainState:
    """The loop's position: the next epoch to train and what was trained so far."""

    next_epoch: int = 0
    # Images trained on (fresh plus replayed) and fresh images delivered by Ray Data.
    images_seen: int = 0
    fresh_images_seen: int = 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel (state dicts without `module.`)."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(
    directory: str | Path, *, model, optimizer, scaler, state: TrainState, methods=None
) -> None:
    """Writes the checkpoint; `methods` (e.g. the loop's method hooks) adds its state_dict()."""
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "train_state": state.__dict__,
        "methods": methods.state_dict() if methods is not None else {},
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    torch.save(payload, Path(directory) / STATE_FILE)


def load_checkpoint(
    directory: str | Path, *, model, optimizer, scaler, device, methods=None
) -> TrainState:
    """Restores everything `save_checkpoint` wrote; `methods` gets its saved state back."""
    payload = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=False)
    unwrap(model).load_state_dict(payload["model"])
    if methods is not None:
        methods.load_state_dict(payload.get("methods", {}))
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    return TrainState(**payload["train_state"])


def new_checkpoint_dir() -> str:
    return tempfile.mkdtemp(prefix="rayaccel-ckpt-")
