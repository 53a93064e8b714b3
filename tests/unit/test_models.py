"""Tests for rayaccel.models: the ResNet-9 and the build_model factory over timm."""

import pytest
import torch

from rayaccel.models import ResNet9, build_model, model_exists, suggest_models


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("in_chans, size_px", [(1, 28), (3, 32)])
@pytest.mark.parametrize("width_multiplier", [0.25, 1.0])
@pytest.mark.parametrize("activation", ["relu", "celu"])
@pytest.mark.parametrize("pool_before_activation", [False, True])
def test_resnet9_forward_shape(
    in_chans, size_px, width_multiplier, activation, pool_before_activation
):
    model = ResNet9(
        num_classes=10,
        in_chans=in_chans,
        width_multiplier=width_multiplier,
        activation=activation,
        pool_before_activation=pool_before_activation,
    )
    logits = model(torch.randn(2, in_chans, size_px, size_px))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_resnet9_param_count_matches_architecture():
    # By hand, width 1, 10 classes: conv weights 3*64*9 + 64*128*9 + 2*128*128*9 + 128*256*9
    # + 256*512*9 + 2*512*512*9 = 6_563_520, BN weight+bias 2*(64+3*128+256+3*512) = 4_480,
    # head 512*10 = 5_120.
    assert _param_count(ResNet9(num_classes=10, in_chans=3)) == 6_573_120
    small = _param_count(ResNet9(num_classes=10, in_chans=3, width_multiplier=0.25))
    assert 380_000 < small < 450_000  # parameters scale roughly with width squared


def test_resnet9_width_multiplier_floors_channels_at_8():
    model = ResNet9(num_classes=10, in_chans=3, width_multiplier=0.01)
    assert model.num_features == 8
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_resnet9_head_scale_multiplies_logits():
    torch.manual_seed(0)
    model = ResNet9(num_classes=10, in_chans=3, width_multiplier=0.25, head_scale=1.0).eval()
    x = torch.randn(2, 3, 32, 32)
    unscaled = model(x)
    model.head_scale = 0.125
    torch.testing.assert_close(model(x), unscaled * 0.125)
    assert model.head.bias is None


def test_resnet9_pool_order():
    def layer_types(block):
        return [type(m).__name__ for m in block]

    default = ResNet9(num_classes=10, in_chans=3)
    early = ResNet9(num_classes=10, in_chans=3, pool_before_activation=True)
    assert layer_types(default.layer2) == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert layer_types(early.layer2) == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "gelu"}, "activation"),
        ({"width_multiplier": 0.0}, "width_multiplier"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_resnet9_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet9(**{"num_classes": 10, "in_chans": 3, **kwargs})


def test_resnet9_rejects_too_small_input():
    with pytest.raises(ValueError, match="at least 8x8"):
        ResNet9(num_classes=10, in_chans=3, width_multiplier=0.25)(torch.randn(1, 3, 7, 7))


def test_build_model_resnet9_passes_kwargs():
    model = build_model("resnet9", num_classes=7, in_chans=1, width_multiplier=0.25)
    assert isinstance(model, ResNet9)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize(
    "name, kwargs, input_shape",
    [
        ("resnet18", {}, (2, 1, 32, 32)),
        ("vit_tiny_patch16_224", {"img_size": 32}, (2, 1, 32, 32)),
    ],
)
def test_build_model_timm(name, kwargs, input_shape):
    model = build_model(name, num_classes=5, in_chans=1, **kwargs)
    assert model(torch.randn(*input_shape)).shape == (2, 5)


def test_build_model_unknown_name_lists_suggestions():
    with pytest.raises(ValueError, match="neither 'resnet9' nor a timm model") as error:
        build_model("resnet1888", num_classes=10, in_chans=3)
    assert "resnet18" in str(error.value)


def test_model_exists_and_suggestions():
    assert model_exists("resnet9")
    assert model_exists("resnet18")
    assert model_exists("resnet50.a1_in1k")  # timm pretrained tags name the same architecture
    assert not model_exists("resnet1888")
    assert suggest_models("vit_tiny")[0] == "vit_tiny_patch16_224"
    assert "resnet9" in suggest_models("resnt9")
    assert len(suggest_models("resnet")) == 5
    assert suggest_models("zzzzqqqq") == []


def test_torchvision_and_timm_import():
    import timm
    import torchvision
    import torchvision.ops

    # A torchvision built for another torch fails here (missing torchvision::nms), not at import.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert timm.is_model("resnet18")
