"""3x3 patch PCA whitening as a fixed first convolution, computed from training images.

A step of the myrtle.ai ResNet-9 recipe: "3x3 patch PCA whitening as a
fixed first conv". Neighbouring pixels and colour channels are strongly correlated, so the
first layer's gradient is dominated by a few directions and its filters learn slowly. A conv
whose filters are the principal components of the training set's ``k x k`` patches, each
scaled to unit variance, hands the network decorrelated, equal-variance inputs from step one;
it is computed once from the data in a fraction of a second and never trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import WhiteningSettings

# Images unfolded per pass while accumulating the patch covariance: bounds the temporary
# (chunk * C*k*k * H*W floats, 200 MB for 256 CIFAR images with k=3) whatever N is.
_IMAGES_PER_CHUNK = 256


def patch_covariance(images: Tensor, patch_size: int = 3) -> tuple[Tensor, Tensor]:
    """Mean and covariance of all ``patch_size x patch_size`` patches of ``images``.

    Only patches fully inside the images count (no padding), so zero borders do not bias the
    statistics. Accumulated in float64 over chunks of images.

    Args:
        images: Floating-point ``(N, C, H, W)`` batch, normalised as the model sees it.
        patch_size: Odd patch side k, at most ``min(H, W)``.

    Returns:
        ``(mean, covariance)`` float64, shaped ``(D,)`` and ``(D, D)`` with ``D = C * k * k``
        in conv-weight order (channel, row, column). The covariance divides by the patch count.

    Raises:
        ValueError: If ``images`` is not a 4-D floating-point tensor or ``patch_size`` is not
            an odd int that fits the images.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a floating-point (N, C, H, W) tensor, got dtype {images.dtype} "
            f"and shape {tuple(images.shape)}"
        )
    if (
        not isinstance(patch_size, int)
        or patch_size < 1
        or patch_size % 2 == 0
        or patch_size > min(images.shape[-2:])
    ):
        raise ValueError(
            f"patch_size must be an odd int in [1, {min(images.shape[-2:])}], got {patch_size!r}"
        )
    n_dims = images.shape[1] * patch_size * patch_size
    total = torch.zeros(n_dims, dtype=torch.float64, device=images.device)
    products = torch.zeros(n_dims, n_dims, dtype=torch.float64, device=images.device)
    n_patches = 0
    for chunk in images.split(_IMAGES_PER_CHUNK):
        patches = F.unfold(chunk.double(), patch_size).transpose(1, 2).reshape(-1, n_dims)
        total += patches.sum(0)
        products += patches.T @ patches
        n_patches += patches.shape[0]
    mean = total / n_patches
    return mean, products / n_patches - torch.outer(mean, mean)


