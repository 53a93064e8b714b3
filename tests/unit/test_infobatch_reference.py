"""InfoBatch against the reference release's rules, on identical scores.

The release (`infobatch.py` of the paper's code) marks samples whose score is below the mean
as well learned, keeps `int(keep_ratio * n)` of those n at random (`np.random.choice` without
replacement), gives the kept ones weight `1 / keep_ratio`, caps the prune ratio at 0.9
(`keep_ratio = max(0.1, 1 - prune_ratio)`) and prunes while `epoch + 1 <= delta * epochs`.
`reference_prune` below restates that rule; rayaccel's board must agree with it.
"""

from __future__ import annotations

import numpy as np
import pytest

from rayaccel.methods.infobatch.scores import InfoBatchScoreBoard, first_full_epoch


def reference_prune(scores: np.ndarray, prune_ratio: float, rng: np.random.Generator):
    """The release's epoch selection: (kept indices, weights of all samples)."""
    keep_ratio = min(1.0, max(1e-1, 1.0 - prune_ratio))
    well_learned = scores < scores.mean()
    well_learned_indices = np.flatnonzero(well_learned)
    remained = np.flatnonzero(~well_learned)
    selected = rng.choice(
        well_learned_indices, int(keep_ratio * len(well_learned_indices)), replace=False
    )
    weights = np.ones(len(scores))
    weights[selected] = 1 / keep_ratio
    return np.sort(np.concatenate([remained, selected])), weights


def _board(scores: np.ndarray, **kwargs) -> InfoBatchScoreBoard:
    board = InfoBatchScoreBoard(len(scores), total_epochs=10, seed=3, **kwargs)
    board.update(np.arange(len(scores), dtype=np.int64), scores)
    return board


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.9])
def test_exact_selection_keeps_the_release_count_with_the_release_weight(prune_ratio):
    scores = np.random.default_rng(0).exponential(size=20_000).astype(np.float32)
    kept, weights = reference_prune(scores, prune_ratio, np.random.default_rng(1))
    selection = _board(scores, prune_ratio=prune_ratio).plan_epoch(1)
    assert selection.num_kept == len(kept)
    # The same well-learned set is eligible, the same weight is given, the rest all stay.
    well_learned = scores < scores.astype(np.float64).mean()
    mine = selection.weight_of(np.arange(len(scores), dtype=np.int64))
    assert np.all(mine[~well_learned] == 1)
    kept_well_learned = well_learned & np.isin(np.arange(len(scores)), kept)
    np.testing.assert_allclose(
        np.unique(mine[well_learned & (mine > 0)]), np.unique(weights[kept_well_learned])
    )
    assert np.count_nonzero(mine == selection.upweight) == np.count_nonzero(weights > 1)
    assert selection.upweight == pytest.approx(1 / (1 - prune_ratio), rel=1e-6)


def test_the_exact_count_is_a_random_subset_that_changes_with_the_epoch():
    scores = np.random.default_rng(0).exponential(size=20_000).astype(np.float32)
    board = _board(scores, prune_ratio=0.5)
    first, second = board.plan_epoch(1), board.plan_epoch(2)
    assert first.num_kept == second.num_kept
    overlap = np.intersect1d(first.keep_indices, second.keep_indices).size
    # Independent halves of the ~12.6k well-learned samples overlap by about a quarter.
    well_learned = int(np.count_nonzero(scores < scores.astype(np.float64).mean()))
    kept_well_learned = first.num_kept - (len(scores) - well_learned)
    expected = (len(scores) - well_learned) + kept_well_learned**2 / well_learned
    assert overlap == pytest.approx(expected, rel=0.02)
    # Reproducible: the same (seed, epoch, scores) plan the same set.
    np.testing.assert_array_equal(board.plan_epoch(1).keep_indices, first.keep_indices)


def test_the_exact_count_halves_the_spread_of_the_weighted_loss():
    """Per-epoch weighted-loss sums over 200 epochs at r = 0.5: the exact count's spread is
    well below the independent draws' (measured: sd 0.14% vs 0.24% of the sum)."""
    scores = np.random.default_rng(0).exponential(size=20_000).astype(np.float32)
    total = scores.astype(np.float64).sum()
    spreads = {}
    for selection in ("exact", "bernoulli"):
        board = InfoBatchScoreBoard(len(scores), total_epochs=201, seed=5, selection=selection)
        board.update(np.arange(len(scores), dtype=np.int64), scores)
        sums = []
        for epoch in range(1, 201):
            chosen = board.plan_epoch(epoch)
            sums.append(float(np.dot(chosen.weights, scores[chosen.keep_indices])) / total)
        assert np.mean(sums) == pytest.approx(1.0, abs=2e-3)  # unbiased either way
        spreads[selection] = float(np.std(sums))
    assert spreads["exact"] < 0.7 * spreads["bernoulli"], spreads


def test_the_prune_ratio_is_capped_at_the_release_bound():
    InfoBatchScoreBoard(10, prune_ratio=0.9, total_epochs=2, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 0.9\]"):
        InfoBatchScoreBoard(10, prune_ratio=0.95, total_epochs=2, seed=0)


@pytest.mark.parametrize(("epochs", "delta"), [(10, 0.875), (90, 0.875), (8, 0.875), (7, 0.5)])
def test_annealing_starts_where_the_release_stops_pruning(epochs, delta):
    release_prunes = [e + 1 <= delta * epochs for e in range(epochs)]
    assert [e < first_full_epoch(delta, epochs) for e in range(epochs)] == release_prunes


def test_rayaccels_own_rules_are_kept():
    """Never-scored samples are not pruned; equal scores prune nothing (the release's float32
    mean would call half of them below it); annealed epochs weigh 1."""
    scores = np.full(1_000, 0.1, dtype=np.float32)
    board = InfoBatchScoreBoard(2_000, total_epochs=10, seed=0)
    board.update(np.arange(1_000, dtype=np.int64), scores)
    selection = board.plan_epoch(1)
    assert selection.num_kept == 2_000
    board.update(np.arange(500, dtype=np.int64), np.full(500, 0.01, dtype=np.float32))
    selection = board.plan_epoch(2)
    assert selection.num_kept == 2_000 - 250  # half of the 500 below the mean go
    unscored = np.arange(1_000, 2_000, dtype=np.int64)
    assert np.all(selection.weight_of(unscored) == 1)
    assert np.all(board.plan_epoch(9).weights == 1)


def test_checkpoints_name_their_selection_rule():
    scores = np.random.default_rng(0).exponential(size=100).astype(np.float32)
    state = _board(scores, selection="bernoulli").state_dict()
    assert state["selection"] == "bernoulli"
    with pytest.raises(ValueError, match="selection='bernoulli'"):
        _board(scores).load_state_dict(state)
    # A checkpoint from before the exact count existed pruned by independent draws.
    del state["selection"]
    _board(scores, selection="bernoulli").load_state_dict(state)
