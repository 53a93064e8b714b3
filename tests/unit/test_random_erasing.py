"""Random erasing: timm's transform on the same inputs and seeds, and the job section."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from test_config import BASE_JOB
from timm.data.random_erasing import RandomErasing

from rayaccel.config import ConfigError, parse_job
from rayaccel.core.seeds import epoch_seed
from rayaccel.methods.base import StepBatch
from rayaccel.methods.random_erasing.config import RandomErasingSettings
from rayaccel.methods.random_erasing.hook import RandomErasingHook

SETTINGS = RandomErasingSettings(
    probability=0.5, mode="pixel", min_area=0.02, max_area=1 / 3, min_aspect=0.3, max_count=2
)
CPU = torch.device("cpu")


def _batch(seed: int = 0) -> StepBatch:
    images = torch.randn(16, 3, 24, 24, generator=torch.Generator().manual_seed(seed))
    return StepBatch(images, torch.zeros(16, dtype=torch.long), torch.arange(16))


def test_the_hook_erases_exactly_as_timm_with_the_steps_seed():
    hook = RandomErasingHook(SETTINGS, seed=7, device=CPU)
    hook.on_epoch_start(3)
    inputs = _batch().images
    out = hook.on_inputs(_batch()).images

    random.seed(epoch_seed(7, 3) * 100_003 + 1)
    torch.manual_seed(epoch_seed(7, 3) * 100_003 + 1)
    timm_erase = RandomErasing(
        probability=0.5,
        mode="pixel",
        min_area=0.02,
        max_area=1 / 3,
        min_aspect=0.3,
        max_count=2,
        device=CPU,
    )
    expected = timm_erase(inputs.clone())
    assert torch.equal(out, expected)
    changed = (out != inputs).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 16  # probability 0.5: some images, not all


def test_an_epoch_resumed_at_its_start_erases_the_same_and_global_rngs_are_untouched():
    first = RandomErasingHook(SETTINGS, seed=1, device=CPU)
    first.on_epoch_start(2)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    outs = [first.on_inputs(_batch(i)).images for i in range(3)]
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    again = RandomErasingHook(SETTINGS, seed=1, device=CPU)
    again.on_epoch_start(2)
    assert all(torch.equal(o, again.on_inputs(_batch(i)).images) for i, o in enumerate(outs))
    assert not torch.equal(outs[0], outs[1])  # each step draws anew


def test_the_section_is_validated_and_reaches_the_job():
    job = copy.deepcopy(BASE_JOB)
    job["random_erasing"] = {"probability": 0.25}
    assert parse_job(job).random_erasing.mode == "pixel"
    job["random_erasing"] = {"min_area": 0.5, "max_area": 0.2}
    with pytest.raises(ConfigError, match=r"random_erasing: max_area: must be >= min_area=0.5"):
        parse_job(job)
    job["random_erasing"] = {"probability": 1.5}
    with pytest.raises(ConfigError, match=r"random_erasing.probability: must be <= 1"):
        parse_job(job)
