"""The Instantly webhook receiver: check, normalize, commit to the bus, and only then answer 200.

Instantly does not sign deliveries; the only authentication is a secret custom header set on
the webhook (``reference/instantly-api.md`` §7). Each request goes through these checks, in
order, and the first failure answers (``receiver.rejections[reason]`` counts it; the log line
names the reason, the path and the peer, never a header value, the query or the body):

1. method and path → 405 / 404
2. ``Content-Type: application/json`` (charset utf-8 if given) → 415
3. declared ``Content-Length`` above ``max_body_bytes`` → 413 before any byte of the body is read
4. IP allowlist (``X-Forwarded-For`` honoured only from ``trusted_proxies``) → 403
5. exactly one secret header, compared in constant time (HMAC-SHA256 of both sides with a
   per-process key, then :func:`hmac.compare_digest`) against every live secret without an
   early exit → 401; missing, duplicated, wrong or over-long all get the same 401 body. A secret
   in the query string is never looked at.
6. body read with a streaming cap (chunked bodies) → 413, within ``body_timeout_secs`` → 408;
   JSON object with ``event_type``, ``timestamp``, ``workspace`` (this source's workspace) → 400
7. normalize to Event v1 and hand it to the group committer → 200 once the bus transaction that
   holds it committed; 503 with ``Retry-After`` if the bus failed or did not confirm within
   ``ack_timeout_secs`` (Instantly retries; the retry is de-duplicated if the commit landed late),
   or at once when ``max_pending`` deliveries already wait for the bus.

Duplicates: the body's SHA-256 is the idempotency key. Each source keeps a window of seen keys
in bus state (``webhook/seen/<source>/<slot>``, hash-sharded so a commit rewrites only the
slots it touches) written in the *same* transaction as the events, so a crash can neither lose
an acknowledged delivery nor publish a retried one twice; the event id is also derived from
the body hash, so sinks de-duplicate whatever the window forgot.

Group commit: concurrent deliveries are batched into one bus transaction (up to
``max_batch``); each request is answered only after its batch committed. One receiver process
per ``writer_id`` (Kafka fences a second one).

``/healthz`` answers 200 while the server and its committer run; ``/readyz`` 200 when the bus
committed recently or a heartbeat state write succeeds now.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from pipeline.bus.base import EVENTS_TOPIC, Bus
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time
from pipeline.errors import BusError, PipelineError, WebhookRejected
from pipeline.observability.health import get_health
from pipeline.observability.logs import get_logger, register_secret
from pipeline.observability.metrics import ID, KIND, SOURCE, TYPE, WORKSPACE
from pipeline.observability.telemetry import get_telemetry
from pipeline.redaction.gate import gated_event_bytes
from pipeline.sources.webhook_config import SourceConfig, WebhookConfig
from pipeline.sources.webhook_kind import WebhookKind, webhook_kind
from schemas.event import WorkspaceRef

log = get_logger("webhook")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SEEN_PREFIX = "webhook/seen/"
HEARTBEAT_PREFIX = "webhook/heartbeat/"
SEEN_SLOTS = 2048
"""Hash shards of a source's dedup window; a commit rewrites only the shards it touches."""
_SEEN_VERSION = 1
_ENTRY = struct.Struct(">16sI")
MAX_SECRET_HEADER_BYTES = 4096
MAX_BATCH_BYTES = 4 * 1024 * 1024
READY_FRESH_SECS = 5.0
READY_PROBE_TIMEOUT_SECS = 2.0

_BODIES = {
    400: b'{"error":"bad request"}',
    408: b'{"error":"request timeout"}',
    401: b'{"error":"unauthorized"}',
    403: b'{"error":"forbidden"}',
    404: b'{"error":"not found"}',
    405: b'{"error":"method not allowed"}',
    413: b'{"error":"payload too large"}',
    415: b'{"error":"unsupported media type"}',
    500: b'{"error":"internal error"}',
    503: b'{"error":"unavailable, retry later"}',
}


# ----------------------------------------------------------------------------------- logging
_QUERY = re.compile(r"(\"?[A-Z]+ [^\s?\"]*)\?[^\s\"]*")


class QueryRedactingFilter(logging.Filter):
    """Strip query strings from aiohttp access-log lines (a secret put in a URL must not reach logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message and the ``first_request_line`` field."""
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the line
            msg = str(record.msg)
        record.msg = _QUERY.sub(r"\1?<redacted>", msg)
        record.args = None
        line = getattr(record, "first_request_line", None)
        if isinstance(line, str):
            record.first_request_line = _QUERY.sub(r"\1?<redacted>", line)
        return True


