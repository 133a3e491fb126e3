"""The sink runner: one consumer group per sink, batches, retries, a circuit, dead letters.

Guarantee: **at least once, de-duplicated by id where the destination can.** A batch's
consumer offsets (the offset after its last record, per partition) are committed only after
the sink confirmed every record of the batch, or the record was filtered out, or it went to
``instantly.deadletter.v1``; the dead letters and the offset commit are one bus transaction.
A crash replays what was not yet committed (the batch in flight and, at most, the batches
confirmed during the last commit); destinations de-duplicate by id where they can.

How a batch moves:

1. **Read** (:mod:`pipeline.delivery.batches`). Records are read up to ``batch_max_records``
   / ``batch_max_bytes``, waiting at most ``batch_max_wait_secs`` after the first one. The
   next batch is read (and, for a sink that can, encoded) while one is delivered, so two
   batches are in memory at most (each capped at half of ``max_in_flight_bytes``): memory
   stays bounded however long the destination is down, and the lag grows on the bus
   instead. Undecodable records become dead letters; records whose type does not match
   ``types`` (globs) or whose alert severity is below ``min_severity`` are filtered out
   (events have no severity and pass that filter).
2. **Send.** ``sink.send()`` (or ``send_prepared()`` with the bodies encoded ahead, at the
   first attempt) returns the failed deliveries. Retriable ones are re-sent
   after ``Backoff`` (exponential, full jitter, at least ``Retry-After``); non-retriable
   ones (poison) are dead-lettered. A ``SinkError`` raised by ``send()`` fails the whole
   attempt: retriable → back off and retry; not retriable (bad credentials, unknown index)
   → the circuit opens at once. Such errors describe the destination, not the records,
   so they never dead-letter anything.
3. **Circuit.** ``circuit_failures`` consecutive attempts without progress open it: the
   runner stops reading for ``circuit_open_secs``, then sends the pending batch once
   (half-open); progress closes it, a failure opens it again. Nothing is dropped.
4. **Commit** the dead letters and the offsets in one bus transaction, in the background
   while the next batch is sent; batches confirmed during a commit share the next one (a
   group commit), so a slow fsync never holds delivery back. Commits stay in order.

Each runner is its own task with its own consumer, so a slow or dead sink never delays another.

Taking over: the runner claims its writer id (``sink-<name>``, fencing a previous holder) before
its consumer reads the group's committed offsets, and a commit that fails for good (fenced: another
process took the id) closes the consumer and forgets what was read or queued: the next run claims
the id again and starts at the offsets committed then. Going on from its own position instead, its
next commit would move the offsets past the records of the failed one, whose dead letters were
never written.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, fields
from types import TracebackType

from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from pipeline.bus.base import Bus, Consumer, Record, TopicPartition
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time
from pipeline.delivery.backoff import Backoff, Circuit, CircuitState
from pipeline.delivery.base import Delivery, PreparingSink, Sink, SinkConfig
from pipeline.delivery.batches import KINDS, TOPICS, Batch, BatchReader, decode, mistyped
from pipeline.delivery.deadletter import deadletter_record
from pipeline.errors import BusError, SinkError
from pipeline.observability.health import HealthRegistry, get_health
from pipeline.observability.latency import SOURCE_TIME, header_secs, sampled
from pipeline.observability.logs import get_logger
from pipeline.observability.metrics import SINK, TYPE
from pipeline.observability.telemetry import Telemetry, get_telemetry

log = get_logger("delivery")

__all__ = ["KINDS", "TOPICS", "CircuitState", "RunStats", "RunnerHealth", "SinkRunner", "decode"]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class RunStats:
    """What a run did. ``delivered`` excludes ``duplicates`` (confirmed as already present)."""

    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    filtered: int = 0
    retries: int = 0
    batches: int = 0
    committed: int = 0

    def add(self, other: RunStats) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class RunnerHealth:
    """A runner's state for ``/readyz`` and ``status``."""

    sink: str
    group: str
    circuit: CircuitState
    consecutive_failures: int
    reopens_in_secs: float | None
    last_error: str | None
    totals: RunStats


