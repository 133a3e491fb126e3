"""kill -9 the receiver at random moments while numbered deliveries arrive: every 2xx is in the bus exactly once.

The receiver runs in a subprocess (this file with ``--serve``); a client sends numbered deliveries
with 8 in flight, retrying every one that did not get a 2xx (as Instantly would), while the test
SIGKILLs and restarts the receiver. At the end every delivery was acknowledged, and the bus holds
each exactly once: acknowledged ones are never lost, and retries of deliveries whose commit
landed before the kill are recognised from the dedup state written in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script (--serve)
    sys.path.insert(0, str(ROOT))

from pipeline.bus.base import Bus  # noqa: E402
from pipeline.bus.factory import open_bus  # noqa: E402
from pipeline.config.base import EnvValue  # noqa: E402
from pipeline.config.model import KafkaBusConfig, SqliteBusConfig  # noqa: E402
from pipeline.sources.webhook.config import parse_webhook_config  # noqa: E402
from pipeline.sources.webhook.receiver import WebhookReceiver  # noqa: E402

SECRET = "iaw_kill9_secret_4c8e1f0a9b2d7e6c3a5f"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(bus_cfg: dict[str, Any], port: int, source: str, workspace: str) -> None:
    """The worker: open the bus, run the receiver on ``port``, say READY, serve until killed."""
    model = (
        SqliteBusConfig.model_validate(bus_cfg)
        if bus_cfg["type"] == "sqlite"
        else KafkaBusConfig.model_validate(bus_cfg)
    )
    cfg = parse_webhook_config(
        {
            "host": "127.0.0.1",
            "port": port,
            "sources": {source: {"workspace_id": workspace, "secrets": [EnvValue(os.environ["HOOK_SECRET"])]}},
        }
    )
    async with open_bus(model) as bus:
        receiver = WebhookReceiver(cfg, bus)
        await receiver.start()
        print("READY", flush=True)
        await asyncio.Event().wait()


class Worker:
    """The receiver subprocess."""

    def __init__(self, bus_cfg: dict[str, Any], port: int, source: str, workspace: str):
        self.args = [json.dumps(bus_cfg), str(port), source, workspace]
        self.proc: asyncio.subprocess.Process | None = None
        self.kills = 0

    async def start(self, startup_s: float = 60.0) -> None:
        env = {**os.environ, "HOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", *self.args, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), startup_s)
        assert line.strip() == b"READY", f"worker did not start (exit {self.proc.returncode})"

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL
        self.kills += 1

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


def body(n: int, workspace: str) -> bytes:
    return orjson.dumps(
        {
            "timestamp": "2026-03-05T23:09:47.337Z",
            "event_type": "email_sent",
            "workspace": workspace,
            "campaign_id": "c-1",
            "email_id": f"email-{n}",
            "step": 1,
        }
    )


async def drive(worker: Worker, port: int, source: str, workspace: str, total: int, kills: int) -> set[int]:
    """Send ``total`` deliveries (retrying until each got a 2xx) while killing the worker ``kills`` times."""
    acked: set[int] = set()
    todo: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        todo.put_nowait(n)
    url = f"http://127.0.0.1:{port}/hooks/{source}"
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    rnd = random.Random()
    timeout = aiohttp.ClientTimeout(total=5)

    async def sender(session: aiohttp.ClientSession) -> None:
        while len(acked) < total:
            try:
                n = todo.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.01)
                continue
            try:
                async with session.post(url, data=body(n, workspace), headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        acked.add(n)
                        continue
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)
            todo.put_nowait(n)

    async def killer() -> None:
        while worker.kills < kills:
            await asyncio.sleep(rnd.uniform(0.05, 0.5))
            await worker.kill()
            await worker.start()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        senders = [asyncio.create_task(sender(session)) for _ in range(8)]
        k = asyncio.create_task(killer())
        await asyncio.wait_for(k, 300)
        await asyncio.wait_for(asyncio.gather(*senders), 300)
    return acked


async def events_by_seq(bus: Bus, workspace: str) -> Counter[int]:
    from pipeline.bus.base import EVENTS_TOPIC, iter_records

    seen: Counter[int] = Counter()
    async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        async for recs in iter_records(consumer):
            for r in recs:
                if r.key == workspace.encode():
                    seen[int(orjson.loads(r.value)["raw"]["email_id"].split("-")[1])] += 1
    return seen


@pytest.mark.slow
async def test_kill9_acknowledged_deliveries_exactly_once(bus_kind: str, bus_cfg: dict[str, Any], unique: str) -> None:
    """Random SIGKILLs of the receiver: every acknowledged delivery is in the bus exactly once."""
    total, kills = (400, 8) if bus_kind == "sqlite" else (200, 4)
    source, workspace = f"k9_{unique}", f"ws-{unique}"
    port = free_port()
    worker = Worker(bus_cfg, port, source, workspace)
    await worker.start()
    try:
        acked = await drive(worker, port, source, workspace, total, kills)
    finally:
        await worker.stop()
    assert worker.kills == kills
    assert acked == set(range(total))
    model = SqliteBusConfig.model_validate(bus_cfg) if bus_kind == "sqlite" else KafkaBusConfig.model_validate(bus_cfg)
    async with open_bus(model) as bus:
        seen = await events_by_seq(bus, workspace)
    assert set(seen) == acked, "an acknowledged delivery is missing from the bus"
    dups = {n: c for n, c in seen.items() if c != 1}
    assert dups == {}, f"deliveries published more than once: {dups}"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--serve":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