_ACCESS_FILTER = QueryRedactingFilter()


def install_access_log_filter() -> None:
    """Add :class:`QueryRedactingFilter` to the ``aiohttp.access`` logger (idempotent)."""
    logger = logging.getLogger("aiohttp.access")
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)


# ------------------------------------------------------------------------------- client address
def _parse_ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]" or "[v6]:port"
        text = text[1 : text.index("]")]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _in_any(ip: Address, nets: Iterable[Network]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> Address | None:
    """The client's address: the TCP peer, or — only when the peer is a trusted proxy — the
    right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy. ``None`` if unknown
    or malformed (an allowlist then refuses the request)."""
    addr = _parse_ip(peer) if peer else None
    if addr is None or not trusted or not _in_any(addr, trusted):
        return addr
    hops = [h for value in forwarded_for for h in value.split(",")]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            return None
        if not _in_any(ip, trusted):
            return ip
        addr = ip
    return addr


# ------------------------------------------------------------------------------------ secrets
class SecretChecker:
    """Constant-time check of a header value against a source's live secrets (1 or 2).

    Both sides are reduced to HMAC-SHA256 digests under a random per-process key before
    :func:`hmac.compare_digest`, so neither content nor length leaks through timing, and every
    live secret is compared (no early exit).
    """

    def __init__(self, values: Sequence[SecretStr]):
        self._key = secrets.token_bytes(32)
        self._digests = [self._mac(s.get_secret_value().encode()) for s in values]

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def match(self, received: bytes) -> int | None:
        """The index of the matching secret, or ``None``."""
        mac = self._mac(received)
        found: int | None = None
        for i, digest in enumerate(self._digests):
            if hmac.compare_digest(mac, digest) and found is None:
                found = i
        return found


# --------------------------------------------------------------------------------- dedup window
class SeenWindow:
    """The recently published body hashes of one source (bounded by age and count).

    Stored as :data:`SEEN_SLOTS` state keys ``webhook/seen/<source>/<slot>``; each holds up to
    ``ceil(max_entries / SEEN_SLOTS)`` entries of (16-byte hash prefix, epoch seconds), oldest first.
    """

    def __init__(self, source: str, window_secs: float, max_entries: int):
        self.source = source
        self.window_secs = window_secs
        self.slot_cap = max(1, -(-max_entries // SEEN_SLOTS))
        self.slots: dict[int, dict[bytes, int]] = {}

    @property
    def prefix(self) -> str:
        """The state key prefix of this source."""
        return f"{SEEN_PREFIX}{self.source}/"

    def key(self, slot: int) -> str:
        """The state key of ``slot``."""
        return f"{self.prefix}{slot:03x}"

    @staticmethod
    def slot_of(h: bytes) -> int:
        """The shard a hash belongs to."""
        return int.from_bytes(h[:4], "big") % SEEN_SLOTS

    def __len__(self) -> int:
        return sum(len(s) for s in self.slots.values())

    def contains(self, h: bytes, now: int) -> bool:
        """Whether ``h`` was published within the window."""
        ts = self.slots.get(self.slot_of(h), {}).get(h)
        return ts is not None and now - ts < self.window_secs

    def staged(
        self, slot: int, added: Iterable[bytes], now: int, base: Mapping[bytes, int] | None = None
    ) -> dict[bytes, int]:
        """The new content of ``slot`` with ``added`` (evicting expired, then the oldest over the cap)."""
        d = {
            h: ts
            for h, ts in (base if base is not None else self.slots.get(slot, {})).items()
            if now - ts < self.window_secs
        }
        for h in added:
            d.pop(h, None)
            d[h] = now
        while len(d) > self.slot_cap:
            d.pop(next(iter(d)))
        return d

    @staticmethod
    def encode(content: Mapping[bytes, int]) -> bytes:
        """The state value of a slot."""
        return bytes([_SEEN_VERSION]) + b"".join(_ENTRY.pack(h, ts & 0xFFFFFFFF) for h, ts in content.items())

    @staticmethod
    def decode(data: bytes) -> dict[bytes, int]:
        """Inverse of :meth:`encode`; unreadable values decode as empty."""
        if not data or data[0] != _SEEN_VERSION or (len(data) - 1) % _ENTRY.size:
            return {}
        return dict(_ENTRY.iter_unpack(data[1:]))

    def load(self, items: Mapping[str, bytes]) -> None:
        """Fill from state entries (any slot layout: entries are re-sharded by hash)."""
        self.slots = {}
        for value in items.values():
            for h, ts in self.decode(value).items():
                self.slots.setdefault(self.slot_of(h), {})[h] = ts


# -------------------------------------------------------------------------------- group commit
@dataclass(eq=False)
class _Pending:
    source: str
    digest: bytes
    value: bytes
    key: bytes
    headers: tuple[tuple[str, bytes], ...]
    future: asyncio.Future[bool] = field(repr=False)


class GroupCommitter:
    """Batches concurrent deliveries into one bus transaction each, de-duplicating by body hash.

    ``submit`` returns a future that resolves to True (published), False (duplicate: already
    published, or identical to another delivery of the same batch) or raises :class:`BusError`.
    Batches run one at a time, so the dedup window is always current when a batch is formed.
    """

    def __init__(
        self,
        bus: Bus,
        writer_id: str,
        windows: Mapping[str, SeenWindow],
        *,
        clock: Clock,
        max_batch: int,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        component_types: Mapping[str, str] | None = None,
    ):
        self.bus = bus
        self.component_types = dict(component_types or {})
        self.writer_id = writer_id
        self.windows = windows
        self.clock = clock
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.transactions = 0
        """Committed bus transactions."""
        self.largest_batch = 0
        self.last_success: float | None = None
        """Monotonic time of the last committed transaction."""
        self.last_failure: float | None = None

    @property
    def pending(self) -> int:
        """Deliveries queued for the next transactions."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether the commit loop is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the commit loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook-commit:{self.writer_id}")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        err = BusError("the webhook receiver is shutting down", retriable=True)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(err)

    def submit(
        self, source: str, digest: bytes, value: bytes, key: bytes, headers: tuple[tuple[str, bytes], ...]
    ) -> asyncio.Future[bool]:
        """Queue one delivery."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        if self._closing or not self.running:
            fut.set_exception(BusError("the webhook receiver is not accepting deliveries", retriable=True))
            return fut
        self._queue.append(_Pending(source, digest, value, key, headers, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < self.max_batch:
                nxt = self._queue[0]
                if batch and size + len(nxt.value) > self.max_batch_bytes:
                    break
                batch.append(self._queue.popleft())
                size += len(nxt.value)
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        now = int(self.clock.now())
        publish: list[_Pending] = []
        followers: list[_Pending] = []
        first: set[tuple[str, bytes]] = set()
        for p in batch:
            k = (p.source, p.digest)
            if k in first:
                followers.append(p)
            elif self.windows[p.source].contains(p.digest, now):
                _resolve(p.future, False)
            else:
                first.add(k)
                publish.append(p)
        if not publish:
            return
        tel = get_telemetry()
        links = tel.links(p.headers for p in publish)
        added: dict[tuple[str, int], list[bytes]] = collections.defaultdict(list)
        for p in publish:
            added[(p.source, SeenWindow.slot_of(p.digest))].append(p.digest)
        staged = {k: self.windows[k[0]].staged(k[1], hs, now) for k, hs in added.items()}
        try:
            with tel.span("bus.publish", {KIND: "webhook", "batch.size": len(publish)}, links=links):
                async with self.bus.transaction(self.writer_id) as tx:
                    for p in publish:
                        tx.send(EVENTS_TOPIC, p.value, key=p.key, headers=p.headers)
                    for (src, slot), content in staged.items():
                        tx.put_state(self.windows[src].key(slot), SeenWindow.encode(content))
        except asyncio.CancelledError:
            err = BusError("the webhook receiver stopped during a commit", retriable=True)
            for p in (*publish, *followers):
                _fail(p.future, err)
            raise
        except Exception as exc:  # noqa: BLE001 - any bus failure must become a 503, never a lost 200
            err = exc if isinstance(exc, BusError) else BusError(f"commit failed: {type(exc).__name__}", retriable=True)
            tel.bus_errors("publish", type(exc).__name__)
            self.last_failure = self.clock.monotonic()
            log.error(
                "Webhook batch not committed; answering 503",
                extra={"deliveries": len(publish), "error": f"{type(exc).__name__}: {exc}"},
            )
            for p in (*publish, *followers):
                _fail(p.future, err)
            return
        for (src, slot), content in staged.items():
            self.windows[src].slots[slot] = content
        self.transactions += 1
        self.largest_batch = max(self.largest_batch, len(publish))
        self.last_success = self.clock.monotonic()
        for p in publish:
            _resolve(p.future, True)
        for p in followers:
            _resolve(p.future, False)
        for (source, key), n in collections.Counter((p.source, p.key) for p in publish).items():
            tel.records_published("webhook", self.component_types.get(source, "webhook"), source, key.decode(), n)


def _consume_exception(fut: asyncio.Future[bool]) -> None:
    if not fut.cancelled():
        fut.exception()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[bool], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


# ------------------------------------------------------------------------------------ receiver
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

    def __init__(self, config: WebhookConfig, bus: Bus, *, clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.bus = bus
        self.clock = clock
        install_access_log_filter()
        self.rejections: collections.Counter[str] = collections.Counter()
        self.accepted = 0
        self.duplicates = 0
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
            name: SeenWindow(name, config.dedup.window_hours * 3600.0, config.dedup.max_entries)
            for name in config.sources
        }
        types = {s.name: s.kind.component_type for s in self._sources.values()}
        self.committer = GroupCommitter(
            bus, config.writer_id, self.windows, clock=clock, max_batch=config.max_batch, component_types=types
        )
        self._runner: web.AppRunner | None = None
        self._opened = False
        self._probe: asyncio.Task[bool] | None = None
        self._log_budget: dict[str, tuple[float, int]] = {}
        self.port: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        """The aiohttp application (routes + bus open/close on startup/cleanup)."""
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("*", "/healthz", self._healthz)
        app.router.add_route("*", "/readyz", self._readyz)
        for src in self._sources.values():
            app.router.add_route("*", src.path, self._handler_for(src))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)  # after in-flight requests finished
        return app

    def _handler_for(self, src: _Source) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._delivery(request, src)

        return handler

    async def _on_startup(self, _app: web.Application) -> None:
        await self.open()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.close()

    async def open(self) -> None:
        """Claim the writer id, load the dedup windows from bus state and start the committer."""
        if self._opened:
            return
        await self.bus.fence(self.config.writer_id)
        for name, window in self.windows.items():
            window.load(await self.bus.state_items(window.prefix))
            log.info("Webhook dedup window loaded", extra={"source": name, "entries": len(window)})
        self.committer.start()
        self._opened = True

    async def close(self) -> None:
        """Commit queued deliveries and stop the committer."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        if self._opened:
            await self.committer.close()
            self._opened = False

    async def start(self) -> None:
        """Bind ``host:port`` and serve (TLS when configured)."""
        app = self.make_app()
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.config.shutdown_timeout_secs
        )
        await self._runner.setup()
        ctx: ssl.SSLContext | None = None
        if self.config.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.config.tls.certfile), str(self.config.tls.keyfile))
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=ctx, backlog=1024)
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            self._runner = None
            where = f"{self.config.host}:{self.config.port}"
            raise PipelineError(f"webhook receiver cannot listen on {where}: {err.strerror}", retriable=True) from None
        addrs = self._runner.addresses
        self.port = int(addrs[0][1]) if addrs else self.config.port
        get_health().set_check("webhook", True, f"listening on {self.config.host}:{self.port}")
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
            get_health().remove_check("webhook")
            await self._runner.cleanup()
            self._runner = None
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
        if not self._opened or not self.committer.running:
            return False
        c = self.committer
        now = self.clock.monotonic()
        if (
            c.last_success is not None
            and now - c.last_success < READY_FRESH_SECS
            and (c.last_failure is None or c.last_failure < c.last_success)
        ):
            return True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            return await asyncio.wait_for(asyncio.shield(self._probe), READY_PROBE_TIMEOUT_SECS)
        except TimeoutError:
            return False

    async def _heartbeat(self) -> bool:
        try:
            async with self.bus.transaction(self.config.writer_id) as tx:
                tx.put_state(f"{HEARTBEAT_PREFIX}{self.config.writer_id}", format_time(self.clock.now()).encode())
        except Exception as err:  # noqa: BLE001 - readiness reports any bus failure as "not ready"
            self.committer.last_failure = self.clock.monotonic()
            log.warning("Webhook readiness probe failed", extra={"error": type(err).__name__})
            return False
        self.committer.last_success = self.clock.monotonic()
        return True

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
            get_telemetry().webhook_rejections(src.name, "internal_error")
            return _response(500, force_close=True)

    async def _handle(self, request: web.Request, src: _Source, started: float) -> web.StreamResponse:
        if request.method != "POST":
            raise WebhookRejected(405, "method_not_allowed", "only POST is accepted")
        if request.content_type != "application/json" or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            raise WebhookRejected(415, "unsupported_media_type", "Content-Type must be application/json")
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise WebhookRejected(415, "unsupported_media_type", "compressed bodies are not accepted")
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise WebhookRejected(413, "body_too_large", "declared Content-Length above the limit")
        if self._allow is not None:
            ip = self._client(request)
            if ip is None or not _in_any(ip, self._allow):
                raise WebhookRejected(403, "ip_not_allowed", "client address not in allow_ips")
        slot = self._authenticate(request, src)
        try:
            async with asyncio.timeout(self.config.body_timeout_secs):
                body = await _read_capped(request, limit)
        except TimeoutError:
            raise WebhookRejected(408, "body_timeout", "the body did not arrive in time") from None
        if self.committer.pending >= self.config.max_pending:
            raise WebhookRejected(503, "overloaded", "too many deliveries waiting for the bus")
        digest = hashlib.sha256(body).hexdigest()
        event = src.kind.normalize(
            body,
            source_name=src.name,
            workspace=src.workspace,
            digest=digest,
            observed_at=format_time(self.clock.now()),
            policy=src.policy,
        )
        value = gated_event_bytes(event)
        tel = get_telemetry()
        labels = ("webhook", src.kind.component_type, src.name, src.workspace.id)
        attrs = {
            KIND: "webhook",
            TYPE: src.kind.component_type,
            ID: src.name,
            SOURCE: src.name,
            WORKSPACE: src.workspace.id,
        }
        with tel.span("webhook.delivery", attrs, kind=SpanKind.SERVER):
            fut = self.committer.submit(
                src.name,
                bytes.fromhex(digest)[:16],
                value,
                src.workspace.id.encode(),
                (("event_type", event.type.encode()), ("event_id", event.id.encode()), *tel.trace_headers()),
            )
            try:
                published = await asyncio.wait_for(asyncio.shield(fut), self.config.ack_timeout_secs)
            except TimeoutError:
                raise WebhookRejected(503, "bus_timeout", "the bus did not confirm in time") from None
            except BusError:
                raise WebhookRejected(503, "bus_unavailable", "the bus refused the delivery") from None
        src.matches[slot] += 1
        tel.records_received(*labels)
        if published:
            self.accepted += 1
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

    def _client(self, request: web.Request) -> Address | None:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        host = peer[0] if isinstance(peer, tuple | list) and peer else None
        xff = request.headers.getall("X-Forwarded-For", []) if self._trusted else []
        return client_address(host, xff, self._trusted)

    def _authenticate(self, request: web.Request, src: _Source) -> int:
        values = request.headers.getall(src.cfg.header_name, [])
        if not values:
            raise WebhookRejected(401, "missing_secret", "no secret header")
        if len(values) > 1:
            raise WebhookRejected(401, "duplicate_secret_header", "the secret header was sent more than once")
        try:
            received = values[0].encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise WebhookRejected(401, "wrong_secret", "undecodable secret header") from None
        if len(received) > MAX_SECRET_HEADER_BYTES:
            raise WebhookRejected(401, "wrong_secret", "over-long secret header")
        slot = src.checker.match(received)
        if slot is None:
            raise WebhookRejected(401, "wrong_secret", "the secret header does not match")
        return slot

    def _reject(self, request: web.Request, src: _Source | None, rej: WebhookRejected) -> web.StreamResponse:
        self.rejections[rej.reason] += 1
        get_telemetry().webhook_rejections(src.name if src else "", rej.reason)
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
                    "path": request.path[:200],
                    "remote": str(ip) if ip else None,
                    "count": self.rejections[rej.reason],
                },
            )
        headers = {"Retry-After": str(self.config.retry_after_secs)} if rej.status == 503 else None
        if rej.status == 405:
            headers = {"Allow": "GET, HEAD" if src is None else "POST"}
        return _response(rej.status, headers=headers, force_close=rej.status != 503)

    def _may_log(self, reason: str, per_window: int = 20, window_secs: float = 10.0) -> bool:
        """At most ``per_window`` log lines per reason per window (a public endpoint can be flooded)."""
        now = self.clock.monotonic()
        start, n = self._log_budget.get(reason, (now, 0))
        if now - start >= window_secs:
            start, n = now, 0
        self._log_budget[reason] = (start, n + 1)
        return n < per_window


def _response(status: int, *, headers: Mapping[str, str] | None = None, force_close: bool = False) -> web.Response:
    body = _BODIES.get(status, b"{}")
    resp = web.Response(status=status, body=body, content_type="application/json", headers=headers)
    if force_close:
        resp.force_close()
    return resp


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise WebhookRejected(413, "body_too_large", "the body exceeded the limit while streaming")
        chunks.append(chunk)
    return b"".join(chunks)


def summary(receiver: WebhookReceiver) -> dict[str, Any]:
    """Counters for logs and tests."""
    return {
        "accepted": receiver.accepted,
        "duplicates": receiver.duplicates,
        "rejections": dict(receiver.rejections),
        "transactions": receiver.committer.transactions,
        "largest_batch": receiver.committer.largest_batch,
    }
