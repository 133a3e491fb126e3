"""Instantly's webhook delivery log as the ``webhook_deliveries`` stream reads it (pure: no I/O, no clock).

``GET /api/v2/webhook-events`` records every delivery *attempt*: ``success``, ``retry_count``,
``will_retry``, ``retry_group_id`` (the attempts of one delivery), ``retry_successful``, the
``webhook_url`` and the ``payload`` that was sent (API reference §7.3). Its order is not
documented, so nothing here depends on it: attempts are grouped by ``retry_group_id`` (an attempt
without one is its own group) and a group is judged as a whole (:class:`Attempts`):

* **lost** — Instantly gave up: an attempt says ``will_retry: false``, and no attempt of the group
  succeeded (``success: true``) or says ``retry_successful: true``;
* **pending** — it failed and Instantly will try again (no attempt with ``will_retry: false`` yet);
* **delivered** — an attempt succeeded, or the group says its retry succeeded: not lost.

The stream's state (:class:`DeliveryCursor`) is bounded: the time of the last complete read
(``cursor/{source_id}/webhook_deliveries/head``) and the keys of the lost groups already handled,
in hour chunks (:class:`~connectors.instantly.cursor_state.SeenChunks`, 1,000 keys a chunk)
pruned once they fall before the look-back window, which the read never lists again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from connectors.instantly.cursor_state import SeenChunks
from pipeline.clock import parse_time
from pipeline.redaction.urls import redact_url

DAY_SECS = 86_400
HEAD_VERSION = 1
MAX_LOOKBACK_DAYS = 7.0
"""After a long pause the read goes back at most this far (or the configured first look-back, if longer)."""


def record_time(record: Mapping[str, Any]) -> float | None:
    """An attempt's ``timestamp_created`` as epoch seconds, or ``None``."""
    value = record.get("timestamp_created")
    if not isinstance(value, str):
        return None
    try:
        ts = parse_time(value)
    except (ValueError, OverflowError):
        return None
    return ts if math.isfinite(ts) else None


def group_key(record: Mapping[str, Any]) -> str | None:
    """The delivery an attempt belongs to: its ``retry_group_id``, else its own ``id`` (``None``: neither)."""
    for name in ("retry_group_id", "id"):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def host_of(url: Any) -> str:
    """``scheme://host[:port]`` of a delivery's URL, after the project's URL redaction (a path or a
    query may hold a credential; nothing of them is kept); ``<unknown>`` when it is no URL."""
    if not isinstance(url, str) or "://" not in url:
        return "<unknown>"
    try:
        parts = urlsplit(redact_url(url))
    except ValueError:
        return "<unknown>"
    if not parts.scheme or not parts.netloc:
        return "<unknown>"
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Attempts:
    """The attempts of one delivery seen in the listing, reduced to what the verdict needs."""

    succeeded: bool = False
    gave_up: dict[str, Any] | None = None
    """The attempt that says ``will_retry: false`` (the latest, if several do)."""
    gave_up_at: float = 0.0
    count: int = 0

    def add(self, record: Mapping[str, Any], ts: float) -> None:
        """Count one attempt of this delivery."""
        self.count += 1
        if record.get("success") is True or record.get("retry_successful") is True:
            self.succeeded = True
        if record.get("will_retry") is False and (self.gave_up is None or ts >= self.gave_up_at):
            self.gave_up, self.gave_up_at = dict(record), ts

    @property
    def lost(self) -> bool:
        """Instantly gave up and no attempt got through."""
        return self.gave_up is not None and not self.succeeded

    @property
    def pending(self) -> bool:
        """Failed so far, and Instantly will try again."""
        return self.gave_up is None and not self.succeeded


@dataclass
class OtherDeliveries:
    """Failed deliveries to URLs that are not the pipeline's: counted by host, nothing else kept."""

    groups: dict[str, tuple[str, Attempts]] = field(default_factory=dict)

    def add(self, key: str, url: Any, record: Mapping[str, Any], ts: float) -> None:
        """Count one attempt (its payload is dropped here)."""
        slim = {k: record.get(k) for k in ("success", "retry_successful", "will_retry")}
        self.groups.setdefault(key, (host_of(url), Attempts()))[1].add(slim, ts)


# ------------------------------------------------------------------------------------------ state
@dataclass
class DeliveryCursor:
    """The stream's stored state (see the module docstring)."""

    prefix: str
    """``cursor/{source_id}/webhook_deliveries/``"""
    read_at: float | None = None
    stored_day: str | None = None
    receiver: SeenChunks = field(init=False)
    """Our receiver's lost deliveries already handled: ``<source>:<body hash>``."""
    other: SeenChunks = field(init=False)
    """Other URLs' lost deliveries already counted: their group keys."""
    handled: set[str] = field(default_factory=set)
    counted: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.receiver = SeenChunks(f"{self.prefix}receiver/")
        self.other = SeenChunks(f"{self.prefix}other/")

    @classmethod
    def load(cls, prefix: str, items: Mapping[str, bytes]) -> DeliveryCursor:
        """The cursor from the state entries under ``prefix`` (unreadable parts read as absent)."""
        cur = cls(prefix)
        head = _head(items.get(f"{prefix}head"))
        if head is not None:
            cur.read_at, cur.stored_day = head, _day(head)
        cur.handled = set(cur.receiver.load(items))
        cur.counted = set(cur.other.load(items))
        return cur

    def window_start(self, now: float, lookback_days: float) -> float:
        """Start (00:00 UTC) of the first day the read lists: the day before the last complete read's,
        or ``lookback_days`` before ``now`` on the first read; never more than
        ``max(MAX_LOOKBACK_DAYS, lookback_days)`` back."""
        floor = now - max(MAX_LOOKBACK_DAYS, lookback_days) * DAY_SECS
        start = now - lookback_days * DAY_SECS if self.read_at is None else min(self.read_at, now) - DAY_SECS
        return _midnight(max(start, floor))

    def handle(self, key: str, ts: float) -> None:
        """Remember one of our receiver's lost deliveries as handled."""
        self.handled.add(key)
        self.receiver.add([(key, ts)])

    def count(self, key: str, ts: float) -> None:
        """Remember one other URL's lost delivery as counted."""
        self.counted.add(key)
        self.other.add([(key, ts)])

    def writes(self, *, read_at: float, window_start: float) -> dict[str, bytes | None]:
        """The state writes of a complete read at ``read_at``: new keys, pruned chunks, and the head
        (only when its day changed: the window depends on nothing finer)."""
        self.receiver.prune(window_start)
        self.other.prune(window_start)
        out = self.receiver.writes() | self.other.writes()
        if _day(read_at) != self.stored_day or self.read_at is None:
            out[f"{self.prefix}head"] = orjson.dumps({"v": HEAD_VERSION, "read_at": read_at})
            self.stored_day = _day(read_at)
        self.read_at = read_at
        return out


def day_of(epoch: float) -> str:
    """``YYYY-MM-DD`` (UTC) of ``epoch``: the form of the listing's ``from``/``to``."""
    return _day(epoch)


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")


def _midnight(epoch: float) -> float:
    return float(int(epoch // DAY_SECS) * DAY_SECS)


def _head(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = doc.get("read_at") if isinstance(doc, dict) and doc.get("v") == HEAD_VERSION else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
