"""``run --once`` on a real broker: it leaves nothing behind, and it delivers what it produced.

A consumer that is not closed never sends LeaveGroup; its member stays in the group until the
session times out, and the next ``--once`` run's join waits for it (about 10 s per run).

Each stage of a one-shot run reads up to the end it sees when it starts; Kafka makes a commit
readable only once the broker wrote its markers, a moment after the commit returned. The run
waits for its own commits (``Bus.wait_visible``), so an alert raised by the run reaches the
sinks in the same run, not the next one (a cron-driven ``--once`` every 15 minutes would hold it
that long).

A rules worker or sink that joins its group while a dead member still holds partitions waits for
them (up to 30 s) before it reads, so a run never reports "everything read" with partitions left.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from pipeline.bus.base import EVENTS_TOPIC, OutRecord, TopicSpec
from pipeline.config.loader import parse_config
from pipeline.rules.testing import make_event
from pipeline.topology import Pipeline, run_pipeline
from tests.conftest import kafka_bootstrap, make_bus
from tests.integration.test_kafka_topics import _cfg

pytestmark = [pytest.mark.kafka]


async def _members_on(groups: list[str], prefix: str) -> dict[str, int]:
    """Per group, how many members own partitions of this test's topics (other tests share group names)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
    await admin.start()
    try:
        out = dict.fromkeys(groups, 0)
        # one group per request: aiokafka 0.14 fails to decode a DescribeGroups answer for several
        for resp in [r for group in groups for r in await admin.describe_consumer_groups([group])]:
            for g in resp.to_object().get("groups", []):
                for m in g.get("members", []):
                    raw = m.get("member_assignment") or b""
                    topics = [t for t, _ in ConsumerProtocolMemberAssignment.decode(raw).assignment] if raw else []
                    if any(t.startswith(prefix) for t in topics):
                        out[g["group"]] += 1
        return out
    finally:
        await admin.close()


