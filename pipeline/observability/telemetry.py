"""OpenTelemetry in one place: metrics, spans and the ``traceparent`` bus header.

Every component records through the same typed helpers, so names and attributes stay
consistent (``component.kind``, ``component.type``, ``component.id``, ``workspace_id``,
``workspace``)::

    t = telemetry  # handed to the component at construction
    with t.span("poll.page", {"component.kind": "source", "workspace_id": ws_id, "workspace": "acme"}):
        t.records_received("source", "instantly_audit_logs", "acme", ws_id, len(page), workspace="acme")
        headers = (("event_type", b"audit.user_login"), *t.trace_headers())

Components take the instance at construction (``telemetry=``, default: the process's current one)
and keep it; only :mod:`pipeline.topology` and tests call :func:`set_telemetry`/:func:`setup_telemetry`.

Workspace labels: every metric with a workspace dimension carries ``workspace_id`` (the vendor's
id) and ``workspace`` (the config alias). An emitter that knows only the id (the rules, the
webhook receiver) leaves the alias empty; it is filled at collection from the aliases the
pollers (or the topology, from the bus) taught with :meth:`Telemetry.name_workspace`.

Exporters come from :class:`~pipeline.telemetry_config.TelemetryConfig`: Prometheus text
(rendered by :meth:`Telemetry.render_prometheus` for the service port's ``/metrics``),
OTLP/HTTP to a collector, and the console (the demo). A disabled instance (the default
returned by :func:`get_telemetry` until :func:`set_telemetry`/:func:`setup_telemetry`) makes
every helper return at once.

The metric catalog (attribute keys, :data:`~pipeline.telemetry_metrics.METRICS`) lives in
:mod:`pipeline.telemetry_metrics`; parsing the ``traceparent`` header in :mod:`pipeline.telemetry_trace`.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanKind,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from pipeline import __version__
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.observability.metrics import (
    ALERTS_RAISED,
    API_BUDGET_WAIT,
    API_RATE_LIMITED,
    API_REQUESTS,
    BUS_ERRORS,
    COMPONENT_ERRORS,
    CONSUMER_LAG,
    CURSOR_AGE,
    DEAD_LETTERS,
    GAP_HOURS,
    ID,
    LATENCY,
    LATENCY_BUCKETS,
    LEG,
    METRICS,
    READINESS,
    RECEIPTS,
    RECORDS_DROPPED,
    RECORDS_RECEIVED,
    RECORDS_SENT,
    RETRIES,
    SINK_CIRCUIT_OPEN,
    SINK_DELIVERIES,
    SINK_ERRORS,
    SOURCE_PAUSED,
    STREAM,
    TASK_RESTARTS,
    WEBHOOK_REJECTIONS,
    WORKSPACE,
    WORKSPACE_ID,
    MetricSpec,
)
from pipeline.observability.spans import EMPTY_CONTEXT, NOOP_SPAN, SpanScope
from pipeline.observability.telemetry_config import OtlpConfig, TelemetryConfig
from pipeline.observability.trace import TRACEPARENT, Header, batch_trace_contexts, cached_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from prometheus_client import CollectorRegistry


Key = tuple[AttributeValue, ...]


class _Series:
    """One metric's values by attribute tuple, kept in process and observed at collection.

    Recording is a dict update under a lock (well under a microsecond); the SDK sees the
    values only when a reader collects (a scrape, an OTLP export), through an observable
    counter or gauge. Empty attribute values are left out of the exported attributes.
    """

    __slots__ = ("_aliases", "_lock", "_ws", "keys", "values")

    def __init__(self, spec: MetricSpec, lock: threading.Lock, aliases: Mapping[str, str]) -> None:
        self.keys = spec.attributes
        self.values: dict[Key, float] = {}
        self._lock = lock
        self._aliases = aliases
        # (index of workspace_id, index of workspace) when the metric has a workspace dimension
        self._ws = (self.keys.index(WORKSPACE_ID), self.keys.index(WORKSPACE)) if WORKSPACE_ID in self.keys else None

    def add(self, key: Key, n: float) -> None:
        with self._lock:
            self.values[key] = self.values.get(key, 0) + n

    def set(self, key: Key, v: float) -> None:
        with self._lock:
            self.values[key] = v

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            items = list(self.values.items())
        ws = self._ws
        for key, v in items:
            attrs = {k: a for k, a in zip(self.keys, key, strict=True) if a != ""}
            if ws is not None and key[ws[1]] == "" and key[ws[0]] != "":
                alias = self._aliases.get(str(key[ws[0]]), "")
                if alias:
                    attrs[WORKSPACE] = alias
            yield Observation(v, attrs)


class Telemetry:
    """Metrics and spans for one process; see the module docstring.

    Args:
        config: what to export; ``None`` means the defaults (Prometheus on, nothing else).
        role: the pipeline role(s) this process runs, added to the resource as ``pipeline.role``.
        clock: the clock for ages (cursor age is computed at each collection).
        span_exporters: extra span exporters (tests use ``InMemorySpanExporter``).
        metric_readers: extra metric readers (tests use ``InMemoryMetricReader``).
        console_stream: where the console exporters write (default stderr).
    """

    def __init__(
        self,
        config: TelemetryConfig | None = None,
        *,
        role: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
        console_stream: IO[str] | None = None,
    ) -> None:
        self.config = config if config is not None else TelemetryConfig()
        self.enabled = self.config.enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._cursors: dict[tuple[str, str, str], float] = {}
        self._aliases: dict[str, str] = {}
        self._closed = False
        self._registry: CollectorRegistry | None = None
        self._meter_provider: MeterProvider | None = None
        self._tracer_provider: TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()
        if self.enabled:
            self._build(role, span_exporters, metric_readers, console_stream or sys.stderr)

    @classmethod
    def disabled(cls) -> Telemetry:
        """An instance whose helpers do nothing (near-zero cost)."""
        return cls(TelemetryConfig(enabled=False))

    # ------------------------------------------------------------------------------ setup
    def _build(
        self,
        role: str | None,
        span_exporters: Sequence[SpanExporter],
        metric_readers: Sequence[MetricReader],
        console: IO[str],
    ) -> None:
        cfg = self.config
        attrs: dict[str, AttributeValue] = {
            "service.name": cfg.service_name,
            "service.version": __version__,
            "service.instance.id": uuid.uuid4().hex,
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
        }
        if role:
            attrs["pipeline.role"] = role
        attrs.update(cfg.resource_attributes)
        resource = Resource(attrs)  # no detectors: only pipeline/config.py reads the environment

        readers: list[MetricReader] = list(metric_readers)
        if cfg.prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry, ProcessCollector

            self._registry = CollectorRegistry(auto_describe=False)
            # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … as every
            # Prometheus client exports them: what the sizing guidance is checked against.
            ProcessCollector(registry=self._registry)
            readers.append(PrometheusMetricReader(scope_info_enabled=False, registry=self._registry))
        if cfg.otlp is not None and cfg.otlp.metrics:
            readers.append(
                PeriodicExportingMetricReader(
                    _otlp_metric_exporter(cfg.otlp), export_interval_millis=cfg.otlp.export_interval_secs * 1000
                )
            )
        if cfg.console:
            readers.append(
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(out=console), export_interval_millis=cfg.console_interval_secs * 1000
                )
            )
        # No exemplars: the Prometheus text format does not carry them.
        self._meter_provider = MeterProvider(
            metric_readers=readers, resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
        )
        meter = self._meter_provider.get_meter("instantly_audit", __version__)
        series = {
            spec.name: _Series(spec, self._lock, self._aliases)
            for spec in METRICS
            if spec is not CURSOR_AGE and spec is not LATENCY
        }
        for name, ser in series.items():
            spec = next(m for m in METRICS if m.name == name)
            create = meter.create_observable_counter if spec.instrument == "counter" else meter.create_observable_gauge
            create(spec.name, callbacks=[ser.observe], unit=spec.unit, description=spec.description)
        meter.create_observable_gauge(
            CURSOR_AGE.name, callbacks=[self._observe_cursors], unit=CURSOR_AGE.unit, description=CURSOR_AGE.description
        )
        self._latency = meter.create_histogram(
            LATENCY.name,
            unit=LATENCY.unit,
            description=LATENCY.description,
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._received = series[RECORDS_RECEIVED.name]
        self._sent = series[RECORDS_SENT.name]
        self._dropped = series[RECORDS_DROPPED.name]
        self._dead_letters = series[DEAD_LETTERS.name]
        self._errors = series[COMPONENT_ERRORS.name]
        self._alerts = series[ALERTS_RAISED.name]
        self._api = series[API_REQUESTS.name]
        self._rate_limited = series[API_RATE_LIMITED.name]
        self._budget_wait = series[API_BUDGET_WAIT.name]
        self._retries = series[RETRIES.name]
        self._deliveries = series[SINK_DELIVERIES.name]
        self._sink_errors = series[SINK_ERRORS.name]
        self._webhook_rejections = series[WEBHOOK_REJECTIONS.name]
        self._bus_errors = series[BUS_ERRORS.name]
        self._task_restarts = series[TASK_RESTARTS.name]
        self._circuit = series[SINK_CIRCUIT_OPEN.name]
        self._lag = series[CONSUMER_LAG.name]
        self._paused = series[SOURCE_PAUSED.name]
        self._ready = series[READINESS.name]
        self._receipts = series[RECEIPTS.name]
        self._gap_hours = series[GAP_HOURS.name]

        self._tracer_provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio))
        )
        for exporter in span_exporters:
            self._tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        if cfg.otlp is not None and cfg.otlp.traces:
            self._tracer_provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter(cfg.otlp)))
        if cfg.console:
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(ConsoleSpanExporter(service_name=cfg.service_name, out=console))
            )
        self._tracer = self._tracer_provider.get_tracer("instantly_audit", __version__)

    def shutdown(self) -> None:
        """Flush and stop the exporters (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export what is buffered now (spans and metrics)."""
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush(timeout_millis)
        if self._meter_provider is not None:
            self._meter_provider.force_flush(timeout_millis)

    # --------------------------------------------------------------------------- Prometheus
    def render_prometheus(self, accept: str | None = None) -> tuple[bytes, str]:
        """The current metrics in the Prometheus (or OpenMetrics, per ``accept``) text format.

        Returns:
            The body and its content type; an empty body when Prometheus export is off.
        """
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

        if self._registry is None or self._closed:
            return b"", CONTENT_TYPE_PLAIN_0_0_4
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type

    # ----------------------------------------------------------------------------- counters
    # ``workspace_id`` is the vendor's id of the workspace, ``workspace`` its config alias (see the
    # module docstring: an empty alias is filled at collection from :meth:`name_workspace`).
    def name_workspace(self, workspace_id: str, alias: str) -> None:
        """Teach the alias of a workspace id: metrics recorded with the id alone get ``workspace=alias``."""
        if self.enabled and workspace_id and alias:
            with self._lock:
                self._aliases[workspace_id] = alias

    def workspace_alias(self, workspace_id: str) -> str:
        """The alias taught for ``workspace_id`` (empty when none was)."""
        with self._lock:
            return self._aliases.get(workspace_id, "")

    def records_received(
        self, kind: str, type: str, id: str, workspace_id: str = "", n: int = 1, *, workspace: str = ""
    ) -> None:
        """Count records a component took in (a poll page, a consumed batch, a webhook)."""
        if self.enabled:
            self._received.add((kind, type, id, workspace_id, workspace), n)

    def records_published(
        self, kind: str, type: str, id: str, workspace_id: str = "", n: int = 1, *, workspace: str = ""
    ) -> None:
        """Count records a component published to the bus (or a sink delivered)."""
        if self.enabled:
            self._sent.add((kind, type, id, workspace_id, workspace), n)

    def records_dropped(
        self, kind: str, type: str, id: str, workspace_id: str = "", n: int = 1, *, reason: str, workspace: str = ""
    ) -> None:
        """Count records deliberately dropped (duplicate, filtered, unparseable → dead letter)."""
        if self.enabled:
            self._dropped.add((kind, type, id, workspace_id, workspace, reason), n)

    def dead_letters(
        self, kind: str, type: str, id: str, workspace_id: str = "", n: int = 1, *, workspace: str = ""
    ) -> None:
        """Count records a component wrote to the dead-letter topic (after their transaction committed).

        Not every drop is a dead letter (a duplicate, a filtered or too old record is dropped on
        purpose): only this counter says records wait in ``instantly.deadletter.v1``.
        """
        if self.enabled:
            self._dead_letters.add((kind, type, id, workspace_id, workspace), n)

    def component_errors(
        self, kind: str, type: str, id: str, error_type: str, workspace_id: str = "", *, workspace: str = ""
    ) -> None:
        """Count one error met by a component (``error_type``: the exception class name or a code)."""
        if self.enabled:
            self._errors.add((kind, type, id, workspace_id, workspace, error_type), 1)

    def alerts_raised(
        self, rule: str, severity: str, workspace_id: str = "", n: int = 1, *, workspace: str = ""
    ) -> None:
        """Count alerts a rule raised."""
        if self.enabled:
            self._alerts.add((rule, severity, workspace_id, workspace), n)

    def api_requests(self, workspace_id: str, status: int, *, workspace: str = "") -> None:
        """Count one Instantly API response by HTTP status (0 for a transport failure)."""
        if self.enabled:
            self._api.add((workspace_id, workspace, status), 1)

    def api_rate_limited(self, workspace_id: str, *, workspace: str = "") -> None:
        """Count one 429 from Instantly."""
        if self.enabled:
            self._rate_limited.add((workspace_id, workspace), 1)

    def api_budget_wait(self, workspace_id: str, seconds: float, *, workspace: str = "") -> None:
        """Count seconds a request to the vendor's API waited for the local budget (or a Retry-After)."""
        if self.enabled:
            self._budget_wait.add((workspace_id, workspace), seconds)

    def retries(self, component: str, reason: str, *, kind: str = "") -> None:
        """Count one retry of ``component`` (its id) for ``reason`` (e.g. ``http_503``, ``timeout``)."""
        if self.enabled:
            self._retries.add((kind, component, reason), 1)

    def sink_deliveries(self, sink: str, n: int) -> None:
        """Count records a destination confirmed."""
        if self.enabled:
            self._deliveries.add((sink,), n)

    def sink_errors(self, sink: str, kind: str) -> None:
        """Count one failed sink request (``kind``: e.g. ``http_503``, ``timeout``, ``rejected``)."""
        if self.enabled:
            self._sink_errors.add((sink, kind), 1)

    def webhook_rejections(self, source: str, reason: str) -> None:
        """Count one refused webhook request (``reason``: ``bad_secret``, ``too_large``, ...)."""
        if self.enabled:
            self._webhook_rejections.add((source, reason), 1)

    def bus_errors(self, operation: str, error_type: str) -> None:
        """Count one failed bus operation (``operation``: publish, poll, commit, state, ...)."""
        if self.enabled:
            self._bus_errors.add((operation, error_type), 1)

    def task_restarts(self, task: str, n: int = 1) -> None:
        """Count restarts of the supervised task ``task`` after a crash (``n=0`` shows the series)."""
        if self.enabled:
            self._task_restarts.add((task,), n)

    def receipts_published(self, source: str, workspace_id: str, n: int, *, workspace: str = "") -> None:
        """Count completeness receipts ``source`` published."""
        if self.enabled:
            self._receipts.add((source, workspace_id, workspace), n)

    def gap_hours(self, source: str, workspace_id: str, reason: str, n: int = 1, *, workspace: str = "") -> None:
        """Count hours found with a gap (``reason``: changed_after_close or interrupted)."""
        if self.enabled:
            self._gap_hours.add((source, workspace_id, workspace, reason), n)

    # ---------------------------------------------------------------------------- histograms
    def latency(self, leg: str, component: str, seconds: Iterable[float]) -> None:
        """Record how long records took over ``leg`` (see :data:`~pipeline.observability.metrics.LATENCY`).

        ``component``: the source, ``rules`` or the sink id. Negative values (clock skew between
        the source and this host) are recorded as 0.
        """
        if self.enabled:
            attrs = {LEG: leg, ID: component}
            for s in seconds:
                self._latency.record(s if s > 0 else 0.0, attrs)

    # ------------------------------------------------------------------------------- gauges
    def consumer_lag(self, group: str, topic: str, partition: int, lag: int) -> None:
        """Set how many records a consumer group is behind on one partition."""
        if self.enabled:
            self._lag.set((group, topic, partition), lag)

    def source_paused(self, group: str, paused: bool) -> None:
        """Set whether polling is paused because ``group``'s lag passed the bound (backpressure)."""
        if self.enabled:
            self._paused.set((group,), 1 if paused else 0)

    def cursor_age_seconds(self, workspace_id: str, stream: str, complete_until: float, *, workspace: str = "") -> None:
        """Report when ``stream`` is known complete until (the last good poll); the exported gauge is
        ``now - complete_until`` at every collection, so it keeps growing when a poller stalls."""
        if self.enabled:
            with self._lock:
                self._cursors[(workspace_id, workspace, stream)] = complete_until
                if workspace_id and workspace:  # the id is known now: drop the series kept under the alias alone
                    self._cursors.pop(("", workspace, stream), None)

    def forget_cursor_ages(self, workspace: str) -> None:
        """Drop the cursor ages of ``workspace`` (alias), whose poller stopped here for good: else a
        workspace now polled elsewhere (or left its agency) keeps a series that ages into an alert."""
        with self._lock:
            for key in [k for k in self._cursors if k[1] == workspace]:
                del self._cursors[key]

    def sink_circuit(self, sink: str, is_open: bool) -> None:
        """Set whether a sink's circuit is open."""
        if self.enabled:
            self._circuit.set((sink,), 1 if is_open else 0)

    def readiness(self, check: str, ok: bool) -> None:
        """Set one readiness check's state (the service mirrors ``/readyz`` here at each scrape)."""
        if self.enabled:
            self._ready.set((check,), 1 if ok else 0)

    def _observe_cursors(self, options: CallbackOptions) -> Iterator[Observation]:
        now = self._clock.now()
        with self._lock:
            items = list(self._cursors.items())
            aliases = dict(self._aliases)
        for (workspace_id, workspace, stream), at in items:
            attrs = {WORKSPACE_ID: workspace_id, WORKSPACE: workspace or aliases.get(workspace_id, ""), STREAM: stream}
            yield Observation(max(0.0, now - at), {k: v for k, v in attrs.items() if v})

    # -------------------------------------------------------------------------------- spans
    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        context: Context | None = None,
        links: Sequence[Link] = (),
        link_headers: Iterable[Iterable[Header]] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> AbstractContextManager[Span]:
        """A span around a unit of work (``poll.page``, ``bus.publish``, ``rules.batch``, ``sink.batch``).

        Made current for its duration (so :meth:`inject_traceparent` inside it names it);
        ``context`` (from :meth:`extract`) makes it a child of a remote span. An exception
        leaving the block is recorded and marks the span as an error.

        ``link_headers`` — the headers of a batch's records — links the span to their traces
        (the first :data:`MAX_BATCH_LINKS` distinct ones; ``batch.traces`` tells how many there
        were), only when the span is recorded: an unsampled batch does not even read them.
        """
        if not self.enabled:
            return NOOP_SPAN
        return SpanScope(self._tracer, name, attributes, context, links, kind, link_headers)

    def inject_traceparent(self) -> bytes | None:
        """The W3C ``traceparent`` of the current span, or None when there is none."""
        if not self.enabled:
            return None
        sc = trace.get_current_span().get_span_context()
        if not sc.is_valid:
            return None
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}".encode("ascii")

    def trace_headers(self) -> tuple[Header, ...]:
        """``(("traceparent", ...),)`` for the current span, or ``()``: splat into a record's headers."""
        tp = self.inject_traceparent()
        return ((TRACEPARENT, tp),) if tp is not None else ()

    def extract(self, headers: Iterable[Header]) -> Context:
        """The trace context carried by a record's ``traceparent`` header (empty if none or invalid)."""
        if not self.enabled:
            return EMPTY_CONTEXT
        for name, value in headers:
            if name == TRACEPARENT:
                sc = cached_traceparent(value)
                return set_span_in_context(NonRecordingSpan(sc)) if sc is not None else EMPTY_CONTEXT
        return EMPTY_CONTEXT

    def links(self, headers_of_records: Iterable[Iterable[Header]], limit: int = 64) -> list[Link]:
        """Links to the traces of a batch's records (one per distinct trace, at most ``limit``).

        A sink or rules batch spans many events; linking its span to each event's trace lets
        one event be followed from the Instantly request to the SIEM request. Prefer
        ``span(..., link_headers=...)``, which reads the headers only for a recorded span.
        """
        if not self.enabled:
            return []
        return [Link(sc) for sc in batch_trace_contexts(headers_of_records, limit)[0]]


