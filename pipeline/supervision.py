"""Supervision of the pipeline's long-running tasks: restart with backoff, and watch the bus.

:func:`supervise` runs a task until stop, restarting it after a crash with jittered exponential
backoff (1 s doubling to 60 s, back to 1 s after a healthy run) and counting each restart in
``pipeline_task_restarts_total``; :func:`monitor_bus` sets the consumer-lag gauges, reports the
bus's reachability to the health registry and refreshes what the topology re-reads;
:func:`apply_retention` trims the bus to its retention (the embedded bus: records older than
``bus.retention.max_age_days`` or beyond ``max_bytes_per_partition``; Kafka's broker does its own).
Split out of :mod:`pipeline.topology`, which wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from pipeline.bus.base import EVENTS_TOPIC, Bus, Consumer, consumer_lags
from pipeline.errors import BusError, ConfigError
from pipeline.observability.health import HealthRegistry, get_health
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry, get_telemetry

log = get_logger("topology")  # the same component as before the split: log queries keep working

HEALTHY_RUN_SECS = 60.0  # a task that ran this long before crashing restarts after 1 s again
LAG_INTERVAL_SECS = 15.0
RETENTION_INTERVAL_SECS = 60.0
"""How often a running pipeline applies the bus's retention (and once at start)."""


async def supervise(
    name: str, body: Callable[[], Awaitable[None]], stop: asyncio.Event, *, telemetry: Telemetry | None = None
) -> None:
    """Run ``body`` until ``stop``; restart it with backoff when it crashes, counting each restart in
    ``pipeline_task_restarts_total{task=name}`` (at 0 from the start, so the first crash is an increase)."""
    tel = telemetry if telemetry is not None else get_telemetry()
    tel.task_restarts(name, 0)
    delay = 1.0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        try:
            await body()
            if stop.is_set():
                return
            delay = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if loop.time() - started >= HEALTHY_RUN_SECS:
                delay = 1.0  # it ran fine for a while: this is a new incident, not a crash loop
            retriable = getattr(err, "retriable", True)
            log.error(
                "Task crashed; restarting",
                extra={"task": name, "error": f"{type(err).__name__}: {err}", "retry_in_secs": round(delay, 1)},
            )
            if not retriable and isinstance(err, ConfigError):
                raise
            tel.task_restarts(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay * (0.5 + random.random()))  # noqa: S311
        delay = min(delay * 2, 60.0)


async def monitor_bus(
    bus: Bus,
    groups: list[tuple[str, list[str]]],
    stop: asyncio.Event,
    interval_secs: float = LAG_INTERVAL_SECS,
    *,
    telemetry: Telemetry | None = None,
    health: HealthRegistry | None = None,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Every ``interval_secs`` until ``stop``: set each group's consumer lag per partition (the
    records not read yet: :func:`~pipeline.bus.base.consumer_lags`), report the bus reachable or
    not to the health registry, and call ``refresh`` (the topology re-reads the workspace aliases
    there).

    One group-less consumer stays open for the end offsets (it never reads and never commits);
    it is reopened after a bus error. ``telemetry`` and ``health`` default to the process's current
    ones, read once at the start.
    """
    tel = telemetry if telemetry is not None else get_telemetry()
    health = health if health is not None else get_health()
    topics = sorted({t for _, ts in groups for t in ts}) or [EVENTS_TOPIC]
    consumer: Consumer | None = None
    failing_since: float | None = None
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            operation = "consumer"
            try:
                if consumer is None:
                    consumer = await bus.consumer(topics, start="latest").__aenter__()
                operation = "end_offsets"
                ends = await consumer.end_offsets()
                operation = "committed"
                for group, group_topics in groups:
                    for topic in group_topics:
                        for tp, lag in (await consumer_lags(bus, group, topic, ends)).items():
                            tel.consumer_lag(group, topic, tp.partition, lag)
                if refresh is not None:
                    operation = "state"
                    await refresh()
                health.bus_ok()
                if failing_since is not None:
                    log.info(
                        "Bus reachable again; resumed",
                        extra={"outage_secs": round(loop.time() - failing_since, 1)},
                    )
                    failing_since = None
            except BusError as err:
                tel.bus_errors(operation, type(err).__name__)
                health.bus_error(err)
                if failing_since is None:
                    failing_since = loop.time()
                log.warning("Bus check failed", extra={"operation": operation, "error": err.message})
                if consumer is not None:
                    stale, consumer = consumer, None
                    await _close_quietly(stale)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_secs)
    finally:
        if consumer is not None:
            await _close_quietly(consumer)


async def apply_retention(
    bus: Bus,
    stop: asyncio.Event,
    interval_secs: float = RETENTION_INTERVAL_SECS,
    *,
    telemetry: Telemetry | None = None,
) -> None:
    """At once and then every ``interval_secs`` until ``stop``: apply the bus's retention
    (:meth:`~pipeline.bus.base.Bus.enforce_retention`), logging how many records went when some did.

    Without it the embedded bus file only grows: nothing else deletes records. A bus error is
    logged and counted (``pipeline_bus_errors_total{operation="retention"}``) and the next round
    tries again.
    """
    tel = telemetry if telemetry is not None else get_telemetry()
    while not stop.is_set():
        await trim_bus(bus, tel)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_secs)


async def trim_bus(bus: Bus, telemetry: Telemetry) -> int:
    """Apply the bus's retention once; return the records removed (0 after a bus error, which is
    logged and counted: a trim that failed is tried again next time, it never fails a run)."""
    try:
        removed = await bus.enforce_retention()
    except BusError as err:
        telemetry.bus_errors("retention", type(err).__name__)
        log.warning("Bus retention failed; trying again later", extra={"error": err.message})
        return 0
    if removed:
        log.info("Bus retention removed old records", extra={"records": removed})
    return removed


async def _close_quietly(consumer: Consumer, limit_s: float = 5.0) -> None:
    """Close a consumer without hanging on a dead broker (aiokafka's fetcher can block on close)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(consumer.__aexit__(None, None, None), timeout=limit_s)


__all__ = [
    "HEALTHY_RUN_SECS",
    "LAG_INTERVAL_SECS",
    "RETENTION_INTERVAL_SECS",
    "apply_retention",
    "monitor_bus",
    "supervise",
    "trim_bus",
]
