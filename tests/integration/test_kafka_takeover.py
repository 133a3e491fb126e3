"""A replica that takes many workspaces over claims their writers concurrently, not one by one.

Each takeover fences the workspace's transactional id: a new producer's round trips (~100 ms on
the test broker). One after the other, an agency's 117 sub-workspaces took 23 s to take over before
the first of them was polled again (failover of a replica with 118 of them: last polled 14 s after
its SIGKILL now). The cost is mostly waiting: on a replica already running a hundred pollers every
await of a fence waits its turn on the event loop. Here a busy loop stands in for them (a task that
holds the loop 2 ms at a time), 48 workspaces are taken over on the real broker, and the takeover
is timed against fencing 48 other writer ids one after the other on the same busy loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Self

import pytest

from pipeline.bus.kafka import KafkaBus
from pipeline.sources.assignment import WorkspaceAssignment, owner_key
from tests.conftest import kafka_bootstrap

pytestmark = [pytest.mark.kafka]

N = 48


class _Workspace:
    """A source that is entered like a poller (it claims its writer id) and then idles."""

    def __init__(self, bus: KafkaBus, source_id: str):
        self.bus, self.source_id, self.txn_id = bus, source_id, f"poller-{source_id}"
        self.last_failures: dict[str, str] = {}

    async def __aenter__(self) -> Self:
        await self.bus.fence(self.txn_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll_once(self) -> dict[str, int]:
        return {}

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def _busy(stop: asyncio.Event) -> None:
    """Other pollers' work: hold the event loop 2 ms, let one round of callbacks run, again."""
    while not stop.is_set():
        time.sleep(0.002)  # noqa: ASYNC251 - holding the loop, as a hundred running pollers do, is the point
        await asyncio.sleep(0)


async def test_takeover_fences_workspaces_concurrently() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    stop = asyncio.Event()
    busy = asyncio.create_task(_busy(stop))
    async with KafkaBus([kafka_bootstrap()], transactional_id_prefix=prefix, topic_prefix=prefix) as bus:
        await bus.fence("warm-up")  # connections and metadata: not part of either measurement
        t0 = time.monotonic()
        for i in range(N):
            await bus.fence(f"one-by-one-{i}")
        one_by_one = time.monotonic() - t0
        sources = [_Workspace(bus, f"ws{i:02d}") for i in range(N)]
        a = WorkspaceAssignment(bus, lambda: list(sources), replica="test:1")
        t0 = time.monotonic()
        await a.assigned(set(range(12)))
        takeover = time.monotonic() - t0
        try:
            assert sorted(a.running) == sorted(s.source_id for s in sources)
            owners = await bus.state_items("owner/")
            assert all(owner_key(s.source_id) in owners for s in sources)
        finally:
            await a.revoked(set(range(12)))
            stop.set()
            await busy
    print(f"\n[takeover] {N} workspaces in {takeover:.2f} s; fencing {N} writer ids one by one {one_by_one:.2f} s")
    # one by one, the takeover cost the fences plus an owner record each: at least ``one_by_one``
    assert takeover < 0.6 * one_by_one, (takeover, one_by_one)
