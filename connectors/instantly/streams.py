"""The streams a workspace poller runs, each writing its events and its state in one bus transaction.

* Snapshot streams (``api_keys``, ``members``, ``webhooks``, ``group_members``, ``block_list``,
  and ``workspace`` = the single ``GET /workspaces/current`` object) are listed in full by the
  caller first, so a failed page never reads as "everything was deleted"; then
  :func:`publish_snapshot` writes the diff events and the new snapshot together.
* The audit log (:func:`publish_audit_log`) commits page by page: each transaction holds the
  page's new events and the cursor with their ids (and, when reading incrementally, the id the
  next read continues after); the high-water mark and the full re-read time move in a last
  transaction once every page was read (see :mod:`connectors.instantly.audit_cursor`). Pages are
  pipelined (:mod:`connectors.instantly.txn_pipeline`): the next page is fetched and normalized
  while the previous page's transaction commits; transactions still commit one after another, in
  page order, and the first failure stops the read.

State keys (each bounded; see :mod:`connectors.instantly.cursor_state` and
:mod:`connectors.instantly.snapshot_state`): ``cursor/{source_id}/audit_logs/head`` and
``cursor/{source_id}/audit_logs/seen/{hour}/{n}``; ``snapshot/{source_id}/{stream}/meta`` and
``snapshot/{source_id}/{stream}/shard/{i}``. The single values of older versions
(``cursor/{source_id}/audit_logs``, ``snapshot/{source_id}/{stream}``) are migrated by the first
write and deleted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.instantly.api import AUDIT_LOGS
from connectors.instantly.audit_codes import triggered_stream
from connectors.instantly.audit_cursor import (
    AuditCursor,
    audit_key,
    last_page_id,
    page_is_ascending,
    record_id,
    still_newest_first,
)
from connectors.instantly.client import ClientRequestError, InstantlyClient
from connectors.instantly.normalize import normalize_audit_record
from connectors.instantly.receipt_publish import receipt_writes
from connectors.instantly.receipts import HourReceipts, ReceiptSettings
from connectors.instantly.rejects import rejected_letters, safe_record
from connectors.instantly.snapshot_state import StoredSnapshot
from connectors.instantly.snapshots import diff_snapshots, split_snapshot
from connectors.instantly.sweep import SweepSettings, find_late, publish_late
from connectors.instantly.txn_pipeline import YIELD_EVERY, TxnPipeline, TxnWrite
from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC, Bus, Header, Transaction
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time, parse_time
from pipeline.errors import NormalizeError, NotFoundError
from pipeline.observability.latency import sampled, source_time_header
from pipeline.observability.logs import get_logger, redact_text
from pipeline.observability.metrics import ID, KIND, STREAM, TYPE, WORKSPACE, WORKSPACE_ID
from pipeline.observability.telemetry import Telemetry, get_telemetry
from pipeline.redaction.gate import GateRejected, encode_event, rejected_letter
from schemas import deadletter
from schemas.event import Event, WorkspaceRef

log = get_logger("instantly.streams")


def cursor_key(source_id: str) -> str:
    """State key of the single-value audit cursor of older versions: ``cursor/{source_id}/audit_logs``
    (the split layout lives under this key plus ``/``)."""
    return f"cursor/{source_id}/{AUDIT_LOGS.name}"


def snapshot_key(source_id: str, stream: str) -> str:
    """State key of a stream's single-value snapshot of older versions: ``snapshot/{source_id}/{stream}``
    (the sharded layout lives under this key plus ``/``)."""
    return f"snapshot/{source_id}/{stream}"


async def load_cursor(bus: Bus, source_id: str, *, floor: float | None = None) -> AuditCursor:
    """The audit cursor of ``source_id`` as stored (split layout, else the older single value).

    Raises:
        BusError: the state could not be read.
    """
    legacy = cursor_key(source_id)
    prefix = f"{legacy}/"
    return AuditCursor.load_state(
        prefix, await bus.state_items(prefix), legacy=await bus.get_state(legacy), floor=floor
    )


async def load_snapshot(bus: Bus, source_id: str, stream: str) -> StoredSnapshot:
    """A stream's stored snapshot (sharded layout, else the older single value).

    Raises:
        BusError: the state could not be read.
    """
    legacy = snapshot_key(source_id, stream)
    prefix = f"{legacy}/"
    return StoredSnapshot.load(prefix, await bus.state_items(prefix), await bus.get_state(legacy))


@dataclass
class CursorCache:
    """The audit cursor kept in memory between polls (a failed poll drops it: the next one reloads)."""

    cursor: AuditCursor | None = None


@dataclass(frozen=True)
class Publisher:
    """Where a stream writes: the bus, the writer id, the source and the workspace of the events,
    and the telemetry its counts and trace headers come from (the poller passes its own)."""

    bus: Bus
    txn_id: str
    source_id: str
    workspace: WorkspaceRef
    telemetry: Telemetry = field(default_factory=get_telemetry)
    metric_workspace_id: str | None = None
    """The ``workspace_id`` label of the counts (None: ``workspace.id``); the poller gives ``""``
    until it has read the workspace's id, so its counts never carry the alias as an id."""

    def send(self, tx: Transaction, event: Event, trace: Sequence[Header] | None = None) -> bool:
        """Buffer one event: topic ``instantly.events.v1``, key = workspace id, headers ``event_type``
        and ``traceparent``.

        ``trace``: the trace headers to attach, computed once per transaction by the caller
        (default: those of the current span). Returns True when the gate refused the event and its
        dead letter was buffered instead.
        """
        topic, value, key, headers = self.record(event, self.telemetry.trace_headers() if trace is None else trace)
        tx.send(topic, value, key=key, headers=headers)
        return topic == DEADLETTER_TOPIC

    def record(self, event: Event, trace: Sequence[Header]) -> tuple[str, bytes, bytes, tuple[Header, ...]]:
        """What :meth:`send` buffers for ``event``: (topic, value, key, headers), after the redaction gate.

        An event the gate refuses becomes its dead letter (the reason, never the value).
        """
        key = self.workspace.id.encode()
        try:
            value = encode_event(event)
        except GateRejected as err:
            letter = rejected_letter(
                err, stage="source", component=self.source_id, component_type="instantly",
                failed_at=event.observed_at, record_id=event.id, stream=event.source.stream, key=key,
            )  # fmt: skip
            log.error(
                "The redaction gate refused an event; it went to the dead letters.",
                extra={"reason": err.reason, "event_type": event.type, "stream": event.source.stream},
            )
            return DEADLETTER_TOPIC, letter.to_json(), key, (("error", b"secret_rejected"), *trace)
        try:
            stamp: tuple[Header, ...] = (source_time_header(parse_time(event.time)),)
        except (ValueError, OverflowError):
            stamp = ()
        return EVENTS_TOPIC, value, key, (("event_type", event.type.encode()), *stamp, *trace)

    def count(self, stream: str, received: int, published: int, dropped: Mapping[str, int]) -> None:
        """Report one batch of ``stream`` (once per page or snapshot, after its transaction committed)."""
        tel, alias = self.telemetry, self.source_id
        wid = self.workspace.id if self.metric_workspace_id is None else self.metric_workspace_id
        labels = ("source", f"instantly_{stream}", self.source_id, wid)
        if received:
            tel.records_received(*labels, received, workspace=alias)
        if published:
            tel.records_published(*labels, published, workspace=alias)
        for reason, n in dropped.items():
            if n:
                tel.records_dropped(*labels, n, reason=reason, workspace=alias)
        if dropped.get("dead_letter"):
            tel.dead_letters(*labels, dropped["dead_letter"], workspace=alias)


