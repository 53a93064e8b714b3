"""Device-resident data (`data.mode: device`): a worker's part of a split, decoded once.

For datasets that fit in accelerator memory (CIFAR, Fashion-MNIST: 47 MB of uint8 pixels for
60,000 28-px images), the per-epoch Ray Data pass (read, decode, augment, transfer) costs more
than the training step of a small model. In device mode each worker reads the parquet shards
itself once, decodes its rows with the same `decode_batch` the Ray Data pipeline uses (so bad
rows fail or are marked exactly as there), keeps the uint8 pixels on its device, and every
epoch only draws a new permutation; augmentation then runs as batched tensor ops on the device
(`rayaccel.methods.tricks.worker_augment.WorkerAugmentHook`).

Worker r of W takes the rows at positions r, r + W, r + 2W, ... of the stored order (strided,
so a class-sorted split still gives every worker every class); for training each takes exactly
`count // W` of them, so all workers run the same number of steps, as with Ray Data's equal
split. Validation keeps every row once across workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayaccel.core.seeds import epoch_seed
from rayaccel.data.metadata import ShardSetMeta, read_meta
from rayaccel.data.pipeline import DecodeSpec, decode_batch, shard_paths, unreadable_shard


def worker_rows(count: int, rank: int, world_size: int, *, equal: bool) -> np.ndarray:
    """Stored positions of the rows worker `rank` holds.

    Args:
        count: Rows in the split.
        rank, world_size: This worker and the number of workers.
        equal: Give every worker `count // world_size` rows (training); otherwise the
            remainder goes to the first workers, so every row is held once (validation).
    """
    rows = np.arange(rank, count, world_size, dtype=np.int64)
    return rows[: count // world_size] if equal else rows


def load_rows(
    location: str, meta: ShardSetMeta, spec: DecodeSpec, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Reads and decodes the rows at stored positions `rows` (sorted) of a split.

    Only the shards holding wanted rows are read. Returns `decode_batch`'s arrays: `image`
    (N, C, H, W) uint8, `label` and `index` int64, `bad` uint8, in the order of `rows`.
    """
    if spec.task != "classification":
        raise ValueError(
            f"device-resident data (data.mode: device) supports classification only, got a "
            f"{spec.task} split at {location}; use data.mode: ray, whose pipeline decodes masks"
        )
    fs, paths = shard_paths(location, meta)
    first_index = tuple((shard.file, shard.first_index) for shard in meta.shards)
    spec = dataclasses.replace(spec, shard_first_index=first_index)
    parts = []
    for shard, path in zip(meta.shards, paths, strict=True):
        start = np.searchsorted(rows, shard.first_index)
        stop = np.searchsorted(rows, shard.first_index + shard.count)
        if start == stop:
            continue
        try:
            table = pq.read_table(path, filesystem=fs, columns=["image", "label", "index"])
        except (OSError, pa.ArrowInvalid) as err:
            raise unreadable_shard(path, err) from None
        local = rows[start:stop] - shard.first_index
        taken = table.take(local)
        batch = {
            "image": taken.column("image").to_pylist(),
            "label": taken.column("label").to_numpy(),
            "index": taken.column("index").to_numpy(),
            "path": np.array([path] * len(local)),
        }
        parts.append(decode_batch(batch, spec, np.random.default_rng(0)))
    if not parts:
        size = spec.image_size_px
        return {
            "image": np.zeros((0, spec.channels, size, size), np.uint8),
            "label": np.zeros(0, np.int64),
            "index": np.zeros(0, np.int64),
            "bad": np.zeros(0, np.uint8),
        }
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


class DeviceDataset:
    """A worker's rows of one split as tensors on its device, iterated like a Ray Data shard.

    `iter_torch_batches` is the part of Ray Data's `DataIterator` interface the loop uses, so
    the loop reads batches the same way in both data modes. With a `shuffle_seed` every call
    (one epoch) draws a new permutation from `(shuffle_seed, calls so far)`, as Ray Data
    reseeds its shuffle at every execution.

    Args:
        arrays: `load_rows` output.
        device: Where the tensors live.
        shuffle_seed: Seed of the per-epoch order; None keeps the stored order (evaluation).
    """

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device, *, shuffle_seed):
        self.tensors = {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}
        self.device = device
        self.shuffle_seed = shuffle_seed
        self.executions = 0

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def iter_torch_batches(
        self, *, batch_size: int, drop_last: bool = False, **_ray_data_options
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `image`, `label`, `index` and `bad` tensors, already on the device.

        Ray Data options such as `prefetch_batches` are accepted and ignored: nothing is
        fetched.
        """
        count = len(self)
        if self.shuffle_seed is None:
            order = None
        else:
            generator = torch.Generator().manual_seed(
                epoch_seed(self.shuffle_seed, self.executions)
            )
            order = torch.randperm(count, generator=generator).to(self.device)
        self.executions += 1
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            if order is None:
                yield {k: v[start : start + batch_size] for k, v in self.tensors.items()}
            else:
                picked = order[start : start + batch_size]
                yield {k: v[picked] for k, v in self.tensors.items()}


def load_device_dataset(
    location: str,
    spec: DecodeSpec,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    train: bool,
    shuffle_seed: int | None = None,
) -> DeviceDataset:
    """This worker's part of a split, decoded onto `device` (see the module docstring)."""
    meta = read_meta(location)
    rows = worker_rows(meta.count, rank, world_size, equal=train)
    return DeviceDataset(load_rows(location, meta, spec, rows), device, shuffle_seed=shuffle_seed)
