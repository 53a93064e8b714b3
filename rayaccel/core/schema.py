"""The base of every YAML section's schema, shared by the job, the method packages and the
search files, so each section is strict and every problem is reported the same way."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# Marks a `ValueError` of a cross-field check: its lines are whole problems ("path: text"),
# reported as they are instead of at the validator's location.
CROSS_FIELD_MARK = "@cross@"


# The error type of a discriminated union whose variant a key picks (`variant_key:preset`): the
# formatter reports the error at that key, with the value found there.
VARIANT_KEY_ERROR = "variant_key:"


def variant_key_error(key: str) -> str:
    """`custom_error_type` of a `Discriminator` whose variant is named by the value of `key`."""
    return VARIANT_KEY_ERROR + key


class Strict(BaseModel):
    """A YAML section: unknown keys are errors (with the allowed ones listed), values frozen.

    A field's docstring (the string literal under it) is its description in the job schema
    (`rayaccel schema`) and the generated reference (docs/reference.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def cross_field_error(problems: list[str]) -> ValueError:
    """The error a model validator raises for problems that each name their own YAML path."""
    return ValueError(CROSS_FIELD_MARK + "\n".join(problems))


def number(value: Any) -> Any:
    """1.0 -> 1 so bounds and values read as the user wrote them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
