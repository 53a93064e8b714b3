"""Training across two Ray nodes (`ray.cluster_utils.Cluster`: a head and a worker node).

Each test starts its own cluster in a temporary directory, on random ports, with
`RAY_AUTH_MODE=disabled`, and runs `rayaccel run` as a user would: a separate process
whose `RAY_ADDRESS` points at the cluster. The cluster is shut down by removing exactly its
own nodes (never `ray stop`, which would kill every Ray process on the machine); writing and
deleting Ray's "current cluster" address file is suppressed so that other Ray sessions on
this machine never attach to these short-lived clusters.

- Sharding: with `placement_strategy: STRICT_SPREAD` the two workers run on different nodes,
  and the per-worker facts in `metrics.jsonl` show disjoint shards whose union is the epoch.
- Elasticity: a `[1, 2]` job starts with the one worker the head has room for (a custom
  `trainer` resource), a second node joins after the first epoch, Ray Train restarts the group
  with two workers from the latest checkpoint, and the run finishes the planned epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray._common.utils
import ray._private.utils
from helpers import FIXTURE_TRAIN, QUICKSTART, read_mlflow_runs, read_summary
from ray.cluster_utils import Cluster

from rayaccel.train.shard_audit import combine_digests, index_digest

pytestmark = pytest.mark.ray

RUN_TIMEOUT_S = 600  # generous: other work may share the cores
# 4,000 fixture rows over 2 workers at 50 per worker and step: 40 steps cover every row.
COVERING_BATCH = ["train.global_batch_size=100"]
ONE_WORKER_NODE = {"num_cpus": 2, "resources": {"trainer": 1}}
# Ray Train sees a joined node only at the next tick of Ray's autoscaling coordinator, every
# 20 s (`_AutoscalingCoordinatorActor.TICK_INTERVAL_S` in Ray 2.60), so the run must still be
# training 20 s plus the node's start-up after the join: 5 more epochs of 8-15 s each with one
# worker on 2 cores. With 4 epochs in all, a run here finished at world size 1 once Ray Train's
# polls got faster (conftest.RAY_TEST_ENV); a passing one noticed the node after epoch 3.
ELASTIC_EPOCHS = 6


@pytest.fixture
def cluster(monkeypatch):
    """A head with 2 CPUs and room for one trainer; yields the Cluster (add nodes to it)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    # Short path: Ray's unix socket paths live under it and must stay below 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayaccel-mn-")
    cluster = Cluster()
    try:
        cluster.add_node(**ONE_WORKER_NODE, temp_dir=temp_dir, include_dashboard=False)
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_run(cluster: Cluster, overrides: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    command = [sys.executable, "-m", "rayaccel", "run", QUICKSTART, *overrides]
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"rayaccel run did not finish in {RUN_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    assert code == 0, log.read_text()[-4000:]


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def common_overrides(tmp_path: Path, name: str) -> list[str]:
    return [
        f"data.train={FIXTURE_TRAIN}",
        "data.val=null",
        f"run.storage_path={tmp_path}",
        f"run.name={name}",
        "train.schedule.warmup_epochs=0",
    ]


def test_two_workers_on_two_nodes_train_disjoint_shards_covering_the_epoch(cluster, tmp_path):
    worker_node = cluster.add_node(**ONE_WORKER_NODE)
    cluster.wait_for_nodes()
    log = tmp_path / "run.log"
    overrides = common_overrides(tmp_path, "spread") + [
        *COVERING_BATCH,
        "train.epochs=1",
        "scaling.num_workers=2",
        "scaling.placement_strategy=STRICT_SPREAD",
    ]
    finish(start_run(cluster, overrides, log), log)

    (row,) = metrics(tmp_path / "spread")
    assert row["world_size"] == 2
    workers = row["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == {
        cluster.head_node.node_id,
        worker_node.node_id,
    }
    assert [w["fresh_images"] for w in workers] == [2000, 2000]
    # Disjoint shards whose union is every one of the 4,000 rows.
    assert combine_digests(w["index_digest"] for w in workers) == index_digest(range(4000))
    summary = read_summary(tmp_path / "spread")
    assert summary["epochs_completed"] == 1


def test_elastic_group_grows_when_a_node_joins_and_finishes(cluster, tmp_path):
    log = tmp_path / "run.log"
    run_dir = tmp_path / "elastic"
    overrides = common_overrides(tmp_path, "elastic") + [
        f"train.epochs={ELASTIC_EPOCHS}",
        "scaling.num_workers=[1, 2]",
        "scaling.resources_per_worker={CPU: 0.5, trainer: 1}",
        "scaling.resize_check_interval_s=2",
        # The restarted worker group reports to the same controller: one MLflow run.
        "tracking.mlflow=true",
    ]
    # The node joins after the first epoch; Ray Train notices it up to 20 s later.
    process = start_run(cluster, overrides, log)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not metrics(run_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert metrics(run_dir), log.read_text()[-4000:]
        cluster.add_node(**ONE_WORKER_NODE)
        finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(ELASTIC_EPOCHS))
    assert rows[0]["world_size"] == 1 and len(rows[0]["workers"]) == 1
    assert rows[-1]["world_size"] == 2
    assert len({w["node_id"] for w in rows[-1]["workers"]}) == 2
    for row in rows:
        # The global batch stays the job's whatever the group size.
        assert row["global_batch"] == 128
        assert row["train_images"] == 31 * 128
    assert "resumed from checkpoint" in log.read_text()
    summary = read_summary(run_dir)
    assert summary["epochs_completed"] == ELASTIC_EPOCHS
    client, (run,) = read_mlflow_runs(run_dir / "mlflow" / "mlflow.db")
    history = client.get_metric_history(run.info.run_id, "world_size")
    assert [(m.step, m.value) for m in history] == [(r["epoch"] + 1, r["world_size"]) for r in rows]
    assert "[rayaccel] warning" not in log.read_text()
