"""DeadLetter v1: a record some stage gave up on, kept with the reason (see ``deadletter.v1.json``).

Every producer writes this one shape to ``instantly.deadletter.v1`` through :func:`build`:

* ``source`` — an API record a connector could not normalize (``original.stream``, the record
  redacted before it gets here);
* ``rules`` — a bus record that is not an Event v1, or an event a rule raised on;
* ``sink`` — a record a sink could not deliver and must not retry.

``original`` keeps the record's bytes (as text when UTF-8, else base64) with where it came from,
so a fix can re-publish it unchanged (:meth:`DeadLetter.original_bytes`). The id hashes the stage,
component, reason, rule, position and the bytes: a retried or replayed failure gets the same id.

Dead letters written by releases up to 2026-11-27 carry the same ``schema`` in an earlier shape
(``sink``, ``sink_type``, the position at the top level, the record as ``body`` or
``record_value_b64``); :func:`from_legacy` reads them as DeadLetter v1 (stage ``sink``), so they
stay readable and filterable after an upgrade.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec
import orjson

from schemas.errors import RecordError, decode_error
from schemas.ids import deterministic_id
from schemas.secret_names import is_secret_name

SCHEMA: Literal["instantly.deadletter.v1"] = "instantly.deadletter.v1"
Stage = Literal["source", "rules", "sink"]
STAGES: tuple[Stage, ...] = ("source", "rules", "sink")
MAX_ERROR_CHARS = 2000
"""Longer error messages are cut (with ``…``)."""
REASON_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
REDACTED = "<redacted>"


class Original(msgspec.Struct, frozen=True, gc=False):
    """The record that failed and where it came from (bus position, or the source stream)."""

    topic: str | None
    partition: int | None
    offset: int | None
    timestamp_ms: int | None
    stream: str | None
    key: str | None
    headers: dict[str, str]
    encoding: Literal["utf-8", "base64"] | None
    value: str | None


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """One dead letter. Build with :func:`build` so the id is deterministic and the value encoded."""

    id: str
    stage: Stage
    component: str
    component_type: str
    reason: str
    error: str
    rule: str | None
    record_id: str | None
    failed_at: str
    original: Original
    schema: Literal["instantly.deadletter.v1"] = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (``original.headers`` is shared, not copied)."""
        d = msgspec.structs.asdict(self)
        d["original"] = msgspec.structs.asdict(self.original)
        return {"schema": d.pop("schema"), **d}

    def to_json(self) -> bytes:
        """Serialise to the bus bytes: orjson, fields in declaration order (``schema`` last)."""
        return orjson.dumps(self, default=msgspec.structs.asdict)

    def original_bytes(self) -> bytes | None:
        """The failed record's bytes, exactly as they were; None when they were not kept.

        Raises:
            RecordError: ``original.value`` is not valid for its ``encoding``.
        """
        o = self.original
        if o.value is None or o.encoding is None:
            return None
        if o.encoding == "utf-8":
            return o.value.encode("utf-8")
        try:
            return base64.b64decode(o.value, validate=True)
        except binascii.Error as err:
            raise RecordError(f"not a DeadLetter v1: original.value is not base64 ({err})") from None

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        """Parse bytes from the dead-letter topic (decoded and type-checked in C).

        Raises:
            RecordError: not JSON, or not a DeadLetter v1 (the message names the field).
        """
        try:
            return DEADLETTER_DECODER.decode(data)
        except msgspec.DecodeError as err:
            raise decode_error("a DeadLetter v1", err) from None


