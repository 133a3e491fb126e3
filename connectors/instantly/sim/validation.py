"""Strict request validation with AJV-style messages (the API validates with JSON Schema).

Bodies follow the documented schemas: ``additionalProperties: false``, PATCH bodies need at
least one property, and the first failing rule is reported the way AJV words it, e.g.
``body must have required property 'name'`` or ``querystring/limit must be <= 100``.
Keyword order follows AJV: minProperties, required, additionalProperties, then properties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import bad_request

Kind = Literal["string", "number", "boolean", "string_array", "string_map"]

_FORMATS = {
    "email": re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
}
_TYPE_NAMES = {"string": "string", "number": "number", "boolean": "boolean", "string_array": "array",
               "string_map": "object"}  # fmt: skip


@dataclass(frozen=True)
class Field:
    """One property of a body schema."""

    kind: Kind
    nullable: bool = False
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    format: str | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Schema:
    """A strict object schema."""

    fields: Mapping[str, Field]
    required: tuple[str, ...] = ()
    min_properties: int = 0


def validate_body(schema: Schema, body: Any) -> dict[str, Any]:
    """Check ``body`` against ``schema`` and return it as a dict.

    Raises:
        ApiError: 400 with the first AJV-style message.
    """
    if not isinstance(body, dict):
        raise bad_request("body must be object")
    if len(body) < schema.min_properties:
        raise bad_request(f"body must NOT have fewer than {schema.min_properties} properties")
    for name in schema.required:
        if name not in body:
            raise bad_request(f"body must have required property '{name}'")
    if any(name not in schema.fields for name in body):
        raise bad_request("body must NOT have additional properties")
    for name, value in body.items():
        _check_field(f"body/{name}", schema.fields[name], value)
    return body


def _check_field(path: str, spec: Field, value: Any) -> None:
    if value is None:
        if not spec.nullable:
            raise bad_request(f"{path} must be {_TYPE_NAMES[spec.kind]}")
        return
    if not _has_kind(spec.kind, value):
        suffix = ",null" if spec.nullable else ""
        raise bad_request(f"{path} must be {_TYPE_NAMES[spec.kind]}{suffix}")
    if spec.kind == "string_array":
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise bad_request(f"{path}/{i} must be string")
            _check_string(f"{path}/{i}", spec, item)
    elif spec.kind == "string_map":
        for key, item in value.items():
            if not isinstance(item, str):
                raise bad_request(f"{path}/{key} must be string")
    elif spec.kind == "string":
        _check_string(path, spec, value)


def _check_string(path: str, spec: Field, value: str) -> None:
    if spec.max_length is not None and len(value) > spec.max_length:
        raise bad_request(f"{path} must NOT have more than {spec.max_length} characters")
    if spec.pattern is not None and re.search(spec.pattern, value) is None:
        raise bad_request(f'{path} must match pattern "{spec.pattern}"')
    if spec.format is not None and _FORMATS[spec.format].match(value) is None:
        raise bad_request(f'{path} must match format "{spec.format}"')
    if spec.enum is not None and value not in spec.enum:
        raise bad_request(f"{path} must be equal to one of the allowed values")


def _has_kind(kind: Kind, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string_array":
        return isinstance(value, list)
    return isinstance(value, dict)


def query_int(query: Mapping[str, str], name: str, low: int, high: int, default: int) -> int:
    """An integer query parameter within ``[low, high]``.

    Raises:
        ApiError: 400 ``querystring/<name> must be integer`` / ``must be >= low`` / ``must be <= high``.
    """
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"querystring/{name} must be integer") from None
    if value < low:
        raise bad_request(f"querystring/{name} must be >= {low}")
    if value > high:
        raise bad_request(f"querystring/{name} must be <= {high}")
    return value


def query_bool(query: Mapping[str, str], name: str) -> bool | None:
    """A boolean query parameter (``true``/``false``), None when absent.

    Raises:
        ApiError: 400 ``querystring/<name> must be boolean``.
    """
    raw = query.get(name)
    if raw is None:
        return None
    if raw in ("true", "false"):
        return raw == "true"
    raise bad_request(f"querystring/{name} must be boolean")


def query_enum(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """A string query parameter from ``allowed``, None when absent.

    Raises:
        ApiError: 400 ``querystring/<name> must be equal to one of the allowed values``.
    """
    raw = query.get(name)
    if raw is not None and raw not in allowed:
        raise bad_request(f"querystring/{name} must be equal to one of the allowed values")
    return raw
