"""Batch spans: links read only when recorded, capped with a count, and the same traces as before."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, StatusCode

from pipeline.observability.spans import MAX_BATCH_LINKS
from pipeline.observability.telemetry import Telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.observability.trace import (
    TRACEPARENT,
    Header,
    batch_trace_contexts,
    cached_traceparent,
    parse_traceparent,
)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Finished spans, in memory."""
    return InMemorySpanExporter()


def telemetry(spans: InMemorySpanExporter, ratio: float = 1.0) -> Telemetry:
    return Telemetry(TelemetryConfig(prometheus=False, sample_ratio=ratio), span_exporters=[spans])


def traced(tel: Telemetry, n: int) -> list[tuple[Header, ...]]:
    """``n`` poll pages' headers, each carrying its own trace."""
    out = []
    for _ in range(n):
        with tel.span("poll.page"):
            out.append((("event_type", b"audit.user_login"), *tel.trace_headers()))
    return out


def test_batch_span_links_the_records_traces_when_recorded(spans: InMemorySpanExporter) -> None:
    """Records of a few pages: one link per distinct trace, and the count; the span is current inside."""
    tel = telemetry(spans)
    pages = traced(tel, 3)
    records = [pages[i % 3] for i in range(30)] + [(("traceparent", b"garbage"),), ()]
    with tel.span("sink.batch", {"batch.size": len(records)}, link_headers=records) as span:
        inner = tel.inject_traceparent()
    assert inner is not None and inner.decode().split("-")[1] == f"{span.get_span_context().trace_id:032x}"
    batch = next(s for s in spans.get_finished_spans() if s.name == "sink.batch")
    page_traces = [s.context.trace_id for s in spans.get_finished_spans() if s.name == "poll.page"]
    assert [link.context.trace_id for link in batch.links] == page_traces
    assert batch.attributes is not None and batch.attributes["batch.traces"] == 3
    assert batch.attributes["batch.size"] == 32
    tel.shutdown()


def test_batch_span_caps_its_links(spans: InMemorySpanExporter) -> None:
    """A batch over many traces links the first MAX_BATCH_LINKS and counts them all."""
    tel = telemetry(spans)
    pages = traced(tel, MAX_BATCH_LINKS + 5)
    with tel.span("sink.batch", link_headers=pages):
        pass
    batch = next(s for s in spans.get_finished_spans() if s.name == "sink.batch")
    assert len(batch.links) == MAX_BATCH_LINKS
    assert batch.attributes is not None and batch.attributes["batch.traces"] == MAX_BATCH_LINKS + 5
    tel.shutdown()


def test_unsampled_batch_span_does_not_read_the_headers(spans: InMemorySpanExporter) -> None:
    """With sampling off, the records' headers are never iterated (no cost for an unrecorded span)."""
    tel = telemetry(spans, ratio=0.0)
    read = []

    def headers() -> Iterator[tuple[Header, ...]]:
        read.append(True)
        yield (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),)

    with tel.span("sink.batch", link_headers=headers()) as span:
        assert not span.is_recording()
    assert read == [] and spans.get_finished_spans() == ()
    tel.shutdown()


def test_trace_context_flows_from_a_record_into_the_sampled_batch_span(spans: InMemorySpanExporter) -> None:
    """A sampled record's traceparent becomes the parent (extract) or a link (link_headers) of the batch span."""
    tel = telemetry(spans, ratio=0.5)
    remote = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"  # sampled upstream: ParentBased keeps it
    with tel.span("sink.batch", context=tel.extract([(TRACEPARENT, remote)]), link_headers=[[(TRACEPARENT, remote)]]):
        pass
    (batch,) = spans.get_finished_spans()
    assert batch.parent is not None and batch.parent.span_id == int(b"b" * 16, 16)
    assert [link.context.trace_id for link in batch.links] == [int(b"a" * 32, 16)]
    tel.shutdown()


def test_batch_span_records_exceptions(spans: InMemorySpanExporter) -> None:
    """An exception leaving a batch span is recorded, sets ERROR, is re-raised, and the context is restored."""
    tel = telemetry(spans)
    with pytest.raises(KeyError), tel.span("rules.batch", link_headers=[]):
        raise KeyError("boom")
    (s,) = spans.get_finished_spans()
    assert s.status.status_code is StatusCode.ERROR and s.status.description == "KeyError: 'boom'"
    assert s.events[0].name == "exception" and tel.inject_traceparent() is None
    tel.shutdown()


def test_disabled_batch_span_reads_nothing() -> None:
    """The disabled instance neither iterates the headers nor builds a span."""
    t = Telemetry.disabled()

    def headers() -> Iterator[tuple[Header, ...]]:
        yield from ()
        raise AssertionError("read")

    with t.span("sink.batch", link_headers=headers()) as s:
        assert not s.get_span_context().is_valid


def old_links(headers_of_records: Iterable[Iterable[Header]], limit: int) -> list[Link]:
    """``Telemetry.links`` before the cache and the short cuts."""
    distinct = {v: None for headers in headers_of_records for k, v in headers if k == TRACEPARENT}
    out: list[Link] = []
    seen: set[int] = set()
    for value in distinct:
        sc = parse_traceparent(value)
        if sc is not None and sc.trace_id not in seen:
            seen.add(sc.trace_id)
            out.append(Link(sc))
            if len(out) >= limit:
                break
    return out


TRACE_IDS = st.sampled_from(["0" * 32, "1" * 32, "2" * 32, "3" * 32, "4" * 32, "a" * 31 + "A"])
SPAN_IDS = st.sampled_from(["0" * 16, "1" * 16, "2" * 16])
VALUES = st.one_of(
    st.builds(lambda t, s, f: f"00-{t}-{s}-{f}".encode(), TRACE_IDS, SPAN_IDS, st.sampled_from(["00", "01", "zz"])),
    st.sampled_from([b"", b"garbage", b"ff-" + b"1" * 32 + b"-" + b"1" * 16 + b"-01"]),
    st.binary(max_size=60),
)
HEADERS = st.lists(st.tuples(st.sampled_from([TRACEPARENT, "event_type", "Traceparent"]), VALUES), max_size=3)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(HEADERS, max_size=20), repeat=st.booleans(), limit=st.integers(1, 6))
def test_batch_trace_contexts_match_the_old_links(
    records: list[list[tuple[str, bytes]]], repeat: bool, limit: int
) -> None:
    """Same traces in the same order (and the full count) as the links computed before, headers shared or not."""
    if repeat:  # records of one page share the very same headers object
        records = [r for r in records for _ in range(3)]
    contexts, count = batch_trace_contexts([tuple(h) for h in records], limit)
    want = old_links(records, limit)
    assert [(c.trace_id, c.span_id, c.trace_flags) for c in contexts] == [
        (w.context.trace_id, w.context.span_id, w.context.trace_flags) for w in want
    ]
    assert count == len(old_links(records, 10_000))
    for headers in records:
        for _, v in headers:
            assert cached_traceparent(v) == parse_traceparent(v)


def test_links_helper_still_links_every_distinct_trace(spans: InMemorySpanExporter) -> None:
    """``links()`` keeps its contract (one link per distinct trace, up to its limit)."""
    tel = telemetry(spans)
    pages = traced(tel, 5)
    assert len(tel.links(pages * 2)) == 5 and len(tel.links(pages, limit=2)) == 2
    value: Any = bytearray(pages[0][1][1])  # not hashable: parsed, not cached
    assert cached_traceparent(value) == parse_traceparent(pages[0][1][1])
    tel.shutdown()
