"""Components report through the process telemetry: trace context travels poller → bus → rules → sink.

In process, with an enabled :class:`Telemetry` exporting spans to memory: the poller's events carry
a ``traceparent`` header naming its poll span; the rules batch and the sink batch spans link to the
same trace ids; counters, the circuit gauge and the readiness checks move; the webhook receiver
counts rejections and stamps its events too.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.seed import DemoWorld, demo_world
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import SYSTEM_CLOCK
from pipeline.delivery.base import Delivery, SendResult, SinkConfig
from pipeline.delivery.registry import build_sink, validate_sink
from pipeline.delivery.runner import SinkRunner
from pipeline.errors import SinkError
from pipeline.observability.health import HealthRegistry, set_health
from pipeline.observability.telemetry import Telemetry, set_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.observability.trace import TRACEPARENT, parse_traceparent
from pipeline.rules.worker import RulesWorker
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.fakes import make_event, publish
from tests.unit.test_webhook_support import delivery, hdrs, make_config, serve

Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Finished spans, in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def tel(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    """An enabled telemetry made the process's instance for the test."""
    t = Telemetry(TelemetryConfig(), role="all", span_exporters=[spans])
    previous = set_telemetry(t)
    yield t
    set_telemetry(previous)
    t.shutdown()


@pytest.fixture
def health() -> Iterator[HealthRegistry]:
    """A fresh process health registry for the test."""
    h = HealthRegistry()
    previous = set_health(h)
    yield h
    set_health(previous)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    """A real embedded bus in a temporary file."""
    async with SqliteBus(tmp_path / "bus.db") as b:
        yield b


def scrape(tel: Telemetry) -> Samples:
    body, _ = tel.render_prometheus()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def trace_id(rec: Record) -> int:
    raw = rec.header(TRACEPARENT)
    assert raw is not None, f"no traceparent on {rec.topic}@{rec.offset}"
    sc = parse_traceparent(raw)
    assert sc is not None
    return sc.trace_id


def linked(span: ReadableSpan) -> set[int]:
    return {link.context.trace_id for link in span.links}


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


async def read_all(bus: SqliteBus, topic: str) -> list[Record]:
    out: list[Record] = []
    async with bus.consumer([topic], start="earliest") as c:
        async for batch in iter_records(c):
            out.extend(batch)
    return out


async def no_sleep(_delay: float) -> None:
    return None


async def poll(bus: SqliteBus, sim: InstantlySimulator, world: DemoWorld) -> InstantlyWorkspacePoller:
    cfg = WorkspaceConfig(api_key=SecretStr(world.poller_key.key), base_url=sim.url)
    poller = InstantlyWorkspacePoller(
        "acme",
        cfg,
        bus,
        clock=SYSTEM_CLOCK,
        budget=RequestBudget(1000, 60_000),
        rng=random.Random(1),
        sleep=no_sleep,
    )
    async with poller:
        await poller.poll_once()
        OPEN_REPORTS.append(poller.health.report())  # a closed poller stops reporting its streams
        OPEN_SCRAPES.append(scrape(poller.telemetry))  # ... and their cursor ages
    assert not any(n == "pipeline_source_cursor_age_seconds" for n, _, _ in scrape(poller.telemetry))
    return poller


OPEN_REPORTS: list[Any] = []
"""Health reports taken while a poller was open (see :func:`poll`)."""
OPEN_SCRAPES: list[Samples] = []
"""``/metrics`` taken while a poller was open (see :func:`poll`)."""


async def test_trace_context_travels_from_poll_to_sink(
    tel: Telemetry, spans: InMemorySpanExporter, health: HealthRegistry, bus: SqliteBus, tmp_path: Path
) -> None:
    """Every published event carries the traceparent of its poll span; rules and sink batches link to it."""
    async with InstantlySimulator(seed=1) as sim:
        world = demo_world(sim.state)
        await poll(bus, sim, world)

    events = await read_all(bus, EVENTS_TOPIC)
    assert events
    event_traces = {trace_id(r) for r in events}
    poll_spans = named(spans, "poll.page") + named(spans, "poll.stream")
    assert event_traces <= {s.context.trace_id for s in poll_spans}
    page = named(spans, "poll.page")[0]
    assert page.attributes is not None and page.attributes["component.id"] == "acme"

    worker = RulesWorker(bus, None, clock=SYSTEM_CLOCK)
    async with worker:
        assert await worker.run_once() > 0
    (rules_batch,) = named(spans, "rules.batch")
    assert event_traces <= linked(rules_batch)
    alerts = await read_all(bus, ALERTS_TOPIC)
    assert {trace_id(r) for r in alerts} == {rules_batch.context.trace_id}

    sid, block = "archive", {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}
    _, scfg = validate_sink(sid, block)
    runner = SinkRunner(bus, build_sink(sid, block), scfg)
    stats = await runner.run_once()
    assert stats.delivered == len(events) + len(alerts)
    sink_batches = named(spans, "sink.batch")
    assert sink_batches
    assert event_traces | {rules_batch.context.trace_id} <= set().union(*(linked(s) for s in sink_batches))

    got = scrape(tel)
    ws = world.workspace.id
    both = {"workspace_id": ws, "workspace": "acme"}
    assert total(got, "pipeline_component_events_sent_total", component_kind="source", **both) == len(events)
    assert total(got, "pipeline_component_events_received_total", component_kind="rules") == len(events)
    assert total(got, "pipeline_alerts_raised_total", rule_id="api_key.all_scope", **both) >= 1
    assert total(got, "pipeline_instantly_api_requests_total", http_response_status_code="200") > 0
    assert total(got, "pipeline_sink_deliveries_total", sink="archive") == len(events) + len(alerts)
    assert total(OPEN_SCRAPES[-1], "pipeline_source_cursor_age_seconds", **both, stream="audit_logs") < 60
    report = {c.name: c for c in health.report().checks}
    while_polling = {c.name: c for c in OPEN_REPORTS[-1].checks}
    assert while_polling["stream:acme/audit_logs"].ok and report["sink:archive"].ok


