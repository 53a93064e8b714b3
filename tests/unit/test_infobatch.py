"""Tests for InfoBatch pruning: unbiasedness, keep shares, annealing, sharding, resume, int64."""

from __future__ import annotations

import math
import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from rayaccel.methods.infobatch.scores import (
    EpochSelection,
    InfoBatchScoreBoard,
    weight_losses,
)

# Deviations beyond this many standard errors fail; a false alarm is a ~1e-6 event per check.
_SIGMAS = 5.0


def _scored_board(num_samples: int, *, prune_ratio: float = 0.5, seed: int = 0, total_epochs=8):
    board = InfoBatchScoreBoard(
        num_samples, prune_ratio=prune_ratio, total_epochs=total_epochs, seed=seed
    )
    losses = np.random.default_rng(1234).exponential(size=num_samples)
    board.update(np.arange(num_samples, dtype=np.int64), losses)
    return board


def test_weighted_epoch_gradient_is_unbiased():
    """Averaged over 400 epochs' random draws, the weighted pruned gradient is the full one."""
    rng = np.random.default_rng(0)
    num_samples, num_features, num_epochs = 2_000, 5, 400
    features = rng.normal(size=(num_samples, num_features))
    targets = features.sum(axis=1) + rng.normal(size=num_samples)
    # Away from the optimum, so the per-sample gradients have a systematic direction.
    params = np.full(num_features, 0.5)
    residuals = features @ params - targets
    per_sample_loss = 0.5 * residuals**2
    per_sample_gradient = residuals[:, None] * features
    full_gradient = per_sample_gradient.sum(axis=0)

    all_rows = np.arange(num_samples, dtype=np.int64)
    board = InfoBatchScoreBoard(num_samples, total_epochs=num_epochs * 2, seed=7)
    board.update(all_rows, per_sample_loss)
    # Row e holds epoch e's weight of every sample, 0 where pruned.
    epoch_weights = np.stack(
        [board.plan_epoch(epoch).weight_of(all_rows) for epoch in range(1, num_epochs + 1)]
    ).astype(np.float64)
    pruned_share = (epoch_weights == 0).mean(axis=1)
    assert np.all((0.2 < pruned_share) & (pruned_share < 0.5))

    # The weighted batch mean times the batch size is the epoch's weighted gradient sum.
    kept = epoch_weights[0] > 0
    torch_params = torch.from_numpy(params).requires_grad_(True)
    kept_features, kept_targets = torch.from_numpy(features[kept]), torch.from_numpy(targets[kept])
    kept_loss = 0.5 * (kept_features @ torch_params - kept_targets) ** 2
    (
        weight_losses(kept_loss, torch.from_numpy(epoch_weights[0, kept])).mean() * kept.sum()
    ).backward()
    np.testing.assert_allclose(torch_params.grad.numpy(), epoch_weights[0] @ per_sample_gradient)

    def deviation_in_standard_errors(weights: np.ndarray) -> np.ndarray:
        epoch_gradients = weights @ per_sample_gradient
        standard_error = epoch_gradients.std(axis=0, ddof=1) / math.sqrt(num_epochs)
        return np.abs(epoch_gradients.mean(axis=0) - full_gradient) / standard_error

    deviation = deviation_in_standard_errors(epoch_weights)
    assert deviation.max() < _SIGMAS, deviation
    # Power check: without the 1/(1-r) weights the same comparison must fail clearly.
    bias = deviation_in_standard_errors((epoch_weights > 0).astype(np.float64))
    assert bias.max() > 4 * _SIGMAS, bias


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5])
def test_below_mean_samples_pruned_at_ratio_and_upweighted(prune_ratio):
    num_samples = 20_000
    board = _scored_board(num_samples, prune_ratio=prune_ratio)
    scores = board.scores
    well_learned = scores < scores.astype(np.float64).mean()
    selection = board.plan_epoch(1)
    keep, kept_weights = selection.keep_filter(np.arange(num_samples, dtype=np.int64))

    num_well_learned = int(well_learned.sum())
    kept_share = keep[well_learned].mean()
    binomial_sd = math.sqrt(prune_ratio * (1 - prune_ratio) / num_well_learned)
    assert abs(kept_share - (1 - prune_ratio)) < _SIGMAS * binomial_sd

    weights = np.zeros(num_samples, dtype=np.float32)
    weights[keep] = kept_weights
    upweight = np.float32(1 / (1 - prune_ratio))
    assert np.all(weights[well_learned & keep] == upweight)
    assert np.all(keep[~well_learned])
    assert np.all(weights[~well_learned] == 1.0)
    assert selection.upweight == upweight
    assert selection.num_kept == keep.sum() == len(selection.keep_indices)
    assert selection.num_upweighted == (well_learned & keep).sum()
    np.testing.assert_array_equal(selection.keep_indices, np.flatnonzero(keep))
    np.testing.assert_array_equal(selection.weights, kept_weights)
    np.testing.assert_array_equal(selection.weight_of(np.arange(num_samples)), weights)
    assert selection.mean_weight == pytest.approx(kept_weights.mean(), rel=1e-6)
    assert selection.fraction_pruned == pytest.approx(1 - keep.mean())


