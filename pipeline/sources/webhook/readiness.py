"""Readiness of the receiver: ready while the bus committed recently, else when a heartbeat state
write (``webhook/heartbeat/<writer_id>``) succeeds now; one probe at a time, answered within 2 s."""

from __future__ import annotations

import asyncio

from pipeline.bus.base import Bus
from pipeline.clock import Clock, format_time
from pipeline.observability.logs import get_logger
from pipeline.sources.webhook.dedup import HEARTBEAT_PREFIX
from pipeline.sources.webhook.group_commit import GroupCommitter

__all__ = ["HEARTBEAT_PREFIX", "Readiness"]

log = get_logger("webhook")

READY_FRESH_SECS = 5.0
READY_PROBE_TIMEOUT_SECS = 2.0


class Readiness:
    """The ``/readyz`` answer, from the committer's recent history or a heartbeat write."""

    def __init__(self, bus: Bus, committer: GroupCommitter, writer_id: str, clock: Clock) -> None:
        self.bus = bus
        self.committer = committer
        self.writer_id = writer_id
        self.clock = clock
        self._probe: asyncio.Task[bool] | None = None

    async def check(self) -> bool:
        """True when the bus took a commit within the last seconds, or a heartbeat write succeeds now."""
        c = self.committer
        if not c.running:
            return False
        now = self.clock.monotonic()
        if (
            c.last_success is not None
            and now - c.last_success < READY_FRESH_SECS
            and (c.last_failure is None or c.last_failure < c.last_success)
        ):
            return True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            return await asyncio.wait_for(asyncio.shield(self._probe), READY_PROBE_TIMEOUT_SECS)
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Cancel a probe still running."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None

    async def _heartbeat(self) -> bool:
        try:
            async with self.bus.transaction(self.writer_id) as tx:
                tx.put_state(f"{HEARTBEAT_PREFIX}{self.writer_id}", format_time(self.clock.now()).encode())
        except Exception as err:  # noqa: BLE001 - readiness reports any bus failure as "not ready"
            self.committer.last_failure = self.clock.monotonic()
            log.warning("Webhook readiness probe failed", extra={"error": type(err).__name__})
            return False
        self.committer.last_success = self.clock.monotonic()
        return True
