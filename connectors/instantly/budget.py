"""The local request budget of one workspace, shared by every stream polling it.

Instantly allows 100 requests/s and 6,000 requests/min per workspace, shared with every
other integration and without rate-limit headers, so the poller keeps its own budget well
under both: a token bucket for requests per second (burst 1 by default, so any half-open
1 s window holds at most ``requests_per_second`` requests) and a sliding 60 s window for
requests per minute. ``acquire()`` waits until both allow one more request — and until a
``Retry-After`` the server sent has passed (:meth:`RequestBudget.hold`: the limit is the
workspace's, so no stream asks before then).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from connectors.instantly.config import BudgetConfig
from pipeline.clock import SYSTEM_CLOCK, Clock

Sleep = Callable[[float], Awaitable[None]]
WINDOW_SECS = 60.0
_EPS = 1e-9


class RequestBudget:
    """Token bucket (per second) + sliding window (per minute); safe to share between tasks."""

    def __init__(
        self,
        requests_per_second: float,
        requests_per_minute: int,
        *,
        burst: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = asyncio.sleep,
    ):
        """Create a budget.

        Raises:
            ValueError: a limit is not positive, or ``burst`` is below 1.
        """
        if requests_per_second <= 0 or requests_per_minute <= 0:
            raise ValueError("request budget limits must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(requests_per_second)
        self.per_minute = int(requests_per_minute)
        self.capacity = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock.monotonic()
        self._window: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.waited_secs = 0.0
        """Total time spent waiting for the budget (for telemetry)."""
        self._hold_until = 0.0

    def hold(self, secs: float) -> None:
        """No request before ``secs`` from now (the server's ``Retry-After``); a shorter hold never shortens one."""
        self._hold_until = max(self._hold_until, self._clock.monotonic() + max(0.0, secs))

    def held_for(self) -> float:
        """Seconds until the current :meth:`hold` ends (0 without one)."""
        return max(0.0, self._hold_until - self._clock.monotonic())

    @classmethod
    def from_config(
        cls, cfg: BudgetConfig, *, clock: Clock = SYSTEM_CLOCK, sleep: Sleep = asyncio.sleep
    ) -> RequestBudget:
        """Build the budget of a workspace from its ``budget`` config block."""
        return cls(cfg.requests_per_second, cfg.requests_per_minute, clock=clock, sleep=sleep)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._last = now
        while self._window and self._window[0] <= now - WINDOW_SECS + _EPS:
            self._window.popleft()

    def used_last_minute(self) -> int:
        """Requests taken in the last 60 s (``instantly-audit status`` shows it)."""
        now = self._clock.monotonic()
        return sum(1 for t in self._window if t > now - WINDOW_SECS + _EPS)

    def _wait_needed(self, now: float) -> float:
        wait = max(0.0, self._hold_until - now)
        if self._tokens < 1.0 - _EPS:
            wait = (1.0 - self._tokens) / self.rate
        if len(self._window) >= self.per_minute:
            wait = max(wait, self._window[0] + WINDOW_SECS - now)
        return wait

    async def acquire(self) -> float:
        """Wait until one more request fits both limits, then take it (FIFO between waiters).

        Returns the seconds this call slept for the budget (0.0 when a request fitted at once).
        Waiters sleep one at a time, so the sum over calls is the time the budget held requests back.
        """
        slept = 0.0
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                self._refill(now)
                wait = self._wait_needed(now)
                if wait <= _EPS:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self._window.append(now)
                    return slept
                self.waited_secs += wait
                slept += wait
                await self._sleep(wait)