def test_epoch_zero_and_unscored_samples_prune_nothing():
    board = InfoBatchScoreBoard(1_000, total_epochs=10, seed=0)
    selection = board.plan_epoch(0)
    assert selection.num_kept == 1_000 and not selection.annealed
    np.testing.assert_array_equal(selection.weights, np.ones(1_000, dtype=np.float32))
    assert math.isnan(selection.score_threshold)

    # Only the first half gets scores: the unscored half must all stay, at weight 1.
    half = np.arange(500, dtype=np.int64)
    board.update(half, np.random.default_rng(0).exponential(size=500))
    selection = board.plan_epoch(1)
    unscored = np.arange(500, 1_000, dtype=np.int64)
    np.testing.assert_array_equal(selection.weight_of(unscored), np.ones(500, dtype=np.float32))
    assert selection.num_kept < 1_000


@pytest.mark.parametrize(
    ("total_epochs", "delta", "first_full_epoch"),
    # The release's rule: prune while epoch + 1 <= delta * total_epochs.
    [(8, 0.875, 7), (10, 0.875, 8), (90, 0.875, 78), (10, 0.7, 7), (3, 0.5, 1), (4, 1.0, 4)],
)
def test_annealed_epochs_keep_everything(total_epochs, delta, first_full_epoch):
    board = InfoBatchScoreBoard(5_000, delta=delta, total_epochs=total_epochs, seed=0)
    board.update(np.arange(5_000, dtype=np.int64), np.random.default_rng(0).exponential(size=5_000))
    assert board.first_full_epoch == first_full_epoch
    last_pruned = board.plan_epoch(first_full_epoch - 1)
    assert not last_pruned.annealed and last_pruned.num_kept < 5_000
    for epoch in range(first_full_epoch, total_epochs):
        selection = board.plan_epoch(epoch)
        assert selection.annealed and selection.fraction_pruned == 0
        np.testing.assert_array_equal(selection.keep_indices, np.arange(5_000))
        np.testing.assert_array_equal(selection.weights, np.ones(5_000, dtype=np.float32))
    with pytest.raises(ValueError, match="total_epochs"):
        board.plan_epoch(total_epochs)


def test_disjoint_shards_filter_to_disjoint_parts_of_the_keep_set():
    """Ray Data's split hands each row to one worker; filtering per row keeps shards disjoint."""
    num_samples = 10_000
    selection = _scored_board(num_samples).plan_epoch(1)
    rows_in_read_order = np.random.default_rng(3).permutation(num_samples).astype(np.int64)
    shards = np.array_split(rows_in_read_order, 2)

    kept_per_worker = []
    for shard in shards:
        batch = {"index": shard, "label": shard % 10}
        filtered = selection.filter_batch(batch)
        np.testing.assert_array_equal(filtered["label"], filtered["index"] % 10)
        np.testing.assert_array_equal(
            filtered["loss_weight"], selection.weight_of(filtered["index"])
        )
        kept_per_worker.append(set(filtered["index"].tolist()))

    assert kept_per_worker[0].isdisjoint(kept_per_worker[1])
    assert kept_per_worker[0] | kept_per_worker[1] == set(selection.keep_indices.tolist())


def _train_epochs(board: InfoBatchScoreBoard, epochs: range) -> list[np.ndarray]:
    """Plan each epoch and score its kept samples with losses that depend on (epoch, index)."""
    keep_sets = []
    for epoch in epochs:
        selection = board.plan_epoch(epoch)
        keep_sets.append(selection.keep_indices)
        losses = np.random.default_rng([99, epoch]).exponential(size=board.num_samples)
        board.update(selection.keep_indices, losses[selection.keep_indices])
    return keep_sets


