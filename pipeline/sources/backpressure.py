"""Backpressure: pollers pause while the rules or a sink fall too far behind, and resume where they were.

With ``bus.max_consumer_lag: N`` (default: off) the process that runs the pollers measures, every
``bus.backpressure_check_secs``, the lag of the rules group and of each enabled sink's group
(the committed records not read yet, summed over partitions — what ``instantly-audit status``
shows; transaction markers on Kafka take offsets but do not count). While any group's lag is at
least ``N``, every poller waits before its next poll; when all are below ``N`` again, polling
resumes. A paused poller keeps its cursor (nothing is read, so nothing is skipped) and the poll
in flight when the bound is passed finishes — a poll's pages are each one transaction, so the
lag can pass ``N`` by at most one poll's records.

The state is on ``/metrics`` (``pipeline_source_paused{consumer_group}``: 1 for each group over
the bound) and in ``instantly-audit status`` (computed there from the same lags and bound). The
check reads the bus, so it works whether the rules and sinks run in this process or elsewhere.
A bus error leaves the last decision in place (logged), so a flapping broker neither floods
nor freezes polling for longer than it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from pipeline.bus.base import DATA_TOPICS, EVENTS_TOPIC, Bus, consumer_lags
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry, get_telemetry

log = get_logger("backpressure")
Groups = Sequence[tuple[str, Sequence[str]]]
"""Consumer groups and the topics each reads."""


def watched_groups(cfg: Any) -> list[tuple[str, list[str]]]:
    """The rules group and each enabled sink's group (``sink-<name>``), with the topics each reads."""
    from pipeline.delivery.batches import TOPICS

    groups: list[tuple[str, list[str]]] = [("rules", [EVENTS_TOPIC])]
    groups += [
        (f"sink-{sid}", [TOPICS[t] for t in dict.fromkeys(s.topics)]) for sid, s in cfg.sinks.items() if s.enabled
    ]
    return groups


async def measure_lags(bus: Bus, groups: Groups, ends: dict[Any, int] | None = None) -> list[dict[str, Any]]:
    """``[{group, lag, topics: {topic: lag}}]``: the records not read yet, summed over partitions
    (end offset minus committed; on Kafka without the transaction markers: :func:`consumer_lags`).

    Raises:
        BusError: the bus cannot be read.
    """
    if ends is None:
        async with bus.consumer(list(DATA_TOPICS), start="latest") as consumer:
            ends = await consumer.end_offsets()
    out: list[dict[str, Any]] = []
    for group, topics in groups:
        per_topic: dict[str, int] = {}
        for topic in topics:
            per_topic[topic] = sum((await consumer_lags(bus, group, topic, ends)).values())
        out.append({"group": group, "lag": sum(per_topic.values()), "topics": per_topic})
    return out


def over_bound(lags: Sequence[dict[str, Any]], bound: int | None) -> list[str]:
    """The groups whose lag is at least ``bound`` (none when backpressure is off)."""
    if bound is None:
        return []
    return [str(g["group"]) for g in lags if int(g["lag"]) >= bound]


class Backpressure:
    """The gate pollers wait at before each poll (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        groups: Groups,
        bound: int,
        *,
        interval_secs: float = 5.0,
        telemetry: Telemetry | None = None,
    ):
        self.bus = bus
        self.groups = [(g, list(ts)) for g, ts in groups]
        self.bound = bound
        self.interval_secs = interval_secs
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.over: list[str] = []
        """Groups at or over the bound at the last check (polling is paused while not empty)."""
        self.lags: dict[str, int] = {}
        self.pauses = 0
        """How many times polling was paused."""
        self.waiting = 0
        """Pollers blocked at the gate now."""
        self._open = asyncio.Event()
        self._open.set()

    @property
    def paused(self) -> bool:
        """Whether pollers wait now."""
        return not self._open.is_set()

    async def wait(self, stop: asyncio.Event) -> None:
        """Return at once when polling may go on; else when it may again, or when ``stop`` is set."""
        if self._open.is_set():
            return
        self.waiting += 1
        try:
            opened = asyncio.create_task(self._open.wait())
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({opened, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (opened, stopped):
                    t.cancel()
                await asyncio.gather(opened, stopped, return_exceptions=True)
        finally:
            self.waiting -= 1

    async def check(self) -> None:
        """Measure the lags once and open or close the gate.

        Raises:
            BusError: the bus cannot be read (the gate stays as it was).
        """
        lags = await measure_lags(self.bus, self.groups)
        self.lags = {str(g["group"]): int(g["lag"]) for g in lags}
        over = over_bound(lags, self.bound)
        for group in self.lags:
            self.telemetry.source_paused(group, group in over)
        if over and not self.paused:
            self.pauses += 1
            self._open.clear()
            log.warning(
                "Polling paused: consumer lag passed the bound",
                extra={"groups": {g: self.lags[g] for g in over}, "max_consumer_lag": self.bound},
            )
        elif not over and self.paused:
            self._open.set()
            log.info("Polling resumed: consumer lag below the bound", extra={"lags": self.lags})
        self.over = over

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``interval_secs`` until ``stop``; then open the gate (no poller stays blocked)."""
        try:
            while not stop.is_set():
                try:
                    await self.check()
                except BusError as err:
                    log.warning("Backpressure check failed; keeping the last decision", extra={"error": err.message})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval_secs)
        finally:
            self._open.set()
