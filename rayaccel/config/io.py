"""Reading YAML files and applying command-line overrides and curriculum files to them.

Works on raw mappings, before any schema: problems are `ConfigError` lines naming the file
(and, for YAML syntax, its line and column).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from rayaccel.config.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, turning I/O and syntax problems into a `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such job file"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{path}: the job must be a mapping of sections, got {type(raw).__name__}"]
        )
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `section.key=value` (or `section=value`) overrides; values are parsed as YAML
    (`3`, `true`, `[1,2]`, `{rule: sqrt, base_batch: 64}`, `null` to drop a section)."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            problems.append(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
            continue
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {part} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return raw


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
