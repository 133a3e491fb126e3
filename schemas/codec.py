"""The record codec: the one way bus records become Event / Alert / DeadLetter v1 and back.

The rules, the sinks and replay all decode here, so a record means the same to each of them.

* ``decode_event`` / ``decode_alert`` / ``decode_deadletter``: bytes to a type-checked model in
  one pass (msgspec decodes and checks every field's type in C); ``decode_record`` picks the
  model by the record's ``schema`` field.
* ``decode_document``: bytes to the plain dict a sink formats or replay filters, checked only
  for what every consumer needs (an object of a known schema with a string ``id``); sinks keep
  dicts because the formats (native, OCSF, ECS…) build their documents from them.
* ``encode_*``: the bus bytes (orjson, fields in declaration order, ``schema`` last).
* ``validate``: the full JSON Schema check (formats, patterns, secrets redacted) — slower, and
  it needs ``jsonschema`` (a dev dependency), so it is for tests, tools and ``config validate``,
  not for the hot path.

Every decoder raises :class:`~schemas.errors.RecordError` (a ``ValueError``) on a bad record,
never anything else, so a consumer turns it into a dead letter or a count and carries on.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from schemas.alert import ALERT_DECODER, Alert
from schemas.alert import SCHEMA as ALERT_SCHEMA
from schemas.deadletter import DEADLETTER_DECODER, DeadLetter, from_legacy, is_legacy
from schemas.deadletter import SCHEMA as DEADLETTER_SCHEMA
from schemas.errors import RecordError, decode_error
from schemas.event import EVENT_DECODER, Event
from schemas.event import SCHEMA as EVENT_SCHEMA

Record = Event | Alert | DeadLetter
SCHEMAS = (EVENT_SCHEMA, ALERT_SCHEMA, DEADLETTER_SCHEMA)
_KINDS = {EVENT_SCHEMA: "event", ALERT_SCHEMA: "alert", DEADLETTER_SCHEMA: "deadletter"}
_decode_event = EVENT_DECODER.decode
_decode_alert = ALERT_DECODER.decode
_decode_deadletter = DEADLETTER_DECODER.decode
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_DecodeError = msgspec.DecodeError


class _Head(msgspec.Struct):
    """Just the ``schema`` field (msgspec skips the rest without building it)."""

    schema: str | None = None


_decode_head = msgspec.json.Decoder(_Head).decode


def encode_event(event: Event) -> bytes:
    """The bus bytes of an event.

    Raises:
        orjson.JSONEncodeError: ``attributes`` or ``raw`` hold a value JSON cannot represent.
    """
    return event.to_json()


def encode_alert(alert: Alert) -> bytes:
    """The bus bytes of an alert.

    Raises:
        orjson.JSONEncodeError: ``attributes`` hold a value JSON cannot represent.
    """
    return alert.to_json()


def encode_deadletter(letter: DeadLetter) -> bytes:
    """The bus bytes of a dead letter.

    Raises:
        nothing for a dead letter built by :func:`schemas.deadletter.build` (all text).
    """
    return letter.to_json()


# The three typed decoders below repeat one shape on purpose: a shared helper costs an extra call
# (~0.13 us, +20%) on the rules' and replay's per-record path.
def decode_event(data: bytes) -> Event:
    """Bytes to a type-checked Event v1 (a missing ``schema`` reads as Event v1).

    Raises:
        RecordError: not JSON, not an object, another schema, or a field missing or mistyped.
    """
    try:
        return _decode_event(data)
    except _DecodeError as err:
        raise decode_error("an Event v1", err) from None


def decode_alert(data: bytes) -> Alert:
    """Bytes to a type-checked Alert v1.

    Raises:
        RecordError: not JSON, not an object, another schema, or a field missing or mistyped.
    """
    try:
        return _decode_alert(data)
    except _DecodeError as err:
        raise decode_error("an Alert v1", err) from None


def decode_deadletter(data: bytes) -> DeadLetter:
    """Bytes to a type-checked DeadLetter v1.

    Raises:
        RecordError: not JSON, not an object, another schema, or a field missing or mistyped.
    """
    try:
        return _decode_deadletter(data)
    except _DecodeError as err:
        legacy = _legacy_deadletter(data)
        if legacy is not None:
            return from_legacy(legacy)
        raise decode_error("a DeadLetter v1", err) from None


def _legacy_deadletter(data: bytes) -> dict[str, Any] | None:
    """The dict of a dead letter in the shape of releases up to 2026-11-27, else None."""
    try:
        d = _loads(data)
    except _JSONDecodeError:
        return None
    return d if is_legacy(d) else None


def decode_record(data: bytes) -> Record:
    """Bytes to whichever model the record's ``schema`` field names.

    Raises:
        RecordError: not JSON, no known ``schema``, or not valid for its schema.
    """
    try:
        schema = _decode_head(data).schema
    except _DecodeError as err:
        raise decode_error("a record", err) from None
    if schema == EVENT_SCHEMA:
        return decode_event(data)
    if schema == ALERT_SCHEMA:
        return decode_alert(data)
    if schema == DEADLETTER_SCHEMA:
        return decode_deadletter(data)
    raise RecordError(f"not a record: unknown schema {schema!r} (expected one of {', '.join(SCHEMAS)})")


def decode_document(data: bytes, schema: str | None = None) -> dict[str, Any]:
    """Bytes to the record's plain dict, checked for what every consumer relies on.

    The value must be a JSON object; with ``schema`` given, its ``schema`` field must be that
    one (absent reads as Event v1, as :func:`decode_event` does) and its ``id`` a non-empty
    string. Field types beyond that are not checked: use the typed decoders for that.

    Raises:
        RecordError: not JSON, not an object, another schema, or no string ``id``.
    """
    try:
        d = _loads(data)
    except _JSONDecodeError as err:
        raise RecordError(f"not JSON ({err})") from None
    if type(d) is not dict:
        raise RecordError("not a JSON object")
    if schema is not None:
        got = d.get("schema", EVENT_SCHEMA)
        if got != schema:
            raise RecordError(f"schema is {got!r}, not {schema}")
        rid = d.get("id")
        if type(rid) is not str or not rid:
            raise RecordError("'id' must be a non-empty string")
    return d


def validate(record: Record | dict[str, Any]) -> list[str]:
    """Check a record (a model, or a dict with its ``schema`` field) against its JSON Schema.

    Returns the errors as ``path: message``; [] when valid. A dict without a known ``schema``
    is one error.

    Raises:
        ImportError: ``jsonschema`` is not installed (it is a dev dependency).
    """
    from schemas.validate import schema_errors

    d = record if isinstance(record, dict) else record.to_dict()
    kind = _KINDS.get(d.get("schema"))  # type: ignore[arg-type]
    if kind is None:
        return [f"schema: unknown schema {d.get('schema')!r} (expected one of {', '.join(SCHEMAS)})"]
    return schema_errors(kind, d)
