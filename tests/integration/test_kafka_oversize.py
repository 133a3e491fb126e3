"""A poll on the real Kafka broker whose batch holds one event over the events topic's
``max.message.bytes``: the event is dead-lettered, everything else commits, the next poll works.

Before, the whole transaction failed (``RecordTooLarge``), the poller restarted with backoff for
ever, and every later audit record and snapshot change of the workspace waited behind it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC
from pipeline.clock import FakeClock
from pipeline.observability.telemetry import Telemetry, set_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from schemas.deadletter import DeadLetter
from tests.conftest import make_bus
from tests.integration.test_kafka_topics import _cfg, _precreate
from tests.unit.test_bus_oversize import dead_letter_count
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import CANARY_KEY, audit_record, cursor_doc, make_poller, records, seed

pytestmark = [pytest.mark.kafka]
LIMIT = 20_000


async def test_oversized_event_is_dead_lettered_and_the_poll_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events topic with max.message.bytes=20,000, one audit record of ~50 KB among three."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig(prometheus=False), metric_readers=[reader])
    previous = set_telemetry(telemetry)
    caplog.set_level(logging.INFO)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + EVENTS_TOPIC, 2, {"max.message.bytes": str(LIMIT)})
    fake = FakeInstantly(api_key=CANARY_KEY)
    seed(fake)
    clock = FakeClock()
    big = {**audit_record("a2", clock.now() - 200), "user_agent": "Mozilla/5.0 " + "x" * 50_000}
    fake.audit = [audit_record("a1", clock.now() - 300), big, audit_record("a3", clock.now() - 100)]
    try:
        async with serve(fake), make_bus(_cfg(prefix)) as bus, make_poller(fake, bus, clock) as poller:  # type: ignore[arg-type]
            assert (await poller.poll_once())["audit_logs"] == 3  # no RecordTooLarge: the poll completed
            audit = [
                orjson.loads(r.value)
                for r in await records(bus)  # type: ignore[arg-type]
                if (r.header("event_type") or b"")[:6] == b"audit."
            ]
            assert sorted(e["source"]["record_id"] for e in audit) == ["a1", "a3"]
            assert set((await cursor_doc(bus))["seen"]) == {"a1", "a2", "a3"}
            [rec] = await records(bus, (DEADLETTER_TOPIC,))  # type: ignore[arg-type]
            letter = DeadLetter.from_json(rec.value)
            assert (letter.reason, letter.component, letter.component_type) == (
                "record_too_large",
                "poller-acme",
                "kafka",
            )
            assert f"{prefix}{EVENTS_TOPIC}" in letter.error and f"{LIMIT:,} bytes" in letter.error
            assert letter.record_id is not None and letter.record_id in letter.error
            assert dead_letter_count(reader) == 1
            warned = [r for r in caplog.records if "over the bus record limit" in r.getMessage()]
            assert len(warned) == 1, [r.getMessage() for r in caplog.records]

            fake.audit.append(audit_record("a4", clock.now() - 10))
            clock.advance(60)
            assert (await poller.poll_once())["audit_logs"] == 1
            assert "a4" in (await cursor_doc(bus))["seen"]
    finally:
        set_telemetry(previous)
        telemetry.shutdown()
