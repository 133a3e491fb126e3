"""The rules worker: consume events, run the pure engine, publish alerts — exactly once.

For each batch read from ``instantly.events.v1`` (from the consumer group's committed offsets)
one ``bus.transaction`` carries everything the batch produced:

* the Alert v1 records on ``instantly.alerts.v1`` (key = workspace id, headers
  ``alert_rule`` and ``severity``);
* records that are not Event v1, and events a rule failed on, on ``instantly.deadletter.v1``
  (a DeadLetter v1 holding the original bytes, with ``dlq.*`` headers naming the error);
* the changed rule state (``rules/...`` keys) and a commit marker;
* the group's next offsets.

A failure anywhere before the commit leaves the bus as it was; the worker then drops its
in-memory state and consumer and reloads both from the bus on the next call, so the batch is
evaluated again from the same state and yields the same alerts (same ids) once.

The commit marker (``rules/_workers/<group>``) tells a worker that another one committed since
it loaded (a restart elsewhere, a second worker taking over): it then reloads before going on.
Every (re)load first claims the writer id and re-reads the bus state
(:func:`~pipeline.bus.base.claim_writer`): Kafka serves state from a copy read once, so a worker
fenced by another process and restarted on the same bus would otherwise reload the rule state
from before the other's commits (an alert suppressed there raised again, a count lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.util.types import AttributeValue

from pipeline.bus.base import (
    ALERTS_TOPIC,
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    Bus,
    Consumer,
    Header,
    Record,
    TopicPartition,
    claim_writer,
    iter_records,
)
from pipeline.clock import Clock, format_time
from pipeline.errors import BusError, PipelineError
from pipeline.observability.latency import SOURCE_TIME, header_secs, source_time_header
from pipeline.observability.logs import get_logger, redact_text
from pipeline.observability.metrics import ID, KIND, TYPE
from pipeline.observability.telemetry import Telemetry, get_telemetry
from pipeline.redaction.gate import GateRejected, encode_alert, rejected_letter
from pipeline.rules.engine import Evaluation, RulesEngine, decode_event
from pipeline.rules.state import PREFIX, StateReset
from schemas import deadletter
from schemas.alert import Alert
from schemas.event import Event

# Under the instantly_audit tree: its handler carries the redaction filter (a logger named after
# the module sat outside it, and its lines went through Python's last-resort handler unredacted).
log = get_logger("rules.worker")
COMPONENT = "rules"


@dataclass(slots=True)
class WorkerStats:
    """Counters since the worker started (exported as metrics by the caller)."""

    events: int = 0
    alerts: int = 0
    suppressed: int = 0
    undecodable: int = 0
    rule_failures: int = 0
    batches: int = 0
    ticks: int = 0
    reloads: int = 0


def deadletter_headers(rec: Record, reason: str, error: str, rule_id: str | None = None) -> list[Header]:
    """Headers of a dead letter: where the record came from and why it failed."""
    hs: list[Header] = [
        ("dlq.reason", reason.encode()),
        ("dlq.error", redact_text(error)[:1000].encode()),
        ("dlq.component", COMPONENT.encode()),
        ("dlq.topic", rec.topic.encode()),
        ("dlq.partition", str(rec.partition).encode()),
        ("dlq.offset", str(rec.offset).encode()),
    ]
    if rule_id:
        hs.append(("dlq.rule", rule_id.encode()))
    return hs


def deadletter_value(rec: Record, headers: Sequence[Header], failed_at: str) -> bytes:
    """The DeadLetter v1 (``stage: rules``) for ``rec``, its reason, error and rule read from ``headers``.

    Raises:
        ValueError: the ``dlq.reason`` header is not a lower_snake code.
    """
    h = {k: v.decode("utf-8", errors="replace") for k, v in headers if k.startswith("dlq.")}
    letter = deadletter.build_for(
        rec,
        stage="rules",
        component=COMPONENT,
        component_type=COMPONENT,
        reason=h.get("dlq.reason", "dead_letter"),
        error=h.get("dlq.error", ""),
        failed_at=failed_at,
        rule=h.get("dlq.rule"),
    )
    return letter.to_json()


class RulesWorker:
    """Runs the rules over the events topic (see the module docstring).

    ``telemetry`` defaults to the process's current one, read once here.
    """

    def __init__(
        self,
        bus: Bus,
        rules_config: Mapping[str, Any] | None,
        *,
        clock: Clock,
        group: str = "rules",
        txn_id: str = "rules",
        batch_size: int = 500,
        idle_secs: float = 1.0,
        base_dir: Path | None = None,
        telemetry: Telemetry | None = None,
    ):
        """Validate the config and build the engine; nothing touches the bus yet.

        Raises:
            ConfigError: the rules config is invalid (the message names the key path).
        """
        self.bus = bus
        self.group = group
        self.txn_id = txn_id
        self.batch_size = batch_size
        self.idle_secs = idle_secs
        self.engine = RulesEngine.from_config(rules_config, clock=clock, base_dir=base_dir)
        self.tick_interval_secs = self.engine.ruleset.settings.tick_interval_secs
        self.stats = WorkerStats()
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.telemetry.dead_letters(COMPONENT, COMPONENT, group, "", 0)  # shown at 0 until the first one
        self._clock = clock
        self._consumer: Consumer | None = None
        self._loaded = False
        self._marker_key = f"{PREFIX}_workers/{group}"
        self._marker: bytes | None = None
        self._token = secrets.token_hex(8)
        self._seq = 0
        self._last_tick: float | None = None
        self.last_consumed = 0

    async def __aenter__(self) -> RulesWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the consumer (the worker can be used again; it reopens lazily)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.__aexit__(None, None, None)

    # ---- public steps -----------------------------------------------------------------------
    async def run_once(self) -> int:
        """Process every event committed so far; return how many alerts were published.

        ``last_consumed`` then holds how many records were read (``stats`` keeps the totals).

        Raises:
            BusError: the bus failed (nothing of the failed batch was committed).
        """
        consumer = await self._prepare(need_consumer=True)
        assert consumer is not None
        self.last_consumed = 0
        alerts_before = self.stats.alerts
        try:
            async for batch in iter_records(consumer, batch=self.batch_size):
                await self._process(batch)
                self.last_consumed += len(batch)
        except BaseException:
            await self._reset()
            raise
        return self.stats.alerts - alerts_before

    async def tick(self, now: float | None = None) -> int:
        """Evaluate time-based rules at ``now`` (default: the clock) and commit; return the alert count.

        Raises:
            BusError: the bus failed (nothing was committed).
        """
        await self._prepare(need_consumer=False)
        t = self._clock.now() if now is None else now
        try:
            result = self.engine.tick(t)
            if result.alerts or result.state:
                rejected = await self._commit(result, [], {})
                if rejected:
                    self.telemetry.dead_letters(COMPONENT, COMPONENT, self.group, "", rejected)
        except BaseException:
            await self._reset()
            raise
        self._last_tick = t
        self.stats.ticks += 1
        self._count(result)
        return len(result.alerts)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set: catch up, tick every ``tick_interval_secs``, idle briefly.

        Retriable bus errors are retried with a capped backoff; anything else propagates.
        """
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                    now = self._clock.now()
                    if self._last_tick is None or now - self._last_tick >= self.tick_interval_secs:
                        await self.tick(now)
                    if self.last_consumed == 0:
                        await self._await_events()
                    backoff = 0.5
                except PipelineError as err:
                    tel = self.telemetry
                    tel.component_errors(COMPONENT, COMPONENT, self.group, type(err).__name__)
                    if isinstance(err, BusError):
                        tel.bus_errors("transaction", type(err).__name__)
                    if not err.retriable:
                        raise
                    log.warning("Rules batch failed, retrying.", extra={"error": err.message, "delay_s": backoff})
                    await _wait(stop, err.retry_after or backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            await self.close()

    # ---- internals ------------------------------------------------------------------------
    async def _await_events(self) -> None:
        """Idle until an event arrives (at most ``idle_secs``) and process what came.

        Waiting inside the consumer's poll instead of sleeping: an event committed meanwhile is
        evaluated as soon as the bus shows it (at once on the embedded bus in this process,
        within its 50 ms re-check from another one; at the fetch on Kafka), not after the sleep.
        """
        consumer = await self._prepare(need_consumer=True)
        assert consumer is not None
        try:
            batch = await consumer.poll(self.batch_size, timeout_s=self.idle_secs)
            if batch:
                await self._process(batch)
                self.last_consumed += len(batch)
        except BaseException:
            await self._reset()
            raise

    async def _prepare(self, *, need_consumer: bool) -> Consumer | None:
        if self._loaded and await self.bus.get_state(self._marker_key) != self._marker:
            log.info("Another rules worker committed; reloading rule state.", extra={"group": self.group})
            await self._reset()
        if not self._loaded:
            await claim_writer(self.bus, self.txn_id)
            items = await self.bus.state_items(PREFIX)
            problems = self.engine.load_state(items)
            for p in problems:
                log.warning("Rule state entry skipped.", extra={"key": p.key, "error": p.error})
            self._log_resets()
            self._marker = items.get(self._marker_key)
            self._loaded = True
            self.stats.reloads += 1
        if need_consumer and self._consumer is None:
            c = self.bus.consumer([EVENTS_TOPIC], group=self.group, start="committed")
            self._consumer = await c.__aenter__()
        return self._consumer

    def _log_resets(self) -> None:
        """One line per rule whose stored state another version of it wrote (after an upgrade)."""
        by_rule: dict[str, list[StateReset]] = {}
        for r in self.engine.state_resets:
            by_rule.setdefault(r.rule_id, []).append(r)
        for rule_id, resets in by_rule.items():
            log.warning(
                "Rule state reset: the stored state was written by another version of the rule; its "
                "baseline starts over (alerts it already raised stay open and are not raised again).",
                extra={
                    "rule": rule_id,
                    "stored_version": sorted(
                        {str(r.stored_version): r.stored_version for r in resets}.values(), key=str
                    ),
                    "version": resets[0].version,
                    "workspaces": len(resets),
                    "entities_dropped": sum(r.entities for r in resets),
                },
            )

    async def _reset(self) -> None:
        self._loaded = False
        await self.close()

    async def _process(self, batch: Sequence[Record]) -> None:
        tel = self.telemetry
        attrs: dict[str, AttributeValue] = {KIND: COMPONENT, TYPE: COMPONENT, ID: self.group, "batch.size": len(batch)}
        with tel.span("rules.batch", attrs, links=tel.links(rec.headers for rec in batch)):
            await self._evaluate(batch)
        tel.records_received(COMPONENT, COMPONENT, self.group, "", len(batch))

    async def _evaluate(self, batch: Sequence[Record]) -> None:
        by_id: dict[str, Record] = {}
        dead: list[tuple[Record, list[Header]]] = []
        # Each record is decoded just before the engine evaluates it, while its Event is still in
        # the CPU cache (decoding the whole batch first costs the rules a third more time).
        result = self.engine.evaluate(_decoded(batch, by_id, dead))
        for f in result.failures:
            failed = by_id.get(f.event_id or "")
            if failed is not None:
                reason = "invalid_event" if f.rule_id is None else "rule_error"
                dead.append((failed, deadletter_headers(failed, reason, f.error, f.rule_id)))
            else:
                log.error("Rule failed.", extra={"rule": f.rule_id, "error": f.error})
        offsets: dict[TopicPartition, int] = {}
        for rec in batch:
            offsets[rec.tp] = max(offsets.get(rec.tp, 0), rec.offset + 1)
        undecodable = len(batch) - result.events
        origins = _origins(result.alerts, by_id)
        rejected_alerts = await self._commit(result, dead, offsets, origins)
        if dead or rejected_alerts:
            self.telemetry.dead_letters(COMPONENT, COMPONENT, self.group, "", len(dead) + rejected_alerts)
        _record_latency(self.telemetry, self.group, origins.values())
        self.stats.batches += 1
        self.stats.undecodable += undecodable
        self._count(result)
        if dead:
            reasons = Counter(_reason(headers) for _rec, headers in dead)
            tel = self.telemetry
            for reason, n in reasons.items():
                tel.records_dropped(COMPONENT, COMPONENT, self.group, "", n, reason=reason)

    async def _commit(
        self,
        result: Evaluation,
        dead: Sequence[tuple[Record, list[Header]]],
        offsets: Mapping[TopicPartition, int],
        origins: Mapping[str, tuple[float, float | None]] | None = None,
    ) -> int:
        """Write the batch's alerts, dead letters, rule state and offsets in one transaction.

        Returns the number of alerts the publish gate refused (written as dead letters instead).
        ``origins``: per alert id, (append time of its newest event on the bus, that event's
        source time): the alert carries the source time as ``source_ms``.

        Raises:
            BusError: the transaction failed.
        """
        self._seq += 1
        marker = f"{self._token}:{self._seq}".encode()
        trace = self.telemetry.trace_headers() if result.alerts else ()
        rejected = 0
        async with self.bus.transaction(self.txn_id) as txn:
            failed_at = format_time(self._clock.now())
            for alert in result.alerts:
                alert_key = alert.workspace.id.encode()
                try:
                    alert_value = encode_alert(alert)
                except GateRejected as err:
                    letter = rejected_letter(err, stage="rules", component=COMPONENT, component_type=COMPONENT,
                                             failed_at=failed_at, record_id=alert.id, key=alert_key)  # fmt: skip
                    txn.send(DEADLETTER_TOPIC, letter.to_json(), key=alert_key,
                             headers=[("dlq.reason", b"secret_rejected")])  # fmt: skip
                    rejected += 1
                    continue
                origin = (origins or {}).get(alert.id)
                stamp = [source_time_header(origin[1])] if origin is not None and origin[1] is not None else []
                txn.send(
                    ALERTS_TOPIC, alert_value, key=alert_key,
                    headers=[("alert_rule", alert.rule.id.encode()), ("severity", alert.rule.severity.encode()),
                             *stamp, *trace],
                )  # fmt: skip
            for rec, headers in dead:
                txn.send(DEADLETTER_TOPIC, deadletter_value(rec, headers, failed_at), key=rec.key, headers=headers)
            for key, value in result.state.items():
                txn.put_state(key, value)
            txn.put_state(self._marker_key, marker)
            if offsets:
                txn.commit_offsets(self.group, offsets)
        self._marker = marker
        return rejected

    def _count(self, result: Evaluation) -> None:
        self.stats.events += result.events
        self.stats.alerts += len(result.alerts)
        self.stats.suppressed += result.suppressed
        self.stats.rule_failures += sum(1 for f in result.failures if f.rule_id is not None)
        if result.alerts:
            tel = self.telemetry
            raised = Counter((a.rule.id, a.rule.severity, a.workspace.id) for a in result.alerts if a.status == "open")
            for (rule, severity, workspace), n in raised.items():
                tel.alerts_raised(rule, severity, workspace, n)
            for workspace, n in Counter(a.workspace.id for a in result.alerts).items():
                tel.records_published(COMPONENT, COMPONENT, self.group, workspace, n)


def _origins(alerts: Sequence[Alert], by_id: Mapping[str, Record]) -> dict[str, tuple[float, float | None]]:
    """Per alert: the bus append time (epoch seconds) and source time of its newest event in this batch."""
    out: dict[str, tuple[float, float | None]] = {}
    for alert in alerts:
        recs = [r for r in (by_id.get(eid) for eid in alert.event_ids) if r is not None]
        if recs:
            newest = max(recs, key=lambda r: r.timestamp_ms)
            out[alert.id] = (newest.timestamp_ms / 1000, header_secs(newest.header(SOURCE_TIME)))
    return out


def _record_latency(tel: Telemetry, group: str, origins: Iterable[tuple[float, float | None]]) -> None:
    """``bus_to_alert`` for alerts just committed (from their newest event's append time)."""
    if tel.enabled:
        now = time.time()
        tel.latency("bus_to_alert", group, [now - appended for appended, _src in origins])


def _reason(headers: Sequence[Header]) -> str:
    """The ``dlq.reason`` of a dead letter (``undecodable``, ``invalid_event``, ``rule_error``)."""
    return next((v.decode() for k, v in headers if k == "dlq.reason"), "dead_letter")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _decoded(
    batch: Sequence[Record], by_id: dict[str, Record], dead: list[tuple[Record, list[Header]]]
) -> Iterator[Event]:
    """Decode the records one by one as they are consumed; undecodable ones go to ``dead``."""
    for rec in batch:
        try:
            ev = decode_event(rec.value)
        except ValueError as err:
            dead.append((rec, deadletter_headers(rec, "undecodable", str(err))))
            continue
        by_id[ev.id] = rec
        yield ev
