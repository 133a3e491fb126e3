"""Retry policy: exponential backoff with full jitter, and the circuit breaker.

``delay(attempt) = uniform(0, min(max, initial * 2**attempt))`` (AWS's "full jitter"), raised
to the destination's ``Retry-After`` when it sent one: a server that says "come back in 30 s"
is never hit sooner. The random source is injectable so tests can assert exact delays.

:class:`Circuit` counts consecutive attempts that made no progress and opens after
``threshold`` of them (at once for a fatal error); open, it tells its owner to stop for
``open_secs``; then one trial attempt (half-open) closes it or opens it again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum

from pipeline.clock import Clock
from pipeline.logs import get_logger

log = get_logger("delivery")

MAX_RETRY_AFTER_SECS = 3600.0
"""A ``Retry-After`` longer than this is clamped (a broken server must not park a sink for days)."""


class Backoff:
    """Delays for consecutive retries of one operation."""

    def __init__(self, initial_secs: float, max_secs: float, *, rng: Callable[[], float] = random.random) -> None:
        if initial_secs <= 0 or max_secs <= 0:
            raise ValueError("backoff delays must be positive")
        self.initial_secs = initial_secs
        self.max_secs = max(max_secs, initial_secs)
        self._rng = rng

    def cap(self, attempt: int) -> float:
        """The upper bound of the jittered delay before retry number ``attempt + 1``."""
        return min(self.max_secs, self.initial_secs * 2.0 ** min(attempt, 62))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The delay before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
        delay = self._rng() * self.cap(attempt)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECS))
        return delay


class CircuitState(StrEnum):
    """Closed: delivering. Open: paused. Half-open: the next attempt decides."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Circuit:
    """Counts consecutive failed attempts; opens after ``threshold`` (or at once on a fatal error)."""

    def __init__(self, threshold: int, open_secs: float, clock: Clock, name: str) -> None:
        self.threshold = threshold
        self.open_secs = open_secs
        self._clock = clock
        self._name = name
        self._state = CircuitState.CLOSED
        self._open_until = 0.0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit turns half-open once its time is up)."""
        if self._state is CircuitState.OPEN and self._clock.monotonic() >= self._open_until:
            self._state = CircuitState.HALF_OPEN
        return self._state

    def remaining(self) -> float:
        """Seconds until an open circuit turns half-open (0 otherwise)."""
        return max(0.0, self._open_until - self._clock.monotonic()) if self.state is CircuitState.OPEN else 0.0

    def half_open(self) -> None:
        """Allow one trial attempt now (the caller waited out the open period)."""
        if self._state is CircuitState.OPEN:
            self._state = CircuitState.HALF_OPEN

    def success(self) -> None:
        """An attempt made progress: close."""
        if self._state is not CircuitState.CLOSED:
            log.info("Sink circuit closed.", extra={"sink": self._name})
        self._state = CircuitState.CLOSED
        self.failures = 0

    def failure(self, error: str, *, fatal: bool = False) -> bool:
        """An attempt made no progress; return True if the circuit is now open."""
        self.failures += 1
        self.last_error = error
        if fatal or self._state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            self._state = CircuitState.OPEN
            self._open_until = self._clock.monotonic() + self.open_secs
            log.warning(
                "Sink circuit opened; consumption paused.",
                extra={"sink": self._name, "failures": self.failures,
                       "pause_secs": self.open_secs, "error": error},
            )  # fmt: skip
            return True
        return False
