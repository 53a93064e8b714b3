"""EfficientTrain++ replay buffer: reuse recently preprocessed samples when the CPUs fall behind.

At low resolution the model consumes images faster than the data pipeline can decode and augment
them. With replay factor R each training step takes one fresh chunk of ``batch_size / R`` samples
and fills the rest of the batch with samples drawn uniformly, with replacement, from a FIFO buffer
of recently seen samples (the fresh chunk included), so the pipeline only has to deliver 1/R of
the batch. Each training worker keeps its own buffer on its own device; apply mixup/cutmix after
``ReplayBuffer.mix`` so replayed samples meet new partners.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rayaccel.core.seeds import epoch_seed
from rayaccel.methods.base import Hook, StepBatch

_SUPPORTED_DTYPES = (torch.uint8, torch.float16)


def fresh_chunk_size(batch_size: int, replay_factor: int) -> int:
    """Number of fresh samples per step for a per-worker batch and replay factor.

    Rounds up, ``ceil(batch_size / replay_factor)``, so the fresh share of every batch is at
    least ``1 / replay_factor``: each fresh sample is replayed at most about R times on average
    and the pipeline load drops by at most R-fold, never more than the user asked for.

    Args:
        batch_size: Samples per training step on this worker.
        replay_factor: R >= 1; 1 disables replay.

    Returns:
        Fresh samples the data pipeline must deliver per step.

    Raises:
        ValueError: If either argument is not a positive int or ``batch_size < replay_factor``
            (a step would need less than one fresh sample).
    """
    if not isinstance(replay_factor, int) or replay_factor < 1:
        raise ValueError(f"replay_factor must be an int >= 1, got {replay_factor!r}")
    if not isinstance(batch_size, int) or batch_size < replay_factor:
        raise ValueError(
            f"batch_size must be an int >= replay_factor ({replay_factor}) so every step has at "
            f"least one fresh sample, got {batch_size!r}"
        )
    return -(-batch_size // replay_factor)


class ReplayBuffer:
    """Preallocated FIFO ring buffer of samples (images, int64 labels, int64 sample indices).

    Memory is ``capacity_samples * prod(sample_shape) * itemsize`` on ``device``, allocated once
    so steady-state steps never allocate; e.g. 2000 batches of 64 fp16 3x96x96 images take 7 GB,
    so size it from the device's free memory. Sample indices are kept int64 because dataset
    indices above 2048 are not representable in fp16 and would be corrupted by a mixed-dtype
    concatenation.

    Args:
        capacity_samples: Maximum number of stored samples; the oldest are evicted beyond it.
        sample_shape: Shape of one image, e.g. ``(3, 96, 96)``.
        dtype: Storage dtype of images: ``torch.float16`` for normalised images (the release
            setting) or ``torch.uint8`` for raw pixels (half the memory).
        device: Device holding the buffer, normally the worker's accelerator.
        seed: Seed of the buffer's own generator; give each worker a different one (e.g.
            ``base_seed + world_rank``) so workers replay independently.

    Raises:
        ValueError: If the capacity, shape or dtype is invalid.
    """

    def __init__(
        self,
        capacity_samples: int,
        sample_shape: Sequence[int],
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        seed: int,
    ) -> None:
        if not isinstance(capacity_samples, int) or capacity_samples < 1:
            raise ValueError(f"capacity_samples must be an int >= 1, got {capacity_samples!r}")
        if not all(isinstance(d, int) and d >= 1 for d in sample_shape):
            raise ValueError(f"sample_shape must be positive ints, got {tuple(sample_shape)!r}")
        if dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {_SUPPORTED_DTYPES}, got {dtype}")
        self.capacity_samples = capacity_samples
        self.sample_shape = tuple(sample_shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._images = torch.empty(
            (capacity_samples, *self.sample_shape), dtype=dtype, device=self.device
        )
        self._labels = torch.empty(capacity_samples, dtype=torch.int64, device=self.device)
        self._indices = torch.empty(capacity_samples, dtype=torch.int64, device=self.device)
        # Loss weights (e.g. InfoBatch's), so a replayed sample weighs what it did when fresh.
        self._weights = torch.ones(capacity_samples, dtype=torch.float32, device=self.device)
        self._next_slot = 0
        self._count = 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)

    def __len__(self) -> int:
        """Number of samples currently stored."""
        return self._count

    def add(
        self, images: Tensor, labels: Tensor, indices: Tensor, weights: Tensor | None = None
    ) -> None:
        """Appends samples, evicting the oldest ones beyond capacity.

        Args:
            images: Shaped ``(n, *sample_shape)``; cast to the storage dtype (floating-point
                images are refused by a uint8 buffer, which would silently truncate them).
            labels: Integer class labels shaped ``(n,)``.
            indices: Integer dataset sample indices shaped ``(n,)``.
            weights: Per-sample loss weights shaped ``(n,)``; None stores weight 1.

        Raises:
            ValueError: If shapes or dtypes do not match the buffer.
        """
        n_samples = self._check_batch(images, labels, indices)
        if weights is None:
            weights = torch.ones(n_samples, dtype=torch.float32, device=self.device)
        elif weights.shape != (n_samples,):
            raise ValueError(f"weights must be shaped ({n_samples},), got {tuple(weights.shape)}")
        if n_samples > self.capacity_samples:
            images = images[-self.capacity_samples :]
            labels = labels[-self.capacity_samples :]
            indices = indices[-self.capacity_samples :]
            weights = weights[-self.capacity_samples :]
            n_samples = self.capacity_samples
        n_before_wrap = min(n_samples, self.capacity_samples - self._next_slot)
        for src_start, dst_start, length in (
            (0, self._next_slot, n_before_wrap),
            (n_before_wrap, 0, n_samples - n_before_wrap),
        ):
            if length == 0:
                continue
            src, dst = slice(src_start, src_start + length), slice(dst_start, dst_start + length)
            self._images[dst].copy_(images[src])
            self._labels[dst].copy_(labels[src])
            self._indices[dst].copy_(indices[src])
            self._weights[dst].copy_(weights[src])
        self._next_slot = (self._next_slot + n_samples) % self.capacity_samples
        self._count = min(self._count + n_samples, self.capacity_samples)

    def reseed(self, seed: int) -> None:
        """Restarts the draw generator from ``seed``, keeping the stored samples.

        Lets a caller make draws a pure function of e.g. ``(seed, rank, epoch)``, so that a run
        resumed at an epoch boundary replays exactly as the original on every worker without
        checkpointing each worker's generator.
        """
        self._generator.manual_seed(seed)

    def sample(self, n_samples: int) -> tuple[Tensor, Tensor, Tensor]:
        """Draws samples uniformly with replacement from what is stored.

        Args:
            n_samples: Number of samples to draw.

        Returns:
            ``(images, labels, indices)`` on the buffer's device, images in the storage dtype.

        Raises:
            ValueError: If ``n_samples`` is negative.
            RuntimeError: If the buffer is empty.
        """
        if not isinstance(n_samples, int) or n_samples < 0:
            raise ValueError(f"n_samples must be an int >= 0, got {n_samples!r}")
        slots = self._draw_slots(n_samples)
        return self._images[slots], self._labels[slots], self._indices[slots]

    def _draw_slots(self, n_samples: int) -> Tensor:
        if self._count == 0:
            raise RuntimeError("ReplayBuffer is empty: add() samples before sample()")
        # Slots [0, count) are exactly the filled ones, whether or not the ring has wrapped.
        return torch.randint(
            self._count, (n_samples,), generator=self._generator, device=self.device
        )

    def mix(
        self,
        fresh_images: Tensor,
        fresh_labels: Tensor,
        fresh_indices: Tensor,
        replay_factor: int,
        batch_size: int,
        *,
        fresh_weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Builds one training batch from a fresh chunk plus replayed samples.

        The fresh chunk is added to the buffer first (so it can be replayed in its own batch,
        as in the release), then ``min((R - 1) * n_fresh, batch_size - n_fresh)`` samples are
        drawn with replacement and appended after the fresh chunk. A full chunk
        (``fresh_chunk_size(batch_size, R)`` samples) thus yields exactly ``batch_size``
        samples; a short final chunk of an epoch keeps the R-fold reuse ratio instead.

        Args:
            fresh_images: Newly preprocessed images shaped ``(n_fresh, *sample_shape)``.
            fresh_labels: Their integer labels shaped ``(n_fresh,)``.
            fresh_indices: Their integer dataset indices shaped ``(n_fresh,)``.
            replay_factor: R >= 1 for the current stage.
            batch_size: Per-worker batch size of the step.
            fresh_weights: Their per-sample loss weights; None means 1. Replayed samples keep
                the weight they were added with, so a method that weights samples (InfoBatch)
                stays unbiased when they are replayed.

        Returns:
            ``(images, labels, indices, weights)`` with the fresh chunk first, on the buffer's
            device; images have ``fresh_images``' dtype (replayed ones are upcast from
            storage), labels and indices are int64, weights float32. With R = 1 the fresh
            tensors are returned untouched and the buffer is not updated.

        Raises:
            ValueError: If ``n_fresh`` is not in ``[1, fresh_chunk_size(batch_size, R)]`` or the
                inputs do not match the buffer.
        """
        max_fresh = fresh_chunk_size(batch_size, replay_factor)
        n_fresh = fresh_images.shape[0]
        if not 1 <= n_fresh <= max_fresh:
            raise ValueError(
                f"fresh_images must hold between 1 and fresh_chunk_size(batch_size={batch_size}, "
                f"replay_factor={replay_factor}) = {max_fresh} samples, got {n_fresh}"
            )
        if fresh_weights is None:
            fresh_weights = torch.ones(n_fresh, dtype=torch.float32, device=fresh_images.device)
        if replay_factor == 1:
            return fresh_images, fresh_labels, fresh_indices, fresh_weights
        self.add(fresh_images, fresh_labels, fresh_indices, fresh_weights.to(self.device))
        n_replay = min((replay_factor - 1) * n_fresh, batch_size - n_fresh)
        slots = self._draw_slots(n_replay)
        return (
            torch.cat((fresh_images.to(self.device), self._images[slots].to(fresh_images.dtype))),
            torch.cat((fresh_labels.to(self.device, torch.int64), self._labels[slots])),
            torch.cat((fresh_indices.to(self.device, torch.int64), self._indices[slots])),
            torch.cat((fresh_weights.to(self.device, torch.float32), self._weights[slots])),
        )

    def contents(self) -> tuple[Tensor, Tensor, Tensor]:
        """Copies of everything stored, oldest first: ``(images, labels, indices)``."""
        if self._count < self.capacity_samples:
            order = torch.arange(self._count, device=self.device)
        else:
            order = torch.arange(self.capacity_samples, device=self.device)
            order = (order + self._next_slot) % self.capacity_samples
        return self._images[order], self._labels[order], self._indices[order]

    def state_dict(self, *, include_contents: bool = False) -> dict[str, Any]:
        """Checkpointable state.

        The generator state and ring position are always saved. Stored samples are saved only
        with ``include_contents=True`` because they can be gigabytes; without them a restored
        buffer starts empty, which is safe because ``mix`` adds the fresh chunk before drawing.

        Args:
            include_contents: Also save the stored samples (as CPU tensors, in slot order so
                that restored draws match the original ones exactly).

        Returns:
            A dict of plain values and CPU tensors for ``torch.save``.
        """
        state: dict[str, Any] = {
            "capacity_samples": self.capacity_samples,
            "sample_shape": list(self.sample_shape),
            "dtype": str(self.dtype),
            "generator_state": self._generator.get_state(),
            "next_slot": self._next_slot,
            "count": self._count,
        }
        if include_contents:
            state["images"] = self._images[: self._count].cpu()
            state["labels"] = self._labels[: self._count].cpu()
            state["indices"] = self._indices[: self._count].cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a ``state_dict``; without saved contents the buffer is emptied.

        Raises:
            ValueError: If the saved capacity, sample shape or dtype differ from this buffer's.
        """
        saved = (state["capacity_samples"], tuple(state["sample_shape"]), state["dtype"])
        current = (self.capacity_samples, self.sample_shape, str(self.dtype))
        if saved != current:
            raise ValueError(
                f"ReplayBuffer state has (capacity_samples, sample_shape, dtype) = {saved}, "
                f"but this buffer has {current}; construct the buffer with the saved values"
            )
        self._generator.set_state(state["generator_state"].cpu())
        if "images" in state:
            count = state["count"]
            self._images[:count].copy_(state["images"])
            self._labels[:count].copy_(state["labels"])
            self._indices[:count].copy_(state["indices"])
            self._next_slot, self._count = state["next_slot"], count
        else:
            self._next_slot, self._count = 0, 0

    def _check_batch(self, images: Tensor, labels: Tensor, indices: Tensor) -> int:
        """Validates one batch against the buffer and returns its length."""
        if (
            images.ndim != 1 + len(self.sample_shape)
            or tuple(images.shape[1:]) != self.sample_shape
        ):
            raise ValueError(
                f"images must be shaped (n, *{self.sample_shape}), got {tuple(images.shape)}"
            )
        n_samples = images.shape[0]
        if images.is_floating_point() and not self.dtype.is_floating_point:
            raise ValueError(
                f"images have dtype {images.dtype} but the buffer stores {self.dtype}; use a "
                f"float16 buffer for normalised images"
            )
        for name, values in (("labels", labels), ("indices", indices)):
            if values.shape != (n_samples,):
                raise ValueError(f"{name} must be shaped ({n_samples},), got {tuple(values.shape)}")
            if values.is_floating_point() or values.is_complex():
                raise ValueError(f"{name} must be an integer tensor, got dtype {values.dtype}")
        return n_samples


class ReplayHook(Hook):
    """EfficientTrain++ replay: each step is one fresh chunk plus samples from a FIFO buffer.

    The buffer lives on this worker's device and is emptied at every stage start (samples of an
    earlier stage have another resolution and a weaker augmentation). With dtype `uint8` it
    holds raw pixels at `on_batch`; with `float16` it holds normalised, already low-pass cropped
    inputs at `on_inputs`, as the release does (no recomputation for replayed samples).

    Draws are reseeded from `(seed, epoch)` at every epoch start: only rank 0 writes
    checkpoints, so a generator state could not be saved for every worker, but a seed derived
    from the epoch makes a run resumed at an epoch boundary replay exactly like the original on
    all workers. The buffer's contents are not checkpointed (they can be gigabytes); a resumed
    epoch starts with an empty buffer, which `ReplayBuffer.mix` handles.

    Args:
        capacity_samples: Buffer size in samples.
        dtype: `torch.uint8` or `torch.float16`.
        device: The worker's device.
        seed: Distinct per worker (e.g. `job seed * 1000 + rank`).
    """

    def __init__(
        self, *, capacity_samples: int, dtype: torch.dtype, device: torch.device, seed: int
    ):
        if dtype not in (torch.uint8, torch.float16):
            raise ValueError(f"dtype must be torch.uint8 or torch.float16, got {dtype}")
        self.capacity_samples = capacity_samples
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self.replay_factor = 1
        self.batch_size = 0
        self.epoch = 0
        self.buffer: ReplayBuffer | None = None

    def on_stage_start(self, stage: Any) -> None:
        self.replay_factor = stage.replay_factor
        self.batch_size = stage.per_worker_batch
        self.buffer = None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if self.buffer is not None:
            self.buffer.reseed(self._epoch_seed())

    def on_batch(self, batch: StepBatch) -> StepBatch:
        return self._mix(batch) if self.dtype == torch.uint8 else batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        return self._mix(batch) if self.dtype == torch.float16 else batch

    def on_epoch_end(self) -> dict[str, float]:
        return {"replay/buffer_samples": len(self.buffer) if self.buffer is not None else 0}

    def _epoch_seed(self) -> int:
        return epoch_seed(self.seed, self.epoch)

    def _mix(self, batch: StepBatch) -> StepBatch:
        if self.replay_factor == 1 or batch.labels.numel() == 0:
            return batch
        sample_shape = tuple(batch.images.shape[1:])
        if self.buffer is None or self.buffer.sample_shape != sample_shape:
            self.buffer = ReplayBuffer(
                self.capacity_samples,
                sample_shape,
                dtype=self.dtype,
                device=self.device,
                seed=self._epoch_seed(),
            )
        images, labels, indices, weights = self.buffer.mix(
            batch.images,
            batch.labels,
            batch.indices,
            replay_factor=self.replay_factor,
            batch_size=self.batch_size,
            fresh_weights=batch.weights,
        )
        return StepBatch(images, labels, indices, weights if batch.weights is not None else None)
