"""Completeness receipts: the Receipt v1 contract, revisions of a closed hour (surviving restarts),
dead letters and late records counted, and the gaps read from the topic."""

from __future__ import annotations

import asyncio
import json
from functools import reduce
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from connectors.instantly.ledger import id_hash
from connectors.instantly.receipts import HourLedger, HourReceipts
from pipeline.bus.base import RECEIPTS_TOPIC
from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main
from pipeline.clock import FakeClock
from pipeline.completeness.gaps import find_gaps, hours_from_json, read_receipts
from pipeline.errors import ConfigError
from pipeline.observability.telemetry import Telemetry, set_telemetry
from schemas.errors import RecordError
from schemas.event import WorkspaceRef
from schemas.receipt import Receipt, ReceiptSource, hour_label
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import audit_record, make_poller, records, seed

ROOT = Path(__file__).resolve().parents[2]
HOUR, DAY = 3600.0, 86_400.0


def sample(**kw: Any) -> Receipt:
    doc: dict[str, Any] = {
        "workspace": WorkspaceRef("ws-1", "Acme"), "source": ReceiptSource("instantly", "acme", "audit_logs"),
        "hour": "2026-12-07T01:00:00Z", "seen": 5, "published": 3, "dead_lettered": 1, "late": 1,
        "id_hash": "00ff00ff00ff00ff", "closed": True, "first_closed_at": "2026-12-07T03:00:01.000Z",
        "revision": 2, "interrupted": False, "updated_at": "2026-12-07T04:00:00.000Z",
    }  # fmt: skip
    return Receipt(**(doc | kw))


def test_receipt_contract() -> None:
    """receipt.v1.json is valid 2020-12; a receipt validates, round-trips, names its key; bad ones are refused."""
    Draft202012Validator.check_schema(json.loads((ROOT / "schemas" / "receipt.v1.json").read_text()))
    r = sample()
    assert schema_errors("receipt", r.to_dict()) == []
    assert schema_errors("receipt", orjson.loads(r.to_json())) == []
    assert Receipt.from_json(r.to_json()) == r and r.to_dict()["schema"] == "instantly.receipt.v1"
    assert r.key == b"ws-1/2026-12-07T01:00:00Z" and r.gap_reasons() == ["changed_after_close"]
    assert sample(revision=1, interrupted=True).gap_reasons() == ["interrupted"]
    assert sample(revision=1).gap_reasons() == [] and hour_label(r.hour_start + 1800) == r.hour
    assert schema_errors("receipt", sample(id_hash="xyz").to_dict())
    assert schema_errors("receipt", sample(hour="2026-12-07T01:30:00Z").to_dict())
    assert schema_errors("receipt", {**r.to_dict(), "extra": 1})
    with pytest.raises(RecordError, match="seen"):
        Receipt.from_json(orjson.dumps({**r.to_dict(), "seen": "many"}))
    assert msgspec.json.decode(r.to_json())["id_hash"] == "00ff00ff00ff00ff"


