"""Backpressure on the embedded bus: a poller stops publishing while a sink lags past the bound, then resumes.

One workspace on the simulator, one JSONL sink, ``max_consumer_lag`` 20; on the embedded bus and
on the real Kafka broker. With the sink stopped
the poller's first poll pushes the sink's lag past the bound, the gate closes and the poller
waits before its next poll: new audit records in Instantly are not read, the events topic does
not grow. When the sink runs again its lag falls, polling resumes from the cursor, and at the end
the bus and the sink's file hold every audit record exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.sim import seed as sim_seed
from connectors.instantly.sim.server import InstantlySimulator
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import EVENTS_TOPIC, Bus, iter_records
from pipeline.bus.factory import open_bus
from pipeline.clock import SYSTEM_CLOCK
from pipeline.config.model import BusConfig, KafkaBusConfig, SqliteBusConfig
from pipeline.delivery.registry import build_sink, validate_sink
from pipeline.delivery.runner import SinkRunner
from pipeline.sources.backpressure import Backpressure
from tests.conftest import kafka_bootstrap

BOUND = 20


async def eventually(done: Callable[[], bool], limit_secs: float = 60.0) -> bool:
    """Poll ``done`` until true or ``limit_secs`` passed (generous: the machine may be loaded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_secs
    while loop.time() < end:
        if done():
            return True
        await asyncio.sleep(0.05)
    return done()


async def audit_ids_on_bus(bus: Bus, workspace_id: str) -> Counter[str]:
    out: Counter[str] = Counter()
    async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            for r in batch:
                e = orjson.loads(r.value)
                src = e.get("source") or {}
                if src.get("kind") == "audit_log" and (e.get("workspace") or {}).get("id") == workspace_id:
                    out[str(src.get("record_id"))] += 1
    return out


async def end_offset(bus: Bus) -> int:
    async with bus.consumer([EVENTS_TOPIC], start="latest") as consumer:
        return sum((await consumer.end_offsets()).values())


@pytest.fixture(params=["sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus_config(request: pytest.FixtureRequest, tmp_path: Path) -> BusConfig:
    if request.param == "sqlite":
        return SqliteBusConfig(path=tmp_path / "bus.db")
    tag = uuid.uuid4().hex[:6]
    return KafkaBusConfig(
        type="kafka",
        bootstrap_servers=[kafka_bootstrap()],
        topic_prefix=f"bp-{tag}.",
        transactional_id_prefix=f"bp-{tag}",
    )


async def test_poller_pauses_at_the_lag_bound_and_resumes_without_loss(tmp_path: Path, bus_config: BusConfig) -> None:
    """Sink stopped: lag reaches the bound, publishing stops; sink back: polling resumes; every record once."""
    out = tmp_path / "archive.jsonl"
    async with InstantlySimulator(seed=5) as sim, open_bus(bus_config) as bus:
        world = sim_seed.demo_world(sim.state)
        ws = world.workspace.id
        for _ in range(BOUND + 5):
            sim.state.insert_audit(ws, 1)
        cfg = WorkspaceConfig(
            api_key=SecretStr(world.poller_key.key),
            base_url=sim.url,
            poll_interval_secs=1,
            streams=["audit_logs"],
            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
            max_retries=1,
        )
        gate = Backpressure(bus, [("sink-archive", [EVENTS_TOPIC])], BOUND, interval_secs=0.1)
        stop, sink_stop = asyncio.Event(), asyncio.Event()
        poller = InstantlyWorkspacePoller("acme", cfg, bus, clock=SYSTEM_CLOCK)
        poller.backpressure = gate
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(gate.run(stop))]
        async with poller:
            tasks.append(asyncio.create_task(poller.run(stop)))
            try:
                # 1. The sink is not running: the first poll passes the bound; the poller then waits.
                assert await eventually(lambda: gate.paused and gate.waiting == 1), (gate.lags, gate.over)
                assert gate.lags["sink-archive"] >= BOUND
                paused_at = await end_offset(bus)
                for _ in range(10):
                    sim.state.insert_audit(ws, 4)
                calls = len(sim.calls)
                await asyncio.sleep(3 * cfg.poll_interval_secs)  # three poll intervals pass while paused
                assert gate.paused and gate.waiting == 1
                assert await end_offset(bus) == paused_at, "the poller published while paused"
                assert len(sim.calls) == calls, "the poller called Instantly while paused"

                # 2. The sink runs again: its lag falls, the gate opens, the poller reads the new records.
                _cls, scfg = validate_sink("archive", {"type": "jsonl", "path": str(out)})
                async with SinkRunner(bus, build_sink("archive", scfg), scfg) as runner:
                    tasks.append(asyncio.create_task(runner.run(sink_stop)))
                    expected = {r.id for r in sim.state.audit_of(ws)}
                    seen: Counter[str] = Counter()

                    async def caught_up() -> bool:
                        nonlocal seen
                        seen = await audit_ids_on_bus(bus, ws)
                        return set(seen) >= expected and not gate.paused

                    for _ in range(600):
                        if await caught_up():
                            break
                        await asyncio.sleep(0.1)
                    assert set(seen) >= expected, f"missing {len(expected - set(seen))} records"
                    assert gate.pauses >= 1
                    assert await eventually(lambda: _lines(out) >= len(expected))
                    sink_stop.set()
            finally:
                stop.set()
                sink_stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        assert {k: v for k, v in seen.items() if v > 1} == {}, "a record was published twice"
        delivered = Counter(
            str((orjson.loads(line).get("source") or {}).get("record_id"))
            for line in out.read_bytes().splitlines()
            if (orjson.loads(line).get("source") or {}).get("kind") == "audit_log"
        )
        assert set(delivered) == expected
        assert max(delivered.values()) == 1


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0
