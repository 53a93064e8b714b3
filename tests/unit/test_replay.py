"""Tests of the EfficientTrain++ replay buffer."""

import io

import pytest
import torch

from rayaccel.methods.etpp.replay import ReplayBuffer, fresh_chunk_size

SAMPLE_SHAPE = (2, 3, 3)


def make_samples(first_index: int, n_samples: int, dtype=torch.float32):
    """Samples whose pixels and label are derived from their index, so rows can be checked."""
    indices = torch.arange(first_index, first_index + n_samples, dtype=torch.int64)
    images = indices.to(dtype)[:, None, None, None].expand(n_samples, *SAMPLE_SHAPE).clone()
    return images, indices % 7, indices


def assert_rows_consistent(images, labels, indices):
    assert torch.equal(images[:, 0, 0, 0].to(torch.int64), indices)
    assert torch.equal(labels, indices % 7)
    assert labels.dtype == indices.dtype == torch.int64


@pytest.mark.parametrize(
    ("batch_size", "replay_factor", "expected"), [(256, 4, 64), (10, 4, 3), (4, 4, 1), (7, 1, 7)]
)
def test_fresh_chunk_size_rounds_up(batch_size, replay_factor, expected):
    assert fresh_chunk_size(batch_size, replay_factor) == expected


@pytest.mark.parametrize(("batch_size", "replay_factor"), [(3, 4), (8, 0), (8, 2.0)])
def test_fresh_chunk_size_rejects_bad_arguments(batch_size, replay_factor):
    with pytest.raises(ValueError, match="batch_size|replay_factor"):
        fresh_chunk_size(batch_size, replay_factor)


@pytest.mark.parametrize(("batch_size", "replay_factor"), [(32, 4), (32, 2), (10, 4), (9, 3)])
def test_mix_takes_exactly_one_fresh_chunk_per_batch(batch_size, replay_factor):
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, device="cpu", seed=0)
    n_fresh = fresh_chunk_size(batch_size, replay_factor)
    seen = set()
    for step in range(5):
        fresh = make_samples(100 * step, n_fresh)  # < 2048: exact in fp16
        seen.update(fresh[2].tolist())
        images, labels, indices, _ = buffer.mix(
            *fresh, replay_factor=replay_factor, batch_size=batch_size
        )
        assert images.shape == (batch_size, *SAMPLE_SHAPE)
        assert torch.equal(indices[:n_fresh], fresh[2])
        assert set(indices[n_fresh:].tolist()) <= seen
        assert_rows_consistent(images, labels, indices)


def test_mix_short_final_chunk_keeps_reuse_ratio():
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, device="cpu", seed=0)
    images, _, indices, _ = buffer.mix(*make_samples(0, 3), replay_factor=4, batch_size=32)
    assert images.shape[0] == 3 * 4
    assert torch.equal(indices[:3], torch.arange(3))


def test_mix_replays_the_fresh_chunk_of_the_same_batch():
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, device="cpu", seed=0)
    _, _, indices, _ = buffer.mix(*make_samples(0, 4), replay_factor=4, batch_size=16)
    # Only the fresh chunk is stored, so every replayed sample is one of its 4 samples.
    assert set(indices[4:].tolist()) <= {0, 1, 2, 3}


def test_mix_without_replay_returns_fresh_batch_untouched():
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, device="cpu", seed=0)
    fresh = make_samples(0, 16)
    *out, weights = buffer.mix(*fresh, replay_factor=1, batch_size=16)
    assert all(a is b for a, b in zip(out, fresh, strict=True))
    assert weights.tolist() == [1.0] * 16
    assert len(buffer) == 0


def test_mix_rejects_wrong_fresh_count():
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, device="cpu", seed=0)
    with pytest.raises(ValueError, match="fresh_chunk_size"):
        buffer.mix(*make_samples(0, 9), replay_factor=4, batch_size=32)


def test_mix_keeps_fresh_precision_and_replays_fp16_copies():
    buffer = ReplayBuffer(64, SAMPLE_SHAPE, dtype=torch.float16, device="cpu", seed=0)
    fresh_images = torch.full((4, *SAMPLE_SHAPE), 1.0 / 3.0)
    labels = torch.zeros(4, dtype=torch.int64)
    images, _, _, _ = buffer.mix(
        fresh_images, labels, torch.arange(4), replay_factor=4, batch_size=16
    )
    assert images.dtype == torch.float32
    assert torch.equal(images[:4], fresh_images)
    assert torch.equal(images[4:], torch.full((12, *SAMPLE_SHAPE), 1.0 / 3.0).half().float())


def test_sample_draws_with_replacement():
    buffer = ReplayBuffer(16, SAMPLE_SHAPE, device="cpu", seed=0)
    buffer.add(*make_samples(0, 5))
    images, labels, indices = buffer.sample(50)
    assert indices.shape == (50,)
    assert set(indices.tolist()) <= set(range(5))
    assert len(set(indices.tolist())) < 50
    assert_rows_consistent(images, labels, indices)


