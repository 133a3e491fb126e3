"""Receiver hardening on a real loopback listener: the connection guard (header deadline, cap,
idle keep-alive timeout), deeply nested bodies answered 400, and no secret fragment in a logged path."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.observability.logs import setup_logging
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.unit.test_webhook_support import SECRET_A, delivery, hdrs, make_config

PATH = "/hooks/crm"


@asynccontextmanager
async def listening(tmp_path: Path, **options: Any) -> AsyncIterator[WebhookReceiver]:
    """A receiver bound to 127.0.0.1 on a free port, over a fresh SQLite bus."""
    async with SqliteBus(tmp_path / "bus.db") as bus:
        receiver = WebhookReceiver(make_config(host="127.0.0.1", **options), bus)
        await receiver.open()
        await receiver.start()
        try:
            yield receiver
        finally:
            await receiver.stop()


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closed the connection (EOF or reset)."""
    t0 = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(reader.read(), limit)
    return time.monotonic() - t0


async def shut(writer: asyncio.StreamWriter) -> None:
    """Close our end (the server may already have reset it)."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def post(receiver: WebhookReceiver, body: bytes, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{receiver.port}{PATH}"
        async with http.post(url, data=body, headers=headers or hdrs()) as resp:
            return resp.status


def test_new_options_have_documented_defaults() -> None:
    """header 10 s, idle 30 s, 256 connections, backlog 128."""
    cfg = make_config()
    assert (cfg.header_timeout_secs, cfg.idle_timeout_secs, cfg.max_connections, cfg.backlog) == (10, 30, 256, 128)


async def test_silent_connection_is_closed_at_the_header_deadline(tmp_path: Path) -> None:
    """A client that connects and sends nothing is closed after header_timeout_secs, not later."""
    async with listening(tmp_path, header_timeout_secs=0.5, idle_timeout_secs=30) as rx:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        took = await closed_after(reader, 5)
        await shut(writer)
        assert 0.4 <= took <= 1.0
        assert rx.guard is not None and rx.guard.closed["header_timeout"] == 1


async def test_trickled_headers_are_closed_at_the_deadline(tmp_path: Path) -> None:
    """Bytes arriving one at a time do not extend the deadline."""
    async with listening(tmp_path, header_timeout_secs=0.6, idle_timeout_secs=30) as rx:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        t0 = time.monotonic()

        async def trickle() -> None:
            for b in b"POST /hooks/crm HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: ":
                writer.write(bytes([b]))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        took = await closed_after(reader, 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await shut(writer)
        assert took <= 1.1 and time.monotonic() - t0 >= 0.5


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    """After a complete request the connection may idle idle_timeout_secs, then it is closed."""
    async with listening(tmp_path, header_timeout_secs=5, idle_timeout_secs=0.5) as rx:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        took = await closed_after(reader, 5)
        await shut(writer)
        assert took <= 1.5


async def test_at_the_cap_the_oldest_waiting_connection_makes_room(tmp_path: Path) -> None:
    """With max_connections idle clients open, a real delivery still gets in (the oldest idle one is closed)."""
    async with listening(tmp_path, header_timeout_secs=30, max_connections=8) as rx:
        idle = [await asyncio.open_connection("127.0.0.1", rx.port) for _ in range(8)]
        await asyncio.sleep(0.1)
        assert await post(rx, delivery(1)) == 200
        first_reader = idle[0][0]
        assert await closed_after(first_reader, 2) < 2
        assert rx.guard is not None and rx.guard.closed["evicted"] >= 1 and rx.guard.peak <= 8
        for _, w in idle:
            await shut(w)


async def test_at_the_cap_an_idle_keepalive_connection_makes_room(tmp_path: Path) -> None:
    """Connections parked idle after a request (keep-alive) do not lock real deliveries out."""
    async with listening(tmp_path, header_timeout_secs=30, idle_timeout_secs=30, max_connections=4) as rx:
        parked = []
        for _ in range(4):
            r, w = await asyncio.open_connection("127.0.0.1", rx.port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2)).startswith(b"HTTP/1.1 200")
            parked.append((r, w))
        assert rx.guard is not None and not rx.guard.waiting and len(rx.guard.open) == 4
        assert await post(rx, delivery(1)) == 200
        assert await closed_after(parked[0][0], 2) < 2
        assert rx.guard.closed["evicted"] >= 1
        for _, w in parked:
            await shut(w)


async def test_over_the_cap_with_every_request_in_flight_the_new_one_is_refused(tmp_path: Path) -> None:
    """When no open connection is still waiting for headers, the new one is closed at once."""
    async with listening(tmp_path, header_timeout_secs=30, max_connections=2, body_timeout_secs=30) as rx:
        busy = []
        for _ in range(2):  # authenticated requests whose bodies never finish: past their headers
            r, w = await asyncio.open_connection("127.0.0.1", rx.port)
            w.write(
                f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"X-Webhook-Secret: {SECRET_A}\r\nContent-Length: 100\r\n\r\n{{".encode()
            )
            busy.append((r, w))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        assert await closed_after(reader, 2) < 0.5
        assert rx.guard is not None and rx.guard.closed["over_capacity"] == 1
        for _, w in (*busy, (reader, writer)):
            await shut(w)


@pytest.mark.parametrize("depth", [300, 1_000, 1_023, 5_000])
@pytest.mark.parametrize("shape", ["list", "object"])
async def test_deep_nesting_is_dead_lettered_not_500(tmp_path: Path, depth: int, shape: str) -> None:
    """A body nested ~1,000 deep in a kept field (or any field) is dead-lettered (``too_deep``/malformed), never 500."""
    nested = b"[" * depth + b"]" * depth if shape == "list" else b'{"a":' * depth + b"1" + b"}" * depth
    body = delivery(1)[:-1] + b',"step":' + nested + b"}"  # step is kept by default: normalized and encoded
    async with listening(tmp_path) as rx:
        assert await post(rx, body) == 200
        assert rx.rejections["internal_error"] == 0 and rx.accepted == 0
        assert await post(rx, delivery(2)) == 200  # and the receiver is fine afterwards


async def test_logged_path_never_holds_a_fragment_of_the_secret(tmp_path: Path) -> None:
    """A secret straddling the 200-character cut of the logged path is redacted, not cut in two."""
    buf = io.StringIO()
    setup_logging("json", "INFO", buf)
    try:
        async with listening(tmp_path) as rx:
            path = "/" + "p" * 190 + SECRET_A
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{rx.port}{path}", data=b"{}", headers=hdrs()) as resp,
            ):
                assert resp.status == 404
    finally:
        logging.getLogger("instantly_audit").handlers.clear()
    out = buf.getvalue()
    assert "Webhook delivery rejected" in out
    assert not any(SECRET_A[i : i + 8] in out for i in range(len(SECRET_A) - 8))
    assert orjson.loads(out.splitlines()[-1])["reason"] == "not_found"


@pytest.mark.parametrize(
    "extra",
    [
        "".join(f"X-H{i}: v\r\n" for i in range(70)),  # more than 64 headers
        f"X-Long: {'a' * 9000}\r\n",  # a header line above 8190 bytes
    ],
    ids=["70_headers", "9000_byte_header"],
)
async def test_oversized_header_sections_are_400(tmp_path: Path, extra: str) -> None:
    """Too many or too long headers are refused by the parser with 400, before any handler runs."""
    async with listening(tmp_path) as rx:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), 5)
        await shut(writer)
        assert status.split(b" ")[1] == b"400", status
        assert rx.accepted == 0 and sum(rx.rejections.values()) == 0