def test_hours_from_json_reads_the_gaps_document_and_refuses_others() -> None:
    """replay --hours takes the gaps document (or its list) and names a bad file as a config error."""
    doc = {
        "receipts": 1,
        "gaps": [{"workspace": {"id": "w"}, "source": {"stream": "audit_logs"}, "hour": sample().hour}],
    }
    hour = int(sample().hour_start // HOUR)
    assert hours_from_json(orjson.dumps(doc)) == {("w", "audit_logs", hour)}
    assert hours_from_json(orjson.dumps(doc["gaps"])) == {("w", "audit_logs", hour)}
    for bad in (b"nope", b'{"gaps": 3}', b'[{"hour": "x"}]'):
        with pytest.raises(ConfigError, match="--hours"):
            hours_from_json(bad)


def test_hour_ledgers_count_dead_letters_late_records_and_interruptions() -> None:
    """Counts per hour, XOR hash, a late id (in a ledger written before incremental reads published
    late records) moved to published when published, and an interruption marking every hour from
    the last poll to now; state round-trips."""
    rc = HourReceipts("cursor/acme/audit_logs/")
    h0 = 500_000 * HOUR
    earlier = HourLedger(seen=1, late=1, id_hash=id_hash("d"), late_ids={"d"})
    rc.load({rc.key(500_000): earlier.to_bytes()})
    rc.record([("a", h0 + 1, False), ("b", h0 + 2, True), ("c", h0 + HOUR, False)], now=h0 + 5)
    rc.polled(h0 + 10, persist_every=100)
    state = rc.flush().state
    led = rc.hours[500_000]
    assert (led.seen, led.published, led.dead_lettered, led.late) == (3, 1, 1, 1)
    assert led.id_hash == id_hash("a") ^ id_hash("b") ^ id_hash("d")
    rc.close(h0 + HOUR, now=h0 + 2 * HOUR, retention_secs=DAY)
    assert rc.flush().hours[0][1].revision == 1
    rc.record([("d", h0 + 3, False)], now=h0 + 3 * HOUR)  # the sweep publishes the late one
    flushed = rc.flush()
    assert (led.seen, led.published, led.late, led.revision) == (3, 2, 0, 2) and flushed.gaps[
        "changed_after_close"
    ] == 1
    again = HourReceipts("cursor/acme/audit_logs/")
    again.load({k: v for k, v in (state | flushed.state).items() if v is not None})
    assert again.hours[500_000].revision == 2 and again.last_poll == h0 + 10
    assert again.check_interruption(now=h0 + 10 + 100, bound=200) == []
    assert again.check_interruption(now=h0 + 3 * HOUR, bound=200) == [500_000, 500_001, 500_002, 500_003]
    assert again.flush().gaps["interrupted"] == 4 and all(h.interrupted for h in again.hours.values())


async def receipts_of(bus: SqliteBus) -> list[Receipt]:
    return [Receipt.from_json(r.value) for r in await records(bus, (RECEIPTS_TOPIC,))]


async def test_closed_hour_revisions_survive_restarts(tmp_path: Path) -> None:
    """An hour closes at revision 1; a record Instantly inserted late (a new id after the cursor,
    its timestamp in the closed hour) is published by the next incremental read and makes revision
    2; restarts and the sweep re-read it without publishing it again or adding a revision, and gaps
    lists the hour as changed after close."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record(f"r{i}", t0 - 100 + i) for i in range(3)]
    fake.audit_order = "asc"  # so reads after the first continue after the last id (incremental)
    opts: dict[str, Any] = {"streams": ["audit_logs"], "audit_sweep_interval_secs": DAY}
    hour = hour_label(t0)
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, **opts) as poller:
            await poller.poll_once()
            clock.advance(3 * HOUR)
            fake.audit.append(audit_record("r3", clock.now() - 10))
            await poller.poll_once()
            closed = [r for r in await receipts_of(bus) if r.hour == hour]
            assert [r.revision for r in closed][-1] == 1 and closed[-1].first_closed_at is not None
            clock.advance(60)
            fake.audit.append(audit_record("r4", t0 - 50))  # a new id in the closed hour, 3 h late
            assert (await poller.poll_once())["audit_logs"] == 1  # seen at the next poll, not a day later
        last = [r for r in await receipts_of(bus) if r.hour == hour][-1]
        assert (last.revision, last.seen, last.published, last.late) == (2, 4, 4, 0)
        async with make_poller(fake, bus, clock, **opts) as restarted:
            clock.advance(60)
            await restarted.poll_once()
            clock.advance(DAY)
            assert (await restarted.poll_once())["audit_logs"] == 0  # the sweep finds nothing missing
        mine = [r for r in await receipts_of(bus) if r.hour == hour]
        assert (mine[-1].revision, mine[-1].seen, mine[-1].published, mine[-1].late) == (2, 4, 4, 0)
        assert mine[-1].id_hash == f"{reduce(lambda a, b: a ^ b, (id_hash(f'r{i}') for i in (0, 1, 2, 4))):016x}"
        assert mine[-1].first_closed_at == closed[-1].first_closed_at
        count = len(mine)
        async with make_poller(fake, bus, clock, **opts) as again:
            clock.advance(60)
            await again.poll_once()
        assert len([r for r in await receipts_of(bus) if r.hour == hour]) == count
        gaps = {g.hour: g.gap_reasons() for g in find_gaps((await read_receipts(bus)).receipts)}
        assert gaps.pop(hour) == ["changed_after_close", "interrupted"]  # polls 3 h and a day apart: interrupted too
        assert gaps and set(map(tuple, gaps.values())) == {("interrupted",)}
        assert all(schema_errors("receipt", r.to_dict()) == [] for r in await receipts_of(bus))


async def test_gap_hours_series_exist_at_zero_before_the_first_gap(tmp_path: Path) -> None:
    """From the first receipt on, /metrics shows ``pipeline_completeness_gap_hours_total`` at 0 for
    each reason: the documented ``increase(…[24h]) > 0`` alert needs a sample before the first gap
    (a series that appears at 1 has none, so a workspace's first gap hour would never fire it)."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    fake.audit = [audit_record(f"r{i}", clock.now() - 100 + i) for i in range(3)]
    tel = Telemetry()
    previous = set_telemetry(tel)
    try:
        async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
            async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
                assert (await poller.poll_once())["audit_logs"] == 3
            assert await receipts_of(bus)
    finally:
        set_telemetry(previous)
    text = tel.render_prometheus()[0].decode()
    gaps = {
        (s.labels["component_id"], s.labels["reason"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pipeline_completeness_gap_hours_total"
    }
    tel.shutdown()
    assert gaps == {("acme", "changed_after_close"): 0.0, ("acme", "interrupted"): 0.0}


async def test_receipts_can_be_turned_off(tmp_path: Path) -> None:
    """audit_receipts: false publishes no receipt and writes no receipt state."""
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    clock = FakeClock()
    fake.audit = [audit_record(f"r{i}", clock.now() - 100 + i) for i in range(3)]
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, streams=["audit_logs"], audit_receipts=False) as poller:
            assert (await poller.poll_once())["audit_logs"] == 3
        assert await receipts_of(bus) == []
        assert not [k for k in await bus.state_items("cursor/") if "/receipt" in k]


async def make_file(path: Path, *, topics: bool) -> None:
    async with SqliteBus(path, create_topics=topics):
        pass


def test_gaps_command_on_a_bus_without_gaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No receipts (or a bus from before the receipts topic): exit 0, an empty table and a count; JSON
    lists nothing; a bad range is a usage error."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"bus: {{type: sqlite, path: {tmp_path / 'bus.db'}}}\n")
    asyncio.run(make_file(tmp_path / "bus.db", topics=False))
    assert main(["gaps", "-c", str(cfg)]) == Exit.OK
    assert "no receipts topic yet" in capsys.readouterr().err
    asyncio.run(make_file(tmp_path / "bus.db", topics=True))
    assert main(["gaps", "-c", str(cfg)]) == Exit.OK
    assert "0 hour(s) with gaps among 0 receipt(s)" in capsys.readouterr().err
    assert main(["gaps", "-c", str(cfg), "--format", "json"]) == Exit.OK
    assert orjson.loads(capsys.readouterr().out) == {"receipts": 0, "gaps": []}
    assert main(["gaps", "-c", str(cfg), "--since", "2026-12-02", "--until", "2026-12-01"]) == Exit.USAGE