DEADLETTER_DECODER = msgspec.json.Decoder(DeadLetter)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def _headers(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Header names to their text (the last value of a repeated name); secret-named ones redacted."""
    return {k: REDACTED if is_secret_name(k) else v.decode("utf-8", errors="replace") for k, v in headers}


class BusRecord(Protocol):
    """What a dead letter keeps of the failed bus record (``pipeline.bus.base.Record`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def build_for(record: BusRecord, **kw: Any) -> DeadLetter:
    """:func:`build` for a record read from the bus: its value, position, key and headers are kept.

    Raises:
        ValueError: see :func:`build`.
    """
    return build(
        value=record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp_ms,
        key=record.key,
        headers=record.headers,
        **kw,
    )


def build(
    *,
    stage: Stage,
    component: str,
    component_type: str,
    reason: str,
    error: str,
    failed_at: str,
    value: bytes | None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    timestamp_ms: int | None = None,
    stream: str | None = None,
    key: bytes | None = None,
    headers: Iterable[tuple[str, bytes]] = (),
    rule: str | None = None,
    record_id: str | None = None,
) -> DeadLetter:
    """Build the dead letter for one failed record.

    ``error`` must already be free of secrets (producers pass it through their redaction); it
    is cut to :data:`MAX_ERROR_CHARS`. ``value`` is the failed record's bytes (None: not kept);
    ``key`` is kept as text (the dead letter's own bus key keeps the exact bytes).

    Raises:
        ValueError: ``stage`` is unknown or ``reason`` is not a lower_snake code.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown dead-letter stage {stage!r}")
    if not REASON_PATTERN.match(reason):
        raise ValueError(f"dead-letter reason {reason!r} is not a lower_snake code")
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    encoding: Literal["utf-8", "base64"] | None = None
    text: str | None = None
    if value is not None:
        try:
            text, encoding = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(value).decode("ascii"), "base64"
    digest = None if value is None else hashlib.sha256(value).hexdigest()
    did = deterministic_id("deadletter", stage, component, reason, rule, topic, partition, offset, stream, digest)
    original = Original(topic, partition, offset, timestamp_ms, stream, _text(key), _headers(headers), encoding, text)
    return DeadLetter(did, stage, component, component_type, reason, error, rule, record_id, failed_at, original)


LEGACY_FIELDS = frozenset({"schema", "sink", "sink_type", "error", "failed_at"})
"""The fields every pre-2026-12 sink dead letter has (and a DeadLetter v1 has not: ``sink``)."""


def is_legacy(doc: Any) -> bool:
    """Whether ``doc`` is a dead letter in the shape of releases up to 2026-11-27."""
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA and "stage" not in doc and doc.keys() >= LEGACY_FIELDS


def from_legacy(doc: dict[str, Any], headers: Iterable[tuple[str, bytes]] = ()) -> DeadLetter:
    """The DeadLetter v1 of a dead letter written by a release up to 2026-11-27 (see :func:`is_legacy`).

    Its ``body`` (the decoded Event/Alert) becomes ``original`` as JSON, reason ``rejected``; its
    ``record_value_b64`` (a record the sink could not decode) the bytes, reason ``undecodable``.
    ``headers`` are the dead letter's own bus headers (the old shape kept them only there).

    Raises:
        RecordError: a field has the wrong type, or ``record_value_b64`` is not base64.
    """
    try:
        value: bytes | None
        if "body" in doc:
            value, reason = orjson.dumps(doc["body"]), "rejected"
        elif isinstance(doc.get("record_value_b64"), str):
            value, reason = base64.b64decode(doc["record_value_b64"], validate=True), "undecodable"
        else:
            value, reason = None, "undecodable"
        record_id = doc.get("id")
        return build(
            stage="sink",
            component=str(doc["sink"]),
            component_type=str(doc["sink_type"]),
            reason=reason,
            error=str(doc["error"]),
            failed_at=str(doc["failed_at"]),
            value=value,
            topic=_opt(doc.get("topic"), str),
            partition=_opt(doc.get("partition"), int),
            offset=_opt(doc.get("offset"), int),
            timestamp_ms=_opt(doc.get("timestamp_ms"), int),
            headers=[h for h in headers if h[0] != "deadletter.sink"],
            record_id=record_id if isinstance(record_id, str) else None,
        )
    except (binascii.Error, TypeError, ValueError) as err:
        raise RecordError(f"not a DeadLetter v1 (an earlier dead letter that cannot be read: {err})") from None


def _opt(v: Any, kind: type) -> Any:
    if v is None or (isinstance(v, kind) and not isinstance(v, bool)):
        return v
    raise TypeError(f"{v!r} is not {kind.__name__}")
