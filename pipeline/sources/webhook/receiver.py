"""The Instantly webhook receiver: check, normalize, commit to the bus, and only then answer 200.

Instantly does not sign deliveries; the only authentication is a secret custom header set on
the webhook (``reference/instantly-api.md`` §7). Before aiohttp reads a byte, the connection
guard (:mod:`pipeline.sources.webhook.connections`) caps open connections and closes one whose
request line and headers do not arrive within ``header_timeout_secs``; aiohttp closes a
keep-alive connection idle for ``idle_timeout_secs``. Each request then goes through these
checks, in order, and the first failure answers (``receiver.rejections[reason]`` counts it; the log line
names the reason, the path and the peer, never a header value, the query or the body):

1. method and path → 405 / 404
2. a ``Content-Encoding`` other than ``identity`` (in any of its headers and list items) → 415
   (``Content-Type`` is not checked: the body of an authenticated request is parsed as JSON
   whatever it says, see 6)
3. declared ``Content-Length`` above ``max_body_bytes`` → 413 before any byte of the body is read
4. IP allowlist (``X-Forwarded-For`` honoured only from ``trusted_proxies``) → 403
5. exactly one secret header, compared in constant time (HMAC-SHA256 of both sides with a
   per-process key, then :func:`hmac.compare_digest`) against every live secret without an
   early exit → 401; missing, duplicated, wrong or over-long all get the same 401 body. A secret
   in the query string is never looked at.
6. body read with a streaming cap (chunked bodies) → 413, within ``body_timeout_secs`` → 408;
   JSON object with ``event_type``, ``timestamp``, ``workspace`` (this source's workspace) and
   not nested deeper than the JSON parser, encoder or stack allows, else a dead letter answered
   200 (``malformed_json``, ``bad_shape``, ``workspace_mismatch``, ``too_deep``)
7. normalize to Event v1 and hand it to the group committer → 200 once the bus transaction that
   holds it committed; 503 with ``Retry-After`` if the bus failed or did not confirm within
   ``ack_timeout_secs`` (Instantly retries; the retry is de-duplicated if the commit landed late),
   or at once when ``max_pending`` deliveries already wait for the bus.

Duplicates: the body's SHA-256 is the idempotency key. Each source keeps a window of seen keys
in bus state (``webhook/seen/<source>/<writer_id>/<slot>``, hash-sharded so a commit rewrites
only the slots it touches; loaded from every writer's keys) written in the *same* transaction
as the events, so a crash can neither lose an acknowledged delivery nor publish a retried one
twice; the event id is also derived from the body hash, so sinks de-duplicate whatever the
window forgot.

Group commit: concurrent deliveries are batched into one bus transaction (up to
``max_batch``); each request is answered only after its batch committed. One receiver process
per ``writer_id`` (Kafka fences a second one): by default ``webhook-<host name>``, one per replica.

``/healthz`` answers 200 while the server and its committer run; ``/readyz`` 200 when the bus
committed recently or a heartbeat state write succeeds now. A delivery answered 503 because the bus
refused or did not confirm its commit also fails the health check ``webhook_bus`` (the service
port's ``/readyz``, the pod's readiness probe) until a commit or a heartbeat write, retried every
:data:`BUS_RECHECK_SECS`, succeeds again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from pipeline.bus.base import DEADLETTER_TOPIC, Bus
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time
from pipeline.errors import BusError, WebhookRejected
from pipeline.observability.health import HealthRegistry, get_health
from pipeline.observability.latency import source_time_header
from pipeline.observability.logs import get_logger, redact_text, register_secret
from pipeline.observability.metrics import ID, KIND, SOURCE, TYPE, WORKSPACE_ID
from pipeline.observability.telemetry import Telemetry, get_telemetry
from pipeline.redaction.gate import GateRejected, gated_event_bytes, redact_tree
from pipeline.sources.webhook.access_log import install_access_log_filter
from pipeline.sources.webhook.admission import (
    Address,
    SecretChecker,
    authenticate,
    client_address,
    in_any,
    read_capped,
    response,
)
from pipeline.sources.webhook.config import SourceConfig, WebhookConfig
from pipeline.sources.webhook.connections import ConnectionGuard
from pipeline.sources.webhook.dedup import SeenWindow, body_digest
from pipeline.sources.webhook.group_commit import GroupCommitter
from pipeline.sources.webhook.kind import WebhookKind, webhook_kind
from pipeline.sources.webhook.listener import drop_server_header, fixed_http_errors, listen
from pipeline.sources.webhook.readiness import Readiness
from schemas import deadletter
from schemas.event import WorkspaceRef

log = get_logger("webhook")


# ------------------------------------------------------------------------------------ receiver
BUS_RECHECK_SECS = 1.0
"""While the ``webhook_bus`` health check fails, how often the receiver's readiness is checked again."""
MAX_LETTER_BODY = 256 * 1024
"""Largest body kept in a dead letter (larger ones are recorded without it: a dead letter must fit
the topic's message size, or the whole group commit would fail)."""


