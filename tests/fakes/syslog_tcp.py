"""A plain TCP syslog receiver on 127.0.0.1: records every byte per connection, can drop or stop.

Frames are RFC 6587 octet-counted RFC 5424 messages; :meth:`SyslogListener.frames` splits them
strictly. For a real rsyslogd (TLS, rsyslog's own parser) see :mod:`tests.fakes.rsyslog`.
"""

from __future__ import annotations

import asyncio

from tests.unit.test_formats_syslog5424 import unframe


class SyslogListener:
    """A TCP server that records every byte per connection and can drop or stop (then restart on its port)."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.connections.append(buf)
        self.writers.append(writer)
        while chunk := await reader.read(65536):
            buf += chunk

    async def start(self) -> None:
        """Listen (on the previous port after a stop)."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection."""
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    async def drop_connections(self) -> None:
        """Close every open connection (the receiver drops idle clients)."""
        for w in self.writers:
            w.close()
        await asyncio.sleep(0.05)

    def frames(self) -> list[bytes]:
        """Every complete frame received so far."""
        return [f for c in self.connections for f in unframe(bytes(c))]

    async def wait_frames(self, n: int) -> list[bytes]:
        """The frames, once ``n`` arrived (or after ~2 s)."""
        for _ in range(200):
            if len(self.frames()) >= n:
                break
            await asyncio.sleep(0.01)
        return self.frames()
