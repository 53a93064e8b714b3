"""The method hooks the loop calls: low-pass crop, replay and their order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rayaccel.data.pipeline import DecodeSpec, decode_batch
from rayaccel.data.randaugment import rand_augment
from rayaccel.methods.base import StepBatch, WorkerContext
from rayaccel.methods.etpp.config import EtppSettings
from rayaccel.methods.etpp.frequency import lowpass_crop, resize_antialias
from rayaccel.methods.etpp.lowpass import LowPassCropHook
from rayaccel.methods.etpp.replay import ReplayHook
from rayaccel.methods.ordering import build_hooks


def stage(resolution_px=14, replay_factor=1, per_worker_batch=8):
    return SimpleNamespace(
        resolution_px=resolution_px, replay_factor=replay_factor, per_worker_batch=per_worker_batch
    )


def uint8_batch(n, px=28, first_index=0):
    indices = torch.arange(first_index, first_index + n)
    images = (indices % 251).to(torch.uint8)[:, None, None, None].expand(n, 1, px, px).clone()
    return StepBatch(images, indices % 10, indices)


def _context() -> WorkerContext:
    return WorkerContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        seed=0,
        num_classes=10,
        optimizer_name="sgd",
        resources={},
        training_images=None,
    )


def _etpp_hooks(mode: str, *, crop_on_worker: bool, capacity: int, dtype: str) -> list:
    settings = EtppSettings(
        lowpass_mode=mode,
        crop_on_worker=crop_on_worker,
        replay_capacity_samples=capacity,
        replay_dtype=dtype,
    )
    return build_hooks([("etpp", settings)], _context()).hooks


def test_hook_order_puts_the_crop_before_replay():
    hooks = _etpp_hooks("fft", crop_on_worker=True, capacity=64, dtype="fp16")
    assert [type(h) for h in hooks] == [LowPassCropHook, ReplayHook]
    assert _etpp_hooks("resize", crop_on_worker=False, capacity=0, dtype="uint8") == []


def test_lowpass_hook_crops_inputs_to_the_stage_resolution():
    hook = LowPassCropHook()
    hook.on_stage_start(stage(14))
    inputs = torch.randn(3, 1, 28, 28)
    out = hook.on_inputs(StepBatch(inputs, torch.zeros(3), torch.arange(3)))
    assert torch.allclose(out.images, lowpass_crop(inputs, 14))
    hook.on_stage_start(stage(28))
    assert hook.on_inputs(StepBatch(inputs, torch.zeros(3), torch.arange(3))).images is inputs


def test_device_resident_data_resizes_on_the_worker_before_replay():
    def hooks(data_on_device):
        # What `EtppSettings` says for resize mode: Ray Data resizes unless the data is on
        # the device.
        return _etpp_hooks("resize", crop_on_worker=data_on_device, capacity=64, dtype="uint8")

    assert [type(h) for h in hooks(False)] == [ReplayHook]
    on_device = hooks(True)
    assert [type(h) for h in on_device] == [LowPassCropHook, ReplayHook]
    assert on_device[0].mode == "resize"


def test_resize_hook_matches_the_ray_data_down_sampling():
    # Device-resident data resizes normalised floats; Ray Data resizes uint8 pixels. The two
    # must agree up to the uint8 rounding, or a job would train differently in each data mode.
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), np.uint8))
    hook = LowPassCropHook("resize")
    hook.on_stage_start(stage(14))
    out = hook.on_inputs(StepBatch(pixels.float(), torch.zeros(4), torch.arange(4))).images
    cpu = resize_antialias(pixels.permute(0, 2, 3, 1).numpy(), 14)
    expected = torch.from_numpy(cpu).permute(0, 3, 1, 2).float()
    assert out.shape == (4, 1, 14, 14)
    assert (out.clamp(0, 255) - expected).abs().max() <= 1.0


def test_uint8_replay_fills_the_batch_and_is_reproducible_per_epoch():
    def run_epoch(hook, epoch):
        hook.on_epoch_start(epoch)
        return [hook.on_batch(uint8_batch(2, first_index=10 * i)).indices for i in range(4)]

    first = ReplayHook(capacity_samples=16, dtype=torch.uint8, device="cpu", seed=3)
    first.on_stage_start(stage(replay_factor=4, per_worker_batch=8))
    batches = run_epoch(first, 0)
    assert all(b.shape == (8,) for b in batches)
    assert torch.equal(batches[1][:2], torch.tensor([10, 11]))  # the fresh chunk comes first
    assert first.on_epoch_end() == {"replay/buffer_samples": 8}
    # A restarted worker (empty buffer) draws the same way in the same epoch.
    again = ReplayHook(capacity_samples=16, dtype=torch.uint8, device="cpu", seed=3)
    again.on_stage_start(stage(replay_factor=4, per_worker_batch=8))
    assert all(torch.equal(a, b) for a, b in zip(run_epoch(again, 0), batches, strict=True))
    # A new stage empties the buffer; R = 1 passes batches through.
    first.on_stage_start(stage(replay_factor=1, per_worker_batch=8))
    batch = uint8_batch(8)
    assert first.on_batch(batch) is batch and first.buffer is None


def test_fp16_replay_acts_on_normalised_inputs_only():
    hook = ReplayHook(capacity_samples=16, dtype=torch.float16, device="cpu", seed=0)
    hook.on_stage_start(stage(replay_factor=2, per_worker_batch=4))
    raw = uint8_batch(2)
    assert hook.on_batch(raw) is raw
    inputs = StepBatch(torch.randn(2, 1, 14, 14), raw.labels, raw.indices)
    assert hook.on_inputs(inputs).images.shape == (4, 1, 14, 14)


@pytest.mark.parametrize("impl", ["timm", "torchvision"])
def test_decode_downsamples_after_augmenting_in_resize_mode(impl):
    from rayaccel.data.codec import encode_image

    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    batch = {
        "image": np.array([encode_image(p) for p in pixels], dtype=object),
        "label": np.arange(4),
        "index": np.arange(4),
    }
    spec = DecodeSpec(
        28,
        1,
        10,
        "fail",
        randaug_impl=impl,
        randaug_magnitude=5,
        randaug_fill=(74,),
        output_size_px=14,
    )
    out = decode_batch(batch, spec, np.random.default_rng(0))
    assert out["image"].shape == (4, 1, 14, 14) and out["image"].dtype == np.uint8
    augmented = rand_augment(pixels, 5, np.random.default_rng(0), impl=impl, fill=(74,))
    expected = resize_antialias(augmented, 14).transpose(0, 3, 1, 2)
    assert np.array_equal(out["image"], expected)