async def publish_snapshot(
    pub: Publisher,
    stream: str,
    records: Sequence[dict[str, Any]],
    *,
    observed_at: str,
    clock: Clock = SYSTEM_CLOCK,
    relist: Callable[[], Awaitable[Sequence[dict[str, Any]]]] | None = None,
) -> int:
    """Diff a complete listing against the stored snapshot; write the events and the new snapshot atomically.

    ``relist`` (a listing of several pages): called when the listing lacks a stored record; only what
    both listings lack is deleted (a listing sorted by a changing field loses an item updated
    between two page requests: the order is undocumented).

    Returns the number of events published (nothing is written when nothing changed).

    Raises:
        BusError: the transaction failed (neither the events nor the snapshot were written).
        SourceError: ``relist`` failed (nothing was written).
    """
    current, skipped = split_snapshot(stream, records)
    stored = await load_snapshot(pub.bus, pub.source_id, stream)
    missing = set(stored.snapshot or {}) - set(current)
    if missing and relist is not None:
        again, _ = split_snapshot(stream, await relist())
        kept = {rid: again[rid] for rid in missing if rid in again}
        if kept:
            log.info("Records missing from a paged listing were in a second one.", extra={"stream": stream})
            current.update(kept)
    events = diff_snapshots(stream, stored.snapshot, current, workspace=pub.workspace, observed_at=observed_at)
    writes = stored.writes(current)
    letters, rejected = await rejected_letters(pub.bus, pub.source_id, pub.workspace.id, stream, skipped, observed_at)
    if letters:
        log.warning(
            "Listed records left out of the snapshot went to the dead letters.",
            extra={"source": pub.source_id, "workspace": pub.workspace.id, "stream": stream, "count": len(letters)},
        )
    refused = 0  # events the gate turned into dead letters
    if events or writes or rejected:
        trace = pub.telemetry.trace_headers()
        async with pub.bus.transaction(pub.txn_id) as tx:
            for event in events:
                refused += pub.send(tx, event, trace)
            for topic, value, key in letters:
                tx.send(topic, value, key=key, headers=(("error", b"normalize"), *trace))
            for k, v in (writes | rejected).items():
                tx.put_state(k, v)
        _record_ages(pub, clock, [e.time for e in events if e.time != observed_at])
    pub.count(stream, len(records), len(events) - refused, {"dead_letter": len(letters) + refused})
    return len(events)


