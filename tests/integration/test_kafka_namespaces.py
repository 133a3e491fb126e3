"""Two environments on one cluster (``topic_prefix`` ``prod.`` / ``staging.``) stay apart on a real broker.

Topics always carried the prefix; consumer groups and transactional ids did not, so two
environments sharing a cluster and the default ``transactional_id_prefix`` fenced each other's
``rules`` producer at every transaction and joined one ``rules`` consumer group. Groups and
transactional ids now carry the prefix too, and a prefixed group adopts the offsets its bare name
committed before the upgrade (neither re-reading nor skipping a record).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KTP
from aiokafka.structs import OffsetAndMetadata

from pipeline.bus.base import EVENTS_TOPIC, Bus, OutRecord, TopicPartition, iter_records
from tests.conftest import kafka_bootstrap, make_bus

pytestmark = [pytest.mark.kafka]


def _cfg(topic_prefix: str, txn_prefix: str) -> dict[str, Any]:
    return {"type": "kafka", "bootstrap_servers": [kafka_bootstrap()], "partitions": 2,
            "transactional_id_prefix": txn_prefix, "topic_prefix": topic_prefix}  # fmt: skip


async def _read_and_commit(bus: Bus, group: str, txn_id: str) -> list[bytes]:
    """Read what the group has not read yet and commit it in a transaction, as the rules worker does."""
    offsets: dict[TopicPartition, int] = {}
    values: list[bytes] = []
    async with bus.consumer([EVENTS_TOPIC], group=group) as consumer:
        async for batch in iter_records(consumer):
            for rec in batch:
                offsets[rec.tp] = max(offsets.get(rec.tp, 0), rec.offset + 1)
                values.append(rec.value)
    async with bus.transaction(txn_id) as txn:
        txn.put_state(f"test/{group}", b"x")
        txn.commit_offsets(group, offsets)
    return values


async def _committed_past(bus: Bus, group: str, total: int, within_secs: float = 15.0) -> bool:
    """Whether the group's committed offsets on the events topic pass ``total`` within ``within_secs``.

    A transactional offset commit becomes visible to an offset fetch only once the broker wrote the
    transaction's markers, shortly after the commit returned (a fetch without KIP-447's
    ``require_stable`` may return the previous offsets meanwhile): wait for it, as a process taking the
    group over does by fencing the writer first.
    """
    deadline = asyncio.get_running_loop().time() + within_secs
    while True:
        if sum((await bus.committed(group, EVENTS_TOPIC)).values()) > total:
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)


async def test_two_prefixes_share_writer_ids_and_groups_without_fencing_or_mixing() -> None:
    tag = uuid.uuid4().hex[:8]
    txn_prefix = f"shared-{tag}"  # the same transactional_id_prefix in both environments (the default's case)
    async with (
        make_bus(_cfg(f"prod{tag}.", txn_prefix)) as prod,
        make_bus(_cfg(f"staging{tag}.", txn_prefix)) as staging,
    ):
        for round_ in range(3):  # interleaved: each InitProducerId of one used to fence the other
            async with prod.transaction("rules") as txn:
                txn.send(EVENTS_TOPIC, f"prod-{round_}".encode(), key=b"ws")
            async with staging.transaction("rules") as txn:
                txn.send(EVENTS_TOPIC, f"staging-{round_}".encode(), key=b"ws")

        assert sorted(await _read_and_commit(prod, "rules", "rules")) == [b"prod-0", b"prod-1", b"prod-2"]
        assert await staging.committed("rules", EVENTS_TOPIC) == {}  # staging's group is its own
        assert sorted(await _read_and_commit(staging, "rules", "rules")) == [b"staging-0", b"staging-1", b"staging-2"]
        assert await _read_and_commit(prod, "rules", "rules") == []  # prod's offsets untouched by staging's
        assert sum((await prod.committed("rules", EVENTS_TOPIC)).values()) > 0


async def test_a_prefixed_group_adopts_the_offsets_its_bare_name_committed() -> None:
    tag = uuid.uuid4().hex[:8]
    prefix, group = f"up{tag}.", f"rules-{tag}"
    async with make_bus(_cfg(prefix, f"up-{tag}")) as bus:
        for i in range(4):
            await bus.publish([OutRecord(EVENTS_TOPIC, f"old-{i}".encode(), key=f"ws{i}".encode())])
        # What a version before the prefix was applied to groups committed: the bare group name.
        ends: dict[KTP, int] = {}
        async with bus.consumer([EVENTS_TOPIC], start="latest") as c:
            ends = {KTP(prefix + tp.topic, tp.partition): off for tp, off in (await c.end_offsets()).items()}
        legacy = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(), group_id=group, enable_auto_commit=False)
        await legacy.start()
        try:
            legacy.assign(list(ends))
            await legacy.commit({tp: OffsetAndMetadata(off, "") for tp, off in ends.items()})
        finally:
            await legacy.stop()
        await bus.publish([OutRecord(EVENTS_TOPIC, b"new", key=b"ws0")])

        assert await bus.committed(group, EVENTS_TOPIC) == {}  # the prefixed name has nothing yet
        assert await _read_and_commit(bus, group, f"w-{tag}") == [b"new"]  # not the four old ones again
        assert await _committed_past(bus, group, sum(ends.values()))
        assert await _read_and_commit(bus, group, f"w-{tag}") == []
