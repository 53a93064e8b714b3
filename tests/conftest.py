"""Shared test fixtures: one local Ray instance for the whole session (start-up costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_TRAIN = REPO_ROOT / "data" / "fixture" / "fashion-mnist" / "train"
FIXTURE_TEST = REPO_ROOT / "data" / "fixture" / "fashion-mnist" / "test"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance with 2 logical CPUs, shared by every test that needs Ray.

    Its address is exported as RAY_ADDRESS so that `rayaccel` subprocesses started by tests
    join this instance instead of starting their own.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=True)
    address = ray.get_runtime_context().gcs_address
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    yield address
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous
    ray.shutdown()
