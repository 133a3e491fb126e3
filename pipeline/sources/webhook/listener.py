"""Binding the receiver: aiohttp's runner with its header limits and idle keep-alive timeout, a
TCP site whose connections pass through the :class:`~.connections.ConnectionGuard`, and TLS.

Each connection is served by :class:`ReceiverRequestHandler`: a request aiohttp's parser refuses
(a malformed line or header, bad chunking, bytes after a body it did not expect) is answered with
the fixed JSON body of its status and logged as one line naming the error class. aiohttp's own
handler answers a text page quoting the offending bytes (a secret header, the body) and logs the
exception, whose text quotes them too, at ERROR. No response carries aiohttp's ``Server`` header.

The connection cap is kept ``backlog`` + :data:`FD_RESERVE` below the process's file-descriptor
limit (``RLIMIT_NOFILE``), so the accept loop itself never runs out of descriptors (asyncio
would then log a traceback per attempt and real deliveries would time out).
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from pipeline.config.tls import tls_context
from pipeline.errors import PipelineError
from pipeline.observability.logs import get_logger
from pipeline.sources.webhook.admission import response
from pipeline.sources.webhook.config import WebhookConfig
from pipeline.sources.webhook.connections import ConnectionGuard

log = get_logger("webhook")

MAX_HEADER_LINE_BYTES = 8190
MAX_HEADERS = 64
FD_RESERVE = 64
"""Descriptors kept free below ``RLIMIT_NOFILE`` for the bus, the listener, logs and TLS files."""


def effective_cap(max_connections: int, backlog: int) -> int:
    """``max_connections``, lowered to fit the file-descriptor limit (never below 1).

    asyncio accepts up to ``backlog`` connections in one go before any of them reaches the
    guard, so that many descriptors must be free on top of the open connections and the reserve.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_RESERVE - backlog))


class UnbrandedResponse(web.Response):
    """A response without aiohttp's ``Server`` header (it is added while the headers are prepared)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


async def drop_server_header(_request: web.Request, resp: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: no response names the server software."""
    resp.headers.popall(hdrs.SERVER, None)


@web.middleware
async def fixed_http_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An error aiohttp's router raises (e.g. 404 for ``OPTIONS *`` or ``CONNECT host:port``, which
    match no path) answers the fixed JSON body of its status, not aiohttp's text page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return response(exc.status, force_close=True)


class ReceiverRequestHandler(RequestHandler):
    """aiohttp's connection handler, whose error answers never quote the request (module docstring)."""

    _log_window: tuple[float, int] = (0.0, 0)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The fixed JSON answer for ``status``; ``exc`` and ``message`` (which quote the request) unused.

        Raises:
            ConnectionError: part of a response was sent already (as aiohttp's own handler).
        """
        now = time.monotonic()
        start, n = ReceiverRequestHandler._log_window
        if now - start >= 10.0:
            start, n = now, 0
        ReceiverRequestHandler._log_window = (start, n + 1)
        if n < 20:  # a public endpoint can be flooded with garbage
            log.info("Webhook request refused by the HTTP parser", extra={"status": status,
                                                                          "error": type(exc).__name__})  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already, the error cannot be answered")
        fixed = response(status)
        resp = UnbrandedResponse(status=status, body=fixed.body, content_type="application/json")
        resp.force_close()
        return resp


def handler_factory(server: Server) -> Callable[[], RequestHandler]:
    """Makes a :class:`ReceiverRequestHandler` per connection with the runner's handler options
    (what ``server()`` does with ``RequestHandler``; aiohttp keeps those options in ``_kwargs``)."""
    options: dict[str, Any] = server._kwargs
    loop = asyncio.get_running_loop()
    return lambda: ReceiverRequestHandler(server, loop=loop, **options)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard` (else like ``web.TCPSite``)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        header_timeout_secs: float,
        backlog: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = (max_connections, header_timeout_secs)
        self.guard: ConnectionGuard | None = None
        self.port = port

    @property
    def name(self) -> str:
        """``http(s)://host:port``."""
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self.port}"

    async def start(self) -> None:
        """Listen; each accepted connection goes through the guard.

        Raises:
            OSError: the address cannot be bound.
        """
        await super().start()
        server = self._runner.server
        assert server is not None
        wanted, header_timeout = self._limits
        cap = effective_cap(wanted, self._backlog)
        if cap < wanted:
            log.warning(
                "Webhook max_connections lowered to fit the file-descriptor limit",
                extra={
                    "max_connections": wanted,
                    "effective": cap,
                    "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                },
            )
        self.guard = ConnectionGuard(handler_factory(server), max_connections=cap, header_timeout_secs=header_timeout)
        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = header_timeout  # the handshake comes before any header
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog, **extra
        )
        if self._server.sockets:
            self.port = int(self._server.sockets[0].getsockname()[1])


async def listen(app: web.Application, cfg: WebhookConfig) -> tuple[web.AppRunner, GuardedSite]:
    """Set up ``app`` and listen on ``cfg.host:cfg.port`` (TLS when configured) behind the guard.

    Raises:
        PipelineError: the address cannot be bound (retriable).
        ConfigError: a TLS file cannot be loaded (naming ``webhook.tls.<key>`` and the file).
    """
    # First: a TLS file error (naming webhook.tls.<key> and the file) leaves nothing set up.
    ctx: ssl.SSLContext | None = None
    if cfg.tls is not None:
        ctx = tls_context(
            "webhook.tls",
            purpose=ssl.Purpose.CLIENT_AUTH,
            cert=("certfile", cfg.tls.certfile),
            key=("keyfile", cfg.tls.keyfile),
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=cfg.shutdown_timeout_secs,
        keepalive_timeout=cfg.idle_timeout_secs,
        max_line_size=MAX_HEADER_LINE_BYTES,
        max_field_size=MAX_HEADER_LINE_BYTES,
        max_headers=MAX_HEADERS,
        # A refused request's unread body is not drained: the connection closes right after the
        # answer (aiohttp would otherwise read it for up to 10 s, holding a connection slot).
        lingering_time=0,
        # Never decode a body: a Content-Encoding other than identity is refused (415) anyway, and a
        # discarded compressed body would otherwise be decompressed while it is drained.
        auto_decompress=False,
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        cfg.host,
        cfg.port,
        max_connections=cfg.max_connections,
        header_timeout_secs=cfg.header_timeout_secs,
        backlog=cfg.backlog,
        ssl_context=ctx,
    )
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        where = f"{cfg.host}:{cfg.port}"
        if err.errno == errno.EADDRINUSE:  # aiohttp's text ("error while attempting to bind …") names no setting
            raise PipelineError(f"webhook port {where} (webhook.port) is already in use", retriable=True) from None
        reason = os.strerror(err.errno) if err.errno else err.strerror
        raise PipelineError(
            f"webhook receiver cannot listen on {where} (webhook.host, webhook.port): {reason}", retriable=True
        ) from None
    return runner, site