def test_add_evicts_oldest_in_fifo_order():
    buffer = ReplayBuffer(10, SAMPLE_SHAPE, device="cpu", seed=0)
    buffer.add(*make_samples(0, 7))
    buffer.add(*make_samples(7, 7))
    assert len(buffer) == 10
    images, labels, indices = buffer.contents()
    assert indices.tolist() == list(range(4, 14))
    assert_rows_consistent(images, labels, indices)
    assert set(buffer.sample(500)[2].tolist()) == set(range(4, 14))

    buffer.add(*make_samples(100, 25))
    assert buffer.contents()[2].tolist() == list(range(115, 125))


def test_sampling_is_uniform_over_stored_samples():
    capacity = 20
    buffer = ReplayBuffer(capacity, SAMPLE_SHAPE, dtype=torch.uint8, device="cpu", seed=123)
    # Wrap the ring so stored samples do not sit in index order.
    buffer.add(*make_samples(0, 13, dtype=torch.uint8))
    buffer.add(*make_samples(13, 17, dtype=torch.uint8))
    n_draws = 20_000
    indices = buffer.sample(n_draws)[2]
    counts = torch.bincount(indices - 10, minlength=capacity)
    assert counts.shape == (capacity,) and int(counts.sum()) == n_draws
    expected = n_draws / capacity
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # 19 degrees of freedom: the 99.9% quantile is 43.8.
    assert chi_square < 43.8


def test_state_dict_round_trip_reproduces_draws():
    buffer = ReplayBuffer(12, SAMPLE_SHAPE, device="cpu", seed=7)
    buffer.add(*make_samples(0, 9))
    buffer.add(*make_samples(9, 6))
    buffer.sample(5)
    saved = io.BytesIO()
    torch.save(buffer.state_dict(include_contents=True), saved)
    saved.seek(0)
    restored = ReplayBuffer(12, SAMPLE_SHAPE, device="cpu", seed=999)
    restored.load_state_dict(torch.load(saved))
    for original_draw, restored_draw in zip(buffer.sample(40), restored.sample(40), strict=True):
        assert torch.equal(original_draw, restored_draw)
    fresh = make_samples(50, 4)
    for original_mix, restored_mix in zip(
        buffer.mix(*fresh, 4, 16), restored.mix(*fresh, 4, 16), strict=True
    ):
        assert torch.equal(original_mix, restored_mix)


def test_state_dict_without_contents_restores_generator_and_empties_buffer():
    buffer = ReplayBuffer(12, SAMPLE_SHAPE, device="cpu", seed=7)
    buffer.add(*make_samples(0, 12))
    state = buffer.state_dict()
    assert "images" not in state
    restored = ReplayBuffer(12, SAMPLE_SHAPE, device="cpu", seed=999)
    restored.add(*make_samples(0, 3))
    restored.load_state_dict(state)
    assert len(restored) == 0
    restored.add(*make_samples(0, 12))
    assert torch.equal(buffer.sample(30)[2], restored.sample(30)[2])


def test_load_state_dict_rejects_other_layout():
    state = ReplayBuffer(12, SAMPLE_SHAPE, device="cpu", seed=0).state_dict()
    with pytest.raises(ValueError, match="capacity_samples"):
        ReplayBuffer(13, SAMPLE_SHAPE, device="cpu", seed=0).load_state_dict(state)


def test_indices_stay_exact_int64():
    buffer = ReplayBuffer(4, SAMPLE_SHAPE, device="cpu", seed=0)
    big = torch.tensor([2**40 + 3, 2**33 + 1], dtype=torch.int64)
    buffer.add(torch.zeros(2, *SAMPLE_SHAPE), torch.tensor([1, 2], dtype=torch.int32), big)
    assert torch.equal(buffer.contents()[2], big)
    assert buffer.contents()[1].dtype == torch.int64


def test_add_and_sample_reject_bad_input():
    buffer = ReplayBuffer(8, SAMPLE_SHAPE, dtype=torch.uint8, device="cpu", seed=0)
    with pytest.raises(RuntimeError, match="empty"):
        buffer.sample(1)
    with pytest.raises(ValueError, match="float16"):
        buffer.add(*make_samples(0, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="images must be shaped"):
        buffer.add(torch.zeros(2, 3, 3, dtype=torch.uint8), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="labels must be an integer"):
        buffer.add(
            torch.zeros(2, *SAMPLE_SHAPE, dtype=torch.uint8), torch.zeros(2), torch.arange(2)
        )
    with pytest.raises(ValueError, match="dtype must be one of"):
        ReplayBuffer(8, SAMPLE_SHAPE, dtype=torch.float64, device="cpu", seed=0)
    with pytest.raises(ValueError, match="capacity_samples"):
        ReplayBuffer(0, SAMPLE_SHAPE, device="cpu", seed=0)
