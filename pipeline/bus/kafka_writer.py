"""Transactional writers on Kafka: one producer per writer id, fencing, retries, outage reporting.

* One transactional producer per writer id (``<prefix>-<topic_prefix><txn_id>``), idempotent, ``acks=all``:
  a transaction's records, its state records (compacted ``instantly.state.v1``, key = state
  key, ``None`` = tombstone) and consumer offsets (``send_offsets_to_transaction``) commit
  together. A second process using the same writer id fences the first (``ProducerFenced``
  → a non-retriable :class:`BusError`).
* A failed transaction is aborted, its producer replaced, and retried while the error is
  retriable. Any failure replaces the producer, not only a ``KafkaError``: once its sender task
  died (fenced mid-transaction) aiokafka keeps it in ``FATAL_ERROR`` and answers every later
  call with ``IllegalOperation`` or an ``AssertionError`` of its state machine; a producer whose
  sender died or whose transaction was left open (a cancelled commit) is never reused. A
  transaction slower than :data:`STALL_SECS` is reported once per outage. An error
  no retry can fix (a record over the topic's ``max.message.bytes``, a refused config) fails the
  transaction at once with its own message — it is not an outage. A record larger than its
  topic's ``max.message.bytes`` (read from the cluster, cached) is refused before anything is
  sent, with an error naming its size, topic and the limit (:class:`RecordTooLarge`) — except an
  event, which is replaced by a dead letter in the same transaction (:mod:`pipeline.bus.oversize`); with
  ``compression_type`` set that check is left to the broker (the compressed batch is smaller than
  the record), whose refusal fails the transaction the same way.
* A topic deleted while the bus is open: aiokafka retries ``AddPartitionsToTxn`` on
  ``UNKNOWN_TOPIC_OR_PARTITION`` without end, so such a transaction (and closing its producer)
  hung for ever while the log said the broker was unreachable. A transaction stalled for
  :data:`STALL_SECS` asks the cluster which of its topics still exist; when one is gone the
  transaction is abandoned with :class:`TopicMissing` naming it, counted, and — on a bus that
  creates topics — the topic is created again with its configs and the transaction retried.
* aiokafka issue #1004: Kafka's error code 13 (NETWORK_EXCEPTION, retriable) is read by
  aiokafka as ``StaleLeaderEpochCodeError`` and fails ``TxnOffsetCommit``; a small shim
  (installed on import) retries it.
* After a commit the coordinator still writes the commit markers; the next transaction's first
  ``AddPartitionsToTxn`` meanwhile gets ``CONCURRENT_TRANSACTIONS`` and aiokafka waits a fixed
  20 ms before asking again — more than the whole transaction costs on a healthy cluster (a
  sequential writer made ~80 transactions/s instead of ~300). A second shim retries after 1 ms,
  doubling per consecutive refusal up to aiokafka's 20 ms (:func:`concurrent_txn_backoff`).
  The same delay hides a commit from ``read_committed`` readers for a moment (the last stable
  offset stops before it); :attr:`KafkaWriters.written` keeps, per partition, where this bus's
  commits end, so a one-shot run can wait until what it wrote is readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as KTP
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import OffsetAndMetadata

from pipeline.bus import oversize
from pipeline.bus.base import STATE_MAX_BYTES, STATE_TOPIC, Header, OutRecord
from pipeline.bus.kafka_admin import KafkaTopics
from pipeline.bus.kafka_client import PRODUCER_BATCH_BYTES, KafkaConnection, wrap_error
from pipeline.bus.oversize import RecordTooLarge
from pipeline.bus.txn import BufferedTxn
from pipeline.errors import BusError
from pipeline.observability.telemetry import get_telemetry

log = logging.getLogger("instantly_audit.bus.kafka")
STALL_SECS = 5.0  # a transaction slower than this means the broker is unreachable or struggling


def _install_issue_1004_shim() -> None:
    """Treat error code 13 in TxnOffsetCommit responses as retriable (aiokafka#1004)."""
    from aiokafka.producer import sender

    handler = sender.TxnOffsetCommitHandler
    original = handler.handle_response
    if getattr(original, "_instantly_audit_shim", False):
        return

    def handle_response(self: Any, resp: Any) -> Any:
        codes = [code for _topic, parts in resp.errors for _p, code in parts]
        if 13 in codes:
            log.warning("TxnOffsetCommit got error 13 (NETWORK_EXCEPTION, retriable); retrying (aiokafka#1004)")
            return self._default_backoff
        return original(self, resp)

    handle_response._instantly_audit_shim = True  # type: ignore[attr-defined]
    handler.handle_response = handle_response


_install_issue_1004_shim()

CONCURRENT_TXN_FIRST_BACKOFF = 0.001
"""Seconds before the first retry of an ``AddPartitionsToTxn`` refused while markers are written."""


def concurrent_txn_backoff(refusals: int, cap: float) -> float:
    """The wait before retrying ``AddPartitionsToTxn`` after ``refusals`` consecutive
    ``CONCURRENT_TRANSACTIONS`` answers (1 ms, doubling, at most ``cap``)."""
    return min(CONCURRENT_TXN_FIRST_BACKOFF * 2.0 ** max(refusals - 1, 0), cap)


def _install_concurrent_txn_shim() -> None:
    """Retry ``AddPartitionsToTxn`` sooner while the previous commit's markers are written."""
    from aiokafka.producer import sender

    handler = sender.AddPartitionsToTxnHandler
    original = handler.handle_response
    if getattr(original, "_instantly_audit_shim", False):
        return

    def handle_response(self: Any, resp: Any) -> Any:
        backoff = original(self, resp)
        owner = self._sender
        # aiokafka answers BACKOFF_OVERRIDE only for CONCURRENT_TRANSACTIONS on an empty transaction
        if backoff is not None and backoff == sender.BACKOFF_OVERRIDE:
            owner._instantly_audit_refusals = getattr(owner, "_instantly_audit_refusals", 0) + 1
            return concurrent_txn_backoff(owner._instantly_audit_refusals, sender.BACKOFF_OVERRIDE)
        owner._instantly_audit_refusals = 0
        return backoff

    handle_response._instantly_audit_shim = True  # type: ignore[attr-defined]
    handler.handle_response = handle_response


_install_concurrent_txn_shim()


class TopicMissing(BusError):
    """Topics a transaction writes to do not exist on the cluster (deleted while the bus was open):
    the transaction is not committed; it can be once the topics exist again."""

    def __init__(self, topics: Sequence[str]):
        self.topics = list(topics)
        super().__init__(
            f"kafka topic {', '.join(self.topics)} does not exist on the cluster (deleted while the pipeline ran?):"
            " the transaction is not committed",
            retriable=True,
        )


def record_batch_bytes(key: bytes | None, value: bytes | None, headers: list[Header], timestamp: int | None) -> int:
    """The bytes a batch holding only this record takes on the broker (what ``max.message.bytes`` limits)."""
    builder = DefaultRecordBatchBuilder(2, 0, 1, -1, -1, 0, batch_size=1 << 31)
    builder.append(0, timestamp, key, value, headers)
    return int(builder.size())


class KafkaWriters:
    """The transactional producers of one bus, keyed by writer id (see module docstring)."""

    def __init__(
        self,
        conn: KafkaConnection,
        topics: KafkaTopics,
        *,
        prefix: str,
        max_txn_attempts: int = 5,
        recreate: Callable[[Sequence[str]], Awaitable[None]] | None = None,
        compression_type: str = "none",
    ):
        self.conn = conn
        self.topics = topics
        self.prefix = prefix
        self.max_txn_attempts = max_txn_attempts
        self.recreate = recreate
        """Creates logical topics found deleted again (None: a transaction to one fails with :class:`TopicMissing`)."""
        self.compression = None if compression_type == "none" else compression_type
        """aiokafka's ``compression_type`` of every producer (None: batches go uncompressed)."""
        self.producers: dict[str, AIOKafkaProducer] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._default_partitioner = DefaultPartitioner()
        self._partition_cache: dict[tuple[bytes, int], int] = {}
        self._outage_since: float | None = None
        self._failed_attempts = 0
        self.written: dict[KTP, int] = {}
        """Per partition, the first offset past this bus's last committed batch there: a
        ``read_committed`` reader sees every commit of this bus once the last stable offset has
        reached it (see :meth:`pipeline.bus.kafka.KafkaBus.wait_visible`)."""
        self._telemetry = get_telemetry()  # read once: the composition root sets it before opening the bus

    async def close(self) -> None:
        """Stop every producer (errors while stopping are ignored)."""
        for p in list(self.producers.values()):
            with contextlib.suppress(Exception):
                await p.stop()
        self.producers.clear()

    async def _producer(self, txn_id: str) -> AIOKafkaProducer:
        p = self.producers.get(txn_id)
        if p is not None and not _ready(p):  # never begin a transaction on a dead or half-used producer
            await self._drop_producer(txn_id)
            p = None
        if p is None:
            p = AIOKafkaProducer(
                bootstrap_servers=self.conn.bootstrap,
                transactional_id=self.conn.txn_id(self.prefix, txn_id),
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=self.conn.request_timeout_ms,
                max_batch_size=PRODUCER_BATCH_BYTES,
                linger_ms=0,
                compression_type=self.compression,
                **self.conn.client_args,
            )
            try:
                await p.start()  # InitProducerId: fences a zombie and aborts its open transaction
            except KafkaError as err:
                with contextlib.suppress(Exception):
                    await p.stop()
                raise wrap_error(err, f"starting the transactional producer {txn_id}") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    await p.stop()
                raise
            self.producers[txn_id] = p
        return p

    def partition_of(self, key: bytes, partitions: int) -> int:
        """The partition of ``key`` among ``partitions`` (murmur2, as every Kafka client)."""
        return self._partitioner(key, list(range(partitions)))

    def _partitioner(self, key: bytes | None, partitions: list[int]) -> int:
        if key is None:
            return int(self._default_partitioner(key, partitions, partitions))
        # Keys are workspace ids, so a handful of values: cache aiokafka's pure-Python murmur2.
        hit = self._partition_cache.get((key, len(partitions)))
        if hit is None:
            hit = int(self._default_partitioner(key, partitions, partitions))
            if len(self._partition_cache) > 10_000:
                self._partition_cache.clear()
            self._partition_cache[(key, len(partitions))] = hit
        return hit

    async def fence(self, txn_id: str) -> None:
        """Claim ``txn_id`` (fencing any zombie) so state reads are not blocked by its open transaction.

        Raises:
            BusError: the producer cannot start.
        """
        async with self._locks[txn_id]:
            await self._producer(txn_id)

    async def release(self, txn_id: str) -> None:
        """Stop the producer of ``txn_id`` (the workspace moved to another replica); a later
        :meth:`fence` starts a new one, fencing whoever holds the id then."""
        async with self._locks[txn_id]:
            await self._drop_producer(txn_id)

    async def commit(self, txn_id: str, txn: BufferedTxn) -> None:
        """Commit ``txn`` as one Kafka transaction of writer ``txn_id``, retrying retriable failures.

        Raises:
            BusError: the writer was fenced, a failure is not retriable, or every attempt failed.
        """
        async with self._locks[txn_id]:
            for attempt in range(1, self.max_txn_attempts + 1):
                try:
                    p = await self._producer(txn_id)
                    await self._watched(txn_id, self._send_txn(p, txn, txn_id), _topics_of(txn))
                    self._recovered(txn_id)
                    return
                except TopicMissing as err:
                    await self._abandon(txn_id)
                    self._telemetry.bus_errors("transaction", type(err).__name__)
                    if self.recreate is None or attempt == self.max_txn_attempts:
                        log.error(
                            "Kafka topic deleted; transaction not committed",
                            extra={"writer": txn_id, "topics": err.topics, "error": err.message},
                        )
                        raise
                    log.error(
                        "Kafka topic deleted while running; creating it again",
                        extra={"writer": txn_id, "topics": err.topics, "error": err.message},
                    )
                    await self.recreate([self.conn.logical(t) for t in err.topics])
                    continue
                except ProducerFenced:
                    await self._drop_producer(txn_id)
                    raise BusError(
                        f"writer {txn_id} was fenced: another process now uses the same transactional id",
                        retriable=False,
                    ) from None
                except BusError as err:  # starting the producer failed (broker unreachable), or refused
                    if not err.retriable:  # a record over its topic's limit (maybe a transaction begun)
                        held = self.producers.get(txn_id)
                        if held is not None:
                            await self._abort_and_replace(txn_id, held)
                        self._refused(txn_id, err)
                        raise
                    self._failed(txn_id, err)
                    if attempt == self.max_txn_attempts:
                        raise
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                    continue
                except (TimeoutError, KafkaError) as err:
                    wrapped = wrap_error(err, f"transaction of {txn_id}")
                    if not wrapped.retriable:  # no retry can fix it: not an outage, say what it is
                        await self._abort_and_replace(txn_id, p)
                        self._refused(txn_id, wrapped)
                        raise wrapped from None
                    self._failed(txn_id, err)
                    log.warning(
                        "Kafka transaction failed; aborted",
                        extra={"writer": txn_id, "attempt": attempt, "error": type(err).__name__},
                    )
                    await self._abort_and_replace(txn_id, p)
                    if attempt == self.max_txn_attempts:
                        raise wrapped from None
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                except Exception as err:  # noqa: BLE001 - aiokafka's own state errors: never keep that producer
                    # After its sender task died (fenced mid-transaction, say) aiokafka answers
                    # IllegalOperation ("Can't send messages while not in transaction"), and a later
                    # begin_transaction an AssertionError (FATAL_ERROR -> IN_TRANSACTION) for good.
                    held = self.producers.get(txn_id)
                    cause = _sender_failure(held) if held is not None else None
                    if held is not None:
                        await self._abort_and_replace(txn_id, held)
                    if isinstance(cause, ProducerFenced):
                        raise BusError(
                            f"writer {txn_id} was fenced: another process now uses the same transactional id",
                            retriable=False,
                        ) from None
                    if isinstance(cause, KafkaError) and not wrap_error(cause, "").retriable:
                        refused = wrap_error(cause, f"transaction of {txn_id}")  # e.g. not authorized
                        self._refused(txn_id, refused)
                        raise refused from None
                    wrapped = BusError(  # a new producer's InitProducerId aborts what this one left open
                        f"kafka transaction of {txn_id} failed: {type(err).__name__}: {err}", retriable=True
                    )
                    self._failed(txn_id, err)
                    log.warning(
                        "Kafka transaction failed; producer replaced",
                        extra={"writer": txn_id, "attempt": attempt, "error": f"{type(err).__name__}: {err}"},
                    )
                    if attempt == self.max_txn_attempts:
                        raise wrapped from None
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))

    async def _send_txn(self, p: AIOKafkaProducer, txn: BufferedTxn, txn_id: str) -> None:
        # Group by partition (Kafka's murmur2 default partitioner) and hand aiokafka whole
        # record batches: per-message send() costs ~30 µs in Python, a batch append ~3 µs.
        phys = self.conn.phys
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int | None, list[Header]]]] = {}
        parts_of: dict[str, list[int]] = {}
        limits: dict[str, int | None] = {}
        letters: list[OutRecord] = []  # oversized events replaced by dead letters (pipeline.bus.oversize)
        for r in txn.records:
            parts = parts_of.get(r.topic)
            if parts is None:
                parts = parts_of[r.topic] = list(range(await self.topics.partitions(r.topic)))
                limits[r.topic] = await self.topics.max_message_bytes(r.topic)
            limit = limits[r.topic]
            # compressed, the batch as sent is smaller than this estimate: the broker alone can judge it
            if (
                self.compression is None
                and limit is not None
                and len(r.value or b"") + len(r.key or b"") > limit - 4096  # near the limit: compute the exact size
            ):
                size = record_batch_bytes(r.key, r.value, list(r.headers), r.timestamp_ms)
                if size > limit:  # the limit is cached: ask the broker again (an operator may have raised it)
                    limit = limits[r.topic] = await self.topics.max_message_bytes(r.topic, fresh=True)
                    if limit is not None and size > limit:
                        if not oversize.replaceable(r):
                            raise RecordTooLarge(phys(r.topic), size, limit)
                        cap = f"the max.message.bytes of kafka topic {phys(r.topic)}"
                        r = oversize.dead_letter(r, size=size, limit=limit, where=cap, writer=txn_id, bus="kafka")
                        letters.append(r)
                        parts = parts_of[r.topic] = list(range(await self.topics.partitions(r.topic)))
            part = self._partitioner(r.key, parts)
            groups.setdefault((phys(r.topic), part), []).append((r.key, r.value, r.timestamp_ms, list(r.headers)))
        for k, v in txn.state.items():
            if v is not None and len(v) > STATE_MAX_BYTES:  # the broker would refuse the whole transaction
                raise BusError(
                    f"state value of {k!r} is {len(v):,} bytes, over the Kafka state limit of {STATE_MAX_BYTES:,}"
                    " (the transaction is not committed)"
                )
            groups.setdefault((phys(STATE_TOPIC), 0), []).append((k.encode(), v, None, []))
        batches: list[tuple[str, int, list[Any]]] = []
        for (topic, part), items in groups.items():
            built = [p.create_batch()]
            for key, value, ts, headers in items:
                if built[-1].append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    built.append(p.create_batch())
                    if built[-1].append(key=key, value=value, timestamp=ts, headers=headers) is None:
                        raise BusError(f"a record of {len(value or b'')} bytes does not fit in a Kafka batch")
            batches.append((topic, part, built))
        await p.begin_transaction()
        # The first batch of every partition goes in before any second one: aiokafka queues one
        # batch per partition, so a second batch waits until the first is sent, and meanwhile the
        # sender adds only the partitions queued so far to the transaction — each later partition
        # (the state record's) then cost another AddPartitionsToTxn round trip.
        futures = []
        sent: list[tuple[str, int]] = []
        for depth in range(max((len(built) for _t, _p, built in batches), default=0)):  # none: offsets only
            for topic, part, built in batches:
                if depth < len(built):
                    fut = await p.send_batch(built[depth], topic, partition=part)
                    fut.add_done_callback(_retrieved)  # a failure below leaves it unawaited
                    futures.append(fut)
                    sent.append((topic, built[depth]._builder.size()))
        by_group: dict[str, dict[KTP, OffsetAndMetadata]] = defaultdict(dict)
        for (group, tp), off in txn.offsets.items():
            by_group[group][KTP(phys(tp.topic), tp.partition)] = OffsetAndMetadata(off, "")
        for group, offsets in by_group.items():
            await p.send_offsets_to_transaction(offsets, self.conn.group(group))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for (topic, size), result in zip(sent, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError | RecordTooLargeError):
                raise RecordTooLarge(
                    topic, size, await self.topics.max_message_bytes(self.conn.logical(topic)), batch=True
                )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await p.commit_transaction()
        oversize.report(letters, txn_id, "kafka")
        for result in results:  # RecordMetadata of each batch: its base offset (failures raised above)
            if isinstance(result, BaseException):
                continue
            ktp, base = result.topic_partition, int(result.offset)
            if base + 1 > self.written.get(ktp, 0):
                self.written[ktp] = base + 1

    async def _watched(self, txn_id: str, work: Awaitable[None], topics: Collection[str] = ()) -> None:
        """Run a transaction; if it has not finished after ``STALL_SECS`` (aiokafka retries a dead
        broker internally, silently), ask the cluster whether ``topics`` (logical) still exist, and
        every ``STALL_SECS`` after: a missing one ends the transaction with :class:`TopicMissing`
        (aiokafka would wait for it for ever). Else say once that publishing is stalled — the
        recovery is then logged when it completes.

        Raises:
            TopicMissing: a topic of the transaction does not exist on the cluster.
        """
        task = asyncio.ensure_future(work)
        reported = False
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=STALL_SECS)
                if done:
                    try:
                        task.result()
                    except UnknownTopicOrPartitionError:  # a new producer found no metadata for it
                        missing = await self._missing(topics)
                        if missing:
                            raise TopicMissing(missing) from None
                        raise
                    return
                missing = await self._missing(topics)
                if missing:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    raise TopicMissing(missing)
                if not reported:
                    reported = True
                    self._failed(txn_id, TimeoutError(f"transaction not confirmed after {STALL_SECS:.0f}s"))
        finally:
            if not task.done():  # this wait was cancelled: the transaction's work unwinds before we return
                task.cancel()
                await asyncio.wait({task})

    async def _missing(self, topics: Collection[str]) -> list[str]:
        """The cluster names of ``topics`` (logical) the cluster says do not exist (empty: all exist,
        or the cluster did not answer within ``STALL_SECS`` — a broker down: nothing is known, and
        the outage is reported without waiting longer)."""
        if not topics:
            return []
        try:
            existing = set(await asyncio.wait_for(self.topics.client().list_topics(), STALL_SECS))
        except (KafkaError, BusError, TimeoutError, OSError):
            return []
        return sorted(self.conn.phys(t) for t in topics if self.conn.phys(t) not in existing)

    async def _abandon(self, txn_id: str) -> None:
        """Drop a producer whose transaction can never complete (its topic is gone): fail the
        batches it still holds, so stopping it does not wait for their delivery for ever. The next
        producer's ``InitProducerId`` aborts the transaction it left open."""
        p = self.producers.get(txn_id)
        if p is not None:
            accumulator = getattr(p, "_message_accumulator", None)
            if accumulator is not None:
                accumulator.fail_all(KafkaError("the topic was deleted; transaction abandoned"))
        await self._drop_producer(txn_id)

    def _failed(self, txn_id: str, err: BaseException) -> None:
        """Count a failed transaction; say once per outage that publishing is paused."""
        self._failed_attempts += 1
        self._telemetry.bus_errors("transaction", type(err).__name__)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "Kafka broker unreachable; publishing paused",
                extra={"writer": txn_id, "bootstrap": ",".join(self.conn.bootstrap), "error": type(err).__name__},
            )

    def _refused(self, txn_id: str, err: BusError) -> None:
        """Count and log a transaction the cluster refused for good (no retry, no outage)."""
        self._telemetry.bus_errors("transaction", type(err).__name__)
        log.error("Kafka transaction refused; not retried", extra={"writer": txn_id, "error": err.message})

    def _recovered(self, txn_id: str) -> None:
        if self._outage_since is not None:
            log.info(
                "Kafka broker reachable again; publishing resumed",
                extra={
                    "writer": txn_id,
                    "outage_secs": round(time.monotonic() - self._outage_since, 1),
                    "failed_attempts": self._failed_attempts,
                },
            )
            self._outage_since = None
            self._failed_attempts = 0

    async def _abort_and_replace(self, txn_id: str, p: AIOKafkaProducer) -> None:
        """Abort, then always drop the producer (the next transaction starts a new one).

        aiokafka advances a partition's sequence number for a batch that expires unsent (no leader
        for longer than the request timeout, e.g. a broker in controlled shutdown); that producer
        then fails every later batch to the partition with OutOfOrderSequenceNumber, and an abort
        does not reset it. A new producer's InitProducerId bumps the epoch, resets the sequences
        and aborts whatever this one left open, so the transaction can be retried safely.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.abort_transaction(), self.conn.request_timeout_ms / 1000)
        await self._drop_producer(txn_id)

    async def _drop_producer(self, txn_id: str) -> None:
        p = self.producers.pop(txn_id, None)
        if p is not None:
            _consume_failures(p)
            with contextlib.suppress(Exception):
                await p.stop()


def _topics_of(txn: BufferedTxn) -> set[str]:
    """The logical topics a transaction writes records to (the state topic with its state)."""
    topics = {r.topic for r in txn.records}
    if txn.state:
        topics.add(STATE_TOPIC)
    return topics


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a batch's delivery failure as retrieved: when the transaction fails before its
    futures are gathered (fenced while adding the offsets, say), nothing else reads them, and
    each would be logged as "Future exception was never retrieved" when collected (see
    :func:`_consume_failures` for why that is worse than noise)."""
    if not fut.cancelled():
        fut.exception()


