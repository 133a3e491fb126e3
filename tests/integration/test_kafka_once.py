"""``run --once`` on a real broker leaves nothing behind: no open consumer, no member in any group.

A consumer that is not closed never sends LeaveGroup; its member stays in the group until the
session times out, and the next ``--once`` run's join waits for it (about 10 s per run).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from pipeline.bus.base import EVENTS_TOPIC, OutRecord
from pipeline.config.loader import parse_config
from pipeline.topology import run_pipeline
from tests.conftest import kafka_bootstrap, make_bus

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
