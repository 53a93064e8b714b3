"""Shared test fixtures: one local Ray instance for the whole session (start-up costs seconds).

Layout: `tests/unit/` holds tests that need no Ray; `tests/integration/` holds every test
that starts or uses Ray, or runs a `rayaccel` process that trains. Every test under
`tests/integration/` is marked `ray` (so `-m "not ray"` runs exactly the unit tests), and
unit tests run first, so a broken unit fails the run within seconds. Paths and small
builders shared by several files live in `helpers.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

# Ray settings for a small test machine, set before any test starts Ray; the processes tests
# start (`rayaccel` subprocesses, `ray start` heads, multi-node clusters) inherit them. None
# changes what rayaccel does; each removes waiting or process start-ups from every run.
RAY_TEST_ENV = {
    # Ray Train's controller polls its workers every 2 s: each run waited up to that long to
    # notice that its workers finished, and every report arrived that late.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # An actor per run that polls the cluster's drain state (spot-instance preemption): one
    # more process to start per run, and no test drains a node.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Raylets keep up to 8 idle workers instead of one per CPU (2), so Ray Data's tasks and
    # later runs reuse started worker processes instead of starting and importing new ones.
    "RAY_num_workers_soft_limit": "8",
}
for _name, _value in RAY_TEST_ENV.items():
    os.environ.setdefault(_name, _value)


def _is_integration(item: pytest.Item) -> bool:
    return INTEGRATION_DIR in Path(item.fspath).resolve().parents


def pytest_collection_modifyitems(config, items):
    ray_mark = pytest.mark.ray
    for item in items:
        if _is_integration(item) and "ray" not in item.keywords:
            item.add_marker(ray_mark)
    # Stable: the order within each group is pytest's own.
    items.sort(key=_is_integration)

    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def small_fixture(tmp_path_factory) -> tuple[Path, Path]:
    """(train, test) split folders with the bundled fixture's first 1,024 training and 256
    test images, for tests whose checks do not depend on the data (written once a session)."""
    from helpers import FIXTURE_TEST, FIXTURE_TRAIN, write_subset

    root = tmp_path_factory.mktemp("small-fixture")
    return (
        write_subset(FIXTURE_TRAIN, root / "train", 1024),
        write_subset(FIXTURE_TEST, root / "test", 256),
    )


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
