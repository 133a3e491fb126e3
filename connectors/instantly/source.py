"""The poller of one Instantly workspace: streams → Event v1 → bus, exactly once.

Each poll first reads ``GET /workspaces/current`` (the workspace id and name, and a health
check; while it fails and the id was never learned, the id comes from an audit record's
``organization_id``), then runs every configured stream once:

* snapshot streams list everything first and publish only if the whole listing succeeded (a
  failed page must not read as "everything was deleted"); their events and the new snapshot
  are written in one bus transaction;
* the audit log publishes page by page, events and cursor together (:mod:`connectors.instantly.streams`);
* ``webhook_deliveries`` (opt-in; needs the receiver's ``public_urls``) republishes the receiver's
  deliveries Instantly gave up on, from its delivery log (:mod:`connectors.instantly.deliveries`).

The audit log runs first. Snapshot streams run every poll, or at most every
:meth:`WorkspaceConfig.snapshot_interval` seconds (``block_list`` and ``accounts`` by default,
``snapshot_intervals`` / ``snapshot_interval_secs`` when set) — except that an audit record
committed in this poll that says a resource changed (API key created/deleted, webhook created/updated/…; see
:data:`connectors.instantly.audit_codes.SNAPSHOT_TRIGGERS`) makes its stream run in this same
poll (``audit_triggers_snapshots``), so ``api_key.created`` follows audit code 37 within the
poll, through the same request budget.

All writes use ``txn_id = f"poller-{source_id}"``; events go to ``instantly.events.v1`` with
key = workspace id and header ``event_type``. A 401 publishes ``pipeline.poller_unauthorized``
and ends this poll; 402/403/404 on a stream publish ``pipeline.audit_log_unavailable`` (audit
log) or ``pipeline.stream_unavailable`` and the other streams go on. These pipeline events have
ids that include the hour, and a state marker keeps each from being published again within it.
Transient failures (5xx, timeouts, 429 after retries) are logged and retried next poll; a stream
failing that way in 3 polls in a row spanning at least 60 s publishes
``pipeline.stream_unavailable`` with ``transient: true`` and a plain ``cause`` (rule
``pipeline.stream_failing``; :mod:`connectors.instantly.stream_events`). When a stream whose
``pipeline.stream_unavailable`` (refused or transient) was published reads again,
``pipeline.stream_recovered`` resolves those alerts. A workspace found unreachable (timeout,
connection refused, DNS) after a request's retries fails its remaining streams of the poll at
once with the same cause (:class:`~connectors.instantly.client.UnreachableError`).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from connectors.instantly.api import (
    AUDIT_LOGS,
    BY_NAME,
    GROUP_ADMIN_PATH,
    GROUP_MEMBERS,
    WEBHOOK_DELIVERIES,
    page_limit,
)
from connectors.instantly.api import WORKSPACE as WORKSPACE_STREAM
from connectors.instantly.budget import RequestBudget
from connectors.instantly.client import InstantlyClient, SessionFactory, TransportError, cause_of
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.deliveries import ReceiverTargets, publish_deliveries
from connectors.instantly.normalize import admin_link_item, with_admin_link
from connectors.instantly.poll_log import PollLog
from connectors.instantly.receipts import ReceiptSettings
from connectors.instantly.refusals import not_found_hint, refusal_hint
from connectors.instantly.stream_events import UNAVAILABLE, StreamEvents
from connectors.instantly.stream_events import marker_key as marker_key
from connectors.instantly.streams import (
    AuditWindow,
    CursorCache,
    Publisher,
    publish_audit_log,
    publish_snapshot,
)
from connectors.instantly.sweep import SweepSettings
from pipeline.bus.base import Bus
from pipeline.clock import Clock, format_time
from pipeline.errors import (
    AuthError,
    BusError,
    NotFoundError,
    PaymentRequiredError,
    ScopeError,
    SourceError,
    UpstreamError,
)
from pipeline.observability.health import HealthRegistry, get_health
from pipeline.observability.logs import get_logger
from pipeline.observability.metrics import ID, KIND, STREAM, TYPE, WORKSPACE, WORKSPACE_ID
from pipeline.observability.telemetry import Telemetry, get_telemetry
from pipeline.redaction import redact_text
from pipeline.sources.backpressure import Backpressure
from pipeline.sources.base import status_key
from pipeline.sources.poll_loop import poll_until_stopped
from schemas.event import WorkspaceRef

log = get_logger("instantly.poller")

Sleep = Callable[[float], Awaitable[None]]
POLL_JITTER = 0.1
"""Each wait between polls is ``poll_interval_secs`` * uniform(0.9, 1.1)."""


def _reason(err: SourceError) -> str:
    """A short, secret-free reason: ``refused: HTTP 401 (AuthError)``; without an HTTP status, the
    client's own words (``failed: GET /api/v2/api-keys: request failed (ClientConnectorError)``), which
    name the request and the failure but never a URL, a header or a response body. The client's
    ``hint`` (a refused key, an unreachable server: the host and the config key) replaces the request,
    so every stream of the workspace gives the same reason and ``run --once`` says it once."""
    status = getattr(err, "status", None)
    refused = isinstance(err, AuthError | PaymentRequiredError | ScopeError | NotFoundError)
    verdict = "refused" if refused else "failed"
    if isinstance(err, TransportError):  # "failed: timeout: GET /api/v2/api-keys: request timed out (TimeoutError)"
        return f"{verdict}: {err.cause}: {err.hint or redact_text(str(err))[:300]}"
    if status is None and isinstance(err, UpstreamError):
        return f"{verdict}: {redact_text(str(err))[:300]}"
    hint = f": {err.hint}" if err.hint else ""
    return f"{verdict}: {f'HTTP {status} ' if status else ''}({type(err).__name__}){hint}"


def identity_key(source_id: str) -> str:
    """State key of the last known workspace id and name: ``identity/{source_id}``."""
    return f"identity/{source_id}"


class InstantlyWorkspacePoller:
    """Polls one workspace; use ``async with`` (or call :meth:`aclose`) to release the HTTP session.

    ``telemetry`` and ``health`` default to the process's current ones, read once here.
    """

    def __init__(
        self,
        source_id: str,
        cfg: WorkspaceConfig,
        bus: Bus,
        *,
        clock: Clock,
        session_factory: SessionFactory | None = None,
        budget: RequestBudget | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        audit_backfill_secs: float | None = None,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
        receivers: ReceiverTargets | None = None,
    ):
        self.source_id = source_id
        self.backpressure: Backpressure | None = None
        """Set by the runtime with ``bus.max_consumer_lag``: wait there before each poll."""
        self.last_failures: dict[str, str] = {}
        """Streams the last poll could not read, with a short reason (read by ``run --once``)."""
        self.cfg = cfg
        self.bus = bus
        self.clock = clock
        self.txn_id = f"poller-{source_id}"
        self.streams: tuple[str, ...] = tuple(dict.fromkeys(cfg.streams))
        self.receivers = receivers
        """The webhook receiver's sources with ``public_urls`` (``webhook_deliveries`` is off without them)."""
        if WEBHOOK_DELIVERIES.name in self.streams and receivers is None:
            log.warning(
                "webhook_deliveries is off: no webhook source names its public_urls, so no delivery in "
                "Instantly's delivery log can be told to be the pipeline's (see docs/webhook-receiver.md).",
                extra={"source": source_id, "stream": WEBHOOK_DELIVERIES.name},
            )
            self.streams = tuple(s for s in self.streams if s != WEBHOOK_DELIVERIES.name)
        self.audit_backfill_secs = audit_backfill_secs
        """First poll only: how far back to read the audit log (``None`` = all the API returns)."""
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.health = health if health is not None else get_health()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._client = InstantlyClient(
            cfg,
            budget=budget,
            session_factory=session_factory,
            rng=self._rng,
            sleep=sleep,
            source_id=source_id,
            telemetry=self.telemetry,
        )
        self._opened = False
        self.workspace = WorkspaceRef(cfg.as_workspace or source_id, cfg.name)
        if cfg.as_workspace:
            self.telemetry.name_workspace(cfg.as_workspace, source_id)
        self._identity_loaded = False
        self._snapshot_ok: dict[str, float] = {}
        """When each snapshot stream last completed (for its snapshot interval)."""
        self.last_triggered: set[str] = set()
        self._workspace_read = False
        self._sweep = (
            SweepSettings(cfg.audit_sweep_interval_secs, cfg.audit_sweep_days, cfg.audit_sweep_max_requests)
            if cfg.audit_sweep_interval_secs is not None
            else None
        )
        """Snapshot streams the last poll listed because an audit record said they changed."""
        self._receipts = (
            ReceiptSettings(
                interruption_secs=2 * cfg.poll_interval_secs + cfg.audit_overlap_secs,
                retention_secs=max(8.0, cfg.audit_sweep_days + 1) * 86_400,
            )
            if cfg.audit_receipts
            else None
        )
        """Completeness receipts: a gap between polls beyond ``2 * poll interval + overlap`` is an interruption."""
        self._stream_events = StreamEvents(bus, source_id, self.streams)
        """``pipeline.stream_unavailable`` / ``pipeline.stream_recovered`` bookkeeping."""
        self._audit_cache = CursorCache()
        """The audit cursor between polls (reloaded from the bus after a failed poll)."""
        self._started_at = clock.now()
        self._cursor_at: float | None = None
        """When the audit log was last read to the end (for ``status``); loaded from state once."""
        """Process start, for the audit log: its first poll here repeats an older full re-read."""
        self._poll_log = PollLog(source_id, clock)
        """``Poll finished.`` at INFO only when something changed, and the periodic ``Polls summary.``"""

    async def __aenter__(self) -> InstantlyWorkspacePoller:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the session and stop watching the streams' health and reporting their cursor ages (the
        workspace may have moved to another replica, or left its agency)."""
        await self.aclose()
        for stream in self.streams:
            self.health.forget_stream(self.source_id, stream)
        self.telemetry.forget_cursor_ages(self.source_id)

    async def _open(self) -> None:
        if not self._opened:
            await self.bus.fence(self.txn_id)
            await self._client.__aenter__()
            self._opened = True
            for stream in self.streams:
                self.health.watch_stream(self.source_id, stream, stale_after_secs=self.stale_after(stream))

    def stale_after(self, stream: str) -> float:
        """Readiness: ``stream`` is stale when it has not succeeded for this long.

        Three times the longer of the poll interval and the stream's own snapshot interval, at
        least 300 s (a stream listed every 300 s must not flap stale between listings).
        """
        every = self.cfg.poll_interval_secs
        if BY_NAME[stream].kind != "audit":
            every = max(every, self.cfg.snapshot_interval(stream) or 0.0)
        return max(3 * every, 300.0)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        self._opened = False
        await self._client.aclose()

    # ---- the loop -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``poll_interval_secs`` (with jitter) until ``stop`` is set.

        Raises:
            BusError: the bus failed in a way that retrying cannot fix.
        """
        try:
            await poll_until_stopped(
                self.poll_once,
                stop,
                interval_secs=lambda: self.cfg.poll_interval_secs * self._rng.uniform(1 - POLL_JITTER, 1 + POLL_JITTER),
                backpressure=self.backpressure,
                log=log,
                log_extra={"source": self.source_id, "workspace": self.workspace.id},
                on_bus_error=lambda err: self.telemetry.bus_errors("publish", type(err).__name__),
            )
        finally:
            await self.aclose()

    async def poll_once(self) -> dict[str, int]:
        """Run each configured stream once; return the events published per stream (+ ``pipeline``).

        Raises:
            BusError: writing to the bus failed (nothing of the failed stream was committed).
        """
        await self._open()
        self._client.new_poll()
        self.last_failures = {}
        counts = {s: 0 for s in self.streams}
        counts["pipeline"] = 0
        await self._load_identity()
        tel, health = self.telemetry, self.health
        ws_record: dict[str, Any] | None = None
        ws_error: SourceError | None = None
        try:
            if self._workspace_due():
                ws_record = await self._client.get(WORKSPACE_STREAM.path)
                self._workspace_read = True
                await self._remember_identity(ws_record)
        except AuthError as err:
            for stream in self.streams:
                health.stream_error(self.source_id, stream, err)
                self.last_failures[stream] = _reason(err)
            counts["pipeline"] += await self._pipeline_event("pipeline.poller_unauthorized", WORKSPACE_STREAM.name, err)
            self._poll_log.finished(self.workspace.id, counts, self.last_failures)
            await self._write_status(counts)  # the failed poll is a poll: `status` shows it with the 401
            return counts
        except SourceError as err:
            ws_error = err
            if not self._client.workspace_id:
                await self._identity_from_audit(err)
        triggered: set[str] = set()
        self.last_triggered = set()
        ordered = sorted(self.streams, key=lambda s: BY_NAME[s].kind != "audit")
        for stream in ordered:
            spec = BY_NAME[stream]
            pub = Publisher(self.bus, self.txn_id, self.source_id, self.workspace, tel, self._client.workspace_id)
            now = self.clock.now()
            if spec.kind != "audit" and not self._snapshot_due(stream, now, triggered):
                continue
            attrs = {
                KIND: "source",
                TYPE: f"instantly_{stream}",
                ID: self.source_id,
                WORKSPACE_ID: self.workspace.id,
                WORKSPACE: self.source_id,
            }
            with tel.span("poll.stream", {**attrs, STREAM: stream}, kind=SpanKind.CLIENT) as span:
                try:
                    if spec.kind == "audit":
                        window = AuditWindow(
                            now=now,
                            observed_at=format_time(now),
                            overlap_secs=self.cfg.audit_overlap_secs,
                            page_size=self.cfg.audit_page_size,
                            backfill_secs=self.audit_backfill_secs,
                            started_at=self._started_at,
                            clock=self.clock,
                            sweep=self._sweep,
                            receipts=self._receipts,
                        )
                        try:
                            await publish_audit_log(pub, self._client, window, counts, self._audit_cache)
                        finally:
                            triggered |= window.triggered  # what committed, even when a later page failed
                    elif spec is WEBHOOK_DELIVERIES and self.receivers is not None:
                        recovered, summaries = await publish_deliveries(
                            pub, self._client, self.receivers, now=now,
                            lookback_days=self.cfg.webhook_deliveries_lookback_days,
                        )  # fmt: skip
                        counts[stream] += recovered
                        counts["pipeline"] += summaries
                    elif spec is WORKSPACE_STREAM:
                        if ws_error is not None:
                            raise ws_error
                        if ws_record is None:  # became due since the start of this poll
                            ws_record = await self._client.get(WORKSPACE_STREAM.path)
                        counts[stream] += await publish_snapshot(
                            pub, stream, [ws_record], observed_at=format_time(now), clock=self.clock
                        )
                    else:
                        limit = page_limit(spec)
                        items = await self._client.get_all(spec.path, limit=limit)
                        paged = len(items) >= limit  # several pages: an item may have moved between them
                        if spec is GROUP_MEMBERS:
                            items = with_admin_link(items, await self._admin_link())
                        listed = format_time(self.clock.now())  # after the listing: nothing in it is newer
                        relist = functools.partial(self._client.get_all, spec.path, limit=limit) if paged else None
                        counts[stream] += await publish_snapshot(
                            pub, stream, items, observed_at=listed, clock=self.clock, relist=relist
                        )
                except AuthError as err:
                    _failed(span, err)
                    for rest in ordered[ordered.index(stream) :]:
                        health.stream_error(self.source_id, rest, err)
                        self.last_failures[rest] = _reason(err)
                    counts["pipeline"] += await self._pipeline_event("pipeline.poller_unauthorized", stream, err)
                    break
                except (PaymentRequiredError, ScopeError, NotFoundError) as err:
                    _failed(span, err)
                    health.stream_error(self.source_id, stream, err)
                    hint = refusal_hint(self._client.config_alias, spec, err, self._client.base_url)
                    self.last_failures[stream] = _reason(err) + hint
                    self._stream_events.outages.pop(stream, None)
                    kind = "pipeline.audit_log_unavailable" if spec is AUDIT_LOGS else UNAVAILABLE
                    counts["pipeline"] += await self._pipeline_event(kind, stream, err)
                except SourceError as err:
                    _failed(span, err)
                    health.stream_error(self.source_id, stream, err)
                    self.last_failures[stream] = _reason(err)
                    log.warning(
                        "Instantly stream failed; it is retried next poll.",
                        extra={
                            "source": self.source_id,
                            "workspace": self.workspace.id,
                            "stream": stream,
                            "error": type(err).__name__,
                            "status": getattr(err, "status", None),
                            "cause": cause_of(err),
                        },
                    )
                    counts["pipeline"] += await self._transient_failure(stream, err, now)
                except BusError as err:
                    health.stream_error(self.source_id, stream, err)
                    raise
                else:
                    health.stream_ok(self.source_id, stream)
                    counts["pipeline"] += await self._stream_read(stream)
                    tel.cursor_age_seconds(self._client.workspace_id, stream, now, workspace=self.source_id)
                    if spec.kind != "audit":
                        self._snapshot_ok[stream] = now
        self._poll_log.finished(self.workspace.id, counts, self.last_failures)
        await self._write_status(counts)
        return counts

    def _workspace_due(self) -> bool:
        """Whether this poll reads ``GET /workspaces/current`` first (identity and health check).

        Every poll by default; with an interval for the ``workspace`` stream
        (``snapshot_intervals`` or ``snapshot_interval_secs``), only when that stream is due or the
        workspace was never read by this process, so a poll of a quiet audit log can cost one
        request (a 401 then surfaces on the audit read).
        """
        if self.cfg.snapshot_interval(WORKSPACE_STREAM.name) is None or not self._workspace_read:
            return True
        return WORKSPACE_STREAM.name in self.streams and self._snapshot_due(
            WORKSPACE_STREAM.name, self.clock.now(), set()
        )

    def _snapshot_due(self, stream: str, now: float, triggered: set[str]) -> bool:
        """Whether a snapshot stream runs in this poll: its interval passed, or the audit log said it changed."""
        if self.cfg.audit_triggers_snapshots and stream in triggered:
            self.last_triggered.add(stream)
            log.debug(
                "An audit record says this resource changed; listing it now.",
                extra={"source": self.source_id, "workspace": self.workspace.id, "stream": stream},
            )
            return True
        last, interval = self._snapshot_ok.get(stream), self.cfg.snapshot_interval(stream)
        return interval is None or last is None or now - last >= interval

    async def _write_status(self, counts: dict[str, int]) -> None:
        """Record this poll's outcome in state (``status/<source id>``) for ``instantly-audit status``.

        Raises:
            BusError: this writer was fenced (another replica owns the workspace now).
        """
        now = self.clock.now()
        if self._cursor_at is None:
            with suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                raw = await self.bus.get_state(status_key(self.source_id))
                self._cursor_at = orjson.loads(raw).get("cursor_at") if raw else None
        if AUDIT_LOGS.name in self.streams and AUDIT_LOGS.name not in self.last_failures:
            self._cursor_at = now
        doc = {
            "at": now,
            "published": counts,
            "failures": self.last_failures,
            "cursor_at": self._cursor_at,
            "requests_last_minute": self._client.budget.used_last_minute(),
        }
        try:
            async with self.bus.transaction(self.txn_id) as tx:
                tx.put_state(status_key(self.source_id), orjson.dumps(doc))
        except BusError as err:
            if not err.retriable:
                raise
            log.warning("Could not record the poll status", extra={"source": self.source_id, "error": str(err)})

    async def list_group_members(self) -> list[dict[str, Any]]:
        """The workspace group links this key sees (``/api/v2/workspace-group-members``, every page).

        Raises:
            SourceError: the listing failed (nothing partial is returned).
        """
        await self._open()
        spec = BY_NAME["group_members"]
        return await self._client.get_all(spec.path, limit=page_limit(spec))

    async def _admin_link(self) -> dict[str, Any] | None:
        """This workspace's own agency link as a ``group_members`` item (``None``: no admin workspace).

        ``GET /workspace-group-members/admin`` is how a sub-workspace sees the agency that can act
        as it; the list endpoint shows that link only to the admin side. A 404 reads as "none";
        any other failure fails the stream (a snapshot without the link would read as its removal).
        """
        try:
            body = await self._client.get(GROUP_ADMIN_PATH)
        except NotFoundError:
            return None
        return admin_link_item(
            body, self._client.workspace_id or None, self.workspace.name, key_owner=bool(self.cfg.as_workspace)
        )

    # ---- identity ---------------------------------------------------------------------------
    async def _identity_from_audit(self, err: SourceError) -> None:
        """``GET /workspaces/current`` failed and the workspace id was never learned: take it from
        the audit log (``organization_id``, a required field of every audit record) with a
        one-record read, so this poll's events already carry it; else report the poll's events
        as carrying the config alias (``last_failures['identity']``, a ``run --once`` problem).

        Costs one request per poll only while the id is unknown (it is kept in state once learned).
        """
        org: str | None = None
        if AUDIT_LOGS.name in self.streams:
            try:
                page = await self._client.get(AUDIT_LOGS.path, {"limit": 1})
            except SourceError:
                page = {}  # the audit stream reports its own failure
            items = page.get("items")
            for record in items if isinstance(items, list) else []:
                value = record.get("organization_id") if isinstance(record, dict) else None
                if isinstance(value, str) and value.strip():
                    org = value.strip()
                    break
        if org is not None:
            log.warning(
                "GET /workspaces/current failed; the workspace id comes from the audit log. "
                "Grant the key workspaces:read for the workspace name and a health check.",
                extra={"source": self.source_id, "workspace": org, "status": getattr(err, "status", None)},
            )
            await self._remember_identity({"id": org})
            return
        scope = isinstance(err, ScopeError)  # a network or server failure is not fixed by a scope
        not_found = not_found_hint(self._client.config_alias, self._client.base_url)
        self.last_failures["identity"] = (
            f"unknown: GET /workspaces/current {_reason(err)}{not_found if isinstance(err, NotFoundError) else ''}; "
            f"events carry the alias {self.source_id!r} instead of the workspace id until an audit record brings it"
            + (" (grant the key workspaces:read)" if scope else "")
        )
        log.warning(
            "The workspace id is unknown: events carry the config alias until GET /workspaces/current "
            + ("is allowed (scope workspaces:read)" if scope else "answers")
            + " or an audit record brings the id.",
            extra={"source": self.source_id, "status": getattr(err, "status", None)},
        )

    async def _load_identity(self) -> None:
        if self._identity_loaded:
            return
        self._identity_loaded = True
        raw = await self.bus.get_state(identity_key(self.source_id))
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
            name = doc.get("name")
            self.workspace = WorkspaceRef(doc["id"], name if isinstance(name, str) else self.cfg.name)
            self._learned(self.workspace.id)

    async def _remember_identity(self, record: dict[str, Any]) -> None:
        wid, name = record.get("id"), record.get("name")
        if not isinstance(wid, str) or not wid:
            return
        ref = WorkspaceRef(wid, name if isinstance(name, str) else self.cfg.name)
        if ref != self.workspace:
            self.workspace = ref
            self._learned(ref.id)
            async with self.bus.transaction(self.txn_id) as tx:
                tx.put_state(identity_key(self.source_id), orjson.dumps({"id": ref.id, "name": ref.name}))

    def _learned(self, workspace_id: str) -> None:
        """The workspace id is known: label the request metrics with it and teach the telemetry the alias."""
        self._client.workspace_id = workspace_id
        self.telemetry.name_workspace(workspace_id, self.source_id)

    # ---- pipeline events --------------------------------------------------------------------
    def _publisher(self) -> Publisher:
        return Publisher(
            self.bus, self.txn_id, self.source_id, self.workspace, self.telemetry, self._client.workspace_id
        )

    async def _pipeline_event(self, event_type: str, stream: str, err: SourceError) -> int:
        return await self._stream_events.unavailable(self._publisher(), event_type, stream, err, self.clock.now())

    async def _transient_failure(self, stream: str, err: SourceError, now: float) -> int:
        return await self._stream_events.failed(self._publisher(), stream, err, now)

    async def _stream_read(self, stream: str) -> int:
        return await self._stream_events.read(self._publisher(), stream, self.clock.now())


def _failed(span: Span, err: SourceError) -> None:
    """Mark a stream's span as failed (the error is handled: the poll goes on)."""
    span.set_status(Status(StatusCode.ERROR, type(err).__name__))