async def test_once_run_leaves_no_group_member(tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    bus = {
        "type": "kafka",
        "bootstrap_servers": [kafka_bootstrap()],
        "partitions": 2,
        "transactional_id_prefix": f"test-{uuid.uuid4().hex[:8]}",
        "topic_prefix": prefix,
    }
    doc = {
        "bus": bus,
        "sinks": {"archive": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")}},
        "logging": {"format": "json", "level": "INFO"},
        "service": {"enabled": False},
    }
    cfg = parse_config(yaml.safe_dump(doc), env={}, base_dir=tmp_path)
    async with make_bus(bus) as b:
        await b.publish([OutRecord(EVENTS_TOPIC, b'{"not": "an event"}', key=b"ws")])
    code = await run_pipeline(cfg, once=True, roles={"rules", "sinks"}, configure_logging=False)
    assert code == 0
    assert await _members_on(["rules", "sink-archive"], prefix) == {"rules": 0, "sink-archive": 0}


async def test_once_run_delivers_the_alerts_it_raised(tmp_path: Path) -> None:
    """Each one-shot run's alert is in the alert sink when the run returns (eight runs in a row).

    A reader's end offsets read straight after a commit stopped short of it 10 times in 50 on the
    test broker (``test_wait_visible_covers_every_own_commit`` without the wait). Through the
    pipeline the gap was covered only by incidental waits (a consumer's join, the rules' last
    empty fetch); ``run_once`` now waits for its own commits explicitly before each stage.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}."
    bus = _cfg(prefix)
    alerts_file = tmp_path / "alerts.jsonl"
    doc = {
        "bus": bus,
        "rules": {"defaults": {"enabled": False}, "auth.recovery_code_used": {"enabled": True}},
        "sinks": {"pager": {"type": "jsonl", "path": str(alerts_file), "topics": ["alerts"]}},
        "logging": {"format": "json", "level": "INFO"},
        "service": {"enabled": False},
    }
    cfg = parse_config(yaml.safe_dump(doc), env={}, base_dir=tmp_path)
    async with make_bus(bus) as feeder, make_bus(bus) as b, Pipeline(cfg, b, {"rules", "sinks"}, once=True) as pipe:
        for i in range(8):
            event = make_event(
                "audit.mfa_recovery_code_used",
                time=1_790_000_000.0 + i,
                actor={"user_id": f"u{i}", "ip": "198.51.100.7"},
            )
            async with feeder.transaction("once-feeder") as tx:
                tx.send(EVENTS_TOPIC, event.to_json(), key=b"ws-1")
            assert await feeder.wait_visible(20.0)  # the events are there before the run starts
            summary = await pipe.run_once()
            assert summary["alerts"] == 1, summary
            lines = alerts_file.read_text(encoding="utf-8").splitlines() if alerts_file.exists() else []
            assert len(lines) == i + 1, f"run {i}: the alert raised in this run was not delivered by it"


async def test_wait_visible_covers_every_own_commit(tmp_path: Path) -> None:
    """After ``wait_visible`` the end offsets of an open ``read_committed`` reader cover each commit
    (the reader is opened first, as a sink's is: without the wait ~1 read in 5 stopped short)."""
    bus = _cfg(f"t{uuid.uuid4().hex[:8]}.")
    async with make_bus(bus) as b:
        await b.ensure_topics([TopicSpec("visible", 2)])
        assert await b.wait_visible() is True  # nothing written: returns at once
        async with b.consumer(["visible"], start="earliest") as c:
            for i in range(60):
                async with b.transaction("vis") as tx:
                    tx.send("visible", f"{i}".encode(), key=b"k")
                assert await b.wait_visible(20.0)
                ends = await c.end_offsets()
                # one partition, each transaction one record and one marker: record i is at 2 * i
                assert sum(ends.values()) >= 2 * i + 1, (i, ends)


async def test_once_run_reads_partitions_a_stale_member_held(tmp_path: Path) -> None:
    """A rules ``run_once`` that starts while another member of its group still holds partitions
    (a killed run's member until its session times out) waits for them and reads every event.

    The other member here is a live aiokafka consumer that leaves after 3 s; before the fix the
    worker read the one partition it was handed, returned 0 unread and committed nothing for the
    other (the cause of the flaky ``test_killed_transformer_is_exactly_once[kafka]``: a worker
    killed while joining kept a partition in the next worker's generation).
    """
    from aiokafka import AIOKafkaConsumer

    from pipeline.clock import SYSTEM_CLOCK
    from pipeline.rules.worker import RulesWorker

    prefix = f"t{uuid.uuid4().hex[:8]}."
    bus = _cfg(prefix)
    rules_cfg = {"defaults": {"enabled": False}, "auth.recovery_code_used": {"enabled": True}}
    async with make_bus(bus) as b:
        events = [
            make_event("audit.mfa_recovery_code_used", time=1_790_000_000.0 + i, workspace=f"ws-{i}",
                       actor={"user_id": f"u{i}"})
            for i in range(12)
        ]  # fmt: skip
        async with b.transaction("stale-feeder") as tx:
            for e in events:
                tx.send(EVENTS_TOPIC, e.to_json(), key=e.workspace.id.encode())
        assert await b.wait_visible(20.0)
        async with b.consumer([EVENTS_TOPIC], start="earliest") as c:
            ends = await c.end_offsets()
        assert all(off > 0 for off in ends.values()), "the events must reach both partitions"
        stale = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap(), group_id=f"{prefix}rules", enable_auto_commit=False
        )
        await stale.start()
        stale.subscribe([f"{prefix}{EVENTS_TOPIC}"])
        for _ in range(200):
            if stale.assignment():
                break
            await asyncio.sleep(0.05)
        assert stale.assignment()

        async def leave_later() -> None:
            await asyncio.sleep(3.0)
            await stale.stop()

        leaving = asyncio.create_task(leave_later())
        try:
            worker = RulesWorker(b, rules_cfg, clock=SYSTEM_CLOCK)
            try:
                alerts = await worker.run_once()
            finally:
                await worker.close()
        finally:
            await leaving
        assert worker.last_consumed == len(events)
        assert alerts == len(events)
