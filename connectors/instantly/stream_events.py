"""The poller's own stream-health events: a stream unavailable (refused or failing) and recovered.

* ``pipeline.stream_unavailable`` (and ``pipeline.audit_log_unavailable``, ``pipeline.poller_unauthorized``)
  for a refusal (401/402/403/404), at most once an hour per stream: the event id includes the hour and
  a state marker (:func:`marker_key`) holds the last one published;
* ``pipeline.stream_unavailable`` with ``transient: true`` for a stream that failed transiently (5xx,
  429 after retries, a timeout, unreachable) in :data:`OUTAGE_POLLS` polls in a row spanning at least
  :data:`OUTAGE_SECS` (rule ``pipeline.stream_failing``), again at most once an hour;
* ``pipeline.stream_recovered`` when a stream whose ``pipeline.stream_unavailable`` was published
  reads again (also after a restart: the marker says so); it resolves both rules' alerts. The marker
  then holds ``recovered:<event id>``, so an unavailability in the same hour gets a new event id.

Attributes carry the status, the error class, for a 403 the stream's read ``scope`` (the one the key
lacks, from the stream table), a plain ``cause`` (``HTTP 503``, ``timeout``,
``connection refused``, ``DNS``; :func:`connectors.instantly.client.cause_of`) and the client's
message, which names the request but never a URL, a header or a response body.
"""

from __future__ import annotations

from typing import Any

from connectors.instantly.api import BY_NAME
from connectors.instantly.client import cause_of
from connectors.instantly.normalize import pipeline_event
from connectors.instantly.streams import Publisher
from pipeline.bus.base import Bus
from pipeline.clock import format_time
from pipeline.errors import ScopeError, SourceError
from pipeline.observability.logs import get_logger
from pipeline.observability.metrics import ID, KIND, STREAM
from schemas.event import Event

log = get_logger("instantly.poller")

OUTAGE_POLLS = 3
OUTAGE_SECS = 60.0
"""A stream failing transiently in ``OUTAGE_POLLS`` polls in a row, the first at least ``OUTAGE_SECS``
before the last, is reported unavailable (at a 60 s poll: 3 polls, 120 s; at 5 s: 13 polls, 60 s)."""
UNAVAILABLE = "pipeline.stream_unavailable"
RECOVERED = "pipeline.stream_recovered"
_RECOVERED_MARK = b"recovered:"
"""Prefix of an unavailability marker after ``pipeline.stream_recovered`` (then the recovery event's id)."""


def marker_key(source_id: str, event_type: str, stream: str) -> str:
    """State key remembering the last pipeline event of a kind: ``pipeline/{source_id}/{type}/{stream}``."""
    return f"pipeline/{source_id}/{event_type}/{stream}"


