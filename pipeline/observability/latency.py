"""Latency per leg: the ``source_ms`` record header and the ages the ``pipeline.latency`` histogram records.

A source stamps each event it publishes with ``source_ms`` — when the record became known at
the source, epoch milliseconds (the audit record's or the resource's timestamp; for a webhook,
the moment the request arrived) — and the rules worker copies the newest ``source_ms`` of an
alert's events onto the alert. Each stage then records, in
:meth:`~pipeline.observability.telemetry.Telemetry.latency`:

* ``source_to_bus`` — the poller when a page commits (now - record time), the webhook receiver
  when the bus confirmed (request arrival → confirmed);
* ``bus_to_alert`` — the rules worker when the alert committed (now - the triggering event's
  append time on the bus);
* ``bus_to_destination`` — a sink runner when the destination acknowledged (now - append time);
* ``end_to_end`` — the same moment, now - ``source_ms``.

The clocks compared are the host's wall clock and the bus's append timestamps (the same host
on the embedded bus; the broker's clock on Kafka), and the source's timestamps for the first and
last legs: skew shows up there, so a negative age is recorded as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

T = TypeVar("T")

SOURCE_TIME: Final = "source_ms"
"""The header carrying the source time of a record, epoch milliseconds as ASCII digits."""
SAMPLES_PER_BATCH: Final = 32
"""A stage records at most this many ages per batch (evenly spread), so big batches stay cheap."""


def source_time_header(epoch_secs: float) -> tuple[str, bytes]:
    """The ``source_ms`` header for a source time given in epoch seconds."""
    return SOURCE_TIME, str(int(epoch_secs * 1000)).encode()


def header_secs(value: bytes | None) -> float | None:
    """A ``source_ms`` header value as epoch seconds, or ``None`` when absent or malformed."""
    if not value or not value.isdigit():
        return None
    return int(value) / 1000


def sampled(items: Sequence[T], limit: int = SAMPLES_PER_BATCH) -> Sequence[T]:
    """At most ``limit`` items of ``items``, evenly spread (all of them when there are few)."""
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
