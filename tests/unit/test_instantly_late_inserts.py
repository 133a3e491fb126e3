"""Audit records Instantly inserts late (a new, higher id with an old timestamp) on a full re-read.

A full re-read runs on the first poll of every process (``run --once``, a restart) and once per
overlap: it must publish a record whose id is past the stored ``last_id`` however old its
timestamp (no earlier read got past ``last_id``), and never publish one twice — also when the
full re-read that published it failed on a later page. Real poller, embedded bus, aiohttp fake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from connectors.instantly.streams import load_cursor
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import assert_once, audit_record, events, make_poller, seed

OPTS: dict[str, Any] = {"streams": ["audit_logs"], "audit_page_size": 2}


@contextmanager
def pipeline_logs(caplog: pytest.LogCaptureFixture, level: int) -> Iterator[None]:
    """Capture the ``instantly_audit`` loggers at ``level`` even after a CLI run in this process set
    them not to propagate (``setup_logging``)."""
    logger = logging.getLogger("instantly_audit")
    before = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = False  # each record once, whether a CLI run set this or not
    caplog.handler.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


async def test_late_insert_published_by_the_first_poll_of_a_new_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``run --once`` twice: the record inserted 2 h late (and one 67 min late) is published by the
    second process's full re-read, once; what a full re-read drops as too old is logged with a count."""
    fake = FakeInstantly()
    seed(fake)
    fake.audit_order = "asc"
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record(f"r{i:02d}", t0 - 600 + 100 * i) for i in range(4)]
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, **OPTS) as first:
            assert (await first.poll_once())["audit_logs"] == 4
        assert (await load_cursor(bus, "acme")).last_id == "r03"
        clock.advance(60)
        fake.audit += [audit_record("r04", t0 - 7200, 37), audit_record("r05", t0 - 4000, 26)]
        fake.audit.append(audit_record("r06", clock.now() - 5))
        fake.audit.append(audit_record("r00-behind", t0 - 7000))  # minted behind the cursor: too old
        with pipeline_logs(caplog, logging.INFO):
            async with make_poller(fake, bus, clock, **OPTS) as second:
                assert (await second.poll_once())["audit_logs"] == 3
        assert "start_date" in fake.calls_to("/audit-logs")[-4].query  # it was a full re-read
        dropped = [r for r in caplog.records if "older than the overlap window" in r.getMessage()]
        assert dropped and sum(getattr(r, "count", 0) for r in dropped) == 1
        clock.advance(60)
        async with make_poller(fake, bus, clock, **OPTS) as third:  # another restart: nothing twice
            assert (await third.poll_once())["audit_logs"] == 0
            clock.advance(3600)  # and the full re-read a long-running process does once per overlap
            fake.audit.append(audit_record("r07", t0 - 9000))
            assert (await third.poll_once())["audit_logs"] == 1
        evs = await events(bus)
    assert_once(evs)
    assert sorted(e["source"]["record_id"] for e in evs) == [f"r{i:02d}" for i in range(8)]


async def test_late_insert_from_a_failed_full_read_is_not_published_again(tmp_path: Path) -> None:
    """A full re-read publishes a late record on page 1 and fails on page 2: the stored cursor still
    ends at the old ``last_id``, so the retry lists the record again — it is known, not republished."""
    fake = FakeInstantly()
    seed(fake)
    fake.audit_order = "asc"
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record("r00", t0 - 300), audit_record("r01", t0 - 200)]
    opts: dict[str, Any] = {**OPTS, "audit_page_size": 3}
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, **opts) as first:
            assert (await first.poll_once())["audit_logs"] == 2
        clock.advance(60)
        fake.audit += [audit_record("r02", t0 - 3 * 3600), audit_record("r03", t0 - 10)]
        fake.audit += [audit_record("r04", t0 - 5), audit_record("r05", t0 - 4)]
        fake.fail("/audit-logs", 500, times=2, only_with_cursor=True)  # page 2 of the full re-read
        async with make_poller(fake, bus, clock, **opts) as second:
            assert (await second.poll_once())["audit_logs"] == 1  # page 1 (r00-r02) committed, then the failure
        fake.faults.clear()
        cursor = await load_cursor(bus, "acme")
        assert cursor.last_id == "r01" and "r02" in cursor.seen  # kept: past last_id, below the window
        clock.advance(60)
        async with make_poller(fake, bus, clock, **opts) as third:
            assert (await third.poll_once())["audit_logs"] == 3  # r03-r05 only
            cursor = await load_cursor(bus, "acme")
            assert cursor.last_id == "r05" and "r02" not in cursor.seen  # forgotten once last_id passed it
            clock.advance(60)
            assert (await third.poll_once())["audit_logs"] == 0
        evs = await events(bus)
    assert_once(evs)
    assert sorted(e["source"]["record_id"] for e in evs) == [f"r{i:02d}" for i in range(6)]


async def test_late_ids_past_every_published_id_are_published_without_a_confirmed_cursor(tmp_path: Path) -> None:
    """The first poll sees one record, so no ``last_id`` is confirmed; then four records with new ids and
    timestamps 3-5 h old arrive, and the poller restarts. The full re-read had counted them too old (it
    cannot tell an old record published long ago from a new one) and confirmed ``last_id`` past the
    first: without the sweep it was never published (found by the property test in
    test_instantly_cursor_state.py). An id past the greatest id the cursor ever published was never
    published, so each is published once, and nothing again after another restart."""
    fake = FakeInstantly()
    seed(fake)
    fake.audit_order = "asc"
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record("001001", t0 - 1041)]
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, **OPTS) as first:
            assert (await first.poll_once())["audit_logs"] == 1
        assert (await load_cursor(bus, "acme")).last_id is None  # one record proves no order
        clock.advance(40)
        fake.audit += [audit_record(f"00100{i}", clock.now() - h * 3600) for i, h in ((2, 5), (3, 3.7), (4, 3), (5, 4))]
        for _ in range(2):
            async with make_poller(fake, bus, clock, **OPTS) as poller:
                await poller.poll_once()
                clock.advance(61)
                await poller.poll_once()
        evs = await events(bus)
        assert_once(evs)
        assert sorted(e["source"]["record_id"] for e in evs) == [f"00100{i}" for i in range(1, 6)]
        cursor = await load_cursor(bus, "acme")
        assert cursor.max_id_known and cursor.max_id == "001005"
