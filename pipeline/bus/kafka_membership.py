"""Membership of a Kafka consumer group used only to share work: which partitions are mine now.

The poller replicas join one group on the control topic (``instantly.workspaces.v1``); Kafka's
group coordinator assigns its partitions among the live members and reassigns them when a member
joins, leaves or stops heartbeating for ``session_timeout_ms``. The records are not processed
here — each partition stands for the workspaces whose ids hash to it.

aiokafka 0.14 implements the classic (eager) rebalance protocol only: at every rebalance each
member is asked to give up *all* its partitions (``on_partitions_revoked``) before any member
gets its new set (``on_partitions_assigned``). It has neither the cooperative-sticky assignor
(KIP-429) nor the new consumer protocol (KIP-848), so a rebalance briefly pauses every poller;
the listener waits for the callbacks, so a partition is never owned by two replicas at once.
With ``weights`` the group prefers :class:`~pipeline.bus.kafka_assignor.WorkspaceBalancedAssignor`
(balances workspaces per member rather than partitions), falling back to round-robin.

The member reads its partitions from the beginning at every assignment (it never commits an
offset) and hands their records to ``records``: on the compacted control topic that is every
workspace announced there — configured and discovered — and each tombstone of one that left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KTP
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from pipeline.bus.kafka_assignor import Weights, WorkspaceBalancedAssignor
from pipeline.bus.kafka_client import KafkaConnection, wrap_error

SESSION_TIMEOUT_MS = 10_000
"""A replica that sent no heartbeat for this long is dead: its partitions go to the others."""
HEARTBEAT_INTERVAL_MS = 3_000
REBALANCE_TIMEOUT_MS = 25_000
"""How long the coordinator waits for every member to rejoin a rebalance — it includes the revoke
callback, which lets pollers finish their poll (aiokafka's default is the session timeout, 10 s:
a member still stopping its pollers would be dropped and its workspaces handed on too early). Kept
below the request timeout (30 s): aiokafka sends JoinGroup with the ordinary request timeout."""
Callback = Callable[[set[int]], Awaitable[None]]
RecordsCallback = Callable[[list[tuple[int, bytes | None, bytes | None]]], Awaitable[None]]
"""Receives ``(partition, key, value)`` of records read from the owned partitions, in offset order."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, topic: str, assigned: Callback, revoked: Callback):
        self.topic = topic
        self.assigned = assigned
        self.revoked = revoked

    async def on_partitions_revoked(self, revoked: set[KTP]) -> None:
        await self.revoked({tp.partition for tp in revoked if tp.topic == self.topic})

    async def on_partitions_assigned(self, assigned: set[KTP]) -> None:
        await self.assigned({tp.partition for tp in assigned if tp.topic == self.topic})


class KafkaMembership:
    """One member of ``group`` on ``topic``; ``run`` keeps it in the group until ``stop``."""

    def __init__(
        self,
        conn: KafkaConnection,
        topic: str,
        group: str,
        *,
        assigned: Callback,
        revoked: Callback,
        records: RecordsCallback | None = None,
        weights: Weights | None = None,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
    ):
        self.conn = conn
        self.topic = conn.phys(topic)
        self.group = group
        self._assigned = assigned
        self._revoked = revoked
        self._records = records
        self._weights = weights
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms

    async def run(self, stop: asyncio.Event) -> None:
        """Join the group and stay in it until ``stop``; the callbacks run inside each rebalance.

        On the way out every partition is revoked (the callback runs) *before* the group is left,
        so the next owner starts only after this replica stopped.

        Raises:
            BusError: the cluster cannot be reached.
        """
        c = AIOKafkaConsumer(
            bootstrap_servers=self.conn.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",  # no offset is ever committed: each assignment reads it all
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            partition_assignment_strategy=(
                (WorkspaceBalancedAssignor(self._weights), RoundRobinPartitionAssignor)
                if self._weights is not None
                else (RoundRobinPartitionAssignor,)
            ),
            request_timeout_ms=self.conn.request_timeout_ms,
            **self.conn.client_args,
        )
        owned: set[int] = set()

        async def assigned(parts: set[int]) -> None:
            owned.update(parts)
            await self._assigned(parts)

        async def revoked(parts: set[int]) -> None:
            owned.difference_update(parts)
            await self._revoked(parts)

        try:
            await c.start()
            c.subscribe([self.topic], listener=_Listener(self.topic, assigned, revoked))
            while not stop.is_set():
                # Heartbeats run in aiokafka's background task; polling keeps this member inside
                # max_poll_interval_ms and lets rebalances (and their callbacks) proceed.
                batch = await c.getmany(timeout_ms=1000, max_records=500)
                if self._records is not None and batch:
                    got = [(tp.partition, r.key, r.value) for tp, recs in batch.items() for r in recs]
                    await self._records(got)
        except KafkaError as err:
            raise wrap_error(err, f"membership of group {self.group}") from None
        finally:
            if owned:
                await self._revoked(set(owned))
                owned.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.stop(), timeout=10)