def _otlp_headers(cfg: OtlpConfig) -> dict[str, str]:
    return {k: v.get_secret_value() for k, v in cfg.headers.items()}


def _otlp_span_exporter(cfg: OtlpConfig) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=cfg.signal_url("traces"),
        headers=_otlp_headers(cfg),
        timeout=cfg.timeout_secs,
        compression=Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression,
    )


def _otlp_metric_exporter(cfg: OtlpConfig) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(
        endpoint=cfg.signal_url("metrics"),
        headers=_otlp_headers(cfg),
        timeout=cfg.timeout_secs,
        compression=Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression,
    )


# ---------------------------------------------------------------------------- accessors
_current: Telemetry = Telemetry.disabled()


def get_telemetry() -> Telemetry:
    """The process's telemetry (a disabled, safe instance until one is set)."""
    return _current


def set_telemetry(telemetry: Telemetry | None) -> Telemetry:
    """Make ``telemetry`` the process's instance (``None``: a disabled one); return the previous."""
    global _current
    previous = _current
    _current = telemetry if telemetry is not None else Telemetry.disabled()
    return previous


def setup_telemetry(config: TelemetryConfig, *, role: str | None = None, clock: Clock = SYSTEM_CLOCK) -> Telemetry:
    """Build a :class:`Telemetry` from config and make it the process's instance."""
    t = Telemetry(config, role=role, clock=clock)
    set_telemetry(t)
    return t