def _record_ages(pub: Publisher, clock: Clock, times: Sequence[str | float]) -> None:
    """Record ``source_to_bus`` for events just committed (source times as ISO text or epoch seconds)."""
    tel = pub.telemetry
    if not tel.enabled or not times:
        return
    now = clock.now()
    ages = []
    for t in sampled(times):
        try:
            ages.append(now - (t if isinstance(t, float) else parse_time(t)))
        except (ValueError, OverflowError):
            continue
    tel.latency("source_to_bus", pub.source_id, ages)


@dataclass(frozen=True)
class AuditWindow:
    """The audit-log settings of one poll."""

    now: float
    observed_at: str
    overlap_secs: float
    page_size: int
    backfill_secs: float | None = None
    started_at: float | None = None
    """When the poller process started: a full re-read older than this is repeated."""
    clock: Clock | None = None
    """When given, each page's events are stamped ``observed_at`` = when the page arrived (a record
    written during the poll is never observed before it happened), else :attr:`observed_at`; also the
    clock the ``source_to_bus`` latency is read from (the system clock when not given)."""
    sweep: SweepSettings | None = None
    """The late-record sweep (``None``: off; see :mod:`connectors.instantly.sweep`)."""
    receipts: ReceiptSettings | None = None
    """Completeness receipts (``None``: off; see :mod:`connectors.instantly.receipts`)."""
    triggered: set[str] = field(default_factory=set)
    """Filled by the read: snapshot streams that committed audit records say changed (see
    :func:`connectors.instantly.audit_codes.triggered_stream`)."""


@dataclass
class _AuditRead:
    """What one listing of the audit log found."""

    ascending: bool = True
    newest: float | None = None
    last_id: str | None = None
    ids: int = 0


async def publish_audit_log(
    pub: Publisher,
    client: InstantlyClient,
    window: AuditWindow,
    counts: dict[str, int],
    cache: CursorCache | None = None,
) -> None:
    """Publish new audit records page by page; ``counts['audit_logs']`` grows as each page commits.

    Steady state continues after the cursor's ``last_id``; a full overlap re-read of the
    ``start_date`` window runs when due or when a page is not in ascending id order (see
    :mod:`connectors.instantly.audit_cursor`). ``cache``: the cursor left by the last successful
    call is reused instead of reading it from the bus again (dropped when this call fails).

    Raises:
        SourceError: a page could not be read (the pages before it stay published).
        BusError: a transaction failed.
    """
    floor = window.now - window.backfill_secs if window.backfill_secs is not None else None
    cursor = cache.cursor if cache is not None and cache.cursor is not None else None
    if cache is not None:
        cache.cursor = None
    if cursor is None:
        cursor = await load_cursor(pub.bus, pub.source_id, floor=floor)
        cursor.forget_old(window.overlap_secs)
    if window.sweep is not None:
        cursor.enable_ledgers(overlap_secs=window.overlap_secs)
        if cursor.last_sweep is None:
            # The sweep's clock starts with its ledgers: this poll's reads cover the same records,
            # so the first sweep comes one interval later instead of repeating their requests now.
            cursor.last_sweep = window.now
    if window.receipts is not None and cursor.receipts is not None:
        rs = window.receipts
        cursor.receipts.close(cursor.threshold(window.overlap_secs), now=window.now, retention_secs=rs.retention_secs)
        hours = cursor.receipts.check_interruption(now=window.now, bound=rs.interruption_secs)
        if hours:
            log.warning(
                "The audit log was not polled for longer than the bound; its hours are marked interrupted.",
                extra={"source": pub.source_id, "workspace": pub.workspace.id, "hours": len(hours)},
            )
    await _read_and_publish(pub, client, window, counts, cursor)
    if window.sweep is not None and window.sweep.due(cursor, window.now):
        await _sweep(pub, client, window, window.sweep, counts, cursor)
    if cache is not None:
        cache.cursor = cursor


