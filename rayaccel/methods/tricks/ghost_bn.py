"""Ghost batch norm: normalise each small slice of the batch with its own statistics.

"ghost BN (32-sample splits)" is a step of the myrtle.ai ResNet-9
recipe. Statistics of 32 samples are noisier than those of the whole 512-sample batch; that
noise regularises like a small batch would, while the optimizer still takes large-batch steps.
It also makes the normalisation independent of the per-worker batch size, so a recipe behaves
the same on 1 or 8 workers as long as each worker's batch holds whole 32-sample splits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import GhostBnSettings


class GhostBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, in training, normalises every ``virtual_batch_size`` chunk alone.

    The batch is cut in order into chunks of ``virtual_batch_size`` samples (the last one may be
    smaller); each chunk is normalised by its own mean and biased variance over
    ``(samples, H, W)``, then the shared affine weight and bias are applied. A batch no larger
    than ``virtual_batch_size`` is ordinary batch norm.

    Running statistics are updated once per forward pass, with the usual momentum, from the
    sample-weighted mean of the chunks' means and of their unbiased variances: that is the
    expected statistic of one chunk, which is what each sample was normalised with in training.
    In eval mode it is exactly ``BatchNorm2d`` (running statistics), and the state dict has the same keys, so checkpoints interchange.

    Args:
        num_features: Channels C of the ``(N, C, H, W)`` input.
        virtual_batch_size: Samples per chunk, >= 2 (one sample has no batch variance to speak
            of: spatial positions alone would be normalised).
        eps, momentum, affine, track_running_stats, device, dtype: As for ``BatchNorm2d``;
            ``momentum=None`` is a cumulative average over forward passes.

    Raises:
        ValueError: If ``virtual_batch_size`` is not an int >= 2.
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 2:
            raise ValueError(f"virtual_batch_size must be an int >= 2, got {virtual_batch_size!r}")
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        n_samples = x.shape[0]
        n_full = n_samples - n_samples % self.virtual_batch_size
        pieces = []  # (normalised chunks, their means, unbiased variances, samples per chunk)
        if n_full:
            chunks = x[:n_full].unflatten(0, (-1, self.virtual_batch_size))
            pieces.append(self._normalise_chunks(chunks))
        if n_full < n_samples:
            pieces.append(self._normalise_chunks(x[n_full:].unsqueeze(0)))
        out = torch.cat([normalised.flatten(0, 1) for normalised, *_ in pieces]).to(x.dtype)
        if self.track_running_stats:
            self._update_running_stats(pieces, n_samples)
        return out

    def _normalise_chunks(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Normalises ``(G, n, C, H, W)`` chunks separately; returns them with their stats.

        Statistics are taken in float32 even under autocast: sums over ``n * H * W`` values
        lose too much precision in float16 (``BatchNorm2d`` does the same).
        """
        chunks = chunks.float()
        var, mean = torch.var_mean(chunks, dim=(1, 3, 4), unbiased=False, keepdim=True)
        out = (chunks - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight.view(1, 1, -1, 1, 1) + self.bias.view(1, 1, -1, 1, 1)
        values_per_channel = chunks.shape[1] * chunks.shape[3] * chunks.shape[4]
        unbiased_var = var * (values_per_channel / max(values_per_channel - 1, 1))
        return out, mean.flatten(1), unbiased_var.flatten(1), chunks.shape[1]

    def _update_running_stats(self, pieces: list, n_samples: int) -> None:
        with torch.no_grad():
            batch_mean = sum(mean.sum(0) * n for _, mean, _, n in pieces) / n_samples
            batch_var = sum(var.sum(0) * n for _, _, var, n in pieces) / n_samples
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            else:
                momentum = self.momentum
            self.running_mean.lerp_(batch_mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(batch_var.to(self.running_var.dtype), momentum)


def convert_to_ghost_bn(model: nn.Module, virtual_batch_size: int) -> nn.Module:
    """Replaces every ``nn.BatchNorm2d`` in ``model`` by an equivalent ``GhostBatchNorm2d``.

    Settings, parameters, running statistics, ``requires_grad`` flags (e.g. a frozen BN
    scale), device, dtype and train/eval mode are kept. Subclasses of ``BatchNorm2d`` (such as
    ``GhostBatchNorm2d`` itself) and ``SyncBatchNorm`` are left alone: ghost BN is per worker
    by construction, so convert before any ``convert_sync_batchnorm``.

    Args:
        model: Converted in place.
        virtual_batch_size: Samples per chunk, >= 2.

    Returns:
        ``model``, or a new ``GhostBatchNorm2d`` if ``model`` itself is a ``BatchNorm2d``.
    """
    if type(model) is nn.BatchNorm2d:
        return _ghost_copy(model, virtual_batch_size)
    for name, child in model.named_children():
        converted = convert_to_ghost_bn(child, virtual_batch_size)
        if converted is not child:
            setattr(model, name, converted)
    return model


def _ghost_copy(norm: nn.BatchNorm2d, virtual_batch_size: int) -> GhostBatchNorm2d:
    reference = norm.weight if norm.affine else norm.running_mean
    ghost = GhostBatchNorm2d(
        norm.num_features,
        virtual_batch_size,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
    )
    ghost.load_state_dict(norm.state_dict())
    if norm.affine:
        ghost.weight.requires_grad_(norm.weight.requires_grad)
        ghost.bias.requires_grad_(norm.bias.requires_grad)
    return ghost.train(norm.training)


class GhostBnHook(Hook):
    """Every BatchNorm2d of the model becomes a ghost BN of `virtual_batch_size` samples."""

    def __init__(self, virtual_batch_size: int):
        self.virtual_batch_size = virtual_batch_size

    def transform_model(self, model: nn.Module) -> nn.Module:
        return convert_to_ghost_bn(model, self.virtual_batch_size)


def hooks_for(settings: GhostBnSettings, context: WorkerContext) -> list[Hook]:
    return [GhostBnHook(settings.virtual_batch_size)]
