"""Dead letters: records a sink could not deliver and must not retry, kept with the reason.

A dead letter is a DeadLetter v1 (``schemas/deadletter.v1.json``, built by
:func:`schemas.deadletter.build`) on ``instantly.deadletter.v1``, written by the sink runner in
the same bus transaction as the consumer-offset commit that moves past the record, so a
poison record is never both skipped and missing from the dead-letter topic. For a sink it has
``stage: "sink"``, ``component``/``component_type`` the sink id and type, ``reason``
``rejected`` (the destination refused it) or ``undecodable`` (not an Event/Alert: unreadable, or
read but with a field of the wrong type, which no format could render), the
redacted error, the event/alert id as ``record_id`` when it decoded, and the record's bytes in
``original``. The key and headers of the original record are kept on the dead letter's bus
record, plus a ``deadletter.sink`` header, so a replay tool can route it back.
"""

from __future__ import annotations

from pipeline.bus.base import DEADLETTER_TOPIC, OutRecord, Record
from pipeline.delivery.base import Delivery
from pipeline.observability.logs import redact_text
from schemas import deadletter
from schemas.codec import decode_deadletter

SCHEMA = deadletter.SCHEMA
MAX_ERROR_CHARS = deadletter.MAX_ERROR_CHARS
SINK_HEADER = "deadletter.sink"
UNDECODABLE = "undecodable "
"""How the error of a record that is not a valid Event/Alert v1 begins (its reason is then ``undecodable``)."""


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
    letter = deadletter.build_for(
        record,
        stage="sink",
        component=sink_id,
        component_type=sink_type,
        reason="undecodable" if delivery is None or error.startswith(UNDECODABLE) else "rejected",
        error=redact_text(error),
        failed_at=failed_at,
        record_id=None if delivery is None else delivery.id,
    )
    headers = (*[h for h in record.headers if h[0] != SINK_HEADER], (SINK_HEADER, sink_id.encode()))
    return OutRecord(DEADLETTER_TOPIC, letter.to_json(), key=record.key, headers=headers)


def original_value(data: bytes) -> bytes:
    """The bytes of the record a dead letter holds (to re-publish it after a fix).

    Raises:
        ValueError: ``data`` is not a DeadLetter v1, or it did not keep the record's bytes.
    """
    value = decode_deadletter(data).original_bytes()
    if value is None:
        raise ValueError("the dead letter did not keep the record's bytes")
    return value
