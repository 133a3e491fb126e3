"""Reading a sink's batches from the bus: decode, filter, size limits, and the batch read ahead.

:class:`BatchReader` fills a :class:`Batch` from a consumer up to ``batch_max_records`` /
the byte cap, waiting at most ``batch_max_wait_secs`` after the first record. Each record
is decoded (:func:`decode`; what cannot be becomes a dead letter) and filtered by ``types``
globs and ``min_severity``. While the runner delivers one batch, the reader reads the next
one in a task and, when the sink is a :class:`~pipeline.delivery.base.PreparingSink`, also
encodes it into its request bodies, so the CPU work of batch N+1 overlaps the round trip of
batch N. So at most two batches (each with its encoded bodies) are in memory at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import cast

from opentelemetry.trace import Link

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Consumer, Record, TopicPartition
from pipeline.delivery.base import Delivery, Kind, PreparedBatch, PreparingSink, Sink, SinkConfig
from pipeline.delivery.filters import SinkFilter
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry, get_telemetry
from schemas.alert import SCHEMA as ALERT_SCHEMA
from schemas.codec import decode_alert, decode_document, decode_event
from schemas.errors import RecordError
from schemas.event import SCHEMA as EVENT_SCHEMA

log = get_logger("delivery")

__all__ = ["KINDS", "TOPICS", "Batch", "BatchReader", "decode", "mistyped"]

TOPICS: dict[str, str] = {"events": EVENTS_TOPIC, "alerts": ALERTS_TOPIC}
KINDS: dict[str, Kind] = {EVENTS_TOPIC: "event", ALERTS_TOPIC: "alert"}
_SCHEMAS: dict[Kind, str] = {"event": EVENT_SCHEMA, "alert": ALERT_SCHEMA}


@dataclass(slots=True)
class Batch:
    """Records read together; committed together once every one is resolved."""

    records: list[Record] = field(default_factory=list)
    ends: dict[TopicPartition, int] = field(default_factory=dict)  # offset after the last record, per partition
    pending: list[Delivery] = field(default_factory=list)
    dead: list[tuple[Record, str, Delivery | None]] = field(default_factory=list)
    filtered: int = 0
    nbytes: int = 0
    attempt: int = 0
    error_kind: str = ""  # why the last attempt failed (the retry metric's reason)
    links: list[Link] | None = None  # to the records' traces, computed at the first attempt
    prepared: PreparedBatch | None = None  # ``pending`` encoded ahead by the sink (first attempt only)

    def take_prepared(self) -> PreparedBatch | None:
        """The encoded requests if they still match ``pending``; forgotten either way."""
        prepared, self.prepared = self.prepared, None
        if prepared is not None and prepared.deliveries is self.pending:
            return prepared
        return None


def decode(record: Record) -> Delivery | str:
    """The delivery for a bus record, or why it cannot be decoded.

    The record codec (:func:`schemas.codec.decode_document`) checks it is an object of the
    topic's schema with an ``id``; delivery also needs the ``type`` (or ``rule.id`` of an
    alert). Field types are not re-checked: the schema was enforced when it was published.
    """
    kind = KINDS.get(record.topic)
    if kind is None:
        return f"undecodable record: topic {record.topic} is not an event or alert topic"
    try:
        body = decode_document(record.value, _SCHEMAS[kind])
    except RecordError as err:
        return f"undecodable {kind}: {err}"
    rid = body["id"]
    if kind == "event":
        rtype, field_name = body.get("type"), "type"
    else:
        rule = body.get("rule")
        rtype, field_name = (rule.get("id") if isinstance(rule, dict) else None), "rule.id"
    if not (isinstance(rtype, str) and rtype):
        return f"undecodable {kind}: 'id' and '{field_name}' must be non-empty strings"
    return Delivery(record, kind, rid, rtype, body, record.value)


def mistyped(d: Delivery) -> str | None:
    """Why ``d`` is not a valid Event/Alert v1 (the typed decoder's words, naming the field), or None.

    :func:`decode` leaves field types unchecked for speed; the runner calls this only after a
    sink raised an unexpected exception, to tell a record no format can render (dead letter)
    from a sink bug (retry).
    """
    check = decode_event if d.kind == "event" else decode_alert
    try:
        check(d.record.value)
    except RecordError as err:
        return f"undecodable {d.kind}: {err}"
    return None


class BatchReader:
    """Reads one sink's batches from its consumer, one batch ahead (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        config: SinkConfig,
        *,
        stopping: Callable[[], bool],
        poll_timeout_secs: float = 1.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.sink_id = sink.sink_id
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.config = config
        self.consumer: Consumer | None = None
        self._preparer = sink if isinstance(sink, PreparingSink) else None
        self._stopping = stopping
        self._poll_timeout = poll_timeout_secs
        # In memory at once: the batch being delivered and the next one, read ahead.
        self._max_bytes = min(config.batch_max_bytes, config.max_in_flight_bytes // 2)
        self.filter = SinkFilter(config)
        self._carry: list[Record] = []
        self._next: asyncio.Task[Batch | None] | None = None  # the batch being read ahead
        self._released: list[object] = []  # freed when the next read ahead starts

    def release_later(self, *done: object) -> None:
        """Keep ``done`` (a delivered batch, its deliveries) until the next read ahead starts.

        Freeing a batch's decoded bodies (thousands of objects) then happens while the next
        request is in flight, instead of between a response and the next request.
        """
        self._released += done

    def release_now(self) -> None:
        """Free what :meth:`release_later` kept."""
        self._released.clear()

    async def take(self, end: dict[TopicPartition, int] | None) -> Batch | None:
        """The batch read ahead, else a freshly read one (None: nothing to read now)."""
        task, self._next = self._next, None
        if task is not None:
            batch = await task
            if batch is not None or end is None:
                return batch
        return await self._fill(end=end)

    def read_ahead(self, end: dict[TopicPartition, int] | None) -> None:
        """Start reading (and encoding) the next batch while this one is delivered (never cancelled mid-read)."""
        if self._next is None and not self._stopping():
            self._next = asyncio.create_task(self._fill_and_prepare(end))

    async def close(self) -> None:
        """Cancel the read ahead and forget what was read: a new consumer starts at the commit."""
        reading, self._next = self._next, None
        if reading is not None:
            reading.cancel()
            with suppress(asyncio.CancelledError, BusError):
                await reading
        self._carry, self._released = [], []
        self.consumer = None

    async def _fill_and_prepare(self, end: dict[TopicPartition, int] | None) -> Batch | None:
        await asyncio.sleep(0)  # let the current batch's request go out first
        self._released.clear()
        batch = await self._fill(end=end)
        if batch is not None and batch.pending and self._preparer is not None:
            await asyncio.sleep(0)  # let a response that arrived meanwhile be handled first
            try:
                batch.prepared = await self._preparer.prepare(batch.pending)
            except Exception as err:  # noqa: BLE001 - send() encodes again and reports the error where it belongs
                log.debug("Encoding ahead failed.", extra={"sink": self.sink_id, "error": type(err).__name__})
        return batch

    async def _fill(self, *, end: dict[TopicPartition, int] | None) -> Batch | None:
        """Read the next batch; ``end`` set: up to those offsets without lingering (run_once)."""
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("SinkRunner is not open")
        cfg = self.config
        loop = asyncio.get_running_loop()
        batch = Batch()
        deadline: float | None = None
        empty_polls = 0
        while len(batch.records) < cfg.batch_max_records and batch.nbytes < self._max_bytes:
            if self._carry:
                recs, self._carry = self._carry, []
            else:
                if self._stopping():
                    break
                if end is not None:
                    pos = consumer.positions()
                    if all(pos.get(tp, 0) >= off for tp, off in end.items()) or empty_polls >= 5:
                        break
                    timeout = min(self._poll_timeout, 0.2)
                elif deadline is None:
                    timeout = self._poll_timeout
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                recs = await consumer.poll(cfg.batch_max_records - len(batch.records), timeout_s=timeout)
                if not recs:
                    empty_polls += 1
                    if end is None and deadline is None:
                        return None  # idle: let the caller look at stop and the circuit
                    continue
                empty_polls = 0
            self._carry = self._add(batch, recs)
            if deadline is None:
                deadline = loop.time() + cfg.batch_max_wait_secs
            if self._carry:
                break
        if not batch.records:
            return None
        self.telemetry.records_received("sink", cfg.type, self.sink_id, "", len(batch.records))
        return batch

    def _add(self, batch: Batch, recs: list[Record]) -> list[Record]:
        """Add ``recs`` to ``batch`` up to its limits; return the records that did not fit."""
        records = batch.records
        fit = len(recs)
        size = sum([len(rec.value) for rec in recs])
        if len(records) + fit > self.config.batch_max_records or batch.nbytes + size > self._max_bytes:
            fit, size = self._fitting(batch, recs)
        if fit < len(recs):
            recs, rest = recs[:fit], recs[fit:]
        else:
            rest = []
        records += recs
        batch.nbytes += size
        last = {(rec.topic, rec.partition): rec.offset for rec in recs}  # offsets grow within a partition
        for (topic, partition), offset in last.items():
            batch.ends[TopicPartition(topic, partition)] = offset + 1
        decoded = [decode(rec) for rec in recs]
        if str in set(map(type, decoded)) or self.filter.filters:
            for rec, d in zip(recs, decoded, strict=True):
                if isinstance(d, str):
                    batch.dead.append((rec, d, None))
                elif self.filter.keep(d):
                    batch.pending.append(d)
                else:
                    batch.filtered += 1
        else:  # all decoded, no filter: the common case
            batch.pending += cast("list[Delivery]", decoded)
        return rest

    def _fitting(self, batch: Batch, recs: list[Record]) -> tuple[int, int]:
        """How many of ``recs`` fit in ``batch`` (at least one in an empty batch), and their bytes."""
        count, nbytes = len(batch.records), batch.nbytes
        max_records, max_bytes = self.config.batch_max_records, self._max_bytes
        size = 0
        for i, rec in enumerate(recs):
            n = len(rec.value)
            if (count or i) and (count + i >= max_records or nbytes + size + n > max_bytes):
                return i, size
            size += n
        return len(recs), size
