"""Telemetry: /metrics figures move with the helpers, spans and traceparent, config, no-op mode."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from pipeline.bus.base import Record
from pipeline.clock import FakeClock
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.config.model import PipelineConfig
from pipeline.observability.health import HealthRegistry
from pipeline.observability.metrics import METRICS, PROCESS_SERIES, WORKSPACE, WORKSPACE_ID, prometheus_series
from pipeline.observability.service import ServiceServer
from pipeline.observability.telemetry import Telemetry, get_telemetry, set_telemetry, setup_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.observability.trace import TRACEPARENT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Prometheus text → {(sample name, labels): value} with a real Prometheus parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample matching ``name`` and every given label (0 if absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"ambiguous: {name} {labels}"
    return found[0] if found else 0.0


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves."""
    return FakeClock()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Finished spans, in memory."""
    return InMemorySpanExporter()


@pytest.fixture
def tel(clock: FakeClock, spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    """An enabled telemetry with Prometheus and in-memory spans."""
    t = Telemetry(TelemetryConfig(), role="pollers", clock=clock, span_exporters=[spans])
    yield t
    t.shutdown()


@pytest.fixture
async def server(tel: Telemetry, clock: FakeClock) -> AsyncIterator[ServiceServer]:
    """The service port on an ephemeral port."""
    srv = ServiceServer(tel, HealthRegistry(clock), "127.0.0.1", 0, clock=clock)
    await srv.start()
    yield srv
    await srv.stop()


async def scrape(srv: ServiceServer) -> Samples:
    """GET /metrics and parse it."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{srv.port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse(await r.text())


async def test_scrape_counters_grow_by_the_amount_recorded(tel: Telemetry, server: ServiceServer) -> None:
    """records published grows by exactly what the helper was given, with the component attributes."""
    comp = ("source", "instantly_audit_logs", "acme", "ws-1")
    tel.records_published(*comp, n=7)
    before = await scrape(server)
    tel.records_published(*comp, n=5)
    tel.records_received(*comp, n=12)
    after = await scrape(server)
    labels = {"component_kind": "source", "component_type": "instantly_audit_logs", "component_id": "acme"}
    name = "pipeline_component_events_sent_total"
    assert value(before, name, workspace_id="ws-1", **labels) == 7
    assert value(after, name, workspace_id="ws-1", **labels) == 12
    assert value(after, "pipeline_component_events_received_total", **labels) == 12


