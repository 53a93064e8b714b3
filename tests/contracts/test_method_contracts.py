"""The contracts every registered method passes, driven by `method_settings.CANONICAL`.

For each method: switched off it builds exactly the baseline (spec, plan, model, optimizer and
one training step on the same batch); switched on it shows in the worker spec and in
`rayaccel plan`; its state survives a checkpoint; a run stopped after a checkpoint and
resumed gives the same epochs, losses, weights and method state as the uninterrupted run;
and its section rejects an unknown key with the allowed ones. The trainer here is the real
one (`Trainer.build`, `run_epoch`, `save_checkpoint`/`load_checkpoint`) fed from the bundled
fixture in a fixed order, on one CPU worker; InfoBatch gets its real score-board actor.
"""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from method_settings import BASE_JOB, CANONICAL, NEEDS_RAY

from rayaccel.cli import main as cli_main
from rayaccel.config import ConfigError, parse_job, resolve_data
from rayaccel.data.device import load_rows
from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import DecodeSpec
from rayaccel.methods.registry import METHODS, method_spec
from rayaccel.train.checkpoint import load_checkpoint, save_checkpoint
from rayaccel.train.loop import Trainer, _Progress
from rayaccel.train.runner import build_run

NAMES = [spec.name for spec in METHODS]
# Methods with a driver-side Ray actor run on the shared local Ray instance (marked `ray`).
CASES = [pytest.param(name, marks=pytest.mark.ray) if name in NEEDS_RAY else name for name in NAMES]


def _merged(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _off(name: str) -> dict:
    """The job sections that write method `name` switched off."""
    spec = method_spec(name)
    section, _, member = spec.key.partition(".")
    return {section: {member: spec.default}} if member else {section: spec.default}


def _job(extra: dict | None = None):
    return resolve_data(parse_job(_merged(BASE_JOB, extra or {}), source="contract"))


class _FixtureShard:
    """The fixture's rows in a fixed order, as a worker's shard yields them (uint8 batches).

    Ray Data is exercised by the integration tests; here every run must see the same
    batches, so a resumed run can be compared with the uninterrupted one step by step.
    """

    def __init__(self, location: str, rows: int, seed: int):
        meta = read_meta(location)
        spec = DecodeSpec(image_size_px=28, channels=1, num_classes=10, on_bad_row="fail")
        order = np.random.default_rng(seed).permutation(meta.count)[:rows]
        self.arrays = {
            k: torch.from_numpy(v) for k, v in load_rows(location, meta, spec, order).items()
        }

    def iter_torch_batches(self, *, batch_size: int, drop_last: bool, prefetch_batches: int = 0):
        count = len(self.arrays["label"])
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}


@pytest.fixture
def resources(request):
    """Driver-side objects of a method (InfoBatch's score board, on the shared Ray)."""

    def make(job, plan) -> dict:
        if job.infobatch is None:
            return {}
        request.getfixturevalue("ray_session")
        from rayaccel.methods.infobatch.hook import ScoreBoard

        return {
            "infobatch_board": ScoreBoard.remote(
                plan.train_samples,
                prune_ratio=job.infobatch.prune_ratio,
                delta=job.infobatch.delta,
                total_epochs=plan.total_epochs,
                seed=job.train.seed,
            )
        }

    return make


def _trainer(job, resources) -> Trainer:
    plan, spec = build_run(job)
    # 128 training rows (4 steps of 32 per epoch) and 32 validation rows keep it quick.
    spec = spec.replace_loop(eval_every_epochs=1)
    trainer = Trainer.build(
        spec, rank=0, world_size=1, device=torch.device("cpu"), resources=resources(job, plan)
    )
    trainer.plan = _short_plan(trainer.plan, rows=128)
    for name in {stage.dataset for stage in trainer.plan.stages}:
        trainer.shards[name] = _FixtureShard(spec.data.train, 128, seed=1)
    for px in {stage.resolution_px for stage in trainer.plan.stages}:
        trainer.shards[trainer.plan.val_dataset(px)] = _FixtureShard(spec.data.val, 32, seed=2)
    return trainer


