"""Tests of dirac (identity) initialisation."""

import pytest
import torch
from torch import nn

from rayaccel.methods.tricks.init import dirac_init_


def test_first_channels_reproduce_the_input_and_the_rest_are_kept():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    kept = conv.weight[3:].clone()
    assert dirac_init_(conv) is conv
    x = torch.randn(2, 3, 6, 7)
    out = conv(x)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(conv.weight[3:], kept)
    assert conv.weight.requires_grad


@pytest.mark.parametrize(
    ("conv", "problem"),
    [
        (nn.Conv2d(4, 2, 3, padding=1), "in_channels=4 > out_channels=2"),
        (nn.Conv2d(2, 4, 2), "needs odd sides"),
        (nn.Conv2d(2, 4, 3, groups=2), "groups=2"),
        (nn.Conv2d(2, 4, 3, stride=2), "stride"),
    ],
)
def test_rejects_convs_without_an_identity(conv, problem):
    with pytest.raises(ValueError, match=problem):
        dirac_init_(conv)
