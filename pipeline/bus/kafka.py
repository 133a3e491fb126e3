"""The Apache Kafka bus (aiokafka): the same contract as the embedded bus, on a real cluster.

:class:`KafkaBus` is the face of the bus; its parts each do one job:
:mod:`~pipeline.bus.kafka_writer` (transactional producers per writer id, fencing, retries,
the aiokafka#1004 shim), :mod:`~pipeline.bus.kafka_admin` (topics, partition counts,
group offsets), :mod:`~pipeline.bus.kafka_state` (the compacted state topic, read into
memory), :mod:`~pipeline.bus.kafka_consumer` (``read_committed`` consumers) and
:mod:`~pipeline.bus.kafka_client` (connection settings, error wrapping). The broker applies
retention itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.errors import KafkaError

from pipeline.bus.base import OutRecord, StartPolicy, TopicPartition, TopicSpec, control_topics, default_topics
from pipeline.bus.kafka_admin import KafkaTopics
from pipeline.bus.kafka_assignor import Weights
from pipeline.bus.kafka_client import DAY_MS, BrokerReasons, KafkaConnection, client_args_from_config, wrap_error
from pipeline.bus.kafka_consumer import KafkaConsumer, RecordCounter
from pipeline.bus.kafka_membership import Callback, KafkaMembership, RecordsCallback
from pipeline.bus.kafka_state import OPEN_TXN_WAIT_SECS, KafkaState
from pipeline.bus.kafka_writer import KafkaWriters
from pipeline.bus.txn import BufferedTxn
from pipeline.config.model import KafkaBusConfig

__all__ = ["KafkaBus", "KafkaConsumer"]

log = logging.getLogger("instantly_audit.bus.kafka")
VISIBLE_WAIT_SECS = 30.0
"""How long :meth:`KafkaBus.wait_visible` waits for the commit markers of this bus's transactions."""