class StreamEvents:
    """Stream-health events of one workspace poller (one instance per poller)."""

    def __init__(self, bus: Bus, source_id: str, streams: tuple[str, ...]):
        self.bus = bus
        self.source_id = source_id
        self.streams = streams
        self.outages: dict[str, tuple[float, int]] = {}
        """Streams failing transiently: (when the first failure in a row was seen, failed polls in a row)."""
        self._down: set[str] | None = None
        """Streams with a published ``pipeline.stream_unavailable`` not yet followed by
        ``pipeline.stream_recovered`` (loaded from the markers in state once)."""

    async def failed(self, pub: Publisher, stream: str, err: SourceError, now: float) -> int:
        """Count a transient failure of ``stream``; report it unavailable once the outage is long enough.

        Raises:
            BusError: publishing failed.
        """
        since, polls = self.outages.get(stream, (now, 0))
        polls += 1
        self.outages[stream] = (since, polls)
        if polls < OUTAGE_POLLS or now - since < OUTAGE_SECS:
            return 0
        outage = {"transient": True, "failing_since": format_time(since), "failed_polls": polls}
        return await self.unavailable(pub, UNAVAILABLE, stream, err, now, outage=outage)

    async def read(self, pub: Publisher, stream: str, now: float) -> int:
        """``stream`` was read: end its outage, and publish ``pipeline.stream_recovered`` if it was
        reported unavailable (refused or failing), which resolves the alert.

        Raises:
            BusError: publishing failed.
        """
        outage = self.outages.pop(stream, None)
        if self._down is None:
            self._down = set()
            for name in self.streams:
                marker = await self.bus.get_state(marker_key(self.source_id, UNAVAILABLE, name))
                if marker and not marker.startswith(_RECOVERED_MARK):
                    self._down.add(name)
        if stream not in self._down:
            return 0
        attributes: dict[str, Any] = {"stream": stream}
        if outage is not None:
            attributes |= {"failing_since": format_time(outage[0]), "failed_polls": outage[1]}
        event = pipeline_event(
            type=RECOVERED,
            workspace=pub.workspace,
            observed_at=format_time(now),
            stream=stream,
            natural_key=(RECOVERED, now),
            attributes=attributes,
        )
        log.info(
            "An Instantly stream reported unavailable is read again.",
            extra={"source": self.source_id, "workspace": pub.workspace.id, "stream": stream},
        )
        key = marker_key(self.source_id, UNAVAILABLE, stream)
        await self._publish(pub, stream, event, key, _RECOVERED_MARK + event.id.encode())
        self._down.discard(stream)
        return 1

    async def unavailable(
        self,
        pub: Publisher,
        event_type: str,
        stream: str,
        err: SourceError,
        now: float,
        *,
        outage: dict[str, Any] | None = None,
    ) -> int:
        """Publish ``event_type`` for ``stream`` unless this hour's was published already; 1 if published.

        Raises:
            BusError: publishing failed.
        """
        hour = int(now // 3600) * 3600
        status = getattr(err, "status", None)
        key = marker_key(self.source_id, event_type, stream)
        marker = await self.bus.get_state(key) or b""
        natural_key: tuple[Any, ...] = (event_type, status, hour) if outage is None else (event_type, "transient", hour)
        # Unavailable again after a recovery: the ids must differ from those before it, for the whole
        # outage — the recovery's token is carried in the marker (``<event id>|<token>``).
        published, _, carried = marker.partition(b"|")
        token = marker if marker.startswith(_RECOVERED_MARK) else carried
        if token:
            natural_key = (*natural_key, token.decode("ascii", "replace"))
        event = pipeline_event(
            type=event_type,
            workspace=pub.workspace,
            observed_at=format_time(now),
            stream=stream,
            natural_key=natural_key,
            attributes={
                "stream": stream,
                "status": status,
                "error": type(err).__name__,
                "cause": cause_of(err),
                "message": err.message,
                "hour": format_time(hour),
                **(outage or {}),
                **({"scope": BY_NAME[stream].scope} if isinstance(err, ScopeError) and stream in BY_NAME else {}),
            },
        )
        if event_type == UNAVAILABLE and self._down is not None:
            self._down.add(stream)
        if published == event.id.encode():
            return 0  # this hour's is out already (the poll's own failure line says it again)
        log.warning(
            "Instantly stream unavailable." if outage else "Instantly refused a stream.",
            extra={
                "source": self.source_id,
                "workspace": pub.workspace.id,
                "stream": stream,
                "status": status,
                "cause": cause_of(err),
                "event_type": event_type,
            },
        )
        await self._publish(pub, stream, event, key, event.id.encode() + (b"|" + token if token else b""))
        return 1

    async def _publish(self, pub: Publisher, stream: str, event: Event, key: str, marker: bytes) -> None:
        """Publish ``event`` and set the state ``key`` to ``marker`` in one transaction."""
        with pub.telemetry.span("bus.publish", {KIND: "source", ID: self.source_id, STREAM: stream}):
            async with self.bus.transaction(pub.txn_id) as tx:
                pub.send(tx, event)
                tx.put_state(key, marker)
        pub.count(stream, 0, 1, {})
