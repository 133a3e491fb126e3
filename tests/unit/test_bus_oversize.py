"""An event over the bus's per-record limit is dead-lettered; the rest of its poll commits (embedded bus).

The Kafka side (a topic's ``max.message.bytes``) is in ``tests/integration/test_kafka_topics.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import orjson
import pytest
import yaml
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pipeline.bus import oversize
from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC, OutRecord
from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.main import main
from pipeline.clock import FakeClock
from pipeline.observability.metrics import KIND
from pipeline.observability.telemetry import Telemetry, set_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from schemas.deadletter import DeadLetter
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import CANARY_KEY, audit_record, cursor_doc, make_poller, records, seed

LIMIT = 20_000


def dead_letter_count(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "pipeline.dead_letters":
                    points = m.data.data_points
                    total += sum(
                        int(getattr(p, "value", 0)) for p in points if dict(p.attributes or {}).get(KIND) == "bus"
                    )
    return total


async def test_a_poll_with_one_oversized_audit_record_publishes_the_rest_and_moves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One audit record whose event is over the embedded bus's record limit: every other record of
    the poll is published, the cursor passes it, a dead letter names it (id, type, size, limit,
    hash), the dead-letter metric counts it, one warning says so; the next poll works."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig(prometheus=False), metric_readers=[reader])
    previous = set_telemetry(telemetry)
    try:
        await _oversized_poll(tmp_path, caplog, reader)
    finally:
        set_telemetry(previous)
        telemetry.shutdown()


async def _oversized_poll(tmp_path: Path, caplog: pytest.LogCaptureFixture, reader: InMemoryMetricReader) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeInstantly(api_key=CANARY_KEY)
    seed(fake)
    clock = FakeClock()
    big = {**audit_record("a2", clock.now() - 200), "user_agent": "Mozilla/5.0 " + "x" * 50_000}
    fake.audit = [audit_record("a1", clock.now() - 300), big, audit_record("a3", clock.now() - 100)]
    async with (
        serve(fake),
        SqliteBus(tmp_path / "bus.db", max_record_bytes=LIMIT) as bus,
        make_poller(fake, bus, clock) as poller,
    ):
        counts = await poller.poll_once()
        assert counts["audit_logs"] == 3
        audit = [orjson.loads(r.value) for r in await records(bus) if (r.header("event_type") or b"")[:6] == b"audit."]
        assert sorted(e["source"]["record_id"] for e in audit) == ["a1", "a3"]
        assert set((await cursor_doc(bus))["seen"]) == {"a1", "a2", "a3"}  # the cursor passed it
        [rec] = await records(bus, (DEADLETTER_TOPIC,))
        letter = DeadLetter.from_json(rec.value)
        assert (letter.stage, letter.reason, letter.component) == ("source", "record_too_large", "poller-acme")
        assert letter.original.topic == EVENTS_TOPIC and letter.original.value is None
        assert letter.record_id is not None and letter.record_id in letter.error
        assert "audit.user_login" in letter.error and f"{LIMIT:,} bytes" in letter.error
        assert "max_record_bytes" in letter.error and "sha256 " in letter.error
        assert rec.header("event_type") == b"audit.user_login"
        assert dead_letter_count(reader) == 1
        warned = [r for r in caplog.records if "over the bus record limit" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING

        fake.audit.append(audit_record("a4", clock.now() - 10))
        clock.advance(60)
        assert (await poller.poll_once())["audit_logs"] == 1  # the next poll works
        assert "a4" in (await cursor_doc(bus))["seen"]
        assert len(await records(bus, (DEADLETTER_TOPIC,))) == 1


async def test_only_events_are_replaced_and_the_letter_hashes_the_event() -> None:
    """The helper replaces an oversized event in place (the other records stay as they are)."""
    value = orjson.dumps({"id": "e1", "type": "audit.x", "pad": "y" * 70_000})
    recs = [
        OutRecord(EVENTS_TOPIC, value, b"ws", (("event_type", b"audit.x"),)),
        OutRecord(EVENTS_TOPIC, b"{}", b"ws"),
        OutRecord("instantly.alerts.v1", value, b"ws"),
    ]
    letters = oversize.divert(recs, 65_000, where="a limit", writer="w", bus="sqlite")
    assert [r.topic for r in recs] == [DEADLETTER_TOPIC, EVENTS_TOPIC, "instantly.alerts.v1"]
    assert letters == [recs[0]]
    assert schema_errors("deadletter", orjson.loads(recs[0].value or b"")) == []
    letter = DeadLetter.from_json(recs[0].value or b"")
    assert letter.record_id == "e1" and hashlib.sha256(value).hexdigest() in letter.error
    assert letter.original.headers["size"] == str(len(value) + 2 + len("event_type") + len("audit.x"))


def test_replay_finds_the_dead_letter_as_the_docs_say(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``replay --topic deadletter --where reason=record_too_large`` (docs/operations.md) lists it."""
    path = tmp_path / "bus.db"
    value = orjson.dumps({"id": "e1", "type": "audit.x", "pad": "y" * 70_000})

    async def go() -> None:
        async with SqliteBus(path, max_record_bytes=65_000) as bus, bus.transaction("poller-acme") as tx:
            tx.send(EVENTS_TOPIC, value, key=b"ws", headers=[("event_type", b"audit.x")])
            tx.send(EVENTS_TOPIC, b'{"id":"e2"}', key=b"ws")

    asyncio.run(go())
    cfg = tmp_path / "cfg.yaml"
    bus = {"type": "sqlite", "path": str(path)}
    cfg.write_text(yaml.safe_dump({"bus": bus, "workspaces": {"acme": {"api_key": "${OVERSIZE_UNSET_KEY}"}}}))
    args = ["--topic", "deadletter", "--where", "reason=record_too_large", "--format", "jsonl", "--no-progress"]
    code = main(["replay", "-c", str(cfg), *args])
    out, _err = capfd.readouterr()
    got = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert code == 0 and [d["record_id"] for d in got] == ["e1"], out
