"""A poller replica that gets no assignment from its group in time leaves and rejoins (logged)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.errors import BusError
from pipeline.sources import assignment
from pipeline.sources.assignment import WorkspaceAssignment


class _SilentMembership:
    """A member the group never gives partitions to (its callbacks never run)."""

    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()  # neither assigned nor stopped: the hang seen under load
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class _SharedSqlite(SqliteBus):
    """The embedded bus with the sharing methods, its membership silent."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.member = _SilentMembership()

    def membership(self, topic: str, group: str, **_: Any) -> _SilentMembership:
        return self.member

    def partition_of(self, key: bytes, partitions: int) -> int:
        return sum(key) % partitions

    async def release(self, txn_id: str) -> None:
        return None

    async def refresh_state(self, max_wait_secs: float = 0.0) -> None:
        return None


async def test_no_assignment_in_time_leaves_and_rejoins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(assignment, "JOIN_DEADLINE_SECS", 0.3)
    bus = _SharedSqlite(tmp_path / "bus.db")
    async with bus:
        a = WorkspaceAssignment(bus, list)
        with caplog.at_level(logging.ERROR), pytest.raises(BusError, match="no assignment from the poller group"):
            await asyncio.wait_for(a.run(asyncio.Event()), 10)
    assert bus.member.cancelled
    assert any("No assignment from the poller group in time" in r.getMessage() for r in caplog.records)


async def test_a_stop_while_joining_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignment, "JOIN_DEADLINE_SECS", 30.0)
    bus = _SharedSqlite(tmp_path / "bus.db")
    async with bus:
        a = WorkspaceAssignment(bus, list)
        task = asyncio.create_task(a.run(asyncio.Event()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert bus.member.cancelled