async def test_scrape_every_helper_shows_its_series(tel: Telemetry, server: ServiceServer, clock: FakeClock) -> None:
    """Each helper produces its documented series and labels."""
    tel.records_received("sink", "splunk_hec", "soc", n=3)
    tel.records_published("sink", "splunk_hec", "soc", n=3)
    tel.records_dropped("source", "instantly_audit_logs", "acme", "ws-1", 2, reason="duplicate")
    tel.dead_letters("sink", "splunk_hec", "soc", n=4)
    tel.component_errors("sink", "splunk_hec", "soc", "SinkError")
    tel.alerts_raised("all_scope_key", "high", "ws-1")
    tel.api_requests("ws-1", 401)
    tel.api_requests("ws-1", 200)
    tel.api_rate_limited("ws-1")
    tel.api_budget_wait("ws-1", 0.25)
    tel.api_budget_wait("ws-1", 0.5)
    tel.retries("acme", "http_503", kind="source")
    tel.sink_deliveries("soc", 40)
    tel.sink_errors("soc", "timeout")
    tel.sink_circuit("soc", True)
    tel.consumer_lag("sink-soc", "instantly.events.v1", 0, 1200)
    tel.source_paused("sink-soc", True)
    tel.cursor_age_seconds("ws-1", "audit_logs", clock.now() - 90)
    tel.webhook_rejections("instantly", "bad_secret")
    tel.bus_errors("publish", "KafkaTimeoutError")
    tel.task_restarts("rules")
    tel.latency("end_to_end", "soc", [0.2, 3.5, -1.0])
    tel.receipts_published("acme", "ws-1", 3)
    tel.gap_hours("acme", "ws-1", "interrupted", 2)
    got = await scrape(server)
    assert value(got, "pipeline_component_events_dropped_total", reason="duplicate") == 2
    assert value(got, "pipeline_dead_letters_total", component_kind="sink", component_id="soc") == 4
    assert value(got, "pipeline_component_errors_total", component_id="soc", error_type="SinkError") == 1
    assert value(got, "pipeline_alerts_raised_total", rule_id="all_scope_key", severity="high") == 1
    assert value(got, "pipeline_instantly_api_requests_total", http_response_status_code="401") == 1
    assert value(got, "pipeline_instantly_api_rate_limited_total", workspace_id="ws-1") == 1
    assert value(got, "pipeline_instantly_api_budget_wait_seconds_total", workspace_id="ws-1") == 0.75
    assert value(got, "pipeline_retries_total", component_id="acme", reason="http_503", component_kind="source") == 1
    assert value(got, "pipeline_sink_deliveries_total", sink="soc") == 40
    assert value(got, "pipeline_sink_errors_total", sink="soc", error_type="timeout") == 1
    assert value(got, "pipeline_sink_circuit_open", sink="soc") == 1
    lag = {"consumer_group": "sink-soc", "topic": "instantly.events.v1", "partition": "0"}
    assert value(got, "pipeline_bus_consumer_lag", **lag) == 1200
    assert value(got, "pipeline_source_paused", consumer_group="sink-soc") == 1
    assert value(got, "pipeline_source_cursor_age_seconds", workspace_id="ws-1", stream="audit_logs") == 90
    assert value(got, "pipeline_webhook_rejections_total", source="instantly", reason="bad_secret") == 1
    assert value(got, "pipeline_bus_errors_total", operation="publish", error_type="KafkaTimeoutError") == 1
    assert value(got, "pipeline_task_restarts_total", task="rules") == 1
    assert value(got, "pipeline_completeness_receipts_total", component_id="acme", workspace_id="ws-1") == 3
    assert value(got, "pipeline_completeness_gap_hours_total", reason="interrupted", workspace_id="ws-1") == 2
    e2e = {"leg": "end_to_end", "component_id": "soc"}
    assert value(got, "pipeline_latency_seconds_count", **e2e) == 3
    assert value(got, "pipeline_latency_seconds_sum", **e2e) == pytest.approx(3.7)  # a negative age counts as 0
    assert value(got, "pipeline_latency_seconds_bucket", le="0.25", **e2e) == 2
    names = {n for n, _ in got}
    assert names - {"target_info"} <= prometheus_series(), "a series is not in METRICS"
    assert names >= PROCESS_SERIES, "the standard process metrics are missing"
    assert value(got, "process_resident_memory_bytes") > 0 and value(got, "process_open_fds") > 0
    assert {m.series for m in METRICS} - {"pipeline_readiness"} <= names, "a METRICS entry did not appear"


async def test_gauges_change(tel: Telemetry, server: ServiceServer, clock: FakeClock) -> None:
    """Gauges show the last value; cursor age keeps growing while nobody reports."""
    tel.consumer_lag("rules", "instantly.events.v1", 1, 10)
    tel.cursor_age_seconds("ws-1", "members", clock.now())
    first = await scrape(server)
    tel.consumer_lag("rules", "instantly.events.v1", 1, 3)
    clock.advance(600)
    second = await scrape(server)
    assert value(first, "pipeline_bus_consumer_lag", consumer_group="rules", partition="1") == 10
    assert value(second, "pipeline_bus_consumer_lag", consumer_group="rules", partition="1") == 3
    assert value(first, "pipeline_source_cursor_age_seconds", stream="members") == 0
    assert value(second, "pipeline_source_cursor_age_seconds", stream="members") == 600
    tel.sink_circuit("soc", True)
    assert value(await scrape(server), "pipeline_sink_circuit_open", sink="soc") == 1
    tel.sink_circuit("soc", False)
    assert value(await scrape(server), "pipeline_sink_circuit_open", sink="soc") == 0


async def test_metrics_mirror_readiness(tel: Telemetry, server: ServiceServer) -> None:
    """Each scrape exports every readiness check as pipeline_readiness{check}."""
    server.health.bus_error("broker down")
    server.health.circuit("soc", "closed")
    got = await scrape(server)
    assert value(got, "pipeline_readiness", check="bus") == 0
    assert value(got, "pipeline_readiness", check="sink:soc") == 1


async def test_openmetrics_on_request(tel: Telemetry, server: ServiceServer) -> None:
    """A scraper that asks for OpenMetrics gets it."""
    tel.sink_deliveries("soc", 1)
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers) as r:
        body = await r.text()
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_target_info_names_the_service_and_role(tel: Telemetry) -> None:
    """The resource (service, version, role) is exported once as target_info."""
    tel.sink_deliveries("soc", 1)
    body, _ = tel.render_prometheus()
    got = parse(body.decode())
    assert value(got, "target_info", service_name="instantly-audit", pipeline_role="pollers") == 1


