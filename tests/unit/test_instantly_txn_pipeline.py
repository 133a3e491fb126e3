"""Pipelined audit publishing: one transaction in flight while the next page is fetched and normalized.

Order, stop-at-first-failure and cursor consistency, on the pipeline itself and through the poller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.source import InstantlyWorkspacePoller
from connectors.instantly.streams import Publisher, load_cursor, prepare_audit_batch
from connectors.instantly.txn_pipeline import TxnPipeline, TxnWrite
from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC
from pipeline.bus.sqlite import SqliteBus
from pipeline.bus.txn import BufferedTxn
from pipeline.clock import FakeClock
from pipeline.errors import BusError, SourceError
from schemas.codec import decode_deadletter, validate
from schemas.event import WorkspaceRef
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import CANARY_KEY, audit_record, events, no_sleep, records

CURSOR = "cursor/acme/audit_logs"


class FlakyBus(SqliteBus):
    """A SqliteBus whose commits of the audit cursor take ``delay`` seconds; those numbered in
    ``fail_on`` fail. Other transactions (the poller's own state) pass through untouched."""

    def __init__(self, path: Path, delay: float = 0.0, fail_on: set[int] | None = None):
        super().__init__(path)
        self.delay = delay
        self.fail_on = fail_on or set()
        self.started = 0
        self.active = 0
        self.max_active = 0
        self.probe: list[tuple[int, str]] = []
        """``(transaction number, "start" | "end")`` marks, for ordering checks."""
        self.fake: FakeInstantly | None = None
        self.calls_at: list[tuple[int, str, int]] = []
        """With ``fake``: audit-log requests made so far at each start and end."""

    def _mark(self, n: int, what: str) -> None:
        self.probe.append((n, what))
        if self.fake is not None:
            self.calls_at.append((n, what, len(self.fake.calls_to("/audit-logs"))))

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[BufferedTxn]:
        async with super().transaction(txn_id) as tx:
            yield tx
            if not any(k.startswith(CURSOR) for k in tx.state):
                return
            self.started += 1
            n = self.started
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._mark(n, "start")
            try:
                await asyncio.sleep(self.delay)
                if n in self.fail_on:
                    raise BusError(f"kafka transaction {n} failed: broker says no")
            finally:
                self.active -= 1
                self._mark(n, "end")


def write(i: int, done: list[int] | None = None) -> TxnWrite:
    rec = (EVENTS_TOPIC, f"event-{i}".encode(), b"k", (("n", str(i).encode()),))
    return TxnWrite([rec], {CURSOR: str(i).encode()}, (lambda: done.append(i)) if done is not None else None)


async def values(bus: SqliteBus) -> list[bytes]:
    return [r.value for r in await records(bus)]


async def test_transactions_commit_in_order_one_at_a_time(tmp_path: Path) -> None:
    """submit() returns while its transaction commits; the next one starts only after it committed."""
    done: list[int] = []
    bus = FlakyBus(tmp_path / "bus.db", delay=0.02)
    async with bus:
        async with TxnPipeline(bus, "w") as line:
            for i in range(5):
                await line.submit(write(i, done))
                assert line.busy  # committing in the background
        assert not line.busy
        assert bus.max_active == 1
        assert bus.probe == [(n, mark) for n in range(1, 6) for mark in ("start", "end")]
        assert done == [0, 1, 2, 3, 4]
        assert await values(bus) == [f"event-{i}".encode() for i in range(5)]
        assert await bus.get_state(CURSOR) == b"4"


async def test_failed_transaction_stops_the_pipeline(tmp_path: Path) -> None:
    """Transaction 2 fails: the submit after it raises, and nothing later is ever committed."""
    done: list[int] = []
    bus = FlakyBus(tmp_path / "bus.db", fail_on={2})
    async with bus:
        with pytest.raises(BusError, match="transaction 2 failed"):
            async with TxnPipeline(bus, "w") as line:
                for i in range(1, 6):
                    await line.submit(write(i, done))
        assert bus.started == 2
        assert done == [1]
        assert await values(bus) == [b"event-1"]
        assert await bus.get_state(CURSOR) == b"1"


async def test_failure_of_the_last_transaction_is_raised_on_exit(tmp_path: Path) -> None:
    bus = FlakyBus(tmp_path / "bus.db", fail_on={1})
    async with bus:
        with pytest.raises(BusError):
            async with TxnPipeline(bus, "w") as line:
                await line.submit(write(1))
        assert await values(bus) == []
        assert await bus.get_state(CURSOR) is None


async def test_caller_error_waits_for_the_transaction_in_flight(tmp_path: Path) -> None:
    """A page that cannot be read: the page before it still commits, then the caller's error propagates."""
    bus = FlakyBus(tmp_path / "bus.db", delay=0.02)
    async with bus:
        with pytest.raises(SourceError):
            async with TxnPipeline(bus, "w") as line:
                await line.submit(write(1))
                raise SourceError("page 2 could not be read")
        assert await values(bus) == [b"event-1"]


async def test_bus_error_wins_over_the_caller_error(tmp_path: Path) -> None:
    bus = FlakyBus(tmp_path / "bus.db", fail_on={1})
    async with bus:
        with pytest.raises(BusError) as caught:
            async with TxnPipeline(bus, "w") as line:
                await line.submit(write(1))
                raise SourceError("page 2 could not be read")
        assert isinstance(caught.value.__context__, SourceError)
        assert await values(bus) == []


async def test_cancellation_cancels_the_transaction_in_flight(tmp_path: Path) -> None:
    bus = FlakyBus(tmp_path / "bus.db", delay=5.0)
    async with bus:
        started = asyncio.Event()

        async def run() -> None:
            async with TxnPipeline(bus, "w") as line:
                await line.submit(write(1))
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(run())
        await started.wait()
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bus.active == 0
        assert await values(bus) == []


async def test_prepare_matches_publisher_send_and_dead_letters(tmp_path: Path) -> None:
    """prepare_audit_batch writes what Publisher.send would, in record order; bad records become dead letters."""
    ws = WorkspaceRef("019cc043-af79-73db-a904-19add8ce4af2", "Acme")
    async with SqliteBus(tmp_path / "bus.db") as bus:
        pub = Publisher(bus, "w", "acme", ws)
        good = [audit_record(f"r{i}", 1_772_000_000 + i) for i in range(120)]
        batch = await prepare_audit_batch(
            pub,
            [*good[:60], {"no": "id", "token": "CANARY"}, *good[60:]],
            "2026-03-05T23:10:00.000Z",
            TxnPipeline(bus, "w"),
        )
        assert (batch.events, batch.dead_letters) == (120, 1)
        assert [orjson.loads(v)["source"]["record_id"] for _t, v, _k, _h in batch.records[:120]] == [
            f"r{i}" for i in range(120)
        ]
        topic, value, key, headers = batch.records[0]
        source_ms = ("source_ms", b"1772000000000")  # the record's timestamp, for the latency legs
        assert (topic, key, headers) == (EVENTS_TOPIC, ws.id.encode(), (("event_type", b"audit.user_login"), source_ms))
        topic, value, _key, headers = batch.records[-1]
        assert topic == DEADLETTER_TOPIC and headers == (("error", b"normalize"),)
        letter = decode_deadletter(value)
        assert b"CANARY" not in value and validate(letter) == []
        assert (letter.stage, letter.component, letter.reason, letter.original.stream) == (
            "source",
            "acme",
            "normalize",
            "audit_logs",
        )
        assert orjson.loads(letter.original_bytes() or b"")["token"] == "<redacted>"


# ---- through the poller ---------------------------------------------------------------------------
def poller(fake: FakeInstantly, bus: SqliteBus, clock: FakeClock) -> InstantlyWorkspacePoller:
    cfg = WorkspaceConfig(
        api_key=SecretStr(fake.api_key),
        base_url=fake.url,
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
        max_retries=1,
        streams=["audit_logs"],
        audit_page_size=2,
    )
    return InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, sleep=no_sleep, rng=random.Random(1))


