"""The secret check the gate runs after its passes, and the dead letter of a refused record.

* :func:`secret_problems` — what the JSON Schemas' ``redacted_object`` demands, checked without
  ``jsonschema`` (a dev dependency): every secret-named field holds ``null`` or a redacted value,
  every ``headers`` map holds only redacted values, at any depth;
* :func:`leaked_secret` — a registered value (any encoded form, base64 cores included) left in the record's bytes;
* :class:`GateRejected` and :func:`rejected_letter` — a refusal names the reason and the field
  path, never the value; its DeadLetter v1 keeps no value.
"""

from __future__ import annotations

from typing import Any

from pipeline.redaction import registry
from pipeline.redaction.text import is_redacted
from schemas import deadletter
from schemas.deadletter import DeadLetter
from schemas.secret_names import HEADERS_NAME, is_secret_name

MAX_DEPTH = 64
"""Deeper maps are refused (a record is data, not a parser bomb)."""


class GateRejected(Exception):
    """The secret check still failed after redaction; ``path`` names the field, never the value."""

    def __init__(self, reason: str, path: str):
        super().__init__(f"{reason} at {path}")
        self.reason = reason
        self.path = path


def secret_problems(value: Any, path: str = "", depth: int = 0) -> list[str]:
    """The secret check: paths of secret-named fields holding a value, and of header maps with values."""
    problems: list[str] = []
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            return [f"{path or '<root>'}: nested too deep"]
        for k, v in value.items():
            p = f"{path}/{k}" if path else str(k)
            if is_secret_name(str(k)):
                if not (v is None or is_redacted(v)):
                    problems.append(f"{p}: a secret-named field holds a value")
            elif HEADERS_NAME.match(str(k)) and isinstance(v, dict):
                problems += [f"{p}/{h}: a header value" for h, x in v.items() if not (x is None or is_redacted(x))]
            else:
                problems += secret_problems(v, p, depth + 1)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problems += secret_problems(v, f"{path}/{i}", depth + 1)
    return problems


def leaked_secret(data: bytes) -> bool:
    """Whether a registered secret (any of its encoded forms) is in ``data``."""
    for secret in registry.known_secrets():
        for core, _, _ in secret.b64:  # base64 characters: the same in JSON bytes
            if core.encode() in data:
                return True
        if secret.needle and secret.needle not in data:
            continue
        for form in secret.encoded:
            if form in data:
                return True
    return False


def rejected_letter(
    err: GateRejected,
    *,
    stage: deadletter.Stage,
    component: str,
    component_type: str,
    failed_at: str,
    record_id: str | None = None,
    stream: str | None = None,
    key: bytes | None = None,
) -> DeadLetter:
    """The dead letter of a record the gate refused: the reason and the path, not the value.

    Raises:
        ValueError: ``stage`` is unknown.
    """
    return deadletter.build(
        stage=stage, component=component, component_type=component_type, reason="secret_rejected",
        error=f"the redaction gate refused the record: {err.reason} at {err.path}", failed_at=failed_at,
        value=None, stream=stream, key=key, record_id=record_id,
    )  # fmt: skip