class KafkaBus:
    """The Kafka bus (see module docstring)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        *,
        client_args: Mapping[str, Any] | None = None,
        transactional_id_prefix: str = "instantly-audit",
        partitions: int = 3,
        replication_factor: int = 1,
        retention_ms: int | None = 30 * DAY_MS,
        request_timeout_ms: int = 30_000,
        compression_type: str = "none",
        max_txn_attempts: int = 5,
        create_topics: bool = True,
        topic_prefix: str = "",
        read_only: bool = False,
    ):
        self.conn = KafkaConnection(list(bootstrap_servers), dict(client_args or {}), request_timeout_ms, topic_prefix)
        self.bootstrap = self.conn.bootstrap
        self.default_partitions = partitions
        self.retention_ms = retention_ms
        self._create_topics = create_topics and not read_only
        self.read_only = read_only
        self._topics = KafkaTopics(self.conn, replication_factor=replication_factor)
        self._specs: dict[str, TopicSpec] = {}
        self._writers = KafkaWriters(
            self.conn,
            self._topics,
            prefix=transactional_id_prefix,
            max_txn_attempts=max_txn_attempts,
            recreate=self._recreate if self._create_topics else None,
            compression_type=compression_type,
        )
        self._state = KafkaState(self.conn)
        self._counter = RecordCounter(self.conn)

    def phys(self, topic: str) -> str:
        """The cluster's name for a logical topic (``topic_prefix`` + name)."""
        return self.conn.phys(topic)

    def logical(self, topic: str) -> str:
        """The logical name of a cluster topic."""
        return self.conn.logical(topic)

    @classmethod
    def from_config(cls, cfg: KafkaBusConfig, *, read_only: bool = False) -> KafkaBus:
        """Build from the validated config (``read_only``: a reader that creates no topic)."""
        return cls(
            cfg.bootstrap_servers,
            client_args=client_args_from_config(cfg),
            transactional_id_prefix=cfg.transactional_id_prefix,
            partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            retention_ms=int(cfg.retention_days * DAY_MS),
            request_timeout_ms=int(cfg.request_timeout_secs * 1000),
            compression_type=cfg.compression_type,
            topic_prefix=cfg.topic_prefix,
            read_only=read_only,
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> KafkaBus:
        """Connect and create the default topics (read-only: check that they exist, create nothing).

        Raises:
            BusError: the cluster cannot be reached or refuses the topics; read-only: a topic is missing.
        """
        reasons = BrokerReasons()
        try:
            with reasons.installed():
                await self._topics.start()
            if self.read_only:
                # status, replay and gaps only read: a wrong topic_prefix or cluster must say so,
                # not create an empty set of topics and report nothing found
                await self._topics.require([s.name for s in default_topics()])
            elif self._create_topics:
                await self.ensure_topics(default_topics(self.default_partitions, self.retention_ms) + control_topics())
        except KafkaError as err:
            await self.__aexit__(None, None, None)
            where = f"connecting to {','.join(self.bootstrap)} (bus.bootstrap_servers)"
            raise reasons.explain(wrap_error(err, where)) from None
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._counter.close()
        await self._writers.close()
        await self._topics.close()

    # ---- topics ---------------------------------------------------------------------
    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics with their configs; refuse existing ones that cannot serve."""
        await self._topics.ensure(specs)
        self._specs.update((s.name, s) for s in specs)

    async def _recreate(self, topics: Sequence[str]) -> None:
        """Create again, with the configs they were made with, the logical ``topics`` a transaction
        found deleted while this bus was open (as ``run`` would at its next start)."""
        await self._topics.ensure([self._specs[t] for t in topics if t in self._specs])

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``."""
        return await self._topics.partitions(topic)

    # ---- writers --------------------------------------------------------------------
    async def fence(self, txn_id: str) -> None:
        """Claim ``txn_id`` (fencing any zombie) so state reads are not blocked by its open transaction."""
        await self._writers.fence(txn_id)

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[BufferedTxn]:
        """Buffer writes; commit them in one Kafka transaction when the block exits cleanly."""
        txn = BufferedTxn()
        yield txn
        if txn.records or txn.state or txn.offsets:
            await self._commit(txn_id, txn)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Publish records in one transaction of the default writer."""
        await self._commit("default", BufferedTxn(records=list(records)))

    async def _commit(self, txn_id: str, txn: BufferedTxn) -> None:
        await self._writers.commit(txn_id, txn)
        self._state.apply(txn.state)

    async def wait_visible(self, max_wait_secs: float = VISIBLE_WAIT_SECS) -> bool:
        """Wait until everything this bus committed is readable by ``read_committed`` consumers.

        Kafka writes a transaction's commit markers after the commit returned; until then the last
        stable offset stops before the transaction, and a reader that reads "up to the end" (a
        ``run --once`` rules worker or sink, ``replay``) stops short of it. Returns False when the
        markers were not written within ``max_wait_secs`` (then logged; nothing is lost, a later
        read sees the records).

        Raises:
            BusError: the cluster cannot be read.
        """
        targets = dict(self._writers.written)
        if not targets:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_secs
        pause = 0.005
        while True:
            ends = await self._counter.stable_offsets(list(targets))
            targets = {tp: off for tp, off in targets.items() if ends.get(tp, 0) < off}
            if not targets:
                return True
            if loop.time() >= deadline:
                log.warning(
                    "Own commits not visible to readers in time",
                    extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in targets)},
                )
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def release(self, txn_id: str) -> None:
        """Stop the writer ``txn_id`` (its workspace moved to another replica)."""
        await self._writers.release(txn_id)

    def partition_of(self, key: bytes, partitions: int) -> int:
        """The partition Kafka's default partitioner (murmur2) gives ``key`` — where its records land."""
        return self._writers.partition_of(key, partitions)

    def membership(
        self,
        topic: str,
        group: str,
        *,
        assigned: Callback,
        revoked: Callback,
        records: RecordsCallback | None = None,
        weights: Weights | None = None,
    ) -> KafkaMembership:
        """A member of ``group`` sharing the partitions of ``topic`` (see :mod:`~pipeline.bus.kafka_membership`)."""
        return KafkaMembership(
            self.conn,
            topic,
            self.conn.group(group),
            assigned=assigned,
            revoked=revoked,
            records=records,
            weights=weights,
        )

    async def describe_group(self, group: str) -> dict[str, list[tuple[str, int]]]:
        """Each member of ``group`` (client id and host) → the partitions it owns, per topic."""
        return await self._topics.describe_group(self.conn.group(group))

    async def refresh_state(self, max_wait_secs: float = OPEN_TXN_WAIT_SECS) -> None:
        """Read the state topic again (other processes wrote since this one loaded it), waiting at
        most ``max_wait_secs`` behind transactions open when the read began.

        Raises:
            BusError: the state topic cannot be read, or stayed behind an open transaction.
        """
        await self._state.refresh(max_wait_secs)

    # ---- state and offsets ----------------------------------------------------------
    async def get_state(self, key: str) -> bytes | None:
        """Current value of a state key."""
        return await self._state.get(key)

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """State entries whose key starts with ``prefix``."""
        return await self._state.items(prefix)

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets on ``topic``."""
        return await self._topics.committed(self.conn.group(group), topic)

    async def lags(self, ranges: Mapping[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, int]:
        """Per partition, the committed data records in ``[committed, end)``: transaction markers
        take offsets but are not records, so a fully read partition has lag 0 (see
        :class:`~pipeline.bus.kafka_consumer.RecordCounter`).

        Raises:
            BusError: the cluster cannot be read.
        """
        return await self._counter.lags(ranges)

    async def enforce_retention(self) -> int:
        """The broker applies retention itself."""
        return 0

    # ---- readers --------------------------------------------------------------------
    def consumer(
        self, topics: Sequence[str], *, group: str | None = None, start: StartPolicy = "committed"
    ) -> KafkaConsumer:
        """A read_committed consumer over ``topics``."""
        return KafkaConsumer(self.conn, self._topics, list(topics), group, start)
