"""Clocks for the simulator: any ``Callable[[], float]`` returning epoch seconds will do.

The simulator reads time only through the clock it was given, so tests pass a
``pipeline.clock.FakeClock().now`` (time moves when told) or a :class:`ScaledClock`
(time runs ``speed`` times faster than real time, to play a scenario quickly).

A :class:`ScaledClock` is also a :class:`pipeline.clock.Clock` (``now``/``monotonic``): whoever
watches a scaled simulator (the demo's poller and rules) must read the same clock, or the
simulator's events happen "after" the poller observed them (``time`` later than ``observed_at``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""A callable returning the current time as epoch seconds (UTC)."""


def system_clock() -> float:
    """The real wall clock."""
    return time.time()


class ScaledClock:
    """Wall-clock-anchored time that runs ``speed`` times faster than real time."""

    def __init__(self, speed: float, start: float | None = None):
        self.speed = speed
        self.start = time.time() if start is None else start
        self._origin = time.monotonic()

    def __call__(self) -> float:
        """Current simulated epoch seconds."""
        return self.start + (time.monotonic() - self._origin) * self.speed

    def now(self) -> float:
        """Current simulated epoch seconds (the :class:`pipeline.clock.Clock` interface)."""
        return self()

    def monotonic(self) -> float:
        """Real monotonic seconds: timeouts and backoff keep their real durations."""
        return time.monotonic()
