"""Topics and group offsets on the Kafka cluster, through one admin client.

Creates missing topics with their configs (compaction for state, retention for data),
waits until every new partition has a leader, caches partition counts and reads a
group's committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from pipeline.bus.base import TopicPartition, TopicSpec
from pipeline.bus.kafka_client import KafkaConnection, retrying, wrap_error
from pipeline.errors import BusError

TOPIC_EXISTS = 36


class KafkaTopics:
    """The admin side of the Kafka bus: topics, partition counts, committed offsets."""

    def __init__(self, conn: KafkaConnection, *, replication_factor: int = 1):
        self.conn = conn
        self.replication_factor = replication_factor
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: dict[str, int] = {}

    async def start(self) -> None:
        """Connect the admin client.

        Raises:
            KafkaError: the cluster cannot be reached (the caller wraps it).
        """
        c = self.conn
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=c.bootstrap, request_timeout_ms=c.request_timeout_ms, **c.client_args
        )
        await self._admin.start()

    async def close(self) -> None:
        """Close the admin client (errors while closing are ignored)."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    def client(self) -> AIOKafkaAdminClient:
        """The open admin client.

        Raises:
            BusError: the bus is not open.
        """
        if self._admin is None:
            raise BusError("the Kafka bus is not open (use 'async with')")
        return self._admin

    async def ensure(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics with their configs (compaction, retention).

        Raises:
            BusError: the cluster refused a topic or its partitions got no leader in time.
        """
        admin = self.client()
        existing = set(await admin.list_topics())
        new = []
        for s in specs:
            if self.conn.phys(s.name) in existing:
                continue
            configs: dict[str, str] = dict(s.extra)
            if s.compacted:
                configs["cleanup.policy"] = "compact"
            elif s.retention_ms is not None:
                configs["retention.ms"] = str(s.retention_ms)
            new.append(NewTopic(self.conn.phys(s.name), s.partitions, self.replication_factor, topic_configs=configs))
        if new:
            try:
                resp = await admin.create_topics(new, timeout_ms=self.conn.request_timeout_ms)
            except KafkaError as err:
                raise wrap_error(err, "creating topics") from None
            for item in getattr(resp, "topic_errors", []):
                name, code = item[0], item[1]
                if code not in (0, TOPIC_EXISTS):
                    raise BusError(f"kafka could not create topic {name}: error code {code}")
            await self._wait_leaders([t.name for t in new])
        for s in specs:
            self._partitions.pop(s.name, None)

    async def _wait_leaders(self, names: list[str], limit_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            try:
                desc = await self.client().describe_topics(names)
                ok = all(
                    t.get("error_code", 0) == 0
                    and t.get("partitions")
                    and all(p.get("leader", -1) >= 0 for p in t["partitions"])
                    for t in desc
                )
            except KafkaError:
                ok = False
            if ok:
                return
            if loop.time() > deadline:
                raise BusError(f"kafka topics {names} did not get leaders within {limit_s:.0f}s", retriable=True)
            await asyncio.sleep(0.1)

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (cached).

        Raises:
            BusError: the topic does not exist or cannot be described.
        """
        if topic not in self._partitions:
            try:
                desc = await self.client().describe_topics([self.conn.phys(topic)])
            except KafkaError as err:
                raise wrap_error(err, f"describing {topic}") from None
            if not desc or desc[0].get("error_code", 0) != 0 or not desc[0].get("partitions"):
                raise BusError(f"topic {topic!r} does not exist on the Kafka cluster")
            self._partitions[topic] = len(desc[0]["partitions"])
        return self._partitions[topic]

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets on ``topic``.

        Raises:
            BusError: the offsets cannot be read.
        """
        admin = self.client()
        offsets = await retrying(lambda: admin.list_consumer_group_offsets(group), f"reading offsets of group {group}")
        return {
            TopicPartition(topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.conn.phys(topic) and meta.offset >= 0
        }

    async def describe_group(self, group: str) -> dict[str, list[tuple[str, int]]]:
        """Each member of ``group`` (``client_id@host member_id``) → its assigned (topic, partition) pairs.

        Raises:
            BusError: the group cannot be described.
        """
        from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

        admin = self.client()
        responses = await retrying(lambda: admin.describe_consumer_groups([group]), f"describing group {group}")
        out: dict[str, list[tuple[str, int]]] = {}
        for resp in responses:
            for g in resp.to_object().get("groups", []):
                for m in g.get("members", []):
                    name = f"{m.get('client_id', '')}@{m.get('client_host', '').lstrip('/')} {m.get('member_id', '')}"
                    owned: list[tuple[str, int]] = []
                    raw = m.get("member_assignment") or b""
                    if raw:
                        decoded = ConsumerProtocolMemberAssignment.decode(raw)
                        for topic, parts in decoded.assignment:
                            owned += [(self.conn.logical(topic), int(p)) for p in parts]
                    out[name] = sorted(owned)
        return out
