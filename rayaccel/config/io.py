"""Reading YAML files and applying command-line overrides and curriculum files to them.

Works on raw mappings, before any schema: problems are `ConfigError` lines naming the file
(and, for YAML syntax, its line and column). A key written twice in one mapping is refused:
plain PyYAML keeps the last one silently, so a second `model:` section would replace the first.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from rayaccel.config.errors import ConfigError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice; `line` is the second one's (1-based)."""

    def __init__(self, key_path: str, line: int, first_line: int):
        super().__init__(f"duplicate key {key_path} (first at line {first_line})")
        self.key_path, self.line, self.first_line = key_path, line, first_line


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping, naming its path."""

    def construct_document(self, node):
        _check_unique_keys(node, ())
        return super().construct_document(node)


def _check_unique_keys(node: yaml.Node, path: tuple[str, ...]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _check_unique_keys(item, (*path, str(position)))
    elif isinstance(node, yaml.MappingNode):
        first_lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first_lines:
                first = first_lines[key.tag, key.value]
                raise DuplicateKeyError(".".join((*path, key.value)), line, first)
            first_lines[key.tag, key.value] = line
            _check_unique_keys(value, (*path, key.value))


def load_yaml_text(text: str) -> Any:
    """`yaml.safe_load` with duplicate keys refused (`DuplicateKeyError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, turning I/O and syntax problems and duplicate keys into a
    `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such job file"])
    try:
        raw = load_yaml_text(path.read_text())
    except DuplicateKeyError as err:
        raise ConfigError(
            [
                f"{path}:{err.line}: duplicate key {err.key_path} (first at line "
                f"{err.first_line}); write each key once"
            ]
        ) from None
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
            value = load_yaml_text(text) if text else None
        except DuplicateKeyError as err:
            problems.append(f"override {item!r}: {err}")
            continue
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
