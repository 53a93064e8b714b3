"""`train.channels_last`: the inputs' strides, the model's layout and the job field."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import REPO_ROOT
from test_recipe_wiring import _job

from rayaccel.config import parse_job
from rayaccel.models import build_model
from rayaccel.train.loop import in_memory_format
from rayaccel.train.runner import build_run

NCHW = torch.contiguous_format
NHWC = torch.channels_last


def _grey_with_decoded_strides() -> torch.Tensor:
    # What decoding an (N, H, W, 1) array and moving its channel axis gives: a grey batch
    # that `is_contiguous()` in both layouts but carries channels-last strides.
    return torch.rand(6, 28, 28, 1).permute(0, 3, 1, 2)


def test_grey_images_get_the_strides_of_the_requested_layout():
    images = _grey_with_decoded_strides()
    assert images.is_contiguous() and images.stride() == (784, 1, 28, 1)
    # `contiguous()` keeps those strides; the helper does not.
    assert images.contiguous().stride() == (784, 1, 28, 1)
    assert in_memory_format(images, channels_last=False).stride() == (784, 784, 28, 1)
    assert in_memory_format(images, channels_last=True).stride() == (784, 1, 28, 1)
    assert torch.equal(in_memory_format(images, channels_last=False), images)


@pytest.mark.parametrize("channels_last", [False, True])
def test_colour_images_change_layout_only_when_needed(channels_last):
    images = torch.rand(4, 3, 8, 8)
    out = in_memory_format(images, channels_last=channels_last)
    assert out.is_contiguous(memory_format=NHWC if channels_last else NCHW)
    assert torch.equal(out, images)
    assert (out.data_ptr() == images.data_ptr()) is not channels_last  # no copy when right
    again = in_memory_format(out, channels_last=channels_last)
    assert again.data_ptr() == out.data_ptr()
    assert in_memory_format(torch.rand(4, 10), channels_last=channels_last).dim() == 2


def test_a_channels_last_model_computes_what_the_nchw_one_does():
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=10, in_chans=1, width_multiplier=0.25).eval()
    images = _grey_with_decoded_strides()
    reference = model(in_memory_format(images, channels_last=False))
    model = model.to(memory_format=NHWC)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=NHWC) for w in conv_weights)
    out = model(in_memory_format(images, channels_last=True))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_job_field_reaches_the_worker_spec():
    _, spec = build_run(_job())
    assert spec.model.channels_last is True  # jobs/fashion-mnist-fast.yaml sets it
    _, spec = build_run(_job({"train.channels_last": False}))
    assert spec.model.channels_last is False
    raw = yaml.safe_load((REPO_ROOT / "jobs" / "quickstart.yaml").read_text())
    assert "channels_last" not in raw["train"]
    assert parse_job(raw, source="quickstart.yaml").train.channels_last is False  # the default
