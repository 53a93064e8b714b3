"""Models keep their parameters and keep working when a curriculum changes the resolution."""

from __future__ import annotations

import pytest
import torch

from rayaccel.models import build_model
from rayaccel.models.resolution import fit_to_resolution

TINY_SWIN = dict(img_size=56, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


def _parameter_ids(model):
    return [id(p) for p in model.parameters()]


def test_swin_keeps_its_windows_and_parameters_across_resolutions():
    model = build_model("swin_tiny_patch4_window7_224", num_classes=10, in_chans=3, **TINY_SWIN)
    params = _parameter_ids(model)
    windows = [layer.blocks[0].window_size for layer in model.layers]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for size in (32, 40, 56, 32):
        assert fit_to_resolution(model, size) in ("unchanged", f"windows kept at {windows}")
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 10)
        out.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert _parameter_ids(model) == params
        assert [layer.blocks[0].window_size for layer in model.layers] == windows


def test_vit_needs_dynamic_img_size_to_change_resolution():
    fixed = build_model("vit_tiny_patch16_224", num_classes=10, in_chans=3, **TINY_VIT)
    assert fit_to_resolution(fixed, 32) == "unchanged"
    with pytest.raises(ValueError, match="model.kwargs.dynamic_img_size: true"):
        fit_to_resolution(fixed, 16)
    dynamic = build_model(
        "vit_tiny_patch16_224", num_classes=10, in_chans=3, dynamic_img_size=True, **TINY_VIT
    )
    assert fit_to_resolution(dynamic, 16) == "dynamic size"
    assert dynamic(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_cnns_take_any_size_untouched():
    model = build_model("resnet9", num_classes=10, in_chans=1, width_multiplier=0.25)
    assert fit_to_resolution(model, 14) == "unchanged"
    assert model(torch.randn(2, 1, 14, 14)).shape == (2, 10)