def whitening_conv_weights(
    images: Tensor, *, patch_size: int = 3, eps: float = 1e-2, negated_copies: bool = True
) -> Tensor:
    """Conv filters that whiten the ``patch_size x patch_size`` patches of ``images``.

    With the patch covariance ``Sigma = V diag(lambda) V^T``, filter i is the eigenvector
    ``v_i / sqrt(lambda_i + eps)``, largest eigenvalue first, so on the data it was computed
    from output channel i has variance ``lambda_i / (lambda_i + eps)`` and channels are
    uncorrelated: the output covariance is the identity up to the ``eps`` damping. ``eps``
    keeps the smallest components (mostly pixel noise) from being amplified without bound; for
    unit-variance inputs the 27 eigenvalues of 3x3 RGB patches sum to 27, so the default 1e-2
    only damps directions holding well under 1% of the variance.

    ``negated_copies`` appends ``-filter`` for every filter (``2 * C * k * k`` filters), as the
    record runs do: an activation straight after the whitening conv then keeps both signs of
    every component. Set it to False when a linear layer (e.g. ResNet-9's prep conv) follows,
    which can negate by itself, to halve that layer's input channels.

    Args:
        images: Floating-point ``(N, C, H, W)`` training images, normalised as the model sees
            them; a few thousand images are plenty for the ``C * k * k``-dimensional covariance.
        patch_size: Odd patch side k.
        eps: Added to every eigenvalue before the inverse square root, > 0.
        negated_copies: Also return the negated filters.

    Returns:
        float32 weight on ``images``' device shaped ``(F, C, k, k)``, ``F = C * k * k`` or twice
        that with ``negated_copies``.

    Raises:
        ValueError: If ``eps`` is not positive or the images or patch size are invalid.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    _, covariance = patch_covariance(images, patch_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues = eigenvalues.flip(0).clamp_min(0)
    filters = eigenvectors.flip(1).T / torch.sqrt(eigenvalues + eps)[:, None]
    if negated_copies:
        filters = torch.cat((filters, -filters))
    return filters.reshape(-1, images.shape[1], patch_size, patch_size).float()


def make_whitening_conv(
    images: Tensor, *, patch_size: int = 3, eps: float = 1e-2, negated_copies: bool = True
) -> nn.Conv2d:
    """A frozen, bias-free ``nn.Conv2d`` holding :func:`whitening_conv_weights`.

    Padding is ``patch_size // 2`` so the output keeps the input's height and width and the
    layers after it see the geometry they were designed for (28 px stays 28 px). No bias:
    inputs are normalised, so the patch mean is close to 0, and the BatchNorm that follows
    removes any offset. The weight has ``requires_grad=False``, so optimizer groups built from
    trainable parameters leave it out.

    Args:
        images, patch_size, eps, negated_copies: As for :func:`whitening_conv_weights`.

    Returns:
        The conv, on ``images``' device, float32, ``C`` input channels and ``F`` outputs.
    """
    weight = whitening_conv_weights(
        images, patch_size=patch_size, eps=eps, negated_copies=negated_copies
    )
    conv = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        patch_size,
        padding=patch_size // 2,
        bias=False,
        device=weight.device,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
    conv.weight.requires_grad_(False)
    return conv


def insert_whitening(
    model: nn.Module, images: Tensor, *, patch_size: int = 3, eps: float = 1e-2
) -> nn.Module:
    """Replaces the model's first conv by a fixed whitening conv and a learnable 1x1 conv.

    The first `nn.Conv2d` in module order must be a 3x3, stride-1, ungrouped conv (ResNet-9's
    prep conv). Its replacement: `make_whitening_conv(images)` (C*k*k fixed PCA filters, no
    negated copies because the 1x1 conv after it is linear and can negate by itself), then a
    1x1 conv to the original output channels, so every later layer is unchanged.

    Args:
        model: Changed in place.
        images: Normalised float `(N, C, H, W)` training images on the model's device.
        patch_size: Odd side of the whitened patches.
        eps: Damping of the smallest eigenvalues.

    Returns:
        `model`.

    Raises:
        ValueError: If the model's first conv is not such a conv.
    """
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                _check_first_conv(child)
                whiten = make_whitening_conv(
                    images, patch_size=patch_size, eps=eps, negated_copies=False
                )
                mix = nn.Conv2d(
                    whiten.out_channels,
                    child.out_channels,
                    1,
                    bias=child.bias is not None,
                    device=child.weight.device,
                )
                setattr(parent, name, nn.Sequential(whiten, mix))
                return model
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d to replace by a whitening conv")


def _check_first_conv(conv: nn.Conv2d) -> None:
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1:
        raise ValueError(
            f"whitening replaces a first conv that is 3x3, stride 1, groups 1; the model's "
            f"first conv is {conv}"
        )


class WhiteningHook(Hook):
    """The model's first conv becomes a fixed whitening conv computed from training images.

    Every worker reads the same images (`WorkerContext.training_images`), so every worker
    computes the same filters (DDP also broadcasts rank 0's at wrap time).
    """

    def __init__(self, *, patch_size: int, eps: float, sample_images: int, training_images):
        self.patch_size = patch_size
        self.eps = eps
        self.sample_images = sample_images
        self.training_images = training_images

    def transform_model(self, model: nn.Module) -> nn.Module:
        images = self.training_images(self.sample_images)
        return insert_whitening(model, images, patch_size=self.patch_size, eps=self.eps)


def hooks_for(settings: WhiteningSettings, context: WorkerContext) -> list[Hook]:
    return [
        WhiteningHook(
            patch_size=settings.patch_size,
            eps=settings.eps,
            sample_images=settings.sample_images,
            training_images=context.training_images,
        )
    ]
