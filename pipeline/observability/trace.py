"""The ``traceparent`` bus header: parsing W3C trace contexts, cached, and picking a batch's traces."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from opentelemetry.trace import SpanContext, TraceFlags

Header = tuple[str, bytes]
TRACEPARENT: Final = "traceparent"
_TRACEPARENTS: dict[bytes, SpanContext | None] = {}
"""Parsed ``traceparent`` values: the records of one poll page share one, batch after batch."""
_MAX_TRACEPARENTS = 4096


def batch_trace_contexts(headers_of_records: Iterable[Iterable[Header]], limit: int) -> tuple[list[SpanContext], int]:
    """The span contexts of the first ``limit`` distinct traces in a batch's records, and how many there are.

    Records of one poll page share a traceparent (often the very same headers tuple), so
    repeats are skipped before any parsing, and each distinct value is parsed once per process
    (:func:`cached_traceparent`).
    """
    out: list[SpanContext] = []
    traces: set[int] = set()
    values: set[bytes] = set()
    prev_headers: object = None
    prev_value: bytes | None = None
    for headers in headers_of_records:
        if headers is prev_headers:
            continue
        prev_headers = headers
        for name, value in headers:
            if name != TRACEPARENT or value == prev_value:
                continue
            prev_value = value
            try:
                if value in values:
                    continue
                values.add(value)
            except TypeError:  # an unhashable value (a bytearray): no short cut
                pass
            sc = cached_traceparent(value)
            if sc is not None and sc.trace_id not in traces:
                traces.add(sc.trace_id)
                if len(out) < limit:
                    out.append(sc)
    return out, len(traces)


def cached_traceparent(value: bytes) -> SpanContext | None:
    """:func:`parse_traceparent`, remembered for the last few thousand distinct values."""
    try:
        return _TRACEPARENTS[value]
    except KeyError:
        pass
    except TypeError:  # not hashable (a bytearray): parse it every time
        return parse_traceparent(value)
    if len(_TRACEPARENTS) >= _MAX_TRACEPARENTS:
        _TRACEPARENTS.clear()
    sc = _TRACEPARENTS[value] = parse_traceparent(value)
    return sc


def parse_traceparent(value: bytes) -> SpanContext | None:
    """A remote span context from a W3C ``traceparent`` value, or None if it is malformed."""
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version = value[0:2]
    if version == b"ff" or (version == b"00" and len(value) != 55) or (len(value) > 55 and value[55:56] != b"-"):
        return None
    try:
        if not value[:55].isascii() or value[:55].lower() != value[:55]:
            return None
        int(version, 16)
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0xFF))
