"""Dead letters: records a sink could not deliver and must not retry, kept with the reason.

A dead letter is a JSON object on ``instantly.deadletter.v1``, written by the sink runner in
the same bus transaction as the consumer-offset commit that moves past the record, so a
poison record is never both skipped and missing from the dead-letter topic::

    {"schema": "instantly.deadletter.v1", "sink": "siem", "sink_type": "elasticsearch",
     "error": "item 400 mapper_parsing_exception: ...", "failed_at": "2026-...Z",
     "topic": "instantly.events.v1", "partition": 0, "offset": 41, "timestamp_ms": ...,
     "kind": "event", "id": "3f2a...", "body": {...the event...}}

An undecodable record has no ``kind``/``id``/``body``; its bytes are kept in
``record_value_b64`` instead. The key and headers of the original record are kept, plus a
``deadletter.sink`` header, so a replay tool can route it back.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from pipeline.bus.base import DEADLETTER_TOPIC, OutRecord, Record
from pipeline.delivery.base import Delivery
from pipeline.observability.logs import redact_text

SCHEMA = "instantly.deadletter.v1"
MAX_ERROR_CHARS = 2000
SINK_HEADER = "deadletter.sink"


def deadletter_record(
    *,
    sink_id: str,
    sink_type: str,
    record: Record,
    error: str,
    failed_at: str,
    delivery: Delivery | None = None,
) -> OutRecord:
    """The dead-letter record for ``record`` (``delivery`` is its decoded form, when it had one)."""
    text = redact_text(error)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    value: dict[str, Any] = {
        "schema": SCHEMA,
        "sink": sink_id,
        "sink_type": sink_type,
        "error": text,
        "failed_at": failed_at,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    if delivery is not None:
        value.update(kind=delivery.kind, id=delivery.id, body=delivery.body)
    else:
        value["record_value_b64"] = base64.b64encode(record.value).decode("ascii")
    headers = (*[h for h in record.headers if h[0] != SINK_HEADER], (SINK_HEADER, sink_id.encode()))
    return OutRecord(DEADLETTER_TOPIC, orjson.dumps(value), key=record.key, headers=headers)


def original_value(deadletter: bytes) -> bytes:
    """The bytes of the record a dead letter holds (to re-publish it after a fix).

    Raises:
        ValueError: ``deadletter`` is not a dead-letter record.
    """
    try:
        d = orjson.loads(deadletter)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not a dead-letter record: {err}") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise ValueError("not a dead-letter record (schema is not instantly.deadletter.v1)")
    if "body" in d:
        return orjson.dumps(d["body"])
    return base64.b64decode(d["record_value_b64"], validate=True)
