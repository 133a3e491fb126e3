"""The metric catalog: attribute keys, every metric's OTel name, kind, unit and labels.

:data:`METRICS` lists every metric with its OTel name and the series name Prometheus shows
(dashboards and alert rules are tested against it); :mod:`pipeline.telemetry` records them.

Every metric with a workspace dimension carries both ``workspace_id`` (the workspace's id at the
vendor, e.g. the Instantly UUID) and ``workspace`` (the alias the config gives it, e.g. ``acme``),
always together (:data:`WORKSPACE_LABELS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# Attribute keys, one spelling everywhere (Prometheus shows dots as underscores).
KIND: Final = "component.kind"  # source | bus | rules | sink | webhook
TYPE: Final = "component.type"  # the config `type`, e.g. instantly_audit_logs, splunk_hec
ID: Final = "component.id"  # the user's id for the component, e.g. the workspace key or sink id
WORKSPACE_ID: Final = "workspace_id"  # the workspace's id at the vendor (the Instantly UUID)
WORKSPACE: Final = "workspace"  # the config alias of the workspace (empty when the config names none)
REASON: Final = "reason"
RULE: Final = "rule.id"
SEVERITY: Final = "severity"
STATUS: Final = "http.response.status_code"
SINK: Final = "sink"
ERROR_TYPE: Final = "error.type"
GROUP: Final = "consumer.group"
TOPIC: Final = "topic"
PARTITION: Final = "partition"
STREAM: Final = "stream"
SOURCE: Final = "source"
OPERATION: Final = "operation"
CHECK: Final = "check"
LEG: Final = "leg"  # a latency leg: source_to_bus | bus_to_alert | bus_to_destination | end_to_end

WORKSPACE_LABELS: Final = (WORKSPACE_ID, WORKSPACE)
"""The two workspace attributes, in the order every metric lists them."""

Instrument = Literal["counter", "gauge", "observable_gauge", "histogram"]
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its OTel name, instrument, unit, meaning and attribute keys."""

    name: str
    instrument: Instrument
    unit: str
    description: str
    attributes: tuple[str, ...]

    @property
    def family(self) -> str:
        """The Prometheus metric family name (dots become underscores, a unit suffix is added)."""
        base = self.name.replace(".", "_")
        suffix = _UNIT_SUFFIX.get(self.unit)
        return f"{base}_{suffix}" if suffix and not base.endswith(f"_{suffix}") else base

    @property
    def series(self) -> str:
        """The sample name a PromQL query uses (counters end in ``_total``, histograms are read by ``_bucket``)."""
        if self.instrument == "histogram":
            return f"{self.family}_bucket"
        return f"{self.family}_total" if self.instrument == "counter" else self.family

    @property
    def samples(self) -> tuple[str, ...]:
        """Every sample name the metric shows (a histogram: ``_bucket``, ``_count`` and ``_sum``)."""
        if self.instrument == "histogram":
            return (f"{self.family}_bucket", f"{self.family}_count", f"{self.family}_sum")
        return (self.series,)

    @property
    def labels(self) -> tuple[str, ...]:
        """The attribute keys as Prometheus label names (a histogram's buckets add ``le``)."""
        names = tuple(a.replace(".", "_") for a in self.attributes)
        return (*names, "le") if self.instrument == "histogram" else names