@dataclass
class _Source:
    name: str
    path: str
    cfg: SourceConfig
    checker: SecretChecker
    kind: WebhookKind
    policy: Any
    workspace: WorkspaceRef
    matches: list[int]


class WebhookReceiver:
    """The webhook HTTP server (see the module docstring).

    Use ``await start()`` / ``await stop()`` for a real listener, or :meth:`make_app` with
    aiohttp's test utilities (the app's startup/cleanup open and close the bus side).

    Attributes:
        rejections: refused requests by reason (``missing_secret``, ``wrong_secret``, ...).
        accepted: deliveries published; ``duplicates``: deliveries recognised as already published.
    """

    def __init__(
        self,
        config: WebhookConfig,
        bus: Bus,
        *,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ):
        self.config = config
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.health = health if health is not None else get_health()
        self.bus = bus
        self.clock = clock
        install_access_log_filter()
        self.rejections: collections.Counter[str] = collections.Counter()
        self.accepted = 0
        self.duplicates = 0
        self._legacy_until: dict[str, float] = {}
        """Per source, until when the window may hold raw-body digests of an older release (see
        :meth:`_seen_by_older_release`)."""
        self._sources: dict[str, _Source] = {}
        for name, src in config.sources.items():
            for s in src.secrets:
                register_secret(s.get_secret_value())
            path = config.source_path(name)
            self._sources[path] = _Source(
                name,
                path,
                src,
                SecretChecker(src.secrets),
                kind := webhook_kind(src.kind),
                kind.policy(src.options),
                WorkspaceRef(src.workspace_id, src.workspace_name),
                [0] * len(src.secrets),
            )
        self._allow = config.networks("allow_ips")
        self._trusted = config.networks("trusted_proxies") or ()
        self.windows = {
            name: SeenWindow(
                name, config.dedup.window_hours * 3600.0, config.dedup.max_entries, writer=config.writer_id
            )
            for name in config.sources
        }
        types = {s.name: s.kind.component_type for s in self._sources.values()}
        self.committer = GroupCommitter(
            bus,
            config.writer_id,
            self.windows,
            clock=clock,
            max_batch=config.max_batch,
            max_linger_secs=config.max_linger_secs,
            component_types=types,
            telemetry=self.telemetry,
        )
        self._runner: web.AppRunner | None = None
        self._opened = False
        self.readiness = Readiness(bus, self.committer, config.writer_id, clock)
        self._log_budget: dict[str, tuple[float, int]] = {}
        self._bus_recheck: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.guard: ConnectionGuard | None = None
        """The connection guard of the listener (after :meth:`start`)."""

    # ---- lifecycle --------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp application (routes + bus open/close on startup/cleanup)."""
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[fixed_http_errors])
        app.router.add_route("*", "/healthz", self._healthz)
        app.router.add_route("*", "/readyz", self._readyz)
        for src in self._sources.values():
            app.router.add_route("*", src.path, self._handler_for(src), expect_handler=self._expect_for(src))
        app.router.add_route("*", "/{tail:.*}", self._not_found, expect_handler=self._expect_for(None))
        app.on_response_prepare.append(drop_server_header)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)  # after in-flight requests finished
        return app

    def _handler_for(self, src: _Source) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._delivery(request, src)

        return handler

    def _expect_for(self, src: _Source | None) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
        async def expect(request: web.Request) -> web.StreamResponse | None:
            return await self._expect(request, src)

        return expect

    async def _on_startup(self, _app: web.Application) -> None:
        await self.open()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.close()

    async def open(self) -> None:
        """Claim the writer id, load the dedup windows from bus state and start the committer."""
        if self._opened:
            return
        await self.bus.fence(self.config.writer_id)
        await self.committer.load_windows()
        now = self.clock.now()
        self._legacy_until = {name: now + w.window_secs for name, w in self.windows.items() if w.unscoped}
        self.committer.start()
        self._opened = True

    def _seen_by_older_release(self, source: str, body: bytes, digest: str) -> bool:
        """Whether a release up to 2026-11-27 published this delivery within the dedup window.

        Those keyed the window by the SHA-256 of the raw body, this one by that of the canonical
        JSON: a delivery the old process committed while stopping, which Instantly sends again to
        the new one (its 200 was lost), would otherwise be a second event with another id. Only
        entries loaded at open from keys without a writer id can be of that kind, so the check runs
        only when there were some, and ends one window after the open.
        """
        until = self._legacy_until.get(source)
        if until is None:
            return False
        now = self.clock.now()
        if now >= until:
            del self._legacy_until[source]
            return False
        raw = hashlib.sha256(body).digest()[:16]
        return raw != bytes.fromhex(digest)[:16] and self.windows[source].contains(raw, int(now))

    async def close(self) -> None:
        """Commit queued deliveries and stop the committer."""
        if self._bus_recheck is not None:
            self._bus_recheck.cancel()
            await asyncio.gather(self._bus_recheck, return_exceptions=True)
            self._bus_recheck = None
        self.health.remove_check("webhook_bus")
        await self.readiness.close()
        if self._opened:
            await self.committer.close()
            self._opened = False

    async def start(self) -> None:
        """Bind ``host:port`` and serve (TLS when configured)."""
        self._runner, site = await listen(self.make_app(), self.config)
        self.guard = site.guard
        self.port = site.port
        self.health.set_check("webhook", True, f"listening on {self.config.host}:{self.port}")
        log.info(
            "Webhook receiver listening",
            extra={
                "host": self.config.host,
                "port": self.port,
                "sources": sorted(s.name for s in self._sources.values()),
            },
        )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, commit what is queued."""
        if self._runner is not None:
            self.health.remove_check("webhook")
            await self._runner.cleanup()
            self._runner = None
            if self.guard is not None and self.guard.closed:
                log.info(
                    "Webhook connection guard totals",
                    extra={"closed": dict(self.guard.closed), "peak_connections": self.guard.peak},
                )
        await self.close()

    def rotate(self, source: str, values: Sequence[SecretStr]) -> None:
        """Replace a source's live secrets (1 or 2) at once: add the new one, then retire the old.

        Raises:
            KeyError: no such source.
            ValueError: not 1 or 2 distinct secrets.
        """
        src = next((s for s in self._sources.values() if s.name == source), None)
        if src is None:
            raise KeyError(source)
        raw = [v.get_secret_value() for v in values]
        if not 1 <= len(raw) <= 2 or len(set(raw)) != len(raw) or not all(raw):
            raise ValueError("a source needs 1 or 2 distinct, non-empty secrets")
        for v in raw:
            register_secret(v)
        src.checker = SecretChecker(values)
        src.matches = [0] * len(values)
        log.info("Webhook secrets replaced", extra={"source": source, "live_secrets": len(values)})

    def secret_matches(self, source: str) -> list[int]:
        """Accepted requests per live secret slot of ``source`` since the last rotation."""
        return next(list(s.matches) for s in self._sources.values() if s.name == source)

    # ---- health -----------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, None, WebhookRejected(405, "method_not_allowed", "use GET"))
        if self._opened and not self.committer.running:
            return web.Response(status=500, body=b'{"status":"committer stopped"}', content_type="application/json")
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, None, WebhookRejected(405, "method_not_allowed", "use GET"))
        ok = await self.ready()
        body = b'{"status":"ready"}' if ok else b'{"status":"bus unavailable"}'
        return web.Response(status=200 if ok else 503, body=body, content_type="application/json")

    async def ready(self) -> bool:
        """True when the bus took a commit within the last seconds, or a heartbeat write succeeds now."""
        return self._opened and await self.readiness.check()

    # ---- deliveries -------------------------------------------------------------------------
    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return self._reject(request, None, WebhookRejected(404, "not_found", "no such path"))

    async def _delivery(self, request: web.Request, src: _Source) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await self._handle(request, src, started)
        except WebhookRejected as rej:
            return self._reject(request, src, rej)
        except Exception as err:  # noqa: BLE001 - never leak a traceback (it could quote the request)
            log.error("Webhook handler failed", extra={"source": src.name, "error": type(err).__name__})
            self.rejections["internal_error"] += 1
            self.telemetry.webhook_rejections(src.name, "internal_error")
            return response(500, force_close=True)

    async def _handle(self, request: web.Request, src: _Source, started: float) -> web.StreamResponse:
        slot = self._admit(request, src)
        try:
            async with asyncio.timeout(self.config.body_timeout_secs):
                body = await read_capped(request, self.config.max_body_bytes)
        except TimeoutError:
            raise WebhookRejected(408, "body_timeout", "the body did not arrive in time") from None
        if self.committer.pending >= self.config.max_pending:
            raise WebhookRejected(503, "overloaded", "too many deliveries waiting for the bus")
        digest = body_digest(body)
        try:
            event = src.kind.normalize(
                body,
                source_name=src.name,
                workspace=src.workspace,
                digest=digest,
                observed_at=format_time(self.clock.now()),
                policy=src.policy,
            )
            value = gated_event_bytes(event)
        except (RecursionError, orjson.JSONDecodeError, orjson.JSONEncodeError):
            # nesting deeper than the parser (1024), the encoder (255) or Python's stack allows
            rej = WebhookRejected(400, "too_deep", "the body is nested too deeply")
            return await self._dead_letter(src, body, digest, rej, slot)
        except WebhookRejected as rej:
            if rej.status != 400:
                raise
            return await self._dead_letter(src, body, digest, rej, slot)
        tel = self.telemetry
        labels = ("webhook", src.kind.component_type, src.name, src.workspace.id)
        attrs = {
            KIND: "webhook",
            TYPE: src.kind.component_type,
            ID: src.name,
            SOURCE: src.name,
            WORKSPACE_ID: src.workspace.id,
        }
        arrived = self.clock.now() - (time.perf_counter() - started)
        with tel.span("webhook.delivery", attrs, kind=SpanKind.SERVER):
            if self._legacy_until and self._seen_by_older_release(src.name, body, digest):
                published = False
            else:
                fut = self.committer.submit(
                    src.name,
                    bytes.fromhex(digest)[:16],
                    value,
                    src.workspace.id.encode(),
                    (
                        ("event_type", event.type.encode()),
                        ("event_id", event.id.encode()),
                        source_time_header(arrived),
                        *tel.trace_headers(),
                    ),
                )
                published = await self._confirmed(fut)
        src.matches[slot] += 1
        tel.records_received(*labels)
        if published:
            self.accepted += 1
            tel.latency("source_to_bus", src.name, (time.perf_counter() - started,))
        else:
            self.duplicates += 1
            tel.records_dropped(*labels, reason="duplicate")
        log.debug(
            "Webhook delivery acknowledged",
            extra={
                "source": src.name,
                "event_type": event.type,
                "event_id": event.id,
                "duplicate": not published,
                "secret_slot": slot,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        body_out = orjson.dumps({"status": "accepted" if published else "duplicate", "id": event.id})
        return web.Response(body=body_out, content_type="application/json")

    def _admit(self, request: web.Request, src: _Source) -> int:
        """The checks that need no body (1-5 of the module docstring): the secret slot that matched.

        Raises:
            WebhookRejected: the first check that failed.
        """
        if request.method != "POST":
            raise WebhookRejected(405, "method_not_allowed", "only POST is accepted")
        # No Content-Type check: Instantly documents none, and a 4xx makes it retry, then disable the
        # webhook. An authenticated body is parsed as JSON whatever it says; one that is not JSON is
        # a dead letter (200), as any other invalid body.
        codings = ",".join(request.headers.getall("Content-Encoding", [])).split(",")
        if any(c.strip().lower() not in ("", "identity") for c in codings):  # every header, every list item
            raise WebhookRejected(415, "unsupported_media_type", "compressed bodies are not accepted")
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise WebhookRejected(413, "body_too_large", "declared Content-Length above the limit")
        if self._allow is not None:
            ip = self._client(request)
            if ip is None or not in_any(ip, self._allow):
                raise WebhookRejected(403, "ip_not_allowed", "client address not in allow_ips")
        return authenticate(request.headers.getall(src.cfg.header_name, []), src.checker)

    async def _expect(self, request: web.Request, src: _Source | None) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the checks that need no body run first, and a refusal is the
        final answer instead of ``100 Continue`` (RFC 9110 §10.1.1); an unknown expectation is 417."""
        if request.version < (1, 1):
            return None  # an HTTP/1.0 client expects nothing
        try:
            if request.headers.get("Expect", "").strip().lower() != "100-continue":
                raise WebhookRejected(417, "expectation_failed", "only 100-continue is understood")
            if src is None:
                raise WebhookRejected(404, "not_found", "no such path")
            self._admit(request, src)
        except WebhookRejected as rej:
            return self._reject(request, src, rej)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the final answer is still to come
        return None

    async def _confirmed(self, fut: asyncio.Future[bool]) -> bool:
        """Wait for the group commit holding a delivery: True published, False a duplicate.

        Raises:
            WebhookRejected: 503 when the bus refused it or did not confirm within ``ack_timeout_secs``.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.config.ack_timeout_secs)
        except TimeoutError:
            self._bus_failed(f"the bus did not confirm a delivery within {self.config.ack_timeout_secs:g}s")
            raise WebhookRejected(503, "bus_timeout", "the bus did not confirm in time") from None
        except BusError as err:
            self._bus_failed(f"the bus refused a delivery ({type(err).__name__})")
            raise WebhookRejected(503, "bus_unavailable", "the bus refused the delivery") from None

    def _bus_failed(self, reason: str) -> None:
        """Fail the ``webhook_bus`` health check until :meth:`ready` holds again (checked every
        :data:`BUS_RECHECK_SECS`: a pod taken out of the service gets no delivery to commit)."""
        self.health.set_check("webhook_bus", False, reason)
        if self._bus_recheck is None or self._bus_recheck.done():
            self._bus_recheck = asyncio.get_running_loop().create_task(self._recheck_bus())

    async def _recheck_bus(self) -> None:
        while True:
            await asyncio.sleep(BUS_RECHECK_SECS)
            if await self.ready():
                self.health.set_check("webhook_bus", True, "the bus takes commits again")
                return

    async def _dead_letter(
        self, src: _Source, body: bytes, digest: str, rej: WebhookRejected, slot: int
    ) -> web.StreamResponse:
        """An authenticated body that is no valid delivery (malformed JSON, a wrong shape, another
        workspace, too deep): no retry of Instantly's can fix it, so it is stored in the dead-letter
        topic (redacted; not kept above :data:`MAX_LETTER_BODY` bytes) and answered 200
        ``dead_lettered`` — a 4xx would only make Instantly retry and then disable the webhook.

        Raises:
            WebhookRejected: 503 when the bus did not take the dead letter.
        """
        letter = delivery_letter(src.name, src.kind, src.workspace, body, rej, format_time(self.clock.now()))
        fut = self.committer.submit(
            src.name, bytes.fromhex(digest)[:16], letter.to_json(), src.workspace.id.encode(),
            (("stage", b"source"), ("reason", rej.reason.encode())), topic=DEADLETTER_TOPIC,
        )  # fmt: skip
        published = await self._confirmed(fut)
        src.matches[slot] += 1
        self.rejections[rej.reason] += 1
        self.telemetry.webhook_rejections(src.name, rej.reason)
        if published:
            self.telemetry.dead_letters("webhook", src.kind.component_type, src.name, src.workspace.id)
            log.warning("Webhook delivery dead-lettered", extra={"source": src.name, "reason": rej.reason,
                                                                 "dead_letter_id": letter.id})  # fmt: skip
        body_out = orjson.dumps({"status": "dead_lettered" if published else "duplicate", "id": letter.id})
        return web.Response(body=body_out, content_type="application/json")

    def _client(self, request: web.Request) -> Address | None:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        host = peer[0] if isinstance(peer, tuple | list) and peer else None
        xff = request.headers.getall("X-Forwarded-For", []) if self._trusted else []
        return client_address(host, xff, self._trusted)

    def _reject(self, request: web.Request, src: _Source | None, rej: WebhookRejected) -> web.StreamResponse:
        self.rejections[rej.reason] += 1
        self.telemetry.webhook_rejections(src.name if src else "", rej.reason)
        if self._may_log(rej.reason):
            ip = self._client(request)
            log.warning(
                "Webhook delivery rejected",
                extra={
                    "source": src.name if src else None,
                    "status": rej.status,
                    "reason": rej.reason,
                    "detail": rej.message,
                    "method": request.method,
                    "path": redact_text(request.path)[:200],  # redact first: a cut secret is not found
                    "remote": str(ip) if ip else None,
                    "count": self.rejections[rej.reason],
                },
            )
        headers = {"Retry-After": str(self.config.retry_after_secs)} if rej.status == 503 else None
        if rej.status == 405:
            headers = {"Allow": "GET, HEAD" if src is None else "POST"}
        return response(rej.status, headers=headers, force_close=rej.status != 503, rejected=rej)

    def _may_log(self, reason: str, per_window: int = 20, window_secs: float = 10.0) -> bool:
        """At most ``per_window`` log lines per reason per window (a public endpoint can be flooded)."""
        now = self.clock.monotonic()
        start, n = self._log_budget.get(reason, (now, 0))
        if now - start >= window_secs:
            start, n = now, 0
        self._log_budget[reason] = (start, n + 1)
        return n < per_window


def redacted_body(body: bytes) -> bytes:
    """``body`` as a dead letter may keep it.

    A JSON body is parsed and takes the publish gate's passes on its tree
    (:func:`pipeline.redaction.gate.redact_tree`: a secret-named field loses its whole value, as in
    an event), then is serialised again; only a body that is not JSON (or that the gate refuses as
    too deep) falls back to the text redaction, which sees assignments and shapes, not field names.
    """
    try:
        return orjson.dumps(redact_tree(orjson.loads(body)))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, GateRejected, RecursionError):
        return redact_text(body.decode("utf-8", "replace")).encode()


def delivery_letter(
    source: str, kind: WebhookKind, workspace: WorkspaceRef, body: bytes, rej: WebhookRejected, failed_at: str
) -> deadletter.DeadLetter:
    """The dead letter of an authenticated body that is no valid delivery of ``source``: the body
    redacted (not kept above :data:`MAX_LETTER_BODY` bytes), the reason, never a header."""
    kept = redacted_body(body) if len(body) <= MAX_LETTER_BODY else None
    return deadletter.build(
        stage="source", component=source, component_type=kind.component_type, reason=rej.reason,
        error=f"{rej.reason}: {rej}" + ("" if kept is not None else f" (body of {len(body):,} bytes not kept)"),
        failed_at=failed_at, value=kept, stream=f"webhook_{source}", key=workspace.id.encode(),
    )  # fmt: skip


def summary(receiver: WebhookReceiver) -> dict[str, Any]:
    """Counters for logs and tests."""
    return {
        "accepted": receiver.accepted,
        "duplicates": receiver.duplicates,
        "rejections": dict(receiver.rejections),
        "transactions": receiver.committer.transactions,
        "largest_batch": receiver.committer.largest_batch,
    }
