"""One formatter for every schema error: a job's, a search file's, a curriculum file's.

Each pydantic error becomes one line `file: yaml.path: what is wrong, got <value>`. The path
is found by walking the schema along the error's location, which also drops pydantic's union
tags from it and gives the "allowed:" hint of an unknown key from the section's own fields,
so neither can drift from the schema.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from rayaccel.core.schema import CROSS_FIELD_MARK, VARIANT_KEY_ERROR, number


class ConfigError(ValueError):
    """A job or search that cannot run; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def format_errors(err: ValidationError, schema: Any, source: str) -> list[str]:
    """Every error of `err` as a `source: path: problem` line.

    Args:
        err: What validating against `schema` raised.
        schema: The annotation that was validated: a model class or a (tagged) union.
        source: What the lines start with, usually the file's path.
    """
    lines = []
    for item in err.errors(include_url=False):
        path, owner = _walk(schema, item["loc"])
        kind = item["type"]
        ctx = item.get("ctx") or {}
        got = item.get("input")
        message = item["msg"]
        if kind == "value_error" and CROSS_FIELD_MARK in message:
            cross = message.split(CROSS_FIELD_MARK, 1)[1].splitlines()
            lines.extend(f"{source}: {line}" for line in cross)
            continue
        if kind.startswith(VARIANT_KEY_ERROR):  # no variant of a union: report at its key
            key = kind.removeprefix(VARIANT_KEY_ERROR)
            path.append(key)
            got = got.get(key) if isinstance(got, dict) else got
            text = f"{message}, got {got!r}"
        else:
            text = _problem(kind, message, ctx, got, owner)
        where = ".".join(path)
        if not where and kind == "value_error" and ": " in text:
            where, text = text.split(": ", 1)
        lines.append(f"{source}: {where or '(top level)'}: {text}")
    return lines


def _problem(kind: str, message: str, ctx: dict, got: Any, owner: type[BaseModel] | None) -> str:
    if kind == "extra_forbidden":
        allowed = list(owner.model_fields) if owner is not None else []
        return "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required, but missing"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"must be {op} {number(ctx.get(key))}, got {got!r}"
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected', 'one of the allowed values')}, got {got!r}"
    if kind == "union_tag_invalid":
        return f"must be {ctx.get('expected_tags')}, got {ctx.get('tag', got)!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got!r}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {got!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got!r}"
    if kind == "string_type":
        return f"must be a string, got {got!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping of keys, got {got!r}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {got!r}"
    if kind == "string_pattern_mismatch":
        return f"must use only letters, digits, '.', '_' and '-', got {got!r}"
    if kind in ("too_short", "too_long"):
        return f"{message.lower()}, got {got!r}"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return f"{message}, got {got!r}"


def _walk(schema: Any, loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """The YAML path of an error location (union tags dropped) and the model of its last key."""
    path: list[str] = []
    owner = None
    current = schema
    for part in loc:
        current = _without_none(current)
        variants = _tagged_variants(current)
        if variants is not None and part in variants:
            current = variants[part]
            continue
        while get_origin(current) is Annotated:  # constraints such as min_length
            current = _without_none(get_args(current)[0])
        path.append(str(part))
        if isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            field = current.model_fields.get(str(part))
            current = _field_annotation(field) if field is not None else None
            continue
        owner = None
        args = get_args(current)
        if get_origin(current) in (list, tuple) and args:
            current = args[0]
        elif get_origin(current) is dict and len(args) == 2:
            current = args[1]
        else:
            current = None
    return path, owner


def _field_annotation(field: Any) -> Any:
    # pydantic keeps a field's `Annotated` metadata (a union's Discriminator) in `metadata`.
    if field.metadata:
        return Annotated[(field.annotation, *field.metadata)]
    return field.annotation


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _tagged_variants(annotation: Any) -> dict[str, Any] | None:
    """`{tag: variant}` of a discriminated union written as `Annotated[X, Tag("x")] | ...`."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, types.UnionType):
        return None
    variants = {}
    for member in get_args(annotation):
        if get_origin(member) is not Annotated:
            return None
        inner, *metadata = get_args(member)
        tags = [m.tag for m in metadata if isinstance(m, Tag)]
        if not tags:
            return None
        variants[tags[0]] = inner
    return variants
