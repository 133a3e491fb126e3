"""The loop every polling source runs: wait out backpressure, poll, wait the interval, until stop.

A retriable bus failure ("bus busy") is logged and the poll is retried at the next interval; any
other bus failure ends the loop (the supervisor restarts the source with backoff).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

from pipeline.errors import BusError
from pipeline.sources.backpressure import Backpressure


async def poll_until_stopped(
    poll: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    interval_secs: Callable[[], float],
    backpressure: Backpressure | None,
    log: logging.Logger | logging.LoggerAdapter[Any],
    log_extra: Mapping[str, Any],
    on_bus_error: Callable[[BusError], None] | None = None,
) -> None:
    """Call ``poll`` every ``interval_secs()`` seconds until ``stop`` is set.

    ``on_bus_error`` sees every bus failure of a poll (e.g. to count it) before it is judged.

    Raises:
        BusError: a poll failed in a way that retrying cannot fix.
    """
    while not stop.is_set():
        if backpressure is not None:
            await backpressure.wait(stop)  # the rules or a sink are too far behind
            if stop.is_set():
                break
        try:
            await poll()
        except BusError as err:
            if on_bus_error is not None:
                on_bus_error(err)
            if not err.retriable:
                raise
            log.warning("Bus busy; the poll is retried next interval.", extra=dict(log_extra))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_secs())
