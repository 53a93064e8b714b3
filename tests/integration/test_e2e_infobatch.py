"""InfoBatch through real Ray Data and Ray Train on the bundled fixture.

- The keep filter in a real Ray Data pipeline split over two consumers as training splits it:
  disjoint equal parts of the epoch's keep set (their union is all of it but the one row an
  odd count leaves over), each row with the selection's weight.
- The EfficientTrain++ quickstart with InfoBatch on 2 workers: pruned epochs train fewer
  samples at every stage and replay factor, metrics and summary report it; the run continued
  on 1 worker from a checkpoint in the middle of the curriculum prunes its next epoch exactly
  as the uninterrupted run did.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ray
import yaml
from helpers import FIXTURE_TRAIN, checkpoints, read_job, read_metrics, read_summary, write_job

from rayaccel.cli import main
from rayaccel.config import load_job
from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import DecodeSpec, build_dataset, start_epoch_clock
from rayaccel.methods.infobatch.hook import ScoreBoard, keep_rows
from rayaccel.train.runner import run_job

pytestmark = pytest.mark.ray


def test_two_consumers_get_disjoint_halves_of_the_keep_set(ray_session):
    meta = read_meta(str(FIXTURE_TRAIN))
    board = ScoreBoard.remote(meta.count, prune_ratio=0.5, delta=0.875, total_epochs=4, seed=3)
    try:
        rng = np.random.default_rng(0)
        indices = np.arange(meta.count, dtype=np.int64)
        ray.get(board.update.remote(indices, rng.exponential(size=meta.count)))
        summary = ray.get(board.plan_epoch.remote(1))
        _, _, (selection_ref,) = ray.get(board.current.remote())
        selection = ray.get(selection_ref)
        assert 0.2 < summary["fraction_pruned"] < 0.45  # about r x (share below the mean)

        spec = DecodeSpec(image_size_px=28, channels=1, num_classes=10, on_bad_row="fail")
        dataset = build_dataset(
            str(FIXTURE_TRAIN),
            meta,
            spec,
            shuffle_seed=0,
            preprocess_cpus=0.5,
            decode_batch_rows=256,
            row_filter=keep_rows,
            row_filter_kwargs={"board": board},
            clock=start_epoch_clock(),
        )
        # As training splits it: equal parts, so at most one leftover row is dropped.
        splits = dataset.streaming_split(2, equal=True)
        seen: list[list[tuple[np.ndarray, np.ndarray]]] = [[], []]
        errors: list[BaseException] = []

        def consume(rank: int) -> None:
            try:
                for batch in splits[rank].iter_batches(batch_size=128, batch_format="numpy"):
                    seen[rank].append((batch["index"], batch["loss_weight"]))
            except BaseException as err:  # surfaced below; a thread's error is otherwise lost
                errors.append(err)

        threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors
        parts = [np.concatenate([i for i, _ in chunks]) for chunks in seen]
        assert parts[0].size > 0 and parts[1].size > 0
        assert np.intersect1d(parts[0], parts[1]).size == 0
        assert parts[0].size == parts[1].size == selection.num_kept // 2
        union = np.concatenate(parts)
        assert np.isin(union, selection.keep_indices).all()
        for chunks in seen:
            for batch_indices, weights in chunks:
                assert np.array_equal(weights, selection.weight_of(batch_indices))
        assert set(np.unique(np.concatenate([w for c in seen for _, w in c]))) == {1.0, 2.0}
    finally:
        ray.kill(board)


def test_infobatch_with_the_etpp_curriculum_and_replay(ray_session, tmp_path):
    """Pruning per epoch, curriculum per stage: 14 px with 2x replay, then 20 and 28 px, on 2
    workers; then a resume in the middle of the curriculum, on 1 worker."""
    job = read_job("quickstart-etpp.yaml")
    job["train"].update(epochs=2, log_every_steps=100)
    job["train"]["schedule"]["warmup_epochs"] = 0.2
    job["curriculum"].update(mode="resize", budget_epochs=1.5)
    job["infobatch"] = {"prune_ratio": 0.5, "delta": 1.0}
    job["run"]["keep_checkpoints"] = 3
    path = write_job(tmp_path, job, "etpp-ib")
    assert main(["run", str(path)]) == 0

    rows = read_metrics(tmp_path / "etpp-ib")
    assert [r["resolution_px"] for r in rows] == [14, 20, 28]
    assert rows[0]["infobatch/fraction_pruned"] == 0
    for row in rows[1:]:
        assert 0.1 < row["infobatch/fraction_pruned"] < 0.5
        assert 1 < row["infobatch/mean_weight"] < 2
        assert row["infobatch/bookkeeping_s"] >= 0
    assert len({row["infobatch/keep_digest"] for row in rows}) == 3
    # Stage 0 replays: twice the trained images per fresh one, fresh ones from the keep set.
    assert rows[0]["train_images"] == 2 * rows[0]["fresh_images"]
    for row in rows:
        fresh_per_step = row["global_batch"] // row["replay_factor"]
        assert row["fresh_images"] == row["steps"] * fresh_per_step
        assert row["fresh_images"] <= row["infobatch/kept_samples"]
    summary = read_summary(tmp_path / "etpp-ib")
    assert summary["eval_resolution_px"] == 28 and summary["final_val_acc"] > 0.3
    assert summary["fresh_images_vs_full"] < 0.9

    # Resume in the middle of the curriculum (after stage 0) with 1 worker instead of 2:
    # stages 1 and 2 run at their own resolutions and batch sizes, and epoch 1 prunes exactly
    # as in the uninterrupted run (its keep set comes from the checkpointed scores, whatever
    # the worker count). Epoch 2's keep set comes from epoch 1's losses, which CPU augmentation
    # makes differ between runs, so only its invariants are compared: its step count follows
    # its own keep set.
    saved = checkpoints(tmp_path / "etpp-ib")
    assert len(saved) == 3
    job["run"]["name"] = "etpp-ib-resumed"
    job["scaling"]["num_workers"] = 1
    path.write_text(yaml.safe_dump(job))
    run_job(load_job(path, []), start_checkpoint=str(saved[0]))
    resumed = read_metrics(tmp_path / "etpp-ib-resumed")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for key in ("resolution_px", "global_batch", "replay_factor"):
        assert [r[key] for r in resumed] == [r[key] for r in rows[1:]], key
    for key in ("infobatch/keep_digest", "infobatch/kept_samples", "steps"):
        assert resumed[0][key] == rows[1][key], key
    for row in resumed:
        assert row["fresh_images"] == row["steps"] * (row["global_batch"] // row["replay_factor"])
        assert 0 <= row["infobatch/kept_samples"] - row["fresh_images"] < row["global_batch"]
