"""Dirac (identity) initialisation of convolutions.

Dirac init is one of airbench's extra tricks on top of the myrtle.ai
recipe. A conv whose first filters start as the identity passes its input through unchanged,
so a freshly initialised deep stack begins close to a shallower network and gradients reach
the early layers from the first step; the remaining filters keep their random initialisation
and add new features on top.
"""

from __future__ import annotations

import torch
from torch import nn

from rayaccel.methods.base import Hook, WorkerContext
from rayaccel.methods.tricks.config import DiracInitSettings


def dirac_init_(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> nn.Module:
    """Makes the first ``in_channels`` filters of ``conv`` the identity, in place.

    Filter ``i < in_channels`` becomes 1 at the kernel centre of input channel ``i`` and 0
    everywhere else, so output channel ``i`` equals input channel ``i`` (plus the bias, which
    is left as is: zero it too for an exact identity). Filters ``in_channels ..
    out_channels - 1`` keep their values.

    Args:
        conv: A 1-, 2- or 3-D convolution with ``groups == 1``, ``in_channels <=
            out_channels``, odd kernel sides and stride and dilation 1 (otherwise no filter is
            an identity); padding should be ``kernel // 2`` for the output to align with the
            input.

    Returns:
        ``conv``.

    Raises:
        ValueError: If ``conv`` is not such a convolution.
    """
    if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        raise ValueError(f"conv must be an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    problems = []
    if conv.groups != 1:
        problems.append(f"groups={conv.groups} (needs 1)")
    if conv.in_channels > conv.out_channels:
        problems.append(f"in_channels={conv.in_channels} > out_channels={conv.out_channels}")
    if any(side % 2 == 0 for side in conv.kernel_size):
        problems.append(f"kernel_size={conv.kernel_size} (needs odd sides)")
    if any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        problems.append(f"stride={conv.stride}, dilation={conv.dilation} (need 1)")
    if problems:
        raise ValueError(f"dirac_init_ cannot make an identity of {conv}: {'; '.join(problems)}")
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.in_channels])
    return conv


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


class DiracInitHook(Hook):
    """Every qualifying conv of the freshly built model starts as an identity."""

    def transform_model(self, model: nn.Module) -> nn.Module:
        dirac_init_model(model)
        return model


def hooks_for(settings: DiracInitSettings, context: WorkerContext) -> list[Hook]:
    return [DiracInitHook()]