async def test_poller_fetches_the_next_page_while_a_page_commits(tmp_path: Path) -> None:
    fake = FakeInstantly(api_key=CANARY_KEY)
    clock = FakeClock()
    fake.audit_order = "asc"
    fake.audit = [audit_record(f"r{i:02d}", clock.now() - 100 + i) for i in range(7)]
    bus = FlakyBus(tmp_path / "bus.db", delay=0.1)
    async with serve(fake), bus:
        bus.fake = fake
        async with poller(fake, bus, clock) as p:
            assert (await p.poll_once())["audit_logs"] == 7
        assert bus.max_active == 1
        # 4 pages, then the high-water mark; never two at once
        assert bus.probe == [(n, mark) for n in range(1, 6) for mark in ("start", "end")]
        first_start, first_end = bus.calls_at[0][2], bus.calls_at[1][2]
        assert first_end > first_start  # page 2 was requested while page 1 committed
        evs = await events(bus)
    assert [e["source"]["record_id"] for e in evs] == [f"r{i:02d}" for i in range(7)]


async def test_failed_page_transaction_leaves_later_pages_out_and_the_cursor_consistent(tmp_path: Path) -> None:
    """Page 3's transaction fails: pages 1-2 stay committed with a cursor holding exactly their ids,
    no later page is committed, and the next poll publishes the rest exactly once, in order."""
    fake = FakeInstantly(api_key=CANARY_KEY)
    clock = FakeClock()
    fake.audit_order = "asc"
    fake.audit = [audit_record(f"r{i:02d}", clock.now() - 100 + i) for i in range(7)]
    bus = FlakyBus(tmp_path / "bus.db", delay=0.01, fail_on={3})
    async with serve(fake), bus:
        async with poller(fake, bus, clock) as p:
            with pytest.raises(BusError, match="transaction 3 failed"):
                await p.poll_once()
            assert bus.started == 3  # page 4 was prepared but never started
            assert [e["source"]["record_id"] for e in await events(bus)] == ["r00", "r01", "r02", "r03"]
            cursor = await load_cursor(bus, "acme")
            assert sorted(cursor.seen) == ["r00", "r01", "r02", "r03"]
            assert cursor.high_water is None  # moves only once every page was read

            bus.fail_on = set()
            clock.advance(60)
            assert (await p.poll_once())["audit_logs"] == 3
        evs = await events(bus)
    assert [e["source"]["record_id"] for e in evs] == [f"r{i:02d}" for i in range(7)]