def _sender_failure(p: AIOKafkaProducer) -> BaseException | None:
    """The exception the producer's sender task died of (aiokafka then puts the transaction
    manager in FATAL_ERROR for good), or None while it runs."""
    task = getattr(getattr(p, "_sender", None), "sender_task", None)
    if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
        return task.exception()
    return None


def _ready(p: AIOKafkaProducer) -> bool:
    """Whether a kept producer can begin a transaction: its sender runs and no transaction is open
    or failed (a commit cancelled midway leaves IN_TRANSACTION, a fence FATAL_ERROR: either makes
    every later ``begin_transaction`` fail its state check)."""
    from aiokafka.producer.transaction_manager import TransactionState

    task = getattr(getattr(p, "_sender", None), "sender_task", None)
    if isinstance(task, asyncio.Future) and task.done():
        return False
    state = getattr(getattr(p, "_txn_manager", None), "state", None)
    return state is None or state == TransactionState.READY


def _consume_failures(p: AIOKafkaProducer) -> None:
    """Mark the exceptions aiokafka leaves on a failed producer's internal futures (the
    transaction waiter, each unsent batch's drain waiter) as retrieved. Unretrieved, each is
    logged as "Future exception was never retrieved" when collected — and on CPython 3.11 a
    collection that runs such a finalizer inside ``ast.parse`` fails the parse with
    "AST constructor recursion depth mismatch" (seen when pytest rewrote a module after a fenced
    writer was dropped)."""
    futures: list[Any] = [getattr(getattr(p, "_txn_manager", None), "_transaction_waiter", None)]
    accumulator = getattr(p, "_message_accumulator", None)
    held = [b for batches in getattr(accumulator, "_batches", {}).values() for b in batches]
    for b in [*held, *getattr(accumulator, "_pending_batches", ())]:  # pending: sent, unanswered
        futures += [getattr(b, "_drain_waiter", None), getattr(b, "future", None)]
    for fut in futures:
        if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
            fut.exception()
