"""The Bus protocol every implementation (SQLite, Kafka) honours; the contract suite tests it.

Semantics, stated once:

* A topic has one or more partitions; a record's partition is chosen from its key
  (record key = workspace id), so one workspace's records stay ordered.
* Offsets increase within a partition but need not be contiguous (Kafka transaction
  markers take offsets). Consumers read ``offset >= position``.
* Each record carries a timestamp in epoch milliseconds; within a partition timestamps
  never decrease (the bus clamps them), so a time seek is exact.
* ``transaction()`` is atomic: the records it sends, the state it writes and the consumer
  offsets it commits become visible together, or not at all (a failure inside the
  ``async with`` aborts everything).
* A writer calls ``fence(txn_id)`` once at start, before it reads its state, then uses
  ``transaction(txn_id)`` with the same id; a second process with that id fences the first.
* State is a key → bytes map (``instantly.state.v1``; compacted on Kafka). ``None`` deletes.
* A consumer with a ``group`` starts at the group's committed offsets (else at the policy
  given by ``start``); without a group it is an independent reader (replay) that never
  commits and never moves any group's offsets.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

EVENTS_TOPIC = "instantly.events.v1"
ALERTS_TOPIC = "instantly.alerts.v1"
STATE_TOPIC = "instantly.state.v1"
DEADLETTER_TOPIC = "instantly.deadletter.v1"
DATA_TOPICS = (EVENTS_TOPIC, ALERTS_TOPIC, DEADLETTER_TOPIC)
RECEIPTS_TOPIC = "instantly.receipts.v1"
"""Completeness receipts (Receipt v1, key ``<workspace id>/<hour>``; compacted on Kafka): see ``schemas/receipt.py``."""
CONTROL_TOPIC = "instantly.workspaces.v1"
"""Kafka only: the compacted registry of polled workspaces (key = source id); poller replicas share
its partitions through one consumer group (:mod:`pipeline.sources.assignment`)."""
CONTROL_PARTITIONS = 12
"""Partitions of the control topic: the most poller replicas that can share work. Fixed at creation
(a workspace's partition, and so its owner, is its key's hash modulo this number)."""

Header = tuple[str, bytes]
StartPolicy = Literal["committed", "earliest", "latest"]


class TopicPartition(NamedTuple):
    """A topic and one of its partitions."""

    topic: str
    partition: int


class Record(NamedTuple):
    """A record read from the bus (a NamedTuple: replay builds hundreds of thousands a second)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...] = ()

    @property
    def tp(self) -> TopicPartition:
        """The record's topic-partition."""
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The first header value with this name, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to publish."""

    topic: str
    value: bytes | None
    """``None`` is a tombstone: on a compacted topic it removes the key."""
    key: bytes | None = None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int | None = None


STATE_MAX_BYTES = 4 * 1024 * 1024
"""The largest state value a Kafka transaction may write (the embedded bus has no limit); a
transaction writing a larger value fails with an error naming the key. Writers keep their
values bounded instead of growing with their input: sources split large state into many keys
(chunks, shards) and delete the ones they no longer need (``None``: a tombstone on Kafka)."""
STATE_TOPIC_MESSAGE_BYTES = STATE_MAX_BYTES + 1024 * 1024
"""``max.message.bytes`` of the Kafka state topic: the largest value plus batch overhead
(Kafka's default, 1 MB, would refuse a cursor of ~18,000 ids)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How to create a topic."""

    name: str
    partitions: int = 1
    compacted: bool = False
    retention_ms: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    fixed_partitions: bool = False
    """The pipeline relies on exactly ``partitions`` (a topic made beforehand with another count is refused)."""


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of a key on the embedded bus (CRC-32; Kafka uses its own murmur2)."""
    if partitions <= 1 or key is None:
        return 0
    return zlib.crc32(key) % partitions


class Transaction(Protocol):
    """Collects writes that commit together. Methods only buffer; the commit happens on exit."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        """Buffer one record (``value=None``: a tombstone, which removes ``key`` from a compacted topic)."""
        ...

    def put_state(self, key: str, value: bytes | None) -> None:
        """Buffer a state write (None deletes the key)."""
        ...

    def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Buffer a consumer-group commit: ``offsets`` are the next offsets to read."""
        ...


@runtime_checkable
class Consumer(Protocol):
    """Reads records from topics; see the module docstring for group semantics."""

    async def __aenter__(self) -> Consumer: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads."""
        ...

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Return up to ``max_records`` records in partition order; [] after ``timeout_s`` if none."""
        ...

    def positions(self) -> dict[TopicPartition, int]:
        """The next offset this consumer will read, per partition."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the group's offsets (default: current positions).

        Raises:
            BusError: the consumer has no group, or the commit failed.
        """
        ...

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Continue reading ``tp`` at ``offset``."""
        ...

    async def seek_to_time(self, timestamp_ms: int) -> None:
        """Move every assigned partition to the first record with timestamp >= ``timestamp_ms``."""
        ...

    async def seek_to_beginning(self) -> None:
        """Move every assigned partition to its earliest retained record."""
        ...

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The offset after the last visible record, per assigned partition."""
        ...


@runtime_checkable
class Bus(Protocol):
    """The bus. Use as ``async with`` to open and close it."""

    name: str

    async def __aenter__(self) -> Bus: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create the topics that do not exist yet (idempotent)."""
        ...

    async def partitions(self, topic: str) -> int:
        """Number of partitions of a topic.

        Raises:
            BusError: the topic does not exist.
        """
        ...

    async def fence(self, txn_id: str) -> None:
        """Claim the writer id ``txn_id`` before reading state: on Kafka this fences a previous
        holder (a zombie) and aborts the transaction it left open, so state reads are not
        blocked behind it; on the embedded bus it is a no-op."""
        ...

    async def wait_visible(self, max_wait_secs: float = 30.0) -> bool:
        """Wait until every transaction this bus committed can be read by any consumer (Kafka: its
        commit markers are written a moment after the commit returns); False if not in time."""
        ...

    def transaction(self, txn_id: str) -> AbstractAsyncContextManager[Transaction]:
        """An atomic unit of work; ``txn_id`` identifies the writer (Kafka fences zombies by it)."""
        ...

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Publish records atomically in one transaction of the bus's default writer."""
        ...

    async def get_state(self, key: str) -> bytes | None:
        """The current value of a state key."""
        ...

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """All state keys starting with ``prefix``."""
        ...

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str | None = None,
        start: StartPolicy = "committed",
    ) -> Consumer:
        """A consumer over ``topics``; see the module docstring."""
        ...

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets for a topic (partitions without a commit are absent)."""
        ...

    async def enforce_retention(self) -> int:
        """Apply retention now; return how many records were removed (Kafka: 0, the broker does it)."""
        ...


async def claim_writer(bus: Bus, txn_id: str) -> None:
    """Take the writer id ``txn_id`` over and see what its other holder committed: fence first
    (no other process can commit under the id afterwards, and what one left open is aborted), then
    re-read the state on a bus that caches it (Kafka; the embedded bus reads its file each time).

    Call whenever a component (re)loads what it keeps in state after a fence, a restart or a
    rebalance: reading before the fence could miss a commit the other made in between.

    Raises:
        BusError: the writer cannot be started or the state cannot be read.
    """
    await bus.fence(txn_id)
    refresh = getattr(bus, "refresh_state", None)
    if refresh is not None:
        await refresh()


def reclaiming(
    bus: Bus, txn_id: str | None, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    """A task body that runs ``run(stop)``; when the supervisor restarts it (it failed: fenced by
    another process, say), it first claims its writer id ``txn_id`` again and re-reads the bus state
    (:func:`claim_writer`), so it goes on from what the other process committed,
    not from the copy of the state this process read before."""
    started = False

    async def body() -> None:
        nonlocal started
        if started and txn_id is not None:
            await claim_writer(bus, txn_id)
        started = True
        await run(stop)

    return body


async def consumer_lags(
    bus: Bus, group: str, topic: str, ends: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """A group's lag on ``topic`` per partition: the committed records it has not read up to ``ends``.

    On the embedded bus that is the end offset minus the committed one. On Kafka transaction
    markers take offsets too, so the bus counts the records in between (its ``lags`` method):
    a partition read to the end has lag 0, not 1 per transaction.

    Raises:
        BusError: the bus cannot be read.
    """
    committed = await bus.committed(group, topic)
    ranges = {tp: (committed.get(tp, 0), end) for tp, end in ends.items() if tp.topic == topic}
    count = getattr(bus, "lags", None)
    if count is not None:
        counted: dict[TopicPartition, int] = await count(ranges)
        return counted
    return {tp: max(0, end - start) for tp, (start, end) in ranges.items()}


async def iter_records(
    consumer: Consumer, *, until: Mapping[TopicPartition, int] | None = None, batch: int = 1000
) -> AsyncIterator[list[Record]]:
    """Yield batches until every assigned partition reached ``until`` (default: the end offsets now).

    Records a poll returned beyond ``until`` are not yielded, and the consumer is moved back to
    the first of them, so its next read returns them (a live consumer loses nothing that was
    committed while it caught up).
    """
    stop = dict(until) if until is not None else await consumer.end_offsets()
    while True:
        pos = consumer.positions()
        if all(pos.get(tp, 0) >= end for tp, end in stop.items()):
            return
        recs = await consumer.poll(batch, timeout_s=0.5)
        if any(off > stop.get(tp, 0) for tp, off in consumer.positions().items()):  # else all are below
            kept: list[Record] = []
            beyond: dict[TopicPartition, int] = {}
            for r in recs:
                if r.offset < stop.get(r.tp, 0):
                    kept.append(r)
                elif r.tp not in beyond:
                    beyond[r.tp] = r.offset
            for tp, offset in beyond.items():
                await consumer.seek(tp, offset)
            recs = kept
        if recs:
            yield recs


def default_topics(partitions: int = 1, events_retention_ms: int | None = None) -> list[TopicSpec]:
    """The pipeline topics with their configs (events, alerts, dead letters, state, receipts)."""
    return [
        TopicSpec(EVENTS_TOPIC, partitions, retention_ms=events_retention_ms),
        TopicSpec(ALERTS_TOPIC, partitions, retention_ms=events_retention_ms),
        TopicSpec(DEADLETTER_TOPIC, partitions, retention_ms=events_retention_ms),
        TopicSpec(
            STATE_TOPIC,
            1,
            compacted=True,
            extra={"max.message.bytes": str(STATE_TOPIC_MESSAGE_BYTES)},
            fixed_partitions=True,
        ),
        TopicSpec(RECEIPTS_TOPIC, partitions, compacted=True),
    ]


def control_topics() -> list[TopicSpec]:
    """The topics only a Kafka bus has: the compacted workspace registry that poller replicas share."""
    return [TopicSpec(CONTROL_TOPIC, CONTROL_PARTITIONS, compacted=True, fixed_partitions=True)]
