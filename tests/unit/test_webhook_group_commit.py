"""Group commit's adaptive linger on a real embedded bus: a sequential sender never waits,
concurrent senders coming back share one transaction, a linger ends when the senders do not
come back, and closing commits what is queued. The bus is slowed (``FlakyBus.delay``) so a
commit, and with it the longest linger, lasts long enough that no timing can change an outcome."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import SYSTEM_CLOCK
from pipeline.sources.webhook.dedup import SeenWindow
from pipeline.sources.webhook.group_commit import GroupCommitter
from tests.unit.test_webhook_support import WS, FlakyBus, events_of

COMMIT_SECS = 1.5  # every commit lasts at least this long: the linger bound in these tests


@pytest.fixture
async def sqlite_bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    """A real embedded bus in a temporary file."""
    async with SqliteBus(tmp_path / "bus.db") as bus:
        yield bus


def committer(bus: SqliteBus, *, delay: float = COMMIT_SECS, linger: float = 60.0) -> GroupCommitter:
    slow = FlakyBus(bus)
    slow.delay = delay
    windows = {"crm": SeenWindow("crm", 3600.0, 10_000)}
    c = GroupCommitter(slow, "webhook", windows, clock=SYSTEM_CLOCK, max_batch=256, max_linger_secs=linger)  # type: ignore[arg-type]
    c.start()
    return c


def submit(c: GroupCommitter, n: int) -> asyncio.Future[bool]:
    digest = hashlib.sha256(b"delivery %d" % n).digest()[:16]
    return c.submit("crm", digest, b'{"n":%d}' % n, WS.encode(), ())


async def test_a_sequential_sender_never_lingers(sqlite_bus: SqliteBus) -> None:
    """One delivery in flight at a time: one transaction each, and no wait before any."""
    c = committer(sqlite_bus, delay=0.05)
    for n in range(4):
        assert await submit(c, n) is True
    await c.close()
    assert (c.transactions, c.lingers) == (4, 0)
    assert len(await events_of(sqlite_bus)) == 4


async def test_concurrent_senders_coming_back_share_one_transaction(sqlite_bus: SqliteBus) -> None:
    """After a batch of 4, the committer waits for the 4th sender instead of committing 3."""
    c = committer(sqlite_bus)
    assert await asyncio.gather(*(submit(c, n) for n in range(4))) == [True] * 4
    assert (c.transactions, c.largest_batch, c.lingers) == (1, 4, 0)
    again = [submit(c, n) for n in range(4, 7)]
    await asyncio.sleep(0.05)  # the committer is lingering: 3 queued, 4 were in flight
    again.append(submit(c, 7))
    assert await asyncio.gather(*again) == [True] * 4
    await c.close()
    assert (c.transactions, c.largest_batch, c.lingers) == (2, 4, 1)
    assert len(await events_of(sqlite_bus)) == 8


async def test_a_linger_ends_when_the_senders_do_not_come_back(sqlite_bus: SqliteBus) -> None:
    """Concurrency dropped from 3 to 1: the lone delivery waits one bounded linger, then commits."""
    c = committer(sqlite_bus, delay=0.2)
    assert await asyncio.gather(*(submit(c, n) for n in range(3))) == [True] * 3
    assert await submit(c, 3) is True
    assert await submit(c, 4) is True  # the last cycle had one in flight: no wait any more
    await c.close()
    assert (c.transactions, c.largest_batch, c.lingers) == (3, 3, 1)
    assert len(await events_of(sqlite_bus)) == 5


async def test_close_during_a_linger_commits_what_is_queued(sqlite_bus: SqliteBus) -> None:
    """Stopping ends the wait at once and still commits the queued delivery."""
    c = committer(sqlite_bus, delay=0.2)
    assert await asyncio.gather(*(submit(c, n) for n in range(3))) == [True] * 3
    last = submit(c, 3)
    await asyncio.sleep(0.05)  # lingering for two more that never come
    await c.close()
    assert last.done() and last.result() is True
    assert (c.transactions, c.lingers) == (2, 1)
    assert len(await events_of(sqlite_bus)) == 4


async def test_no_linger_when_disabled(sqlite_bus: SqliteBus) -> None:
    """``max_linger_secs: 0`` commits whatever is queued at once, as before."""
    c = committer(sqlite_bus, delay=0.2, linger=0.0)
    assert await asyncio.gather(*(submit(c, n) for n in range(3))) == [True] * 3
    assert await submit(c, 3) is True
    await c.close()
    assert (c.transactions, c.lingers) == (2, 0)