async def _sweep(
    pub: Publisher,
    client: InstantlyClient,
    window: AuditWindow,
    settings: SweepSettings,
    counts: dict[str, int],
    cursor: AuditCursor,
) -> None:
    """Run the late-record sweep and publish what it found (see :mod:`connectors.instantly.sweep`)."""
    result = await find_late(client, cursor, settings, now=window.now, page_size=window.page_size)
    batch = await prepare_audit_batch(
        pub, (r for r, _ts in result.records), window.observed_at, TxnPipeline(pub.bus, pub.txn_id)
    )
    receipts = _receipts(window, cursor)
    if receipts is not None:
        receipts.record(
            ((audit_key(r), ts, audit_key(r) in batch.dead_ids) for r, ts in result.records), now=window.now
        )
    extra = receipt_writes(pub, receipts, now=window.now)
    published, events = await publish_late(
        pub, cursor, result, settings, batch, now=window.now, clock=window.clock or SYSTEM_CLOCK,
        extra_records=extra.records, extra_state=extra.state,
    )  # fmt: skip
    extra.committed()
    if result.records:  # what the sweep found counts like a read's records (published, dead letters)
        pub.count(AUDIT_LOGS.name, len(result.records), published, {"dead_letter": batch.dead_letters})
    counts[AUDIT_LOGS.name] = counts.get(AUDIT_LOGS.name, 0) + published
    counts["pipeline"] = counts.get("pipeline", 0) + events


async def _read_and_publish(
    pub: Publisher, client: InstantlyClient, window: AuditWindow, counts: dict[str, int], cursor: AuditCursor
) -> None:
    newest: float | None = None
    full = cursor.continuation_refused or cursor.full_read_due(
        now=window.now, overlap_secs=window.overlap_secs, started_at=window.started_at
    )
    if not full and cursor.last_id is not None:
        try:
            read = await _read_audit(pub, client, cursor, window, counts, incremental=True)
        except (ClientRequestError, NotFoundError) as err:
            # The documented cursor is "the ID of the last item" (or the last next_starting_after);
            # an API that refuses ours (400/404) must not wedge the audit log: read the window.
            log.warning(
                "The audit log refused the continuation cursor; reading the window instead.",
                extra={"source": pub.source_id, "workspace": pub.workspace.id, "status": getattr(err, "status", None)},
            )
            cursor.last_id = None
            cursor.continuation_refused = full = True
            read = _AuditRead(ascending=False)
        newest = read.newest
        if not read.ascending and not full:
            log.debug(
                "Audit log page not in ascending id order; falling back to the windowed read for this poll.",
                extra={"source": pub.source_id, "workspace": pub.workspace.id, "after": cursor.last_id},
            )
            full = True
    if full:
        read = await _read_audit(pub, client, cursor, window, counts, incremental=False)
        if read.newest is not None:
            newest = read.newest if newest is None else max(newest, read.newest)
        if not read.ascending:
            log.debug(
                "Audit log not listed in ascending id order; the next poll reads the window again.",
                extra={"source": pub.source_id, "workspace": pub.workspace.id},
            )
    cursor.advance(newest, now=window.now, overlap_secs=window.overlap_secs)
    if full:
        confirmed = read.ascending and read.ids >= 2
        cursor.finish_full_read(
            now=window.now, last_id=read.last_id if confirmed else None, overlap_secs=window.overlap_secs
        )
    final = cursor.state_writes()
    receipts = _receipts(window, cursor)
    if receipts is not None and window.receipts is not None:
        rs = window.receipts
        receipts.close(cursor.threshold(window.overlap_secs), now=window.now, retention_secs=rs.retention_secs)
        receipts.polled(window.now, persist_every=rs.interruption_secs / 4)
    extra = receipt_writes(pub, receipts, now=window.now)
    if final or extra.records or extra.state:
        async with pub.bus.transaction(pub.txn_id) as tx:
            for topic, value, key, headers in extra.records:
                tx.send(topic, value, key=key, headers=headers)
            for k, v in (final | extra.state).items():
                tx.put_state(k, v)
        extra.committed()


