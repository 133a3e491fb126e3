"""The receiver's HTTP layer on a real loopback listener, over raw sockets: refusals close the
connection at once (no lingering read of the discarded body, never decompressed)."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import pytest

from tests.unit.test_webhook_hardening import PATH, closed_after, listening, shut
from tests.unit.test_webhook_support import SECRET_A, delivery


def head(*lines: str, path: str = PATH) -> bytes:
    """A POST request head with ``lines`` as its header lines."""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in lines) + "\r\n").encode()


async def exchange(port: int, data: bytes, limit: float = 5.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``limit`` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    await shut(writer)
    return out


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (("Content-Length: 60000",), b"401"),  # unauthenticated, body declared and never sent
        ((f"X-Webhook-Secret: {SECRET_A}", "Content-Length: 60000", "Content-Encoding: gzip"), b"415"),
    ],
    ids=["401", "415"],
)
async def test_refused_request_is_closed_at_once(tmp_path: Path, lines: tuple[str, ...], status: bytes) -> None:
    """The refusal is answered and the connection closed without waiting for the declared body."""
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        writer.write(head(*lines))
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.split(b" ")[1] == status, line
        assert await closed_after(reader, 5) < 1.0
        await shut(writer)


async def test_discarded_gzip_bomb_costs_no_cpu(tmp_path: Path) -> None:
    """A compressed body the receiver refuses is neither read on nor decompressed."""
    bomb = gzip.compress(b"\0" * (64 << 20), 1) * 16  # ~1 MiB on the wire, 1 GiB decompressed
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        cpu0, t0 = time.process_time(), time.monotonic()
        writer.write(head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(bomb)}", "Content-Encoding: gzip"))
        writer.write(bomb)
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.split(b" ")[1] == b"415", line
        await closed_after(reader, 5)
        await shut(writer)
        assert time.monotonic() - t0 < 1.0
        assert time.process_time() - cpu0 < 0.5
        assert rx.accepted == 0


async def test_keepalive_delivery_still_works(tmp_path: Path) -> None:
    """Two deliveries on one connection are both answered 200 (closing applies to refusals only)."""
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        for n in range(2):
            body = delivery(n)
            writer.write(head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(body)}") + body)
            line = await asyncio.wait_for(reader.readline(), 5)
            assert line.split(b" ")[1] == b"200", line
            length = 0
            while (h := await reader.readline()) != b"\r\n":
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            await reader.readexactly(length)
        await shut(writer)
        assert rx.accepted == 2


@pytest.mark.parametrize(
    "codings",
    [("identity", "gzip"), ("identity", "br"), ("identity, gzip",), ("gzip, identity",), ("IDENTITY", " Deflate ")],
    ids=["identity+gzip", "identity+br", "list", "list_gzip_first", "case"],
)
async def test_every_content_encoding_value_is_checked(tmp_path: Path, codings: tuple[str, ...]) -> None:
    """Any coding but identity, in any header or list item, is 415 (never a decoded body, 400 or 500)."""
    body = gzip.compress(delivery(1))
    lines = [f"Content-Encoding: {c}" for c in codings]
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        out = await exchange(
            rx.port, head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(body)}", *lines) + body
        )
        assert out.split(b" ")[1] == b"415", out[:200]
        assert rx.accepted == 0 and rx.rejections["unsupported_media_type"] == 1


async def test_identity_content_encoding_is_accepted(tmp_path: Path) -> None:
    """``identity`` (repeated too) is no coding: the delivery is accepted."""
    body = delivery(2)
    lines = ["Content-Encoding: identity", "Content-Encoding: identity"]
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        out = await exchange(
            rx.port,
            head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(body)}", "Connection: close", *lines) + body,
        )
        assert out.split(b" ")[1] == b"200", out[:200]
        assert rx.accepted == 1
