"""A poller task the supervisor restarts claims its writer id again and re-reads the bus state first.

On Kafka the bus serves state from a copy read once: a poller fenced by another process (two
processes polling one workspace with ``share_pollers: false``, a rollout's overlap) and restarted
on the same bus would go on from the cursors it read before the other's commits. The Kafka side
(fence, then re-read) is tested on a real broker in ``tests/integration/test_kafka_fencing.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import BusError
from pipeline.observability.telemetry import Telemetry
from pipeline.supervision import supervise
from pipeline.topology import Pipeline


class RecordingBus:
    """Records fence and refresh calls, in order."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def fence(self, txn_id: str) -> None:
        self.calls.append(f"fence {txn_id}")

    async def refresh_state(self, max_wait_secs: float = 0.0) -> None:
        self.calls.append("refresh")


class FencedOncePoller:
    """Fails its first run as fenced, stops the pipeline in its second."""

    source_id = "ws"
    txn_id = "poller-ws"

    def __init__(self, bus: RecordingBus) -> None:
        self.bus = bus
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        self.bus.calls.append(f"run {self.runs}")
        if self.runs == 1:
            raise BusError("writer poller-ws was fenced: another process now uses the same transactional id")
        stop.set()


async def test_a_restarted_poller_claims_its_writer_then_refreshes_state(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = RecordingBus()
    stop = asyncio.Event()
    pipe = Pipeline(None, bus, set())  # type: ignore[arg-type]  # nothing built: only its tasks are used
    pipe.pollers = [FencedOncePoller(bus)]
    [(name, body)] = pipe.tasks(stop)
    monkeypatch.setattr("pipeline.supervision.random.random", lambda: 0.0)  # restart after 0.5 s
    await asyncio.wait_for(supervise(name, body, stop), 10)
    assert bus.calls == ["run 1", "fence poller-ws", "refresh", "run 2"]


async def test_each_restart_of_a_task_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pipeline_task_restarts_total{task}`` shows the task at 0 from its start and counts each
    restart after a crash (the TaskCrashLooping alert reads it: a crash-looping rules worker or sink
    on a quiet workspace never builds the lag ConsumerLagGrowing needs)."""
    tel = Telemetry()
    stop = asyncio.Event()
    crashes = 0

    async def body() -> None:
        nonlocal crashes
        text = tel.render_prometheus()[0].decode()
        seen.append(restarts(text))
        if crashes < 2:
            crashes += 1
            raise BusError("cannot write the bus: disk full")
        stop.set()

    def restarts(text: str) -> float | None:
        found = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "pipeline_task_restarts_total" and s.labels == {"task": "rules"}
        ]
        return found[0] if found else None

    seen: list[float | None] = []
    monkeypatch.setattr("pipeline.supervision.random.random", lambda: 0.0)  # restarts after 0.5 s, then 1 s
    await asyncio.wait_for(supervise("rules", body, stop, telemetry=tel), 10)
    assert seen == [0.0, 1.0, 2.0]
    tel.shutdown()