async def test_api_statuses_rate_limits_and_retries_are_counted(
    tel: Telemetry, health: HealthRegistry, bus: SqliteBus
) -> None:
    """429 and 503 are counted by status and as retries; a 403 on the audit log fails that stream only."""
    async with InstantlySimulator(seed=1) as sim:
        world = demo_world(sim.state)
        sim.faults.scripted = {1: 429, 2: 503, 4: 403}  # workspace GET twice, then the audit log's first page
        await poll(bus, sim, world)
    got = scrape(tel)
    ws = world.workspace.id
    for status in ("429", "503", "403"):
        assert total(got, "pipeline_instantly_api_requests_total", http_response_status_code=status) == 1
    ok = {"workspace_id": ws, "workspace": "acme", "http_response_status_code": "200"}
    assert total(got, "pipeline_instantly_api_requests_total", **ok) > 5
    assert total(got, "pipeline_instantly_api_rate_limited_total") == 1
    assert total(got, "pipeline_retries_total", component_id="acme", reason="http_429", component_kind="source") == 1
    assert total(got, "pipeline_retries_total", component_id="acme", reason="http_503") == 1
    ages = {ls["stream"] for n, ls, _ in OPEN_SCRAPES[-1] if n == "pipeline_source_cursor_age_seconds"}
    assert "audit_logs" not in ages and "api_keys" in ages
    (unavailable,) = [
        r for r in await read_all(bus, EVENTS_TOPIC) if r.header("event_type") == b"pipeline.audit_log_unavailable"
    ]
    assert trace_id(unavailable)


class BrokenConfig(SinkConfig):
    """A sink that always fails."""


class BrokenSink:
    """Refuses every batch with a non-retriable error (bad credentials)."""

    Config: ClassVar[type[SinkConfig]] = BrokenConfig

    def __init__(self, sink_id: str = "broken") -> None:
        self.sink_id = sink_id

    async def __aenter__(self) -> BrokenSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        raise SinkError("broken: HTTP 401 (invalid token)", retriable=False)

    async def healthcheck(self) -> None:
        return None


async def test_circuit_transitions_reach_health_and_gauge(
    tel: Telemetry, health: HealthRegistry, bus: SqliteBus
) -> None:
    """A sink refused with a fatal error: the circuit opens, /readyz fails on it, gauge and errors move."""
    await publish(bus, [make_event(0)])
    runner = SinkRunner(bus, BrokenSink(), BrokenConfig(type="broken", circuit_open_secs=60))
    async with runner:
        got = scrape(tel)
        assert total(got, "pipeline_sink_circuit_open", sink="broken") == 0
        await runner.run_once()
    got = scrape(tel)
    assert total(got, "pipeline_sink_circuit_open", sink="broken") == 1
    assert total(got, "pipeline_sink_errors_total", sink="broken", error_type="http_401") == 1
    check = next(c for c in health.report().checks if c.name == "sink:broken")
    assert not check.ok and "circuit open" in check.reason


async def test_webhook_counts_rejections_and_traces_deliveries(
    tel: Telemetry, spans: InMemorySpanExporter, bus: SqliteBus
) -> None:
    """A wrong secret counts a rejection by reason; an accepted delivery is published with a traceparent."""
    receiver = WebhookReceiver(make_config(), bus)
    async with serve(receiver) as c:
        assert (await c.post("/hooks/crm", data=delivery(1), headers=hdrs(secret="nope"))).status == 401
        assert (await c.post("/hooks/crm", data=delivery(2), headers=hdrs())).status == 200
    got = scrape(tel)
    assert total(got, "pipeline_webhook_rejections_total", source="crm", reason="wrong_secret") == 1
    assert total(got, "pipeline_component_events_sent_total", component_kind="webhook", component_id="crm") == 1
    (rec,) = await read_all(bus, EVENTS_TOPIC)
    assert orjson.loads(rec.value)["type"].startswith("webhook_delivery.")
    (span,) = named(spans, "webhook.delivery")
    assert trace_id(rec) == span.context.trace_id
