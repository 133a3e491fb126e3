"""Slow-loris against the receiver: 500 idle and 500 trickling loopback connections.

The receiver runs in a subprocess (this file with ``--serve``) with short limits (2 s header
deadline, 2 s idle timeout, room for all 1,000 connections so the deadlines, not the cap, do
the work) and JSON logs on stderr. The attack sends the receiver's own secret in its trickled
headers and in URLs. Must hold: every attacking connection is closed within the deadline (plus
scheduling slack), real deliveries sent meanwhile are acknowledged (200) within 1 s, and the
receiver's log output stays under 100 lines with no trace of the secret.

Run with ``-s`` to see the measurements (max close times, ack latencies, log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script (--serve)
    sys.path.insert(0, str(ROOT))

SECRET = "iaw_slowloris_secret_9d2c7a1e5f3b8046"
WS = "ws-slowloris"
IDLE = 500
TRICKLE = 500
HEADER_TIMEOUT = 2.0
SLACK = 1.0
"""Allowed lateness of a close (event-loop scheduling on a shared 2-core machine)."""

pytestmark = pytest.mark.slow


def raise_fd_limit(want: int = 8192) -> None:
    """Lift the soft file-descriptor limit towards ``want`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def serve(db: str, fd_limit: int) -> None:
    """The worker: SQLite bus, receiver on a free port, JSON logs on stderr; prints the port.

    ``fd_limit`` > 0 lowers the soft descriptor limit below what the attack needs.
    """
    from pipeline.bus.sqlite import SqliteBus
    from pipeline.config.base import EnvValue
    from pipeline.observability.logs import setup_logging
    from pipeline.sources.webhook.config import parse_webhook_config
    from pipeline.sources.webhook.receiver import WebhookReceiver

    if fd_limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    else:
        raise_fd_limit()
    setup_logging("json", "INFO", sys.stderr)
    cfg = parse_webhook_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "header_timeout_secs": HEADER_TIMEOUT,
            "idle_timeout_secs": HEADER_TIMEOUT,
            "max_connections": 2048,
            "backlog": 128,
            "sources": {"crm": {"workspace_id": WS, "secrets": [EnvValue(os.environ["HOOK_SECRET"])]}},
        }
    )
    async with SqliteBus(Path(db)) as bus:
        receiver = WebhookReceiver(cfg, bus)
        await receiver.start()
        print(f"READY {receiver.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await receiver.stop()
        assert receiver.guard is not None
        print(f"GUARD {orjson.dumps(dict(receiver.guard.closed)).decode()} peak={receiver.guard.peak}", flush=True)


def listen_overflows() -> int:
    """The kernel's count of accept-queue overflows (``TcpExt: ListenOverflows``); 0 where unreadable."""
    try:
        head, values = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]]
    except (OSError, ValueError):
        return 0
    return int(values[head.index("ListenOverflows")]) if "ListenOverflows" in head else 0


def body(n: int) -> bytes:
    return orjson.dumps(
        {
            "timestamp": "2026-03-05T23:09:47.337Z",
            "event_type": "email_sent",
            "workspace": WS,
            "campaign_id": "c-1",
            "email_id": f"email-{n}",
            "step": 1,
        }
    )


async def wait_closed(reader: asyncio.StreamReader, limit: float, t0: float) -> float:
    """Seconds from ``t0`` (connection established) until the server closed (EOF or reset).

    Taken after the connect: a SYN the kernel dropped while 1,000 clients connect at once is
    retried a second later, before the receiver ever saw the connection.
    """
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(reader.read(), limit)
    return time.monotonic() - t0


async def idle_client(port: int, closes: list[float]) -> None:
    """Connect and say nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    closes.append(await wait_closed(reader, HEADER_TIMEOUT * 5, t0))
    writer.close()


async def trickle_client(port: int, i: int, closes: list[float]) -> None:
    """Send a request line and headers (holding the secret) one byte every 100 ms, never finishing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    head = f"POST /hooks/crm?token={SECRET}&n={i} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {SECRET}\r\n".encode()

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for k in range(len(head)):
                writer.write(head[k : k + 1])
                await writer.drain()
                await asyncio.sleep(0.1)

    task = asyncio.create_task(drip())
    closes.append(await wait_closed(reader, HEADER_TIMEOUT * 5, t0))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    writer.close()


async def attack_and_deliver(port: int) -> tuple[list[float], list[float], list[float], list[int]]:
    idle: list[float] = []
    trickle: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    # Stay well inside the listen backlog (128) while connecting: 50 connects per 50 ms. When the
    # accept queue overflows, Linux drops the client's final ACK; the client counts itself connected
    # but the server sees the connection only after a SYN-ACK retransmit (1 s, 2 s, 4 s later), which
    # reads as a late close here. 100 per 20 ms overflowed it on a loaded 2-core CI machine.
    for batch in range(0, max(IDLE, TRICKLE), 25):
        for _ in range(batch, min(batch + 25, IDLE)):
            tasks.append(asyncio.create_task(idle_client(port, idle)))
        for i in range(batch, min(batch + 25, TRICKLE)):
            tasks.append(asyncio.create_task(trickle_client(port, i, trickle)))
        await asyncio.sleep(0.05)
    latencies: list[float] = []
    statuses: list[int] = []
    url = f"http://127.0.0.1:{port}/hooks/crm"
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    async with aiohttp.ClientSession() as http:
        for n in range(8):  # real deliveries spread over the attack, a fresh connection each
            await asyncio.sleep(0.25)
            t0 = time.monotonic()
            async with http.post(url, data=body(n), headers=headers | {"Connection": "close"}) as resp:
                statuses.append(resp.status)
                await resp.read()
            latencies.append(time.monotonic() - t0)
        # a few unauthenticated probes that put the secret where it must never be logged
        for path in (f"/hooks/{SECRET}", f"/x?{SECRET}", "/" + "p" * 190 + SECRET):
            async with http.post(f"http://127.0.0.1:{port}{path}", data=b"{}", headers=headers) as resp:
                await resp.read()
    await asyncio.gather(*tasks)
    return idle, trickle, latencies, statuses


@pytest.mark.parametrize("fd_limit", [0, 300], ids=["deadline", "fd_limit_300"])
async def test_slowloris(tmp_path: Path, fd_limit: int) -> None:
    """1,000 slow connections are each closed by the deadline; deliveries still ack in < 1 s; logs stay small.

    With a 300-descriptor limit the cap (lowered to fit it) does the closing: the oldest waiting
    connection makes room for each new one, and the accept loop never hits EMFILE.
    """
    raise_fd_limit()
    err_path = tmp_path / "receiver.log"
    env = {**os.environ, "HOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            str(tmp_path / "bus.db"),
            str(fd_limit),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.startswith(b"READY "), f"receiver did not start (exit {proc.returncode})"
            port = int(line.split()[1])
            overflows = listen_overflows()
            t0 = time.monotonic()
            idle, trickle, latencies, statuses = await attack_and_deliver(port)
            elapsed = time.monotonic() - t0
            overflows = listen_overflows() - overflows
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
    logs = err_path.read_text(encoding="utf-8", errors="replace")
    lines = logs.splitlines()
    print(
        f"\nslow-loris: idle closed max {max(idle):.2f}s (n={len(idle)}), trickle closed max {max(trickle):.2f}s "
        f"(n={len(trickle)}); deliveries {statuses} ack max {max(latencies) * 1000:.0f} ms "
        f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; receiver log lines {len(lines)}; "
        f"attack {elapsed:.1f}s; accept-queue overflows {overflows}; {out.decode().strip()}"
    )
    assert len(idle) == IDLE and len(trickle) == TRICKLE
    late = sum(t > HEADER_TIMEOUT + SLACK for t in idle + trickle)
    assert late == 0, f"{late} connections closed late (max idle {max(idle):.2f}s, trickle {max(trickle):.2f}s; " \
        f"kernel accept-queue overflows meanwhile: {overflows})"  # fmt: skip
    guard = orjson.loads(out.decode().split("GUARD ", 1)[1].split(" peak=")[0])
    if not fd_limit:  # every one closed by the deadline (not by the cap, not by an error)
        assert guard == {"header_timeout": IDLE + TRICKLE}
    else:
        assert sum(guard.values()) == IDLE + TRICKLE
    assert statuses == [200] * len(statuses) and max(latencies) < 1.0
    assert len(lines) < 100
    assert all(orjson.loads(x) for x in lines)  # JSON only: no plain-text traceback
    assert not any(SECRET[i : i + 8] in logs for i in range(len(SECRET) - 8))


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
