"""ResNet-9: the small residual network behind the fastest CIFAR-10 training recipes.

Architecture from David Page's myrtle.ai blog series "How to train your ResNet" (2018), which
took CIFAR-10 to 94% test accuracy in 26 s on one V100, and later reused by airbench. Written
from the blog's description, not copied from any implementation:

    prep    conv 64
    layer1  conv 128, max-pool 2, residual(conv-BN-act 128, conv-BN-act 128)
    layer2  conv 256, max-pool 2
    layer3  conv 512, max-pool 2, residual(conv-BN-act 512, conv-BN-act 512)
    head    global max-pool, linear without bias, logits multiplied by 0.125

Every conv is 3x3, padding 1, without bias (the following BatchNorm has one). At width 1 the
network has about 6.57M parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = ("relu", "celu")
_MIN_CHANNELS = 8
# Three stride-2 max-pools: an input smaller than 8 px would shrink to zero pixels before the
# global pool, and PyTorch's error for that does not mention the input size.
_MIN_INPUT_PX = 8


def _make_activation(activation: str, celu_alpha: float) -> nn.Module:
    if activation == "relu":
        return nn.ReLU(inplace=True)
    return nn.CELU(alpha=celu_alpha, inplace=True)


class _ConvBlock(nn.Sequential):
    """3x3 conv, BatchNorm and activation, optionally with a 2x2 max-pool.

    With ``pool_before_activation`` the pool sits directly after the conv (conv-pool-BN-act):
    BN and the activation then run on a quarter of the pixels, which the myrtle.ai series found
    faster at the same accuracy. Otherwise the order is conv-BN-act-pool.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pool: bool,
        pool_before_activation: bool,
        activation: str,
        celu_alpha: float,
    ) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        norm = nn.BatchNorm2d(out_channels)
        act = _make_activation(activation, celu_alpha)
        if not pool:
            layers = [conv, norm, act]
        elif pool_before_activation:
            layers = [conv, nn.MaxPool2d(2), norm, act]
        else:
            layers = [conv, norm, act, nn.MaxPool2d(2)]
        super().__init__(*layers)


class _Residual(nn.Module):
    """``x + f(x)`` with f two same-width conv blocks, so the shortcut needs no projection."""

    def __init__(self, channels: int, *, activation: str, celu_alpha: float) -> None:
        super().__init__()
        block_kwargs = dict(
            pool=False, pool_before_activation=False, activation=activation, celu_alpha=celu_alpha
        )
        self.body = nn.Sequential(
            _ConvBlock(channels, channels, **block_kwargs),
            _ConvBlock(channels, channels, **block_kwargs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The myrtle.ai ResNet-9 (see the module docstring for the layer list and source).

    The global pool is adaptive, so any input of at least 8x8 px works: 28x28 Fashion-MNIST ends
    layer3 at 3x3, 32x32 CIFAR at 4x4.

    Args:
        num_classes: Number of output logits.
        in_chans: Channels of the input image (1 for grey-scale, 3 for RGB).
        width_multiplier: Scales every channel count (64, 128, 256, 512) to
            ``max(8, round(c * width_multiplier))``; 0.25 gives a ~0.4M-parameter model for
            fast tests and searches.
        activation: ``"relu"`` (the original) or ``"celu"`` (smooth, a later myrtle.ai step).
        celu_alpha: CELU's alpha; 0.075 is the value found in the myrtle.ai series. Ignored for
            relu.
        pool_before_activation: Pool directly after the conv (conv-pool-BN-act) instead of
            conv-BN-act-pool; cheaper, one of the myrtle.ai speed-ups.
        head_scale: Multiplies the logits. The original 0.125 keeps initial logits small, which
            behaves like a lower learning rate for the final layer.

    Raises:
        ValueError: If an argument is out of range or ``activation`` is unknown.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        width_multiplier: float = 1.0,
        activation: str = "relu",
        celu_alpha: float = 0.075,
        pool_before_activation: bool = False,
        head_scale: float = 0.125,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if activation == "celu" and not celu_alpha > 0:
            raise ValueError(f"celu_alpha must be > 0, got {celu_alpha}")

        def width(channels: int) -> int:
            return max(_MIN_CHANNELS, round(channels * width_multiplier))

        c64, c128, c256, c512 = width(64), width(128), width(256), width(512)
        act_kwargs = dict(activation=activation, celu_alpha=celu_alpha)
        pool_kwargs = dict(pool=True, pool_before_activation=pool_before_activation, **act_kwargs)

        self.prep = _ConvBlock(
            in_chans, c64, pool=False, pool_before_activation=False, **act_kwargs
        )
        self.layer1 = nn.Sequential(
            _ConvBlock(c64, c128, **pool_kwargs), _Residual(c128, **act_kwargs)
        )
        self.layer2 = _ConvBlock(c128, c256, **pool_kwargs)
        self.layer3 = nn.Sequential(
            _ConvBlock(c256, c512, **pool_kwargs), _Residual(c512, **act_kwargs)
        )
        self.global_pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c512, num_classes, bias=False)
        self.head_scale = head_scale
        self.num_classes = num_classes
        self.num_features = c512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, in_chans, H, W)`` with H, W >= 8 to logits ``(N, num_classes)``."""
        if min(x.shape[-2:]) < _MIN_INPUT_PX:
            raise ValueError(
                f"ResNet9 needs inputs of at least {_MIN_INPUT_PX}x{_MIN_INPUT_PX} px "
                f"(three 2x max-pools), got {tuple(x.shape[-2:])}"
            )
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.head(torch.flatten(self.global_pool(x), 1)) * self.head_scale
