"""Model transforms of the fast-training tricks, applied once after the model is built.

METHODS.md section 4. The pure parts live in `init` (dirac), `whitening`, `ghost_bn` and
`frozen_bn`; this module applies them to a whole model in the one order that works (the
frozen-BN trick's optimizer groups come from `frozen_bn.bn_bias_param_groups`). The loop calls `apply_model_tricks` before
DDP wraps the model (DDP broadcasts rank 0's parameters, the whitening conv included, so
every worker starts identical) and before the optimizer is built (frozen and fixed
parameters get no optimizer state).
"""

from __future__ import annotations

from torch import Tensor, nn

from rayaccel.methods.tricks.frozen_bn import freeze_bn_scale
from rayaccel.methods.tricks.ghost_bn import convert_to_ghost_bn
from rayaccel.methods.tricks.init import dirac_init_
from rayaccel.methods.tricks.whitening import make_whitening_conv


def dirac_init_model(model: nn.Module) -> int:
    """Dirac-initialises every conv that can start as an identity; returns how many.

    Qualifying convs (`dirac_init_`'s conditions: groups 1, in <= out channels, odd kernel,
    stride and dilation 1) get their first `in_channels` filters set to the identity; others,
    such as strided stems, depthwise convs or channel-reducing convs, are left alone.
    """
    count = 0
    for module in model.modules():
        if (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.in_channels <= module.out_channels
            and all(k % 2 == 1 for k in module.kernel_size)
            and all(s == 1 for s in module.stride)
            and all(d == 1 for d in module.dilation)
        ):
            dirac_init_(module)
            count += 1
    return count


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


def apply_model_tricks(
    model: nn.Module,
    *,
    dirac_init: bool = False,
    whitening_images: Tensor | None = None,
    whitening_patch_size: int = 3,
    whitening_eps: float = 1e-2,
    ghost_bn_virtual_batch: int | None = None,
    frozen_bn_scale: float | None = None,
) -> nn.Module:
    """Applies the enabled model tricks in place, in a fixed order; returns the model.

    Order: dirac init of the existing convs, then the whitening conv (which must not be
    dirac-initialised: its filters are computed), then ghost BN, then the frozen BN scale
    (the last two commute; `freeze_bn_scale` also freezes ghost BNs, a `BatchNorm2d`
    subclass).

    Args:
        model: The freshly built model.
        dirac_init: Dirac-initialise every qualifying conv.
        whitening_images: Normalised training images for the whitening conv; None: none.
        whitening_patch_size, whitening_eps: As for `insert_whitening`.
        ghost_bn_virtual_batch: Samples per ghost-BN slice; None: plain BN.
        frozen_bn_scale: Fixed BN scale; None: BN scales train.
    """
    if dirac_init:
        dirac_init_model(model)
    if whitening_images is not None:
        insert_whitening(
            model, whitening_images, patch_size=whitening_patch_size, eps=whitening_eps
        )
    if ghost_bn_virtual_batch is not None:
        model = convert_to_ghost_bn(model, ghost_bn_virtual_batch)
    if frozen_bn_scale is not None:
        freeze_bn_scale(model, frozen_bn_scale)
    return model