def test_resume_reproduces_the_uninterrupted_keep_sets():
    config = {"prune_ratio": 0.5, "total_epochs": 8, "seed": 11}
    uninterrupted = _train_epochs(InfoBatchScoreBoard(3_000, **config), range(8))

    first = InfoBatchScoreBoard(3_000, **config)
    before = _train_epochs(first, range(4))
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = InfoBatchScoreBoard(3_000, **config)
    resumed.load_state_dict(state)
    assert resumed.last_planned_epoch == 3
    after = _train_epochs(resumed, range(4, 8))

    for epoch, (expected, got) in enumerate(zip(uninterrupted, before + after, strict=True)):
        np.testing.assert_array_equal(got, expected, err_msg=f"epoch {epoch}")
    assert any(len(keep) < 3_000 for keep in uninterrupted[1:7])


def test_load_state_dict_rejects_a_different_config():
    state = InfoBatchScoreBoard(100, total_epochs=8, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        InfoBatchScoreBoard(100, total_epochs=8, seed=2).load_state_dict(state)


def test_update_validates_indices_and_last_write_wins():
    board = InfoBatchScoreBoard(10, total_epochs=4, seed=0)
    board.update(np.array([3, 5, 3], dtype=np.int64), np.array([1.0, 2.0, 7.0]))
    assert board.scores[3] == 7.0 and board.scores[5] == 2.0
    assert np.isnan(board.scores[0])

    with pytest.raises(ValueError, match=r"indices\[1\] = 10 "):
        board.update(np.array([2, 10], dtype=np.int64), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"indices\[0\] = -1 "):
        board.update(np.array([-1], dtype=np.int64), np.array([1.0]))
    with pytest.raises(TypeError, match="int64"):
        board.update(np.array([2.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="not finite"):
        board.update(np.array([2], dtype=np.int64), np.array([np.nan]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"delta": 0.0}, "delta"),
        ({"total_epochs": 0}, "total_epochs"),
        ({"seed": -1}, "seed"),
    ],
)
def test_board_rejects_bad_arguments(kwargs, message):
    arguments = {"total_epochs": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        InfoBatchScoreBoard(10, **arguments)


def test_weight_losses_weights_low_precision_losses_in_float32():
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)
    weights = torch.tensor([1.0, 2.0, 1.0])
    weighted = weight_losses(losses, weights)
    assert weighted.dtype == torch.float32
    assert weighted.tolist() == [1.0, 4.0, 4.0]
    assert weighted.mean().item() == pytest.approx((1 + 4 + 4) / 3)


def test_selection_pickles_to_two_bits_per_sample():
    num_samples = 100_000
    selection = _scored_board(num_samples).plan_epoch(1)
    expanded_indices = selection.keep_indices  # the cached expansion must not be shipped
    shipped = pickle.dumps(selection)
    assert len(shipped) < num_samples / 4 + 1_000
    restored: EpochSelection = pickle.loads(shipped)
    np.testing.assert_array_equal(restored.keep_indices, expanded_indices)


def test_fourteen_million_sample_board_stays_small():
    num_samples = 14_000_000
    board = InfoBatchScoreBoard(num_samples, total_epochs=10, seed=0)
    state = board.state_dict()
    state["scores"] = np.random.default_rng(0).random(num_samples, dtype=np.float32)
    board.load_state_dict(state)
    del state

    resident_bytes = sum(
        value.nbytes for value in vars(board).values() if isinstance(value, np.ndarray)
    )
    assert resident_bytes == board.nbytes
    assert resident_bytes / num_samples < 10

    tracemalloc.start()
    try:
        selection = board.plan_epoch(1)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0.24 < selection.fraction_pruned < 0.26  # half are below the mean, half of those go
    # Transient memory of planning (numpy reports its buffers to tracemalloc).
    assert peak_bytes / num_samples < 10, peak_bytes / num_samples
    shipped_bytes = selection.keep_bits.nbytes + selection.upweight_bits.nbytes
    assert shipped_bytes / num_samples == pytest.approx(0.25, abs=1e-6)
    assert board.bookkeeping_seconds > 0