def _receipts(window: AuditWindow, cursor: AuditCursor) -> HourReceipts | None:
    """The cursor's hour ledgers when receipts are on, else ``None``."""
    return cursor.receipts if window.receipts is not None else None


async def _read_audit(
    pub: Publisher,
    client: InstantlyClient,
    cursor: AuditCursor,
    window: AuditWindow,
    counts: dict[str, int],
    *,
    incremental: bool,
) -> _AuditRead:
    """List and publish the audit log: after ``cursor.last_id`` (incremental) or the whole window.

    An incremental read stops, before publishing anything of it, at the first page that is not
    in ascending id order; it moves ``cursor.last_id`` with each page (committed with the page's
    events). A full read publishes every page and only reports whether all were ascending.
    """
    out = _AuditRead()
    after = cursor.last_id if incremental else None
    params = {"starting_after": after} if incremental and after else cursor.query(window.overlap_secs)
    pages = client.paginate(AUDIT_LOGS.path, params, limit=window.page_size, objects_only=False)
    tel = pub.telemetry
    attrs = {
        KIND: "source",
        TYPE: f"instantly_{AUDIT_LOGS.name}",
        ID: pub.source_id,
        WORKSPACE_ID: pub.workspace.id,
        WORKSPACE: pub.source_id,
    }
    mode = "incremental" if incremental else "full"
    # A full read that could publish nothing older than the window (no last_id: see AuditCursor.select)
    # stops once a listing proven newest first so far (a timestamp fell, none rose) passes the window's start.
    window_start = cursor.threshold(window.overlap_secs) if not incremental and cursor.last_id is None else None
    newest_first, oldest, proven = window_start is not None, None, False
    async with aclosing(pages), TxnPipeline(pub.bus, pub.txn_id) as line:
        async for page in pages:
            if out.ascending and not page_is_ascending(page, after):
                out.ascending = False
                if incremental:
                    return out
            page_last = last_page_id(page)
            if page_last is not None:
                after = out.last_id = page_last
            out.ids += sum(1 for r in page if record_id(r) is not None)
            if incremental and page_last is not None:
                cursor.last_id = page_last
            observed = format_time(window.clock.now()) if window.clock is not None else window.observed_at
            with tel.span("poll.page", {**attrs, STREAM: AUDIT_LOGS.name, "page.size": len(page), "read": mode}):
                page_newest = await _publish_audit_page(
                    pub, cursor, page, window, counts, line, observed, incremental=incremental
                )
            if page_newest is not None:
                out.newest = page_newest if out.newest is None else max(out.newest, page_newest)
            if newest_first:
                newest_first, oldest, fell = still_newest_first(page, oldest)
                proven = proven or fell  # a one-record page or equal timestamps prove no order
                if (
                    newest_first
                    and proven
                    and window_start is not None
                    and oldest is not None
                    and oldest < window_start
                ):
                    log.debug(
                        "Newest-first audit listing passed the window; the older pages are not read.",
                        extra={"source": pub.source_id, "workspace": pub.workspace.id, "records": out.ids},
                    )
                    break
    return out


@dataclass
class AuditBatch:
    """One page's records ready for its transaction: ``(topic, value, key, headers)`` of events and dead letters."""

    records: list[tuple[str, bytes, bytes | None, tuple[Header, ...]]]
    events: int
    dead_letters: int
    dead_ids: set[str] = field(default_factory=set)
    """Ids of the input records that became dead letters."""


