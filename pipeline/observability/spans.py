"""The span context managers behind :meth:`Telemetry.span <pipeline.observability.telemetry.Telemetry.span>`:
a no-op one for a disabled instance (no allocation), and the real scope that links a batch's traces.

An exception leaving a span is recorded with its message and stack trace redacted
(:func:`record_exception`): spans are exported to OTLP and the console, past the log redaction."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.util.types import AttributeValue

from pipeline.observability.trace import Header, batch_trace_contexts
from pipeline.redaction.text import redact_text


def record_exception(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span`` (the ``exception`` event and the ERROR status) with its message and
    stack trace through the log redaction: spans go to OTLP collectors and the console, outside
    every other redaction (an exception's text may quote a URL, a header or a secret)."""
    message = redact_text(str(exc))
    stack = redact_text("".join(traceback.format_exception(exc)))
    span.record_exception(exc, {"exception.message": message, "exception.stacktrace": stack})
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


class NoopSpan:
    """The context manager of a disabled instance: no span, no allocation."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN: Final = NoopSpan()
EMPTY_CONTEXT: Final = Context()
MAX_BATCH_LINKS: Final = 5
"""Links a batch span carries at most (the first distinct traces of its records); the span's
``batch.traces`` attribute says how many distinct traces the batch held."""


class SpanScope:
    """The current-span context manager of an enabled instance, without the generator machinery.

    Does what ``Tracer.start_as_current_span`` does (start, make current, record an escaping
    ``Exception`` and set the ERROR status when recording, end), in one small object, and links
    the span to ``link_headers`` (a batch's records' headers) only when it records.
    """

    __slots__ = ("_attributes", "_context", "_kind", "_link_headers", "_links", "_name", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        attributes: Mapping[str, AttributeValue] | None,
        context: Context | None,
        links: Sequence[Link],
        kind: SpanKind,
        link_headers: Iterable[Iterable[Header]] | None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._context = context
        self._links = links
        self._kind = kind
        self._link_headers = link_headers
        self._span: Span = INVALID_SPAN
        self._token: object = None

    def __enter__(self) -> Span:
        span = self._span = self._tracer.start_span(
            self._name, context=self._context, kind=self._kind, attributes=self._attributes, links=self._links
        )
        if self._link_headers is not None and span.is_recording():
            try:
                contexts, count = batch_trace_contexts(self._link_headers, MAX_BATCH_LINKS)
            except BaseException:
                span.end()
                raise
            for sc in contexts:
                span.add_link(sc)
            span.set_attribute("batch.traces", count)
        self._token = attach(set_span_in_context(span))
        return span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        span = self._span
        try:
            if isinstance(exc, Exception) and span.is_recording():
                record_exception(span, exc)
        finally:
            detach(self._token)  # type: ignore[arg-type]
            span.end()
