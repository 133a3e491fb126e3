"""The receiver's HTTP layer on a real loopback listener, over raw sockets: refusals close the
connection at once (no lingering read of the discarded body, never decompressed), every
Content-Encoding value is checked, parser errors answer the fixed JSON and log no request bytes,
and ``Expect: 100-continue`` gets the refusal instead of 100."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import sqlite3
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.observability.health import HealthRegistry
from pipeline.observability.logs import setup_logging
from pipeline.observability.service import ServiceServer
from pipeline.observability.telemetry import Telemetry
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.unit.test_webhook_hardening import PATH, closed_after, listening, shut
from tests.unit.test_webhook_support import SECRET_A, delivery, hdrs, make_config


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


ECHO_CASES = {
    "space_before_colon": head(f"X-Webhook-Secret : {SECRET_A}", "Content-Length: 2") + b"{}",
    "obs_fold": head("X-Webhook-Secret:", f" {SECRET_A}", "Content-Length: 2") + b"{}",
    "bare_lf": (head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(delivery(7))}") + delivery(7)).replace(
        b"\r\n", b"\n"
    ),
    "http10_no_length": f"POST {PATH} HTTP/1.0\r\nX-Webhook-Secret: {SECRET_A}\r\n\r\n".encode() + delivery(7),
    "options_star": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
}


@pytest.mark.parametrize("data", ECHO_CASES.values(), ids=ECHO_CASES.keys())
async def test_parser_errors_answer_the_fixed_json(tmp_path: Path, data: bytes) -> None:
    """A request aiohttp's parser or router refuses gets a fixed JSON body quoting nothing of it,
    without a ``Server`` header; the log names the error class, never the request's bytes."""
    buf = io.StringIO()
    setup_logging("json", "DEBUG", buf)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(f"{record.getMessage()} {record.exc_info!r} {record.__dict__}")  # type: ignore[method-assign]
    logging.getLogger("aiohttp").addHandler(handler)
    try:
        async with listening(tmp_path) as rx:
            assert rx.port is not None
            out = await exchange(rx.port, data)
    finally:
        logging.getLogger("aiohttp").removeHandler(handler)
        logging.getLogger("instantly_audit").handlers.clear()
    head_, _, body = out.partition(b"\r\n\r\n")
    assert head_.split(b" ")[1] in (b"400", b"404"), out[:300]
    assert orjson.loads(body)["error"] in ("bad request", "not found"), out[:300]
    assert b"application/json" in head_ and b"\nserver:" not in head_.lower(), head_
    logged = buf.getvalue() + "".join(seen)
    for text in (out.decode("latin1"), logged):
        assert SECRET_A not in text and "lead7@example.com" not in text, text[:500]
    assert rx.accepted == 0


async def test_no_response_names_the_server_software(tmp_path: Path) -> None:
    """Deliveries, health answers and refusals carry no ``Server`` header."""
    body = delivery(3)
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        for data in (
            head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(body)}", "Connection: close") + body,
            head("Content-Length: 0"),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ):
            out = await exchange(rx.port, data)
            head_ = out.partition(b"\r\n\r\n")[0]
            assert head_.startswith(b"HTTP/1.1 "), out[:200]
            assert b"\nserver:" not in head_.lower(), head_


async def test_parser_errors_log_no_request_bytes(tmp_path: Path) -> None:
    """A malformed request is logged as one fixed line naming the error class: no traceback, no
    header value, no body (aiohttp logged the exception quoting the request at ERROR)."""
    body = delivery(8, lead_email="victim.lead@customer-corp.example")
    data = head("Authorization: Bearer sk_live_NOT_REGISTERED_abc123", f"Content-Length: {len(body)}") + body
    buf = io.StringIO()
    setup_logging("json", "DEBUG", buf)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logging.getLogger("aiohttp").addHandler(handler)
    try:
        async with listening(tmp_path) as rx:
            assert rx.port is not None
            out = await exchange(rx.port, data.replace(b"\r\n", b"\n"))
    finally:
        logging.getLogger("aiohttp").removeHandler(handler)
        logging.getLogger("instantly_audit").handlers.clear()
    assert out.split(b" ")[1] == b"400", out[:200]
    logged = buf.getvalue() + "".join(logging.Formatter().format(r) for r in records)
    assert "victim.lead" not in logged and "sk_live_NOT_REGISTERED" not in logged, logged[:2000]
    assert not any(r.levelno >= logging.WARNING for r in records)
    line = orjson.loads(next(x for x in buf.getvalue().splitlines() if "refused by the HTTP parser" in x))
    assert line["status"] == 400 and line["error"] in ("BadHttpMessage", "BadStatusLine"), line


