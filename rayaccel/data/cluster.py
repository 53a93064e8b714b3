"""Connecting to Ray, with the one setting rayaccel needs on an instance it starts itself
(here, in the lowest layer that may use Ray, because preparation, runs and searches all
connect)."""

from __future__ import annotations

import os

# Idle worker processes a node keeps (Ray's default: one per CPU).
MIN_IDLE_WORKERS = 8


def connect_ray(**init_kwargs) -> None:
    """`ray.init(**init_kwargs)` unless connected: joins `RAY_ADDRESS` or a cluster running on
    this machine, else starts a local instance.

    A local instance started here keeps at least `MIN_IDLE_WORKERS` idle worker processes
    per node. With Ray's default of one per CPU, a 2-CPU machine running two training
    workers, Ray Train's and Ray Data's actors and the epoch clock killed the Ray Data task
    processes between epochs, and every epoch waited 2-4 s for new ones to start and import
    torch (the quickstart's first batch of an epoch: 4.4 s, against 0.2 s with them kept).
    On a cluster started with `ray start`, set `RAY_num_workers_soft_limit` on the nodes.
    """
    import ray

    if ray.is_initialized():
        return
    # Read by the raylet this process starts; no effect when joining a running cluster.
    os.environ.setdefault(
        "RAY_num_workers_soft_limit", str(max(MIN_IDLE_WORKERS, os.cpu_count() or 1))
    )
    ray.init(**init_kwargs)
