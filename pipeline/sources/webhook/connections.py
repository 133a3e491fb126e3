"""The connection guard in front of aiohttp: a cap on open connections and a deadline for the
request line and headers, applied before aiohttp reads a byte.

aiohttp's own keep-alive timer (``keepalive_timeout``, set from ``idle_timeout_secs``) closes a
connection left idle between requests; it does not bound a client that trickles its first
request one byte at a time, and aiohttp has no connection cap. :class:`ConnectionGuard` is the
protocol factory handed to :meth:`asyncio.loop.create_server`; each connection gets a thin
:class:`GuardedProtocol` that forwards to an aiohttp ``RequestHandler`` and:

* at accept, when ``max_connections`` are open, closes the oldest connection that has not yet
  sent its headers (a slow or idle client) to make room, else the oldest one idle between
  keep-alive requests; when every open connection has a request in flight, the new one is
  closed at once instead;
* closes a connection whose request line and headers (up to the blank line) did not arrive within
  ``header_timeout_secs`` of the accept.

:mod:`.listener` binds the socket with this factory and keeps the cap below the process's
file-descriptor limit.

Closing is an abort (RST): nothing is read or answered, and nothing per connection is logged —
one summary line per interval counts what the guard closed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from pipeline.observability.logs import get_logger

log = get_logger("webhook")

HEADER_END = b"\r\n\r\n"
LOG_INTERVAL_SECS = 10.0


class ConnectionGuard:
    """Protocol factory: wraps each connection of ``factory`` (an aiohttp ``Server``).

    Attributes:
        closed: connections the guard closed, by reason (``over_capacity``, ``evicted``,
            ``header_timeout``).
    """

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], *, max_connections: int, header_timeout_secs: float
    ) -> None:
        self.factory = factory
        self.max_connections = max_connections
        self.header_timeout_secs = header_timeout_secs
        self.open: dict[GuardedProtocol, None] = {}
        """Connections handed to aiohttp, oldest first."""
        self.waiting: dict[GuardedProtocol, None] = {}
        """Open connections whose headers have not arrived yet, oldest first."""
        self.closed: collections.Counter[str] = collections.Counter()
        self.peak = 0
        self._logged_at = 0.0
        self._logged: collections.Counter[str] = collections.Counter()

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self)

    def admit(self, conn: GuardedProtocol) -> bool:
        """Make room for ``conn`` if the cap is reached; False when it must be refused."""
        if len(self.open) >= self.max_connections:
            victim = next(iter(self.waiting), None) or next((c for c in self.open if c.idle), None)
            if victim is None:
                self.count("over_capacity")
                return False
            victim.expire("evicted")
        self.open[conn] = None
        self.waiting[conn] = None
        self.peak = max(self.peak, len(self.open))
        return True

    def forget(self, conn: GuardedProtocol) -> None:
        """Drop a connection that closed (idempotent)."""
        self.open.pop(conn, None)
        self.waiting.pop(conn, None)

    def count(self, reason: str) -> None:
        """Count a connection the guard closed; log a summary at most once per interval."""
        self.closed[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_SECS:
            since = {k: v - self._logged[k] for k, v in self.closed.items() if v - self._logged[k]}
            self._logged_at = now
            self._logged = collections.Counter(self.closed)
            log.warning(
                "Webhook connections closed by the connection guard",
                extra={"closed": since, "open": len(self.open), "max_connections": self.max_connections},
            )


class GuardedProtocol(asyncio.Protocol):
    """One connection: enforces the header deadline, forwards everything to aiohttp's handler."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit (or refuse) the connection, start its header deadline, hand it to aiohttp."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.guard.admit(self):
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.header_timeout_secs, self.expire, "header_timeout")
        self.inner = self.guard.factory()
        self.inner.connection_made(transport)

    @property
    def idle(self) -> bool:
        """Whether aiohttp's handler waits for the next request of a keep-alive connection.

        aiohttp keeps no public flag; its own keep-alive timer tests the same ``_waiter`` future.
        Without it (another aiohttp), no connection counts as idle: the new one is refused instead.
        """
        waiter = getattr(self.inner, "_waiter", None)
        return isinstance(waiter, asyncio.Future) and not waiter.done()

    def data_received(self, data: bytes) -> None:
        """Watch for the end of the first header section, then pass the bytes on."""
        if self.inner is None:
            return
        if self._timer is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._headers_done()
            else:
                self._tail = seen[-(len(HEADER_END) - 1) :]
        self.inner.data_received(data)

    def _headers_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tail = b""
        self.guard.waiting.pop(self, None)

    def expire(self, reason: str) -> None:
        """Close the connection now (header deadline passed, or evicted to make room)."""
        if self._timer is not None:
            self._timer.cancel()  # a no-op when it is the timer calling
            self._timer = None
        self.guard.forget(self)  # at once: connection_lost comes a loop turn later
        if self.transport is not None and not self.transport.is_closing():
            self.guard.count(reason)
            self.transport.abort()

    def eof_received(self) -> bool | None:
        """Forwarded."""
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        """Forwarded."""
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Forwarded."""
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline, leave the guard's books, tell aiohttp."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.forget(self)
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)
