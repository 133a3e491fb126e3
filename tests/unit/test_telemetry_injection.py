"""Components report to the Telemetry and HealthRegistry they were constructed with, not the globals.

Each component gets an explicit instance (an in-memory metric reader, a fresh registry) while the
process's instances are other, enabled ones: the metrics and readiness facts land in the given
ones and the process's stay empty.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.seed import demo_world
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import SYSTEM_CLOCK
from pipeline.delivery.registry import build_sink, validate_sink
from pipeline.delivery.runner import SinkRunner
from pipeline.observability.health import HealthRegistry, get_health, set_health
from pipeline.observability.telemetry import Telemetry, set_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.rules.worker import RulesWorker
from pipeline.sources.webhook.receiver import WebhookReceiver
from pipeline.supervision import monitor_bus
from tests.unit.test_webhook_support import delivery, hdrs, make_config, serve

Points = dict[str, list[tuple[dict[str, object], float]]]


def points(reader: InMemoryMetricReader) -> Points:
    """Metric name → (attributes, value) of every data point the reader collects now."""
    data = reader.get_metrics_data()
    out: Points = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out.setdefault(m.name, []).append((dict(p.attributes or {}), float(getattr(p, "value", 0))))
    return out


def total(got: Points, name: str, **attrs: object) -> float:
    return sum(v for a, v in got.get(name, []) if attrs.items() <= a.items())


@pytest.fixture
def process_reader() -> Iterator[InMemoryMetricReader]:
    """An enabled process-wide telemetry (and a fresh process registry) that must stay untouched."""
    reader = InMemoryMetricReader()
    t = Telemetry(TelemetryConfig(prometheus=False), metric_readers=[reader])
    previous, previous_health = set_telemetry(t), set_health(HealthRegistry())
    yield reader
    set_telemetry(previous)
    set_health(previous_health)
    t.shutdown()


@pytest.fixture
def mine() -> Iterator[tuple[Telemetry, InMemoryMetricReader]]:
    """The telemetry handed to the components."""
    reader = InMemoryMetricReader()
    t = Telemetry(TelemetryConfig(prometheus=False), metric_readers=[reader])
    yield t, reader
    t.shutdown()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    """A real embedded bus in a temporary file."""
    async with SqliteBus(tmp_path / "bus.db") as b:
        yield b


async def no_sleep(_delay: float) -> None:
    return None


async def test_components_report_to_the_telemetry_they_were_given(
    process_reader: InMemoryMetricReader,
    mine: tuple[Telemetry, InMemoryMetricReader],
    bus: SqliteBus,
    tmp_path: Path,
) -> None:
    """Poller, client, rules, sink runner, webhook receiver and bus monitor: every metric goes to
    the given Telemetry, every readiness fact to the given HealthRegistry; the process's see nothing."""
    tel, reader = mine
    health = HealthRegistry(telemetry=tel)
    async with InstantlySimulator(seed=1) as sim:
        world = demo_world(sim.state)
        cfg = WorkspaceConfig(api_key=SecretStr(world.poller_key.key), base_url=sim.url)
        poller = InstantlyWorkspacePoller(
            "acme", cfg, bus, clock=SYSTEM_CLOCK, budget=RequestBudget(1000, 60_000), rng=random.Random(1),
            sleep=no_sleep, telemetry=tel, health=health,
        )  # fmt: skip
        async with poller:
            await poller.poll_once()
            polling_checks = {c.name for c in health.report().checks}  # a closed poller stops reporting
            polling_points = points(reader)  # ... and its cursor ages
    worker = RulesWorker(bus, None, clock=SYSTEM_CLOCK, telemetry=tel)
    async with worker:
        assert await worker.run_once() > 0
    sid, block = "archive", {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}
    _, scfg = validate_sink(sid, block)
    runner = SinkRunner(bus, build_sink(sid, block), scfg, telemetry=tel, health=health)
    assert (await runner.run_once()).delivered > 0
    receiver = WebhookReceiver(make_config(), bus, telemetry=tel, health=health)
    async with serve(receiver) as c:
        assert (await c.post("/hooks/crm", data=delivery(1), headers=hdrs(secret="nope"))).status == 401
        assert (await c.post("/hooks/crm", data=delivery(2), headers=hdrs())).status == 200
    stop = asyncio.Event()
    monitor = asyncio.create_task(
        monitor_bus(bus, [(runner.group, list(runner.topics))], stop, 0.01, telemetry=tel, health=health)
    )
    await asyncio.sleep(0.05)
    stop.set()
    await monitor

    got = points(reader)
    ws = world.workspace.id
    both = {"workspace_id": ws, "workspace": "acme"}
    assert total(got, "pipeline.component.events.sent", **{"component.kind": "source"}, **both) > 0
    assert total(got, "pipeline.instantly.api.requests", **both) > 0
    assert total(polling_points, "pipeline.source.cursor.age", **both, stream="audit_logs") >= 0
    assert "pipeline.source.cursor.age" in polling_points
    assert total(got, "pipeline.alerts.raised", **both) >= 1
    assert total(got, "pipeline.component.events.received", **{"component.kind": "rules"}) > 0
    assert total(got, "pipeline.sink.deliveries", sink="archive") > 0
    assert total(got, "pipeline.webhook.rejections", source="crm", reason="wrong_secret") == 1
    assert total(got, "pipeline.component.events.sent", **{"component.kind": "webhook"}) == 1
    assert "pipeline.bus.consumer.lag" in got
    assert "pipeline.sink.circuit.open" in got  # mirrored by the given registry to its telemetry

    checks = {c.name for c in health.report().checks}
    assert "stream:acme/audit_logs" in polling_checks and {"sink:archive", "bus"} <= checks
    assert get_health().report().checks == ()
    assert points(process_reader) == {}
