"""Curriculum files a search writes, applied to a job (`rayaccel run JOB --curriculum FILE`).

Kept free of Ray imports: job loading (`rayaccel.config.load_job`) uses it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rayaccel.config import ConfigError, read_yaml


def load_curriculum_file(path: str | Path) -> dict[str, Any]:
    """The `curriculum` mapping of a file written by a search (or by hand)."""
    raw = read_yaml(path)
    section = raw.get("curriculum")
    if set(raw) != {"curriculum"} or not isinstance(section, dict):
        raise ConfigError(
            [f"{path}: must hold one `curriculum:` mapping (as written by `rayaccel tune`)"]
        )
    return section


def merge_curriculum(raw_job: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The job with a curriculum file applied.

    A file that names its `preset` brings a whole curriculum and replaces the job's; a file
    without one (an LR rule: `lr_alpha`, `lr_max`) changes only those keys of the job's.
    """
    raw_job = copy.deepcopy(raw_job)
    current = raw_job.get("curriculum")
    if "preset" in section or not isinstance(current, dict):
        raw_job["curriculum"] = copy.deepcopy(section)
    else:
        raw_job["curriculum"] = {**current, **copy.deepcopy(section)}
    return raw_job