_C = (KIND, TYPE, ID, WORKSPACE_ID, WORKSPACE)
RECORDS_RECEIVED = MetricSpec(
    "pipeline.component.events.received",
    "counter",
    "{event}",
    "Records a component took in (polled, consumed, accepted).",
    _C,
)
RECORDS_SENT = MetricSpec(
    "pipeline.component.events.sent", "counter", "{event}", "Records a component published to the bus or delivered.", _C
)
RECORDS_DROPPED = MetricSpec(
    "pipeline.component.events.dropped", "counter", "{event}", "Records deliberately dropped, by reason.", (*_C, REASON)
)
DEAD_LETTERS = MetricSpec(
    "pipeline.dead_letters",
    "counter",
    "{record}",
    "Records written to the dead-letter topic instead of the events or alerts topic, or instead of a "
    "destination (counted once their transaction committed); read them with replay --topic deadletter.",
    _C,
)
COMPONENT_ERRORS = MetricSpec(
    "pipeline.component.errors", "counter", "{error}", "Errors a component met, by error type.", (*_C, ERROR_TYPE)
)
ALERTS_RAISED = MetricSpec(
    "pipeline.alerts.raised",
    "counter",
    "{alert}",
    "Alerts raised by the rules.",
    (RULE, SEVERITY, WORKSPACE_ID, WORKSPACE),
)
API_REQUESTS = MetricSpec(
    "pipeline.instantly.api.requests",
    "counter",
    "{request}",
    "Instantly API responses, by status.",
    (WORKSPACE_ID, WORKSPACE, STATUS),
)
API_RATE_LIMITED = MetricSpec(
    "pipeline.instantly.api.rate_limited",
    "counter",
    "{response}",
    "Instantly API 429 answers.",
    (WORKSPACE_ID, WORKSPACE),
)
API_BUDGET_WAIT = MetricSpec(
    "pipeline.instantly.api.budget_wait",
    "counter",
    "s",
    "Seconds requests to the Instantly API waited for the local request budget (budget.requests_per_second, "
    "requests_per_minute) or a Retry-After before being sent.",
    (WORKSPACE_ID, WORKSPACE),
)
RETRIES = MetricSpec("pipeline.retries", "counter", "{retry}", "Retried operations, by reason.", (KIND, ID, REASON))
SINK_DELIVERIES = MetricSpec(
    "pipeline.sink.deliveries", "counter", "{record}", "Records a destination confirmed.", (SINK,)
)
SINK_ERRORS = MetricSpec("pipeline.sink.errors", "counter", "{error}", "Failed sink requests.", (SINK, ERROR_TYPE))
SINK_CIRCUIT_OPEN = MetricSpec(
    "pipeline.sink.circuit.open", "gauge", "1", "1 while a sink's circuit is open (delivery paused).", (SINK,)
)
CONSUMER_LAG = MetricSpec(
    "pipeline.bus.consumer.lag",
    "gauge",
    "{record}",
    "Records behind the end of the partition.",
    (GROUP, TOPIC, PARTITION),
)
SOURCE_PAUSED = MetricSpec(
    "pipeline.source.paused",
    "gauge",
    "1",
    "1 while polling is paused because this consumer group's lag passed bus.max_consumer_lag.",
    (GROUP,),
)
CURSOR_AGE = MetricSpec(
    "pipeline.source.cursor.age",
    "observable_gauge",
    "s",
    "Seconds since the time up to which a stream is known complete.",
    (WORKSPACE_ID, WORKSPACE, STREAM),
)
WEBHOOK_REJECTIONS = MetricSpec(
    "pipeline.webhook.rejections", "counter", "{request}", "Webhook requests refused, by reason.", (SOURCE, REASON)
)
BUS_ERRORS = MetricSpec("pipeline.bus.errors", "counter", "{error}", "Failed bus operations.", (OPERATION, ERROR_TYPE))
LATENCY = MetricSpec(
    "pipeline.latency",
    "histogram",
    "s",
    "Seconds a record took over one leg: source_to_bus (record time at the source, or the webhook "
    "request's arrival, to committed on the bus), bus_to_alert (event appended to alert committed), "
    "bus_to_destination (appended to acknowledged by a sink), end_to_end (source time to acknowledged).",
    (LEG, ID),
)
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
                          30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)  # fmt: skip
"""Histogram boundaries of :data:`LATENCY` (fine around a few seconds: poll intervals)."""
RECEIPTS = MetricSpec(
    "pipeline.completeness.receipts",
    "counter",
    "{receipt}",
    "Completeness receipts a source published (one per hour ledger a transaction changed).",
    (ID, WORKSPACE_ID, WORKSPACE),
)
GAP_HOURS = MetricSpec(
    "pipeline.completeness.gap_hours",
    "counter",
    "{hour}",
    "Hours found with a gap, by reason: changed_after_close (the ledger changed after the hour closed), "
    "interrupted (the source did not poll during part of it).",
    (ID, WORKSPACE_ID, WORKSPACE, REASON),
)
TASK = "task"
TASK_RESTARTS = MetricSpec(
    "pipeline.task.restarts",
    "counter",
    "{restart}",
    "Restarts of a long-running task after it crashed (poller:<workspace>, rules, sink:<id>, bus-monitor, …); "
    "shown at 0 from the start.",
    (TASK,),
)
READINESS = MetricSpec("pipeline.readiness", "gauge", "1", "1 when a readiness check passes, else 0.", (CHECK,))

METRICS: Final[tuple[MetricSpec, ...]] = (
    RECORDS_RECEIVED,
    RECORDS_SENT,
    RECORDS_DROPPED,
    DEAD_LETTERS,
    COMPONENT_ERRORS,
    ALERTS_RAISED,
    API_REQUESTS,
    API_RATE_LIMITED,
    API_BUDGET_WAIT,
    RETRIES,
    SINK_DELIVERIES,
    SINK_ERRORS,
    SINK_CIRCUIT_OPEN,
    CONSUMER_LAG,
    SOURCE_PAUSED,
    CURSOR_AGE,
    WEBHOOK_REJECTIONS,
    BUS_ERRORS,
    TASK_RESTARTS,
    READINESS,
    LATENCY,
    RECEIPTS,
    GAP_HOURS,
)


PROCESS_SERIES: Final = frozenset({
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_start_time_seconds", "process_open_fds", "process_max_fds",
})  # fmt: skip
"""The standard process metrics every Prometheus client library exports (``prometheus_client``'s
``ProcessCollector``, read from ``/proc``: absent where there is none)."""


def prometheus_series() -> frozenset[str]:
    """Every sample name ``/metrics`` can show (what PromQL and dashboards may reference)."""
    return frozenset(s for m in METRICS for s in m.samples) | {"target_info"} | PROCESS_SERIES