def test_traceparent_round_trip(tel: Telemetry, spans: InMemorySpanExporter) -> None:
    """A traceparent injected into a record's headers is extracted into the same trace id."""
    with tel.span("poll.page", {"workspace": "ws-1"}, kind=SpanKind.CLIENT) as page:
        headers = (("event_type", b"audit.user_login"), *tel.trace_headers())
        producer = page.get_span_context()
    rec = Record("instantly.events.v1", 0, 0, 0, b"ws-1", b"{}", headers)
    ctx = tel.extract(rec.headers)
    with tel.span("sink.batch", context=ctx) as batch:
        assert batch.get_span_context().trace_id == producer.trace_id
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["sink.batch"].parent is not None
    assert finished["sink.batch"].parent.span_id == producer.span_id
    raw = rec.header(TRACEPARENT)
    assert raw is not None and raw.decode().split("-")[1] == f"{producer.trace_id:032x}"


def test_batch_links_each_traced_record(tel: Telemetry, spans: InMemorySpanExporter) -> None:
    """A batch span links to the distinct traces of its records; junk headers are ignored."""
    carried = []
    for _ in range(3):
        with tel.span("bus.publish"):
            carried.append(tel.trace_headers())
    batch_headers = [*carried, carried[0], (("traceparent", b"garbage"),), (("traceparent", b"\xff"),), ()]
    with tel.span("sink.batch", links=tel.links(batch_headers)):
        pass
    batch = next(s for s in spans.get_finished_spans() if s.name == "sink.batch")
    assert len(batch.links) == 3


def test_no_traceparent_outside_a_span(tel: Telemetry) -> None:
    """Without a current span nothing is injected and extract gives an empty context."""
    assert tel.inject_traceparent() is None
    assert tel.trace_headers() == ()
    assert tel.extract([("event_type", b"x")]) == tel.extract([])


def test_span_records_exceptions(tel: Telemetry, spans: InMemorySpanExporter) -> None:
    """An exception leaving a span marks it as an error and is re-raised."""
    with pytest.raises(RuntimeError), tel.span("rules.batch"):
        raise RuntimeError("boom")
    (s,) = spans.get_finished_spans()
    assert s.status.status_code is StatusCode.ERROR
    assert s.events[0].name == "exception"


async def test_workspace_labels_id_and_alias_on_every_workspace_metric(
    tel: Telemetry, server: ServiceServer, clock: FakeClock
) -> None:
    """Every metric with a workspace dimension shows workspace_id and the alias, whether the emitter
    gave the alias (a poller) or only the id (the rules): the alias taught later fills it in."""
    tel.records_received("source", "instantly_audit_logs", "acme", "ws-1", 3, workspace="acme")
    tel.alerts_raised("all_scope_key", "high", "ws-1")  # the rules know only the id
    tel.records_published("webhook", "instantly", "hooks", "ws-2", 1)  # a workspace with no alias
    tel.api_requests("ws-1", 200, workspace="acme")
    tel.api_rate_limited("ws-1", workspace="acme")
    tel.cursor_age_seconds("", "audit_logs", clock.now(), workspace="acme")  # id not known yet
    before = await scrape(server)
    assert value(before, "pipeline_alerts_raised_total", workspace_id="ws-1") == 1
    assert value(before, "pipeline_alerts_raised_total", workspace="acme") == 0
    tel.name_workspace("ws-1", "acme")
    tel.cursor_age_seconds("ws-1", "audit_logs", clock.now(), workspace="acme")
    got = await scrape(server)
    both = {"workspace_id": "ws-1", "workspace": "acme"}
    for name in (
        "pipeline_component_events_received_total",
        "pipeline_alerts_raised_total",
        "pipeline_instantly_api_requests_total",
        "pipeline_instantly_api_rate_limited_total",
        "pipeline_source_cursor_age_seconds",
    ):
        series = [dict(ls) for n, ls in got if n == name]
        assert series and all(both.items() <= labels.items() for labels in series), (name, series)
    assert value(got, "pipeline_component_events_sent_total", workspace_id="ws-2") == 1
    assert value(got, "pipeline_component_events_sent_total", workspace="acme") == 0
    for spec in METRICS:
        assert (WORKSPACE in spec.attributes) == (WORKSPACE_ID in spec.attributes), spec.name