@pytest.mark.parametrize(
    ("lines", "path", "status"),
    [
        (("Content-Length: 200",), PATH, b"401"),
        ((f"X-Webhook-Secret: {SECRET_A}", "Content-Length: 70000000"), PATH, b"413"),
        ((f"X-Webhook-Secret: {SECRET_A}", "Content-Length: 200", "Content-Encoding: gzip"), PATH, b"415"),
        ((f"X-Webhook-Secret: {SECRET_A}", "Content-Length: 200"), "/nope", b"404"),
    ],
    ids=["401", "413", "415", "404"],
)
async def test_expect_continue_gets_the_refusal_not_100(
    tmp_path: Path, lines: tuple[str, ...], path: str, status: bytes
) -> None:
    """A request refused before its body is answered with the refusal, never ``100 Continue``."""
    async with listening(tmp_path, max_body_bytes=1 << 20) as rx:
        assert rx.port is not None
        out = await exchange(rx.port, head(*lines, "Expect: 100-continue", path=path))
        assert out.split(b" ")[1] == status, out[:200]
        assert b" 100 " not in out
        assert orjson.loads(out.partition(b"\r\n\r\n")[2])["error"]


async def test_expect_continue_then_delivery(tmp_path: Path) -> None:
    """An authenticated request gets ``100 Continue``, then its body is accepted."""
    body = delivery(9)
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        writer.write(head(f"X-Webhook-Secret: {SECRET_A}", f"Content-Length: {len(body)}", "Expect: 100-continue"))
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 100 ")
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        assert (await asyncio.wait_for(reader.readline(), 5)).split(b" ")[1] == b"200"
        await shut(writer)
        assert rx.accepted == 1


async def test_unknown_expectation_is_417_without_echo(tmp_path: Path) -> None:
    """An expectation other than 100-continue is refused with the fixed JSON (aiohttp quoted it)."""
    async with listening(tmp_path) as rx:
        assert rx.port is not None
        out = await exchange(rx.port, head(f"X-Webhook-Secret: {SECRET_A}", "Content-Length: 2", f"Expect: {SECRET_A}"))
        assert out.split(b" ")[1] == b"417", out[:200]
        assert SECRET_A.encode() not in out
        assert orjson.loads(out.partition(b"\r\n\r\n")[2])["error"] == "expectation failed"


async def test_bus_failures_turn_the_service_readyz_503_and_back(tmp_path: Path) -> None:
    """A delivery the bus does not confirm fails the service port's ``/readyz`` (the readiness probe);
    once the bus takes writes again it turns 200 without any further delivery."""
    health = HealthRegistry()
    async with SqliteBus(tmp_path / "bus.db") as bus:
        rx = WebhookReceiver(make_config(host="127.0.0.1", ack_timeout_secs=0.5), bus, health=health)
        await rx.open()
        await rx.start()
        srv = ServiceServer(Telemetry.disabled(), health, "127.0.0.1", 0)
        await srv.start()
        lock = sqlite3.connect(tmp_path / "bus.db", timeout=1, isolation_level=None)
        try:
            async with aiohttp.ClientSession() as http:

                async def readyz() -> int:
                    async with http.get(f"http://127.0.0.1:{srv.port}/readyz") as resp:
                        return resp.status

                assert await readyz() == 200
                lock.execute("BEGIN EXCLUSIVE")
                async with http.post(f"http://127.0.0.1:{rx.port}{PATH}", data=delivery(11), headers=hdrs()) as resp:
                    assert resp.status == 503
                assert await readyz() == 503
                lock.execute("ROLLBACK")
                deadline = time.monotonic() + 10
                while await readyz() != 200:
                    assert time.monotonic() < deadline, health.report().to_dict()
                    await asyncio.sleep(0.2)
        finally:
            lock.close()
            await srv.stop()
            await rx.stop()
