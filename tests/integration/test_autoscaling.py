"""A job larger than the head makes Ray's autoscaler add a node, and then completes.

The cluster is Ray's fake multi-node provider (worker nodes are extra raylets on this
machine, launched by the v1 autoscaler without Docker) with an inline cluster config, as
`ray.cluster_utils.AutoscalingCluster` would build it: that helper needs a base config the
wheel does not ship, and its start and shutdown run `ray stop --force`, which would kill every
Ray process on the machine. So the head is started here with `ray start --head
--autoscaling-config`, in a temporary directory, on free ports, with `RAY_AUTH_MODE=disabled`,
and stopped by killing exactly its processes and their descendants (the fake nodes).

The head offers 1 CPU; the job asks for 2 training workers of 1 CPU each, so its placement
group stays pending until the autoscaler launches a 2-CPU worker node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray._private.services
from helpers import QUICKSTART, free_port, read_metrics, read_summary
from ray_heads import RAY_CLI, head_env, stop_head

pytestmark = pytest.mark.ray

HEAD_START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 600  # generous: other work may share the cores
# Node ids the fake provider gives the nodes it launches (the head's id is random).
FAKE_NODE_ID_PREFIX = "ffffffffffffffff"


def cluster_config(gcs_address: str) -> dict:
    """A launcher config for the fake provider: a 1-CPU head and 0-2 nodes of 2 CPUs."""
    return {
        "cluster_name": "rayaccel-fake",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # The default would be <ip>:6379, where another local Ray head may listen.
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu2": {
                "resources": {"CPU": 2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture
def autoscaling_head(tmp_path):
    """Yields the GCS address of a fake-provider head whose autoscaler can add 2 nodes."""
    # Short path: Ray's unix socket paths live under it and must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayaccel-as-"))
    gcs_address = f"{ray._private.services.get_node_ip_address()}:{free_port()}"
    config = temp_dir / "cluster.json"
    config.write_text(json.dumps(cluster_config(gcs_address)))
    env = head_env()
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_enable_autoscaler_v2="0")
    command = [
        RAY_CLI,
        "start",
        "--head",
        "--block",
        f"--autoscaling-config={config}",
        f"--port={gcs_address.rsplit(':', 1)[1]}",
        "--num-cpus=1",
        "--include-dashboard=false",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--temp-dir={temp_dir / 'ray'}",
    ]
    log = tmp_path / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_gcs(process, gcs_address, env, log)
        yield gcs_address, env
    finally:
        stop_head(process.pid)
        process.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_gcs(process: subprocess.Popen, gcs_address: str, env: dict, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start --head exited with {process.returncode}:\n{log.read_text()}")
        status = subprocess.run(
            [RAY_CLI, "status", f"--address={gcs_address}"],
            env=env,
            capture_output=True,
            text=True,
        )
        if status.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"Ray head not ready after {HEAD_START_TIMEOUT_S} s:\n{log.read_text()}")


def test_job_larger_than_the_head_scales_the_cluster_up_and_completes(
    autoscaling_head, small_fixture, tmp_path
):
    gcs_address, env = autoscaling_head
    # A subset of the fixture: what is checked is where the workers ran, not what they learnt.
    overrides = [
        f"data.train={small_fixture[0]}",
        "data.val=null",
        f"run.storage_path={tmp_path}",
        "run.name=autoscaled",
        "train.epochs=1",
        "train.schedule.warmup_epochs=0",
        "scaling.num_workers=2",
        "scaling.resources_per_worker={CPU: 1}",
    ]
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.run(
            [sys.executable, "-m", "rayaccel", "run", QUICKSTART, *overrides],
            env={**env, "RAY_ADDRESS": gcs_address},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
    assert process.returncode == 0, log.read_text()[-4000:]

    run_dir = tmp_path / "autoscaled"
    summary = read_summary(run_dir)
    assert summary["epochs_completed"] == 1
    (row,) = read_metrics(run_dir)
    assert row["world_size"] == 2
    # At least one training worker ran on a node the autoscaler launched.
    nodes = [w["node_id"] for w in row["workers"]]
    assert any(node.startswith(FAKE_NODE_ID_PREFIX) for node in nodes), nodes