@dataclass(slots=True)
class _Commit:
    """Confirmed batches waiting for their (shared) offset-commit transaction."""

    stats: RunStats
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    dead: list[tuple[Record, str, Delivery | None]] = field(default_factory=list)
    filtered: int = 0
    batches: int = 0
    records: int = 0

    def add(self, batch: Batch) -> None:
        self.offsets.update(batch.ends)  # batches are confirmed in order: later offsets are larger
        self.dead += batch.dead
        self.filtered += batch.filtered
        self.batches += 1
        self.records += len(batch.records)


class SinkRunner:
    """Moves one sink's records from the bus to the destination (see the module docstring).

    The runner opens and closes the sink and its consumer: use ``async with runner`` to keep
    them open across :meth:`run_once` calls; :meth:`run` and :meth:`run_once` open them for
    the call when the runner is not open. ``telemetry`` and ``health`` default to the process's
    current ones, read once here.
    """

    def __init__(
        self,
        bus: Bus,
        sink: Sink,
        config: SinkConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        group: str | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        poll_timeout_secs: float = 1.0,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ) -> None:
        self.bus = bus
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.health_registry = health if health is not None else get_health()
        self.sink = sink
        self.config = config
        self.sink_id = sink.sink_id
        self.group = group or f"sink-{sink.sink_id}"
        self.topics = [TOPICS[t] for t in dict.fromkeys(config.topics)]
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(config.retry_initial_secs, config.retry_max_secs, rng=rng)
        self._circuit = Circuit(config.circuit_failures, config.circuit_open_secs, clock, self.sink_id)
        self._reader = BatchReader(
            sink, config, stopping=self._stopping, poll_timeout_secs=poll_timeout_secs, telemetry=self.telemetry
        )
        self._preparer = sink if isinstance(sink, PreparingSink) else None
        self._stack: AsyncExitStack | None = None
        self._consumer: Consumer | None = None
        self._batch: Batch | None = None
        self._committing: asyncio.Task[None] | None = None
        self._queued: _Commit | None = None  # confirmed batches not yet committed
        self._stop: asyncio.Event | None = None
        self._reported: CircuitState | None = None  # the circuit state last reported to health
        self.totals = RunStats()
        # The sink's counters show 0 from the start: a series born at its first increment has no
        # earlier sample, so `increase()` misses that increment and `rate(…) == 0` sees nothing.
        self.telemetry.sink_deliveries(self.sink_id, 0)
        self.telemetry.dead_letters("sink", config.type, self.sink_id, "", 0)

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> SinkRunner:
        if self._stack is not None:
            return self
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(self.sink)
            await self.bus.fence(self.group)  # before reading offsets: nobody else commits them afterwards
            self._consumer = await stack.enter_async_context(self.bus.consumer(self.topics, group=self.group))
            self._reader.consumer = self._consumer
        except BaseException:
            self._consumer = None
            await stack.aclose()
            raise
        self._stack = stack
        self._report_circuit()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        await self._reader.close()
        try:
            await self._settle_commit()
        except BusError as err:  # only reachable after a cancellation; the commit is atomic anyway
            log.warning("Offset commit failed while closing.", extra={"sink": self.sink_id, "error": err.message})
        finally:
            # What was read but not committed is forgotten: a new consumer starts at the commit.
            self._consumer, self._batch, self._queued = None, None, None
            if stack is not None:
                await stack.aclose()

    def _report_circuit(self) -> None:
        """Tell the health registry (and the ``sink.circuit.open`` gauge) when the circuit changed state."""
        state = self._circuit.state
        if state is not self._reported:
            self._reported = state
            why = self._circuit.last_error if state is CircuitState.OPEN else None
            self.health_registry.circuit(self.sink_id, state, reason=why)

    def health(self) -> RunnerHealth:
        """The circuit state and running totals."""
        state = self._circuit.state
        return RunnerHealth(
            sink=self.sink_id,
            group=self.group,
            circuit=state,
            consecutive_failures=self._circuit.failures,
            reopens_in_secs=self._circuit.remaining() if state is CircuitState.OPEN else None,
            last_error=self._circuit.last_error,
            totals=RunStats(**{f.name: getattr(self.totals, f.name) for f in fields(RunStats)}),
        )

    # ---- driving -------------------------------------------------------------------------
    def confirmed_all(self) -> bool:
        """Whether the last :meth:`run_once` left nothing unconfirmed (no pending batch, circuit closed)."""
        return self._batch is None and self._circuit.state is not CircuitState.OPEN

    async def run_once(self) -> RunStats:
        """Deliver everything up to the current end of the topics, commit, and return the counts.

        Returns early, leaving the rest for the next call, while the circuit is open.

        Raises:
            BusError: the bus failed in a way that retrying cannot fix.
        """
        if self._stack is None:
            async with self:
                return await self.run_once()
        consumer = self._require_consumer()
        stats = RunStats()
        end = await consumer.end_offsets()
        try:
            while self._circuit.state is not CircuitState.OPEN:
                batch = self._batch or await self._reader.take(end)
                if batch is None:
                    break
                self._batch = batch
                self._reader.read_ahead(end)
                if not await self._process(batch, stats):
                    break
                self._batch = None
                await self._commit_soon(batch, stats)
                self._reader.release_later(batch)
            await self._settle_commit()
        except BusError as err:
            await self._forget_if_fenced(err)
            raise
        finally:
            self._reader.release_now()
            self.totals.add(stats)
        return stats

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver continuously until ``stop`` is set (an in-flight send is allowed to finish).

        Raises:
            BusError: the bus failed in a way that retrying cannot fix.
        """
        if self._stack is None:
            async with self:
                await self.run(stop)
            return
        self._stop = stop
        try:
            while not stop.is_set():
                if self._circuit.state is CircuitState.OPEN:
                    await self._pause(self._circuit.remaining())
                    self._circuit.half_open()
                    self._report_circuit()
                    continue
                batch = self._batch or await self._reader.take(None)
                if batch is None:
                    self._reader.release_now()  # idle
                    continue
                self._batch = batch
                self._reader.read_ahead(None)
                if await self._process(batch, self.totals):
                    self._batch = None
                    await self._commit_soon(batch, self.totals)
                    self._reader.release_later(batch)
            await self._settle_commit()
        except BusError as err:
            await self._forget_if_fenced(err)
            raise
        finally:
            self._reader.release_now()
            self._stop = None

    async def _forget_if_fenced(self, err: BusError) -> None:
        """After a commit that failed for good, close: what was read or queued is forgotten, and the
        next run claims the writer id again and reads from the offsets committed then."""
        if err.retriable or self._stack is None:
            return
        log.warning("Sink commit failed for good; reopening at the committed offsets.",
                    extra={"sink": self.sink_id, "error": err.message})  # fmt: skip
        committing, self._committing = self._committing, None
        if committing is not None:
            committing.cancel()
            await asyncio.gather(committing, return_exceptions=True)
        self._queued, self._batch = None, None
        await self.__aexit__(None, None, None)

    # ---- reading ---------------------------------------------------------------------------
    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("SinkRunner is not open")
        return self._consumer

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    # ---- delivering ------------------------------------------------------------------------
    async def _process(self, batch: Batch, stats: RunStats) -> bool:
        """Deliver ``batch``; False if paused (circuit open or stopping) before every record is settled."""
        while batch.pending:
            self._report_circuit()
            if self._stopping() or self._circuit.state is CircuitState.OPEN:
                return False
            if batch.attempt > 0:
                stats.retries += 1
                self.telemetry.retries(self.sink_id, batch.error_kind or "error", kind="sink")
            before = len(batch.pending)
            error, fatal, retry_after = await self._attempt(batch, stats)
            if not batch.pending:
                self._circuit.success()
                self._report_circuit()
                break
            if error is None:  # only some records failed: the destination works
                self._circuit.success()
                self._report_circuit()
            elif self._circuit.failure(error, fatal=fatal):
                self._report_circuit()
                return False
            log.warning(
                "Sink batch not fully delivered; retrying.",
                extra={"sink": self.sink_id, "pending": len(batch.pending),
                       "of": before, "attempt": batch.attempt + 1, "error": error or "partial failure"},
            )  # fmt: skip
            await self._pause(self._backoff.delay(batch.attempt, retry_after))
            batch.attempt += 1
        return True

    async def _attempt(self, batch: Batch, stats: RunStats) -> tuple[str | None, bool, float | None]:
        """Send the pending deliveries once; return (error if no progress, fatal, retry_after)."""
        pending = batch.pending
        tel = self.telemetry
        if batch.links is None:
            batch.links = tel.links(rec.headers for rec in batch.records)
        attrs: dict[str, AttributeValue] = {
            SINK: self.sink_id,
            TYPE: self.config.type,
            "batch.size": len(pending),
            "attempt": batch.attempt,
        }
        with tel.span("sink.batch", attrs, links=batch.links, kind=SpanKind.CLIENT) as span:
            try:
                prepared = batch.take_prepared()
                if prepared is not None and self._preparer is not None:
                    result = await self._preparer.send_prepared(prepared)
                else:
                    result = await self.sink.send(pending)
            except SinkError as err:
                batch.error_kind = _error_kind(err.message, "error" if err.retriable else "fatal")
                tel.sink_errors(self.sink_id, batch.error_kind)
                span.set_status(Status(StatusCode.ERROR, batch.error_kind))
                return err.message, not err.retriable, err.retry_after
            except Exception as err:  # noqa: BLE001 - a sink bug must pause this sink, not kill the process
                log.error(
                    "Sink raised an unexpected error.",
                    extra={"sink": self.sink_id, "error": type(err).__name__},
                )
                batch.error_kind = "exception"
                tel.sink_errors(self.sink_id, batch.error_kind)
                tel.component_errors("sink", self.config.type, self.sink_id, type(err).__name__)
                span.set_status(Status(StatusCode.ERROR, type(err).__name__))
                if self._drop_mistyped(batch):  # records no format can render: dead letters, retry the rest
                    return None, False, None
                return f"{self.sink_id}: send() raised {type(err).__name__}", False, None
        confirmed = len(pending) - len(result.failures)
        duplicates = min(max(result.duplicates, 0), max(confirmed, 0))
        stats.delivered += max(confirmed, 0) - duplicates
        stats.duplicates += duplicates
        if confirmed > 0:
            tel.sink_deliveries(self.sink_id, confirmed)
            if confirmed > duplicates:
                tel.records_published("sink", self.config.type, self.sink_id, "", confirmed - duplicates)
            if tel.enabled:
                failed = {id(f.delivery) for f in result.failures}
                self._record_latency([d.record for d in pending if id(d) not in failed])
        if result.failures:
            distinct = dict.fromkeys((f.error, f.retriable) for f in result.failures)
            kinds = dict.fromkeys(_error_kind(e, "failed" if retriable else "rejected") for e, retriable in distinct)
            for kind in kinds:
                tel.sink_errors(self.sink_id, kind)
            batch.error_kind = next(iter(kinds))
        retry = []
        for f in result.failures:
            if f.retriable:
                retry.append(f)
            else:
                batch.dead.append((f.delivery.record, f.error, f.delivery))
        batch.pending = [f.delivery for f in retry]
        if not retry:  # all settled: free the deliveries while the next request is in flight
            self._reader.release_later(pending, prepared)
        after = [f.retry_after for f in retry if f.retry_after is not None]
        retry_after = max(after) if after else None
        if retry and len(retry) == len(pending):
            return retry[0].error, False, retry_after
        return None, False, retry_after

    def _drop_mistyped(self, batch: Batch) -> bool:
        """Move the pending records that are not valid Events/Alerts to the dead letters; whether there were any.

        Records are decoded without checking field types (:func:`decode`), so one written by
        another producer (a shared Kafka topic, an older tool) can make a format raise. Without
        this, that exception failed the batch at every attempt, for good: the sink stalled behind
        it and the record never reached the dead letters.
        """
        bad = {id(d): why for d in batch.pending if (why := mistyped(d)) is not None}
        if not bad:
            return False
        batch.dead += [(d.record, bad[id(d)], d) for d in batch.pending if id(d) in bad]
        batch.pending = [d for d in batch.pending if id(d) not in bad]
        return True

    def _record_latency(self, records: Sequence[Record]) -> None:
        """``bus_to_destination`` and ``end_to_end`` for records the destination just acknowledged."""
        now, tel = time.time(), self.telemetry
        some = sampled(records)
        tel.latency("bus_to_destination", self.sink_id, [now - r.timestamp_ms / 1000 for r in some])
        sources = [header_secs(r.header(SOURCE_TIME)) for r in some]
        tel.latency("end_to_end", self.sink_id, [now - t for t in sources if t is not None])

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds (the injected sleep), cut short when ``stop`` is set."""
        if delay <= 0:
            return
        stop = self._stop
        if stop is None:
            await self._sleep(delay)
            return
        if stop.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waiter):
                if not t.done():
                    t.cancel()
                    with suppress(asyncio.CancelledError):
                        await t

    async def _commit_soon(self, batch: Batch, stats: RunStats) -> None:
        """Queue ``batch``'s commit; a background task commits while the next batch is sent.

        Batches confirmed while a commit is in progress are merged into the next transaction
        (a group commit), so a slow fsync never holds delivery back.
        """
        if self._committing is not None and self._committing.done():
            task, self._committing = self._committing, None
            await task  # raises the error of a failed commit
        if self._queued is not None and self._queued.stats is not stats:
            await self._settle_commit()
        if self._queued is None:
            self._queued = _Commit(stats)
        self._queued.add(batch)
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_queued())

    async def _commit_queued(self) -> None:
        while self._queued is not None:
            pending, self._queued = self._queued, None
            await self._commit(pending)

    async def _settle_commit(self) -> None:
        """Wait until everything queued is committed; a commit error is raised here."""
        task, self._committing = self._committing, None
        if task is not None:
            await task
        if self._queued is not None:  # queued after the task had finished
            await self._commit_queued()

    async def _commit(self, pending: _Commit) -> None:
        """Write the dead letters and commit the offsets in one bus transaction."""
        failed_at = format_time(self._clock.now())
        sink_type = self.config.type
        attempt = 0
        while True:
            try:
                async with self.bus.transaction(self.group) as txn:
                    for rec, error, delivery in pending.dead:
                        out = deadletter_record(
                            sink_id=self.sink_id, sink_type=sink_type, record=rec, error=error,
                            failed_at=failed_at, delivery=delivery,
                        )  # fmt: skip
                        txn.send(out.topic, out.value, key=out.key, headers=out.headers)
                    txn.commit_offsets(self.group, pending.offsets)
                break
            except BusError as err:
                self.telemetry.bus_errors("commit", type(err).__name__)
                if not err.retriable:
                    raise
                log.warning("Offset commit failed; retrying.", extra={"sink": self.sink_id, "error": err.message})
                await self._sleep(self._backoff.delay(attempt))
                attempt += 1
        for rec, error, _ in pending.dead:
            log.warning(
                "Record dead-lettered.",
                extra={"sink": self.sink_id, "topic": rec.topic,
                       "partition": rec.partition, "offset": rec.offset, "error": error},
            )  # fmt: skip
        tel = self.telemetry
        if pending.dead:
            tel.records_dropped("sink", sink_type, self.sink_id, "", len(pending.dead), reason="dead_letter")
            tel.dead_letters("sink", sink_type, self.sink_id, "", len(pending.dead))
        if pending.filtered:
            tel.records_dropped("sink", sink_type, self.sink_id, "", pending.filtered, reason="filtered")
        stats = pending.stats
        stats.dead_lettered += len(pending.dead)
        stats.filtered += pending.filtered
        stats.batches += pending.batches
        stats.committed += pending.records


_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def _error_kind(message: str, default: str) -> str:
    """The ``error.type`` label of a failed send: ``http_<status>``, ``timeout``, else ``default``."""
    m = _HTTP_STATUS.search(message)
    if m is not None:
        return f"http_{m.group(1)}"
    low = message.lower()
    return "timeout" if "timed out" in low or "timeout" in low else default
