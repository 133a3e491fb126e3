"""The late-record sweep: per-hour ledgers name what was never published; published once, reported."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from connectors.instantly.ledger import Sketch, id_hash
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from pipeline.observability.telemetry import Telemetry, set_telemetry
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import audit_record, events, make_poller, seed

HOUR, DAY = 3600.0, 86_400.0


def test_sketch_names_the_difference_and_says_when_it_cannot() -> None:
    """Up to a few dozen ids apart the difference decodes exactly; far beyond, decode says so."""
    rng = random.Random(3)
    published = [f"id-{i}" for i in range(5000)]
    ledger = Sketch()
    ledger.add_ids(published)
    for extra in (1, 5, 15):
        late = [f"late-{extra}-{i}" for i in range(extra)]
        gone = rng.sample(published, 3)
        listing = Sketch()
        listing.add_ids([p for p in published if p not in gone] + late)
        decoded = listing.minus(ledger).decode()
        assert decoded is not None
        assert decoded == ({id_hash(x) for x in late}, {id_hash(x) for x in gone})
    listing = Sketch()
    listing.add_ids(published + [f"many-{i}" for i in range(200)])
    assert listing.minus(ledger).decode() is None
    assert Sketch.from_bytes(ledger.to_bytes()) is not None
    assert Sketch.from_bytes(b"junk") is None and len(ledger.to_bytes()) < 6000


async def test_late_record_published_once_after_the_sweep(tmp_path: Path) -> None:
    """A record hours older than the overlap window, listed after that window was read, is not
    published by the normal reads (too old); the next sweep publishes it exactly once with one
    pipeline.late_records event saying how late it was; later sweeps and a restart add nothing."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record(f"r{i}", t0 - 100 + i) for i in range(3)]
    opts: dict[str, Any] = {"streams": ["audit_logs"], "audit_sweep_interval_secs": DAY}
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, **opts) as poller:
            assert (await poller.poll_once())["audit_logs"] == 3  # the sweep's clock starts here
            clock.advance(3 * HOUR)
            fake.audit.append(audit_record("r3", clock.now() - 10))
            assert (await poller.poll_once())["audit_logs"] == 1
            clock.advance(60)
            fake.audit.append(audit_record("late", t0 + HOUR))  # ~2 h behind, window is 1 h
            counts = await poller.poll_once()
            assert counts["audit_logs"] == 0 and counts["pipeline"] == 0
            clock.advance(DAY)
            counts = await poller.poll_once()
            assert counts["audit_logs"] == 1 and counts["pipeline"] == 1
            clock.advance(DAY)
            assert (await poller.poll_once())["audit_logs"] == 0
        async with make_poller(fake, bus, clock, **opts) as restarted:
            clock.advance(DAY)
            assert (await restarted.poll_once())["audit_logs"] == 0
        evs = await events(bus)
    ids = [e["source"]["record_id"] for e in evs if e["type"].startswith("audit.")]
    assert sorted(ids) == ["late", "r0", "r1", "r2", "r3"]
    late = [e for e in evs if e["type"] == "pipeline.late_records"]
    assert len(late) == 1
    attrs = late[0]["attributes"]
    assert attrs["count"] == 1 and attrs["undecodable_hours"] == [] and attrs["truncated"] is False
    assert attrs["max_late_secs"] > DAY and attrs["max_behind_high_water_secs"] > HOUR


async def test_records_the_sweep_publishes_are_counted(tmp_path: Path) -> None:
    """A late record the sweep publishes shows in ``pipeline_component_events_sent_total`` (and would
    show in ``pipeline_dead_letters_total`` had it failed), like a record a read published: before,
    the sweep's publications were missing from every counter."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record(f"r{i}", t0 - 100 + i) for i in range(3)]
    opts: dict[str, Any] = {"streams": ["audit_logs"], "audit_sweep_interval_secs": DAY}
    tel = Telemetry()
    previous = set_telemetry(tel)
    try:
        async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus, make_poller(fake, bus, clock, **opts) as poller:
            await poller.poll_once()
            clock.advance(3 * HOUR)
            fake.audit.append(audit_record("r3", clock.now() - 10))
            assert (await poller.poll_once())["audit_logs"] == 1
            clock.advance(60)
            fake.audit.append(audit_record("late", t0 + HOUR))  # too old for the window: the sweep's
            assert (await poller.poll_once())["audit_logs"] == 0
            clock.advance(DAY)
            assert (await poller.poll_once())["audit_logs"] == 1
    finally:
        set_telemetry(previous)
    text = tel.render_prometheus()[0].decode()
    sent = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pipeline_component_events_sent_total" and s.labels["component_type"] == "instantly_audit_logs"
    )
    tel.shutdown()
    assert sent == 5  # r0…r3 by the reads, late by the sweep


async def test_sweep_is_on_by_default_daily_and_never_repeats_the_first_read(tmp_path: Path) -> None:
    """Without any sweep option: the first poll lists the audit log once (no sweep on top of it);
    a record that arrives hours late is published by the sweep a day later, exactly once."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record(f"r{i}", t0 - 100 + i) for i in range(3)]
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
            assert poller.cfg.audit_sweep_interval_secs == DAY
            assert (await poller.poll_once())["audit_logs"] == 3
            swept = [c.query for c in fake.calls_to("/audit-logs") if "start_date" in c.query]
            assert swept == [], swept  # the sweep lists by start_date; the first poll's own read sufficed
            clock.advance(3 * HOUR)
            fake.audit.append(audit_record("r3", clock.now() - 10))
            assert (await poller.poll_once())["audit_logs"] == 1
            clock.advance(60)
            fake.audit.append(audit_record("late", t0 + HOUR))  # ~2 h behind the newest, window is 1 h
            counts = await poller.poll_once()
            assert counts["audit_logs"] == 0 and counts["pipeline"] == 0
            clock.advance(DAY)
            counts = await poller.poll_once()
            assert counts["audit_logs"] == 1 and counts["pipeline"] == 1
            assert [c for c in fake.calls_to("/audit-logs") if "start_date" in c.query]
        evs = await events(bus)
    assert sorted(e["source"]["record_id"] for e in evs if e["type"].startswith("audit.")) == [
        "late",
        "r0",
        "r1",
        "r2",
        "r3",
    ]
