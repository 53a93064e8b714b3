"""The worker spec: built once from the job, plain values only, rebuilt exactly on a worker."""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURE_TEST, FIXTURE_TRAIN, JOBS_DIR, SEG_FIXTURE

from rayaccel.config import load_job
from rayaccel.train.runner import build_run
from rayaccel.train.spec import WorkerSpec

FIXTURE_DATA = [f"data.train={FIXTURE_TRAIN}", f"data.val={FIXTURE_TEST}"]


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("quickstart.yaml", []),
        ("quickstart-etpp.yaml", []),
        ("quickstart-erasing.yaml", []),
        ("fashion-mnist-fast.yaml", FIXTURE_DATA),
        ("fashion-mnist-infobatch.yaml", FIXTURE_DATA),
        ("fashion-mnist-etpp-device.yaml", FIXTURE_DATA),
        (
            "fashion-seg-agvm.yaml",
            [f"data.train={SEG_FIXTURE / 'train'}", f"data.val={SEG_FIXTURE / 'test'}"],
        ),
        (
            "quickstart.yaml",
            [
                "model={name: resnet18}",
                "curriculum={preset: progressive, size_px: [16, 28], drop_path_rate: [0, 0.1]}",
            ],
        ),
    ],
)
def test_the_spec_survives_json_and_comes_back_equal(name, overrides, monkeypatch):
    monkeypatch.chdir(JOBS_DIR.parent)
    _, spec = build_run(load_job(JOBS_DIR / name, overrides))
    plain = json.loads(json.dumps(spec.to_dict()))  # plain values only, nothing pickled
    assert WorkerSpec.from_dict(plain) == spec


def test_an_unknown_method_in_a_spec_fails_with_the_registered_ones(monkeypatch):
    monkeypatch.chdir(JOBS_DIR.parent)
    _, spec = build_run(load_job(JOBS_DIR / "quickstart-etpp.yaml"))
    plain = spec.to_dict()
    plain["methods"][0]["method"] = "etpp2"
    with pytest.raises(ValueError, match="unknown method 'etpp2'; registered: \\['etpp'"):
        WorkerSpec.from_dict(plain)
