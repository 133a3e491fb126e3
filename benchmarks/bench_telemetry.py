"""Cost of telemetry on a representative hot loop, on vs off in the same run.

The loop is what a sink runner does per batch: decode each event's JSON and render it
(here: pick fields and re-encode, a stand-in for a format), then per batch one span linked
to the records' traces (``link_headers``: the first ``MAX_BATCH_LINKS`` distinct traces and a
``batch.traces`` count, read only when the span is recorded), counters for received / sent /
deliveries and the lag gauge. The
"on" leg has the Prometheus reader and records every span, exporting it synchronously to a
null exporter (an upper bound: production exports in a background thread). The "off" leg
uses the disabled instance every component gets by default. Both legs process the same
batches, alternating batch by batch, timed in CPU seconds of this process, so load from
other processes and clock drift hit both alike; the median cost over rounds is printed.
Target: cost ≤ 10 %.

    .venv/bin/python benchmarks/bench_telemetry.py [--events 20000] [--batch 500] [--rounds 9]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Sequence

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline.observability.telemetry import Telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.observability.trace import Header
from schemas import Actor, Event, Source, Target, WorkspaceRef


class NullExporter(SpanExporter):
    """Accepts spans and drops them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Drop."""
        return SpanExportResult.SUCCESS


def make_records(n: int, tel: Telemetry) -> list[tuple[bytes, tuple[Header, ...]]]:
    """Realistic event bytes (~700 B) with the traceparent a poller would have attached."""
    ws = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme Outreach")
    out = []
    for i in range(n):
        e = Event.build(
            type="audit.user_login",
            time="2026-03-05T23:09:47.337Z",
            observed_at="2026-03-05T23:10:00.000Z",
            workspace=ws,
            source=Source("audit_log", "audit_logs", f"r{i}"),
            natural_key=(f"r{i}",),
            actor=Actor(user_id=f"u{i % 100}", user_name="Jane Doe", ip="203.0.113.9", user_agent="Mozilla/5.0"),
            target=Target("user", f"u{i % 100}", None),
            attributes={"activity_code": 1, "activity_label": "User login", "affected_count": 1},
            raw={"id": f"r{i}", "activity_type": 1, "ip_address": "203.0.113.9", "audit_metadata": {}},
        )
        if i % 50 == 0:  # one poll page of 50 records shares a trace
            span = tel.span("poll.page")
            span.__enter__()
            headers = (("event_type", b"audit.user_login"), *tel.trace_headers())
            span.__exit__(None, None, None)
        out.append((e.to_json(), headers))
    return out


def process_batch(tel: Telemetry, chunk: list[tuple[bytes, tuple[Header, ...]]], lag: int) -> int:
    """One sink batch: decode and render every event, with the telemetry a sink runner records."""
    with tel.span("sink.batch", {"sink": "soc", "batch.size": len(chunk)}, link_headers=(h for _, h in chunk)):
        tel.records_received("sink", "splunk_hec", "soc", n=len(chunk))
        out = []
        for value, _ in chunk:
            ev = orjson.loads(value)
            out.append(orjson.dumps({"time": ev["time"], "event": ev["type"], "host": ev["workspace"]["id"]}))
        tel.records_published("sink", "splunk_hec", "soc", n=len(out))
        tel.sink_deliveries("soc", len(out))
        tel.consumer_lag("sink-soc", "instantly.events.v1", 0, lag)
    return len(out)


def run(
    on: Telemetry, off: Telemetry, records: list[tuple[bytes, tuple[Header, ...]]], batch: int
) -> tuple[float, float]:
    """CPU seconds of (off, on) over every batch; the legs alternate batch by batch so drift hits both alike."""
    spent = {"off": 0.0, "on": 0.0}
    gc.collect()
    for i, start in enumerate(range(0, len(records), batch)):
        chunk = records[start : start + batch]
        legs = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
        for name, tel in legs:
            t0 = time.process_time()
            done = process_batch(tel, chunk, len(records) - start)
            spent[name] += time.process_time() - t0
            assert done == len(chunk)
    return spent["off"], spent["on"]


def main() -> None:
    """Measure and print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500, help="the sink runner's default batch_max_records")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--sample-ratio", type=float, default=1.0, help="telemetry.sample_ratio of the 'on' leg")
    args = p.parse_args()

    on = Telemetry(TelemetryConfig(sample_ratio=args.sample_ratio), span_exporters=[NullExporter()])
    off = Telemetry.disabled()
    records = make_records(args.events, on)
    run(on, off, records[: args.batch * 4], args.batch)  # warm up both paths
    costs, rates_off, rates_on = [], [], []
    for _ in range(args.rounds):
        t_off, t_on = run(on, off, records, args.batch)
        costs.append((t_on - t_off) / t_off * 100)
        rates_off.append(len(records) / t_off)
        rates_on.append(len(records) / t_on)
    body, _ = on.render_prometheus()
    on.shutdown()
    cost = statistics.median(costs)
    print(
        f"events={args.events} batch={args.batch} rounds={args.rounds} sample_ratio={args.sample_ratio} "
        "(medians; CPU time of this process)"
    )
    print(f"telemetry off: {statistics.median(rates_off):12,.0f} events/s")
    print(f"telemetry on:  {statistics.median(rates_on):12,.0f} events/s   (/metrics body {len(body)} B)")
    verdict = "OK" if cost <= 10 else "OVER TARGET"
    print(f"cost: {cost:.1f} %  (rounds: {min(costs):.1f} .. {max(costs):.1f}; target <= 10 %) -> {verdict}")


if __name__ == "__main__":
    main()