def test_disabled_is_safe_and_silent() -> None:
    """A disabled instance accepts every call, yields an invalid span and renders nothing."""
    t = Telemetry.disabled()
    t.records_received("source", "x", "y", "ws", 3)
    t.records_published("source", "x", "y", "ws", 3)
    t.records_dropped("source", "x", "y", "ws", 1, reason="r")
    t.component_errors("sink", "x", "y", "E")
    t.alerts_raised("r", "low")
    t.api_requests("ws", 200)
    t.api_rate_limited("ws")
    t.retries("c", "r")
    t.sink_deliveries("s", 1)
    t.sink_errors("s", "k")
    t.sink_circuit("s", True)
    t.consumer_lag("g", "t", 0, 1)
    t.cursor_age_seconds("ws", "s", 0)
    t.webhook_rejections("s", "r")
    t.bus_errors("op", "E")
    t.readiness("bus", False)
    t.receipts_published("s", "ws", 1)
    t.gap_hours("s", "ws", "interrupted")
    with t.span("x", {"a": 1}) as s:
        assert not s.get_span_context().is_valid
        assert t.inject_traceparent() is None
    assert t.links([[("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]]) == []
    assert t.render_prometheus()[0] == b""
    t.shutdown()


def test_accessor_defaults_to_disabled_and_can_be_set(clock: FakeClock) -> None:
    """get_telemetry() is safe before setup; setup_telemetry/set_telemetry replace it."""
    previous = set_telemetry(None)
    try:
        assert get_telemetry().enabled is False
        t = setup_telemetry(TelemetryConfig(), role="sinks", clock=clock)
        assert get_telemetry() is t and t.enabled
        t.shutdown()
        t.shutdown()  # idempotent
        assert t.render_prometheus()[0] == b""
    finally:
        set_telemetry(previous)


def test_extra_metric_reader_sees_the_same_names(clock: FakeClock) -> None:
    """The OTel names in METRICS are what readers (and OTLP) receive."""
    reader = InMemoryMetricReader()
    t = Telemetry(TelemetryConfig(prometheus=False), clock=clock, metric_readers=[reader])
    t.sink_deliveries("soc", 2)
    t.cursor_age_seconds("ws", "audit_logs", clock.now())
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"pipeline.sink.deliveries", "pipeline.source.cursor.age"} <= names <= {m.name for m in METRICS}
    assert t.render_prometheus()[0] == b""
    t.shutdown()


def test_console_exporter_writes_spans(clock: FakeClock) -> None:
    """console: true prints finished spans (the demo)."""
    out = io.StringIO()
    t = Telemetry(TelemetryConfig(console=True, prometheus=False), clock=clock, console_stream=out)
    with t.span("poll.page"):
        pass
    t.force_flush()
    t.shutdown()
    assert '"name": "poll.page"' in out.getvalue()


def test_otlp_exporters_built_from_config(clock: FakeClock) -> None:
    """An otlp block builds OTLP/HTTP exporters on <endpoint>/v1/traces and /v1/metrics (nothing is sent)."""
    cfg = TelemetryConfig.model_validate(
        {
            "prometheus": False,
            "otlp": {"endpoint": "http://127.0.0.1:9/", "headers": {"authorization": EnvValue("Bearer t0k3n-canary")}},
        }
    )
    assert cfg.otlp is not None
    assert cfg.otlp.signal_url("traces") == "http://127.0.0.1:9/v1/traces"
    assert "t0k3n-canary" not in repr(cfg)
    t = Telemetry(cfg, clock=clock)
    t._meter_provider = None  # do not try to export at shutdown: nothing listens there
    assert t._tracer_provider is not None
    t._tracer_provider.shutdown()


def test_config_rejects_unknown_keys_and_literal_secrets() -> None:
    """The telemetry model is frozen, refuses unknown keys, bad URLs and literal header secrets."""
    with pytest.raises(ValidationError, match="extra"):
        TelemetryConfig.model_validate({"prometheus_port": 1})
    with pytest.raises(ValidationError, match="literal secret"):
        TelemetryConfig.model_validate({"otlp": {"endpoint": "http://c:4318", "headers": {"x": "plain"}}})
    with pytest.raises(ValidationError, match="http"):
        TelemetryConfig.model_validate({"otlp": {"endpoint": "c:4318"}})
    with pytest.raises(ValidationError, match="less than or equal"):
        TelemetryConfig.model_validate({"sample_ratio": 2})
    cfg = TelemetryConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.enabled = False  # type: ignore[misc]


@pytest.mark.xfail(
    "telemetry" not in PipelineConfig.model_fields,
    reason="PipelineConfig has no `telemetry: TelemetryConfig = TelemetryConfig()` field yet",
    strict=True,
)
def test_config_section_wired_into_pipeline_config() -> None:
    """A YAML telemetry block validates through PipelineConfig into a TelemetryConfig."""
    cfg = parse_config("telemetry:\n  console: true\n  otlp: {endpoint: http://collector:4318}\n", env={})
    tcfg = getattr(cfg, "telemetry")  # noqa: B009 - typed access once the field is wired
    assert isinstance(tcfg, TelemetryConfig) and tcfg.console and tcfg.otlp is not None
