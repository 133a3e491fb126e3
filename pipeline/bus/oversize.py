"""An event over its bus's per-record limit becomes a dead letter, so one record never stops a writer.

Kafka refuses a record over its topic's ``max.message.bytes``; the embedded bus has SQLite's
blob limit (:data:`SQLITE_RECORD_BYTES`, lower when configured). Such an event can never be
written as it is, and failing its transaction would stop every later record of the writer (a
poller would restart with backoff until the limit is raised, missing everything meanwhile).
Instead, inside the same transaction, the bus replaces the event by a DeadLetter v1 on
``instantly.deadletter.v1`` (stage ``source``, reason ``record_too_large``) naming the event id,
type, size, the limit and the SHA-256 of the event's bytes; the value itself is not kept (it
would not fit either). The rest of the transaction — the other events and the cursor — commits
as usual. After the commit the bus logs one warning per event (``Event over the bus record
limit; dead-lettered``) and counts ``pipeline_dead_letters_total{component_kind="bus"}``.

Only ``instantly.events.v1`` records are replaced; state values and other topics keep failing
their transaction with an error naming the limit.
"""

from __future__ import annotations

import datetime
import hashlib
import logging

import orjson

from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC, OutRecord
from pipeline.errors import BusError
from pipeline.observability.telemetry import get_telemetry
from schemas import deadletter

log = logging.getLogger("instantly_audit.bus.oversize")
REASON = "record_too_large"
SQLITE_RECORD_BYTES = 1_000_000_000 - 1_000_000
"""The embedded bus's default per-record limit: SQLite's largest blob (``SQLITE_MAX_LENGTH``, 10⁹
bytes) less room for the row."""


class RecordTooLarge(BusError):
    """A record (or record batch) is over its topic's ``max.message.bytes``: the transaction is not
    committed, and retrying cannot help until the topic's limit is raised."""

    def __init__(self, topic: str, size: int, limit: int | None, *, batch: bool = False):
        self.topic, self.size, self.limit = topic, size, limit
        what = "a batch of records" if batch else "a record"
        cap = f"its max.message.bytes of {limit:,}" if limit is not None else "its max.message.bytes"
        super().__init__(
            f"{what} of {size:,} bytes for kafka topic {topic} is over {cap}: the transaction is not committed"
            " (raise the topic's max.message.bytes to accept it)",
            retriable=False,
        )


def replaceable(record: OutRecord) -> bool:
    """Whether an oversized ``record`` is dead-lettered rather than failing its transaction."""
    return record.topic == EVENTS_TOPIC and record.value is not None


def record_bytes(record: OutRecord) -> int:
    """The record's payload size: value, key and headers."""
    return len(record.value or b"") + len(record.key or b"") + sum(len(k) + len(v) for k, v in record.headers)


def _identity(record: OutRecord) -> tuple[str | None, str | None]:
    """The event's id and type (from its JSON and its ``event_type`` header), when readable."""
    etype = next((v.decode("utf-8", "replace") for k, v in record.headers if k == "event_type"), None)
    try:
        doc = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None, etype
    if not isinstance(doc, dict):
        return None, etype
    eid, t = doc.get("id"), doc.get("type")
    return (eid if isinstance(eid, str) else None), (t if isinstance(t, str) else etype)


def dead_letter(record: OutRecord, *, size: int, limit: int, where: str, writer: str, bus: str) -> OutRecord:
    """The DeadLetter v1 record that replaces the oversized event ``record`` in its transaction."""
    eid, etype = _identity(record)
    digest = hashlib.sha256(record.value or b"").hexdigest()
    error = (
        f"event {eid or '?'} (type {etype or '?'}) of {size:,} bytes is over {where} of {limit:,} bytes;"
        f" dead-lettered without its value (sha256 {digest}). Raise the limit to accept events this large."
    )
    letter = deadletter.build(
        stage="source",
        component=writer,
        component_type=bus,
        reason=REASON,
        error=error,
        failed_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        value=None,
        topic=record.topic,
        timestamp_ms=record.timestamp_ms,
        key=record.key,
        headers=[*record.headers, ("size", str(size).encode()), ("sha256", digest.encode())],
        record_id=eid,
    )
    headers = (("deadletter.reason", REASON.encode()), *(h for h in record.headers if h[0] == "event_type"))
    return OutRecord(DEADLETTER_TOPIC, letter.to_json(), record.key, headers, record.timestamp_ms)


def report(letters: list[OutRecord], writer: str, bus: str) -> None:
    """After the commit: one warning per dead-lettered event, and the dead-letter metric."""
    if not letters:
        return
    for rec in letters:
        doc = orjson.loads(rec.value or b"{}")
        log.warning(
            "Event over the bus record limit; dead-lettered",
            extra={"writer": writer, "event_id": doc.get("record_id"), "error": doc.get("error")},
        )
    get_telemetry().dead_letters("bus", bus, writer, n=len(letters))


def divert(records: list[OutRecord], limit: int, *, where: str, writer: str, bus: str) -> list[OutRecord]:
    """Replace, in place, each event of ``records`` over ``limit`` bytes (:func:`record_bytes`) by
    its dead letter; return the dead letters (for :func:`report` after the commit)."""
    letters: list[OutRecord] = []
    near = limit - 65536  # only a value near the limit can put a record over it (keys and headers are small)
    for i, r in enumerate(records):
        if r.value is None or len(r.value) <= near or not replaceable(r):
            continue
        size = record_bytes(r)
        if size > limit:
            records[i] = dead_letter(r, size=size, limit=limit, where=where, writer=writer, bus=bus)
            letters.append(records[i])
    return letters
