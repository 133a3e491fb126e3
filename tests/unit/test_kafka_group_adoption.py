"""A prefixed consumer group's adoption of its bare name's offsets never blocks the consumer.

Clusters shared by prefix usually grant ACLs on the prefixed group names only (``staging.*``): reading
the bare group ``rules`` is then refused (GroupAuthorizationFailed, not retriable), and the consumer
must start from its own offsets instead of failing every start (it would never commit, so never
get offsets of its own). The real-broker half of adoption is in tests/integration/test_kafka_namespaces.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition as KTP

from pipeline.bus.kafka_client import KafkaConnection
from pipeline.bus.kafka_consumer import KafkaConsumer
from pipeline.errors import BusError


class _Admin:
    """The two admin answers adoption reads: the prefixed group has nothing, the bare one is refused."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def group_offsets(self, group: str) -> dict[KTP, int]:
        self.asked.append(group)
        if group == "rules":
            raise BusError("kafka reading offsets of group rules failed: GroupAuthorizationFailedError: [Error 30]")
        return {}


def test_a_refused_bare_group_leaves_the_prefixed_group_to_start_from_its_own() -> None:
    admin: Any = _Admin()
    consumer = KafkaConsumer(KafkaConnection(["127.0.0.1:9"], topic_prefix="staging."), admin, ["instantly.events.v1"],
                             "rules", "committed")  # fmt: skip
    asyncio.run(consumer._adopt_unprefixed_offsets())  # returns: no BusError escapes
    assert admin.asked == ["staging.rules", "rules"]


def test_no_prefix_means_nothing_to_adopt() -> None:
    admin: Any = _Admin()
    consumer = KafkaConsumer(KafkaConnection(["127.0.0.1:9"]), admin, ["instantly.events.v1"], "rules", "committed")
    asyncio.run(consumer._adopt_unprefixed_offsets())
    assert admin.asked == []
