"""Per-workspace rate limit: 100 requests per second and 6,000 per minute (both sliding windows).

Every key of a workspace draws on the same budget. A refused request does not count
(whether Instantly counts 429s is undocumented). Refusals answer 429 with the documented
body and no rate-limit headers. Limits are attributes so tests can shrink them.
"""

from __future__ import annotations

from collections import deque

from .clock import Clock, system_clock


class RateLimiter:
    """Sliding-window limiter keyed by workspace id; ``None`` disables a window."""

    def __init__(self, per_second: int | None = 100, per_minute: int | None = 6000, clock: Clock = system_clock):
        self.per_second = per_second
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[deque[float], deque[float]]] = {}

    def allow(self, workspace_id: str) -> bool:
        """Count one request for ``workspace_id`` if both windows have room."""
        now = self._clock()
        second, minute = self._windows.setdefault(workspace_id, (deque(), deque()))
        for hits, span in ((second, 1.0), (minute, 60.0)):
            while hits and hits[0] <= now - span:
                hits.popleft()
        if (self.per_second is not None and len(second) >= self.per_second) or (
            self.per_minute is not None and len(minute) >= self.per_minute
        ):
            return False
        second.append(now)
        minute.append(now)
        return True

    def reset(self) -> None:
        """Forget all counted requests."""
        self._windows.clear()