async def prepare_audit_batch(
    pub: Publisher, records: Iterable[Mapping[str, Any]], observed_at: str, line: TxnPipeline
) -> AuditBatch:
    """Normalize and serialise audit records as :meth:`Publisher.record` does; a record that
    cannot be normalized becomes a dead letter (redacted). Pauses every :data:`YIELD_EVERY` records
    so the transaction ``line`` has in flight keeps committing meanwhile.
    """
    trace = tuple(pub.telemetry.trace_headers())
    key = pub.workspace.id.encode()
    out: list[tuple[str, bytes, bytes | None, tuple[Header, ...]]] = []
    dead: list[tuple[str, bytes, bytes | None, tuple[Header, ...]]] = []
    dead_ids: set[str] = set()
    workspace, n = pub.workspace, 0
    for n, record in enumerate(records, 1):
        try:
            event = normalize_audit_record(record, workspace, observed_at)
        except NormalizeError as err:
            letter = deadletter.build(
                stage="source", component=pub.source_id, component_type="instantly", reason="normalize",
                error=redact_text(err.message), failed_at=observed_at, value=orjson.dumps(safe_record(record)),
                stream=AUDIT_LOGS.name, key=key,
            )  # fmt: skip
            dead.append((DEADLETTER_TOPIC, letter.to_json(), key, (("error", b"normalize"), *trace)))
            dead_ids.add(audit_key(record))
        else:
            rec = pub.record(event, trace)
            (out if rec[0] == EVENTS_TOPIC else dead).append(rec)
            if rec[0] != EVENTS_TOPIC:
                dead_ids.add(audit_key(record))
        if n % YIELD_EVERY == 0:
            await line.pause()
    events = len(out)
    out += dead
    return AuditBatch(out, events, len(dead), dead_ids)


async def _publish_audit_page(
    pub: Publisher,
    cursor: AuditCursor,
    page: list[dict[str, Any]],
    window: AuditWindow,
    counts: dict[str, int],
    line: TxnPipeline,
    observed_at: str,
    *,
    incremental: bool = False,
) -> float | None:
    """Submit one page's new records and the cursor holding their ids as one transaction to ``line``.

    Returns the newest timestamp among the page's new records. ``counts['audit_logs']`` and the
    telemetry counts move when the transaction has committed. With receipts on, the hour ledgers
    the page changed are published in the same transaction. An incremental read publishes every
    new id, however old its timestamp (:meth:`AuditCursor.select`, ``keep_old``), and a full re-read
    every id past the cursor's ``last_id``: a record Instantly inserted hours late is seen at the
    next poll, also the first poll of a process, and its closed hour's receipt gets a revision.
    """
    selection = cursor.select(page, overlap_secs=window.overlap_secs, now=window.now, keep_old=incremental)
    if selection.no_id:
        log.warning(
            "Audit records without a usable id went to the dead letters.",
            extra={"source": pub.source_id, "workspace": pub.workspace.id, "count": len(selection.no_id)},
        )
    dropped = {"duplicate": selection.already_seen, "too_old": selection.too_old}
    if selection.too_old:
        log.info(
            "Audit records older than the overlap window and at or before the cursor were not published "
            "(the late-record sweep publishes those never published, when on).",
            extra={
                "source": pub.source_id,
                "workspace": pub.workspace.id,
                "count": selection.too_old,
                "threshold": _iso_or_none(cursor.threshold(window.overlap_secs)),
                "last_id": cursor.last_id,
            },
        )
    receipts = _receipts(window, cursor)
    if not selection.new:
        pub.count(AUDIT_LOGS.name, len(page), 0, dropped)
        return None
    batch = await prepare_audit_batch(pub, (r for r, _ts in selection.new), observed_at, line)
    cursor.mark((audit_key(r), ts) for r, ts in selection.new)
    if receipts is not None:
        receipts.record(((audit_key(r), ts, audit_key(r) in batch.dead_ids) for r, ts in selection.new), now=window.now)
    triggers = {triggered_stream(_activity_type(r)) for r, _ts in selection.new}
    state = cursor.state_writes()  # what pages up to this one changed: head, touched chunks, deleted buckets
    extra = receipt_writes(pub, receipts, now=window.now)

    def committed() -> None:
        pub.count(AUDIT_LOGS.name, len(page), batch.events, {**dropped, "dead_letter": batch.dead_letters})
        counts[AUDIT_LOGS.name] = counts.get(AUDIT_LOGS.name, 0) + batch.events
        window.triggered.update(t for t in triggers if t is not None)
        _record_ages(pub, window.clock or SYSTEM_CLOCK, [ts for _r, ts in selection.new])
        extra.committed()

    await line.submit(TxnWrite([*batch.records, *extra.records], state | extra.state, committed))
    return max((ts for _r, ts in selection.new), default=None)


def _activity_type(record: Any) -> Any:
    """The record's ``activity_type`` (``None`` for an item that is no object: it becomes a dead letter)."""
    return record.get("activity_type") if isinstance(record, Mapping) else None


def _iso_or_none(value: float | None) -> str | None:
    return format_time(value) if value is not None else None
