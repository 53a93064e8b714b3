"""InfoBatch as a job option: config, plan, Ray Data columns, replay and the loop hook (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_curriculum_plan import job_dict

from rayaccel.config import ConfigError, parse_job
from rayaccel.data.pipeline import DecodeSpec, decode_batch
from rayaccel.methods.base import StepBatch
from rayaccel.methods.etpp.replay import ReplayBuffer, ReplayHook
from rayaccel.methods.infobatch.hook import InfoBatchHook, keep_digest
from rayaccel.plan import format_plan, make_plan


def infobatch_job(epochs=10, curriculum=None, **infobatch):
    job = job_dict(image_px=28, workers=2, batch=64, lr=0.2, epochs=epochs, warmup=1)
    job["curriculum"] = curriculum
    job["infobatch"] = infobatch
    return parse_job(job)


def test_plan_prunes_until_the_annealing_epochs():
    plan = make_plan(infobatch_job(epochs=10, prune_ratio=0.3, delta=0.75), train_samples=4000)
    assert plan.prune_ratio == 0.3
    # The release prunes while epoch + 1 <= delta * epochs: floor(0.75 * 10) = 7.
    assert plan.first_full_epoch == 7
    assert [plan.prunes(e) for e in range(10)] == [True] * 7 + [False] * 3
    assert [row["pruning"] for row in plan.epoch_rows()] == [True] * 7 + [False] * 3
    text = format_plan(plan)
    assert "InfoBatch: epochs 1-7 drop a share 0.3" in text
    assert "epochs 8-10 train on all data" in text
    assert "weigh 1.429" in text


def test_plan_without_infobatch_never_prunes():
    job = job_dict(image_px=28, workers=2, batch=64, lr=0.2, epochs=4, warmup=1)
    plan = make_plan(parse_job(job), train_samples=4000)
    assert not any(plan.prunes(e) for e in range(4))
    assert "InfoBatch" not in format_plan(plan)


def test_infobatch_with_a_curriculum_prunes_per_epoch_across_stages():
    curriculum = {"preset": "custom", "budget_epochs": 4, "stages": [
        {"resolution_px": 14}, {"resolution_px": 28}]}  # fmt: skip
    plan = make_plan(infobatch_job(epochs=4, curriculum=curriculum), train_samples=4000)
    assert len(plan.stages) == 2
    assert plan.first_full_epoch == math.floor(0.875 * plan.total_epochs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prune_ratio", 0.95, "infobatch.prune_ratio: must be <= 0.9"),
        ("selection", "random", "infobatch.selection: "),
        ("prune_ratio", -0.1, "infobatch.prune_ratio: must be >= 0"),
        ("delta", 0, "infobatch.delta: must be > 0"),
        ("delta", 1.5, "infobatch.delta: must be <= 1"),
        ("ratio", 0.5, "infobatch.ratio: unknown key"),
    ],
)
def test_bad_infobatch_settings_name_the_field(field, value, message):
    with pytest.raises(ConfigError) as error:
        infobatch_job(**{field: value})
    assert any(message in line for line in error.value.problems), error.value.problems


def test_pruned_epoch_walks_its_whole_stretch_of_the_lr_schedule():
    plan = make_plan(infobatch_job(epochs=10), train_samples=4000)
    full_steps = plan.stages[0].steps_per_epoch
    # Half the steps cover the same LR range as the unpruned epoch, end to end.
    assert plan.lr_at(3, 0, full_steps // 2) == plan.lr_at(3, 0)
    assert plan.lr_at(3, full_steps // 2, full_steps // 2) == pytest.approx(plan.lr_at(4, 0))
    assert full_steps == 62
    # Mid-epoch is mid-epoch whatever the epoch's length.
    assert plan.lr_at(3, 10, 20) == pytest.approx(plan.lr_at(3, 31))


def test_decode_keeps_the_weight_column_with_its_rows():
    from io import BytesIO

    from PIL import Image

    def png(value):
        buffer = BytesIO()
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    batch = {
        "image": np.array([png(10), png(200)], dtype=object),
        "label": np.array([1, 2]),
        "index": np.array([7, 2**40], dtype=np.int64),
        "loss_weight": np.array([2.0, 1.0], dtype=np.float32),
    }
    spec = DecodeSpec(image_size_px=4, channels=1, num_classes=10, on_bad_row="fail")
    out = decode_batch(batch, spec, np.random.default_rng(0))
    assert out["loss_weight"].tolist() == [2.0, 1.0]
    assert out["index"].tolist() == [7, 2**40]
    assert out["image"].shape == (2, 1, 4, 4)


def test_replayed_samples_keep_the_weight_they_arrived_with():
    buffer = ReplayBuffer(64, (1, 2, 2), dtype=torch.uint8, seed=0)
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(4)
    indices = torch.tensor([10, 11, 12, 13])
    weights = torch.tensor([2.0, 1.0, 2.0, 1.0])
    _, _, out_indices, out_weights = buffer.mix(
        images, labels, indices, replay_factor=4, batch_size=16, fresh_weights=weights
    )
    assert out_indices.shape == (16,)
    expected = {10: 2.0, 11: 1.0, 12: 2.0, 13: 1.0}
    assert [expected[i] for i in out_indices.tolist()] == out_weights.tolist()
    # Without weights everything stored and replayed weighs 1.
    _, _, _, plain = ReplayBuffer(64, (1, 2, 2), dtype=torch.uint8, seed=0).mix(
        images, labels, indices, replay_factor=4, batch_size=16
    )
    assert plain.tolist() == [1.0] * 16


def test_replay_hook_passes_weights_through_and_leaves_unweighted_batches_alone():
    class Stage:
        replay_factor = 2
        per_worker_batch = 8

    hook = ReplayHook(capacity_samples=32, dtype=torch.uint8, device=torch.device("cpu"), seed=1)
    hook.on_stage_start(Stage())
    hook.on_epoch_start(0)
    batch = StepBatch(
        torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
        torch.arange(4),
        torch.arange(4),
        torch.tensor([2.0, 2.0, 1.0, 1.0]),
    )
    mixed = hook.on_batch(batch)
    assert mixed.weights.shape == (8,)
    assert set(mixed.weights.tolist()) <= {1.0, 2.0}
    unweighted = hook.on_batch(StepBatch(batch.images, batch.labels, batch.indices))
    assert unweighted.weights is None


def test_hook_weights_losses_and_records_exact_indices_under_bf16():
    hook = InfoBatchHook(board=None, rank=0)
    big = 2**24 + 1  # not representable in bf16 or fp32
    indices = torch.tensor([big, big + 2, 5], dtype=torch.int64)
    losses = torch.tensor([0.5, 1.5, 2.5], dtype=torch.bfloat16)
    weighted = hook.on_loss(losses, StepBatch(None, None, indices, torch.tensor([2.0, 1.0, 2.0])))
    assert weighted.tolist() == [1.0, 1.5, 5.0]
    assert hook.indices[0].dtype == torch.int64
    assert hook.indices[0].tolist() == [big, big + 2, 5]
    assert hook.losses[0].dtype == torch.float32
    # Without a weight column (e.g. no pruning this epoch) losses pass through unchanged.
    assert torch.equal(hook.on_loss(losses, StepBatch(None, None, indices)), losses)


def test_keep_digest_ignores_order():
    a = np.array([5, 1, 9], dtype=np.int64)
    assert keep_digest(a) == keep_digest(a[::-1].copy())
    assert keep_digest(a) != keep_digest(np.array([5, 1, 8], dtype=np.int64))