def _short_plan(plan, *, rows: int):
    """The plan as if the dataset held `rows` samples (steps per epoch shrink with it)."""
    stages = tuple(
        type(s)(**{**s.__dict__, "steps_per_epoch": max(1, rows // s.global_batch)})
        for s in plan.stages
    )
    return type(plan)(**{**plan.__dict__, "stages": stages, "train_samples": rows})


def _epochs(trainer: Trainer, epochs: range) -> list[dict]:
    """The epochs' records as `metrics.jsonl` rows."""
    progress = _Progress(trainer.plan, enabled=False, every_steps=100)
    last_epoch = trainer.plan.total_epochs - 1
    return [trainer.run_epoch(e, progress, last=e == last_epoch)[0].to_row() for e in epochs]


def _comparable(metrics: list[dict]) -> list[dict]:
    timing = (
        "epoch_time_s",
        "images_per_s",
        "data_wait_s",
        "first_batch_wait_s",
        "worker_cpu_s",
        "bookkeeping_s",
    )
    return [{k: v for k, v in m.items() if not k.endswith(timing)} for m in metrics]


def _same_state(a, b) -> bool:
    """Exactly equal, tensors and arrays included (NaN equals NaN); time measurements
    (`*_s`, `*_seconds`) aside."""
    if isinstance(a, dict):
        timed = {k for k in a if str(k).endswith(("_s", "_seconds"))}
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_same_state(a[k], b[k]) for k in a if k not in timed)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(
            torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all()
            if a.is_floating_point()
            else torch.equal(a, b)
        )
    if isinstance(a, np.ndarray):
        # Samples never scored are NaN (InfoBatch): equal where both are.
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def test_every_registered_method_has_a_row():
    assert set(CANONICAL) == set(NAMES)


@pytest.mark.parametrize("name", CASES)
def test_switched_off_it_builds_the_baseline(name, resources):
    baseline = _job()
    off = _job(_off(name))
    assert build_run(off) == build_run(baseline)
    first, second = _trainer(baseline, resources), _trainer(off, resources)
    assert _comparable(_epochs(first, range(1))) == _comparable(_epochs(second, range(1)))
    assert _same_state(first.model.state_dict(), second.model.state_dict())
    assert _same_state(first.optimizer.state_dict(), second.optimizer.state_dict())


@pytest.mark.parametrize("name", CASES)
def test_switched_on_it_reaches_the_spec_and_rayaccel_plan(name, tmp_path):
    job = _job(CANONICAL[name])
    spec = method_spec(name)
    assert spec.enabled(job) and not spec.enabled(_job())
    _, worker_spec = build_run(job)
    if spec.settings is not None and name != "alternating_flip":
        assert name in dict(worker_spec.methods)
    path = tmp_path / "job.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_merged(BASE_JOB, CANONICAL[name])))
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["plan", str(path)]) == 0
    assert f"{name} ({spec.key})" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize("name", CASES)
def test_its_section_rejects_an_unknown_key_with_the_allowed_ones(name):
    spec = method_spec(name)
    section, _, member = spec.key.partition(".")
    on = copy.deepcopy(CANONICAL[name])
    value = on[section][member] if member else on[section]
    if not isinstance(value, dict):
        bad = {section: {member: "maybe"}} if member else {section: "maybe"}
        with pytest.raises(ConfigError, match=f"{spec.key}: must be true or false"):
            _job(bad)
        return
    value["not_a_key"] = 1
    with pytest.raises(ConfigError) as error:
        _job(on)
    (line,) = error.value.problems
    assert line.startswith(f"contract: {spec.key}.not_a_key: unknown key; allowed: ")


@pytest.mark.parametrize("name", CASES)
def test_a_resumed_run_repeats_the_uninterrupted_one(name, resources, tmp_path):
    job = _job(CANONICAL[name])
    whole = _trainer(job, resources)
    epochs = whole.plan.total_epochs
    assert epochs >= 2
    split = epochs // 2
    expected = _comparable(_epochs(whole, range(epochs)))

    first = _trainer(job, resources)
    before = _epochs(first, range(split))
    save_checkpoint(
        tmp_path,
        model=first.model,
        optimizer=first.optimizer,
        scaler=first.scaler,
        state=first.state,
        methods=first.hooks,
    )
    saved = first.hooks.state_dict()
    resumed = _trainer(job, resources)
    resumed.state = load_checkpoint(
        tmp_path,
        model=resumed.model,
        optimizer=resumed.optimizer,
        scaler=resumed.scaler,
        device=torch.device("cpu"),
        methods=resumed.hooks,
    )
    assert _same_state(resumed.hooks.state_dict(), saved)  # its state survived the checkpoint
    after = _epochs(resumed, range(resumed.state.next_epoch, epochs))
    assert _comparable(before) + _comparable(after) == expected
    assert _same_state(resumed.model.state_dict(), whole.model.state_dict())
    assert _same_state(resumed.hooks.state_dict(), whole.hooks.state_dict())
