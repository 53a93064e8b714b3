"""The job's JSON Schema and its Markdown reference, both generated from `JobConfig`.

The pydantic models are the one definition of a job: the schema editors complete and check
job files with, and the reference page a user reads, are derived from them (field
docstrings become descriptions), so neither can drift. `rayaccel schema --write docs`
regenerates the committed copies; a unit test fails while they are stale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rayaccel.config.job import JobConfig

SCHEMA_FILE = "job-schema.json"
REFERENCE_FILE = "reference.md"
REGENERATE_COMMAND = "rayaccel schema --write docs"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def job_schema() -> dict[str, Any]:
    """The job's JSON Schema (draft 2020-12), with every description on one line."""
    schema = JobConfig.model_json_schema()
    schema = _tidy(schema)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": "rayaccel job"}


def _tidy(node: Any) -> Any:
    """Descriptions on one line; `oneOf` as `anyOf`.

    rayaccel picks a union's variant by a key (`name`, `preset`), which JSON Schema cannot
    say; with `oneOf`, `{name: resnet9}` would match both model variants and editors would
    flag a valid job.
    """
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    tidy = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            tidy[key] = " ".join(value.split())
        else:
            tidy["anyOf" if key == "oneOf" else key] = _tidy(value)
    return tidy


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2) + "\n"


# ---------------------------------------------------------------- markdown
_INTRO = """# Job file reference

Every field of a job YAML, generated from rayaccel's schema (`rayaccel/config/job.py` and
the methods' `config.py` files); regenerate with `{command}`. A field without a
default is required; `null` means "not set" (the description says what is used then).
Unknown keys are errors.

## Completion and checking in editors

The same schema is in [`{schema}`]({schema}) (`rayaccel schema` prints it). With the YAML
language server (VS Code's *YAML* extension by Red Hat, Neovim, JetBrains), a job file
that starts with this comment line gets completion, hover text and checking; rayaccel's
YAML loading ignores it, as any comment:

```yaml
# yaml-language-server: $schema=../docs/{schema}
```

(the path is relative to the job file). Or map every job file to it in VS Code's
`settings.json`:

```json
"yaml.schemas": {{
  "./docs/{schema}": ["jobs/*.yaml"]
}}
```

Editors check single fields; rules between fields (a batch that divides by the workers,
an image size that fits a curriculum) are checked by `rayaccel validate JOB`.
"""


def reference_markdown() -> str:
    """The reference page: one table per top-level section, every field path in it."""
    schema = job_schema()
    defs = schema.get("$defs", {})
    lines = [
        _INTRO.format(command=REGENERATE_COMMAND, schema=SCHEMA_FILE).rstrip(),
        "",
    ]
    required = set(schema.get("required", []))
    for name, node in schema["properties"].items():
        lines.append(f"## `{name}`")
        lines.append("")
        lines.append("| Field | Type | Default | Allowed | Description |")
        lines.append("|---|---|---|---|---|")
        rows = []
        _rows(name, node, defs, name in required, rows, variant=None)
        lines.extend(rows)
        lines.append("")
    return "\n".join(lines)


def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = {
            **defs[node["$ref"].rsplit("/", 1)[1]],
            **{k: v for k, v in node.items() if k != "$ref"},
        }
    return node


def _members(node: dict, defs: dict) -> list[dict]:
    """A union's non-null members, resolved; the node itself when it is no union."""
    if "anyOf" in node:
        return [
            member
            for part in node["anyOf"]
            for member in _members(_resolve(part, defs), defs)
            if member.get("type") != "null"
        ]
    return [node]


def _rows(
    path: str, node: dict, defs: dict, required: bool, rows: list[str], variant: str | None
) -> None:
    """The row of `path` and, for a section, the rows of its fields (a union's per variant)."""
    resolved = _resolve(node, defs)
    objects = [m for m in _members(resolved, defs) if m.get("type") == "object"]
    default = "required" if required else _code(resolved.get("default", None))
    description = resolved.get("description", "")
    if not objects or all("properties" not in m for m in objects):
        rows.append(
            _row(
                path, _type(resolved, defs), default, _allowed(resolved, defs), description, variant
            )
        )
        return
    kinds = " or ".join(dict.fromkeys(m.get("title", "section") for m in objects))
    nullable = any(m.get("type") == "null" for m in resolved.get("anyOf", []))
    # A section's fields give its defaults; only "required" or "off" (null) is said here.
    section_default = "required" if required else ("`null`" if nullable else "")
    rows.append(
        _row(
            path,
            "section" + (" or null" if nullable else ""),
            section_default,
            kinds if len(objects) > 1 else "",
            description or (objects[0].get("description", "") if len(objects) == 1 else ""),
            variant,
        )
    )
    for member in objects:
        member_variant = _variant_name(member) if len(objects) > 1 else variant
        member_required = set(member.get("required", []))
        for field, sub in member.get("properties", {}).items():
            _rows(f"{path}.{field}", sub, defs, field in member_required, rows, member_variant)


def _variant_name(member: dict) -> str:
    """How a job picks this union member: `name: resnet9`, `preset: etpp`, else its title."""
    for key in ("name", "preset"):
        prop = member.get("properties", {}).get(key, {})
        if "const" in prop:
            return f"{key}: {prop['const']}"
        if len(prop.get("enum", [])) == 1:
            return f"{key}: {prop['enum'][0]}"
    return member.get("title", "")


def _type(node: dict, defs: dict) -> str:
    node = _resolve(node, defs)
    if "anyOf" in node:
        kinds = [_type(part, defs) for part in node["anyOf"]]
        return " or ".join(dict.fromkeys(kinds))
    if "const" in node:
        return type(node["const"]).__name__.replace("str", "string")
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(_type(item, defs) for item in node["prefixItems"]) + "]"
        return f"list of {_type(node.get('items', {}), defs)}"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map of string to {_type(extra, defs)}"
        return node.get("title", "mapping")
    return kind or "any"


_BOUNDS = (
    ("minimum", ">="),
    ("exclusiveMinimum", ">"),
    ("maximum", "<="),
    ("exclusiveMaximum", "<"),
    ("minLength", "length >="),
    ("maxLength", "length <="),
    ("minItems", "items >="),
)


def _allowed(node: dict, defs: dict) -> str:
    node = _resolve(node, defs)
    parts = []
    for part in _members(node, defs):
        if "enum" in part:
            parts.extend(_code(value) for value in part["enum"])
        elif "const" in part:
            parts.append(_code(part["const"]))
        else:
            bounds = [
                f"{sign} {_number(part[key])}"
                for key, sign in _BOUNDS
                if key in part and not (key == "minItems" and "prefixItems" in part)
            ]
            if "pattern" in part:
                bounds.append(f"pattern `{part['pattern']}`")
            parts.extend(bounds)
    return ", ".join(dict.fromkeys(parts))


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _code(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _row(
    path: str, kind: str, default: str, allowed: str, description: str, variant: str | None
) -> str:
    text = _cell(description)
    if variant:
        text = f"*({variant})* {text}".rstrip()
    return f"| `{path}` | {_cell(kind)} | {_cell(default)} | {_cell(allowed)} | {text} |"


# ---------------------------------------------------------------- files
def generated_files() -> dict[str, str]:
    """The committed generated files by name (under docs/), as they should read now."""
    return {
        SCHEMA_FILE: schema_text(),
        REFERENCE_FILE: re.sub(r"\n{3,}", "\n\n", reference_markdown()),
    }


def write_generated(folder: str | Path) -> list[Path]:
    """Writes `generated_files()` into `folder`; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated_files().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written
