"""The only place that reads the wall clock.

Everything else receives a :class:`Clock` so tests can inject a :class:`FakeClock`.
Times are UTC; ``format_time`` renders RFC 3339 with milliseconds and ``Z`` like Instantly.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """A source of time."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for durations."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_780_000_000.0):
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        """Current fake epoch seconds."""
        return self._now

    def monotonic(self) -> float:
        """Current fake monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds
        self._mono += seconds


SYSTEM_CLOCK = SystemClock()


def format_time(epoch: float) -> str:
    """Render epoch seconds as RFC 3339 UTC with milliseconds: ``2026-03-05T23:09:47.337Z``."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_LEAP_SECOND = re.compile(r"(?<=\d\d:\d\d):60(?:[.,]\d+)?(?=(?:[+-]\d\d(?::?\d\d)?)?$)")
"""Seconds ``60`` (a leap second, valid RFC 3339) with any fraction, before the offset."""


def parse_time(text: str) -> float:
    """Parse an ISO 8601 / RFC 3339 timestamp (``Z`` or offset) into epoch seconds.

    A leap second (``…T23:59:60Z``, valid RFC 3339; Python's datetime has no second 60) is clamped
    to ``:59.999`` of its minute: the event keeps its own minute instead of being refused.

    Raises:
        ValueError: the text is not a timestamp.
    """
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        clamped = _LEAP_SECOND.sub(":59.999", t, count=1)
        if clamped == t:
            raise
        dt = datetime.fromisoformat(clamped)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
