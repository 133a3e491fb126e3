"""Topics and group offsets on the Kafka cluster, through one admin client.

Creates missing topics with their configs (compaction for state, retention for data),
checks topics that exist already (:mod:`~pipeline.bus.kafka_topic_check`), waits until every
new partition has a leader, caches partition counts and reads a
group's committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiokafka import TopicPartition as KTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from pipeline.bus.base import TopicPartition, TopicSpec
from pipeline.bus.kafka_client import KafkaConnection, retrying, wrap_error
from pipeline.bus.kafka_topic_check import creation_configs, problems, warnings
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger

log = get_logger("bus")

TOPIC_EXISTS = 36
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40


class KafkaTopics:
    """The admin side of the Kafka bus: topics, partition counts, committed offsets."""

    def __init__(self, conn: KafkaConnection, *, replication_factor: int = 1):
        self.conn = conn
        self.replication_factor = replication_factor
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: dict[str, int] = {}
        self._max_bytes: dict[str, int | None] = {}

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
        """Create missing topics with their configs; check the ones that exist already.

        Raises:
            BusError: the cluster refused a topic (the error names the topic and the setting), a
                topic made beforehand cannot serve (see :mod:`~pipeline.bus.kafka_topic_check`), or
                new partitions got no leader in time.
        """
        admin = self.client()
        existing = set(await admin.list_topics())
        new = []
        present = []
        for s in specs:
            if self.conn.phys(s.name) in existing:
                present.append(s)
                continue
            configs = creation_configs(s, self.replication_factor)
            new.append(NewTopic(self.conn.phys(s.name), s.partitions, self.replication_factor, topic_configs=configs))
        if new:
            try:
                resp = await admin.create_topics(new, timeout_ms=self.conn.request_timeout_ms)
            except KafkaError as err:
                raise wrap_error(err, "creating topics") from None
            for item in getattr(resp, "topic_errors", []):
                name, code = item[0], item[1]
                if code == TOPIC_EXISTS:  # created meanwhile by another process: check it like the others
                    present += [s for s in specs if self.conn.phys(s.name) == name]
                elif code != 0:
                    raise BusError(self._creation_error(name, code, item[2] if len(item) > 2 else None))
            await self._wait_leaders([t.name for t in new])
        if present:
            await self._check_existing(present)
        for s in specs:
            self._partitions.pop(s.name, None)
            self._max_bytes.pop(s.name, None)

    async def require(self, topics: Sequence[str]) -> None:
        """Check that the logical ``topics`` exist (a read-only open creates nothing).

        Raises:
            BusError: one or more are missing (one line naming them, the prefix and the cluster).
            KafkaError: the cluster cannot be reached (the caller wraps it).
        """
        existing = set(await self.client().list_topics())
        missing = [self.conn.phys(t) for t in topics if self.conn.phys(t) not in existing]
        if missing:
            more = f" (and {len(missing) - 1} more of the pipeline's topics)" if len(missing) > 1 else ""
            prefix = f"bus.topic_prefix {self.conn.topic_prefix!r}" if self.conn.topic_prefix else "no bus.topic_prefix"
            raise BusError(
                f"kafka topic {missing[0]}{more} does not exist on {','.join(self.conn.bootstrap)} ({prefix};"
                " readers create no topics: check bus.topic_prefix and bus.bootstrap_servers)",
                retriable=False,
            )

    def _creation_error(self, name: str, code: int, message: str | None) -> str:
        detail = f" ({message})" if message else ""
        if code == INVALID_REPLICATION_FACTOR:
            return (
                f"kafka could not create topic {name}: replication factor {self.replication_factor} "
                f"(bus.replication_factor) is more than the cluster's brokers{detail}"
            )
        if code == INVALID_CONFIG:
            return f"kafka could not create topic {name}: a topic config was refused{detail}"
        return f"kafka could not create topic {name}: error code {code}{detail}"

    async def _check_existing(self, specs: Sequence[TopicSpec]) -> None:
        """Refuse topics made beforehand that cannot serve; what the cluster will not describe is skipped.

        A principal without ``Describe``/``DescribeConfigs`` on a topic gets an error code for it,
        not an empty answer: that topic is left unchecked (with a warning), never judged by defaults.
        """
        admin = self.client()
        names = [self.conn.phys(s.name) for s in specs]
        counts: dict[str, int] = {}
        configs: dict[str, dict[str, str]] = {}
        try:
            for t in await admin.describe_topics(names):
                if not t.get("error_code"):
                    counts[t["topic"]] = len(t.get("partitions") or ())
            answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            for answer in answers:
                for res in answer.resources:
                    if res[0] == 0:
                        configs[res[3]] = {str(e[0]): str(e[1]) for e in res[4] if e[1] is not None}
        except KafkaError as err:
            log.warning("Kafka topics made beforehand were not checked", extra={"error": type(err).__name__})
            return
        unchecked = sorted(n for n in names if n not in counts or n not in configs)
        if unchecked:
            log.warning("Kafka topics the cluster would not describe were not checked", extra={"topics": unchecked})
        found = [
            p
            for s, n in zip(specs, names, strict=True)
            if n in counts and n in configs
            for p in problems(s, n, counts[n], configs[n])
        ]
        if found:
            raise BusError("; ".join(found) + " (fix or delete the topic, or set bus.topic_prefix)")
        for s, n in zip(specs, names, strict=True):
            for w in warnings(s, n, configs.get(n, {})):
                log.warning("Kafka topic made beforehand has a lower limit", extra={"problem": w})

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

    async def max_message_bytes(self, topic: str, *, fresh: bool = False) -> int | None:
        """The topic's ``max.message.bytes`` (cached unless ``fresh``; None: the cluster would not describe it).

        Raises:
            BusError: the cluster cannot be reached.
        """
        if fresh or topic not in self._max_bytes:
            name = self.conn.phys(topic)
            try:
                answers = await self.client().describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
            except KafkaError as err:
                raise wrap_error(err, f"describing the configs of {name}") from None
            found: int | None = None
            for answer in answers:
                for res in answer.resources:
                    if res[0] == 0 and res[3] == name:
                        value = {str(e[0]): e[1] for e in res[4]}.get("max.message.bytes")
                        found = int(value) if value is not None else None
            self._max_bytes[topic] = found
        return self._max_bytes[topic]

    async def group_offsets(self, group: str) -> dict[KTP, int]:
        """Every offset ``group`` (its name on the cluster) committed, by cluster partition.

        Raises:
            BusError: the offsets cannot be read.
        """
        admin = self.client()
        offsets = await retrying(lambda: admin.list_consumer_group_offsets(group), f"reading offsets of group {group}")
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's (its name on the cluster) committed offsets on ``topic``.

        Raises:
            BusError: the offsets cannot be read.
        """
        name = self.conn.phys(topic)
        return {TopicPartition(topic, tp.partition): off for tp, off in (await self.group_offsets(group)).items()
                if tp.topic == name}  # fmt: skip

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
