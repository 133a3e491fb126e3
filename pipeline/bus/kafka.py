"""The Apache Kafka bus (aiokafka): the same contract as the embedded bus, on a real cluster.

* Writers are transactional producers, one per writer id (``<prefix>-<txn_id>``): events,
  the writer's state records (compacted ``instantly.state.v1``, key = state key, ``None``
  = tombstone) and consumer offsets (``send_offsets_to_transaction``) commit together.
  Idempotence and ``acks=all`` are on. A second process using the same writer id fences
  the first (``ProducerFenced`` → a non-retriable :class:`BusError`).
* Consumers are ``read_committed`` with auto-commit off. A consumer with a group joins it
  (partitions are shared among the group's members, so rules and sinks scale out by
  partitions); one without a group is assigned every partition and never commits.
* State is read from the compacted state topic into memory at open (up to the last
  stable offset) and updated on each own commit.
* aiokafka issue #1004: Kafka's error code 13 (NETWORK_EXCEPTION, retriable) is read by
  aiokafka as ``StaleLeaderEpochCodeError`` and fails ``TxnOffsetCommit``; a small shim
  retries it, and the transaction loop aborts and retries any retriable failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    StaleLeaderEpochCodeError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata

from pipeline.bus.base import (
    STATE_MAX_BYTES,
    STATE_TOPIC,
    Header,
    Record,
    StartPolicy,
    TopicPartition,
    TopicSpec,
    default_topics,
)
from pipeline.bus.sqlite import _Txn
from pipeline.config.model import KafkaBusConfig
from pipeline.errors import BusError

log = logging.getLogger("instantly_audit.bus.kafka")
T = TypeVar("T")
DAY_MS = 86_400_000
TOPIC_EXISTS = 36
STALL_SECS = 5.0  # a transaction slower than this means the broker is unreachable or struggling
PRODUCER_BATCH_BYTES = 512 * 1024  # aiokafka's 16 KiB default caps a batch at ~20 events
FETCH_PARTITION_BYTES = 8 * 1024 * 1024


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


def _wrap(err: BaseException, what: str) -> BusError:
    retriable = bool(getattr(err, "retriable", False)) or isinstance(
        err, StaleLeaderEpochCodeError | OutOfOrderSequenceNumber | TimeoutError | ConnectionError
    )
    return BusError(f"kafka {what} failed: {type(err).__name__}: {err}", retriable=retriable)


async def _retrying(call: Callable[[], Awaitable[T]], what: str, attempts: int = 40) -> T:
    """Run an admin call, retrying retriable errors (e.g. a coordinator still being created)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except KafkaError as err:
            if not getattr(err, "retriable", False) or attempt == attempts:
                raise _wrap(err, what) from None
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise BusError(f"kafka {what} failed")  # pragma: no cover - loop always returns or raises


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
        max_txn_attempts: int = 5,
        create_topics: bool = True,
        topic_prefix: str = "",
    ):
        self.bootstrap = list(bootstrap_servers)
        self.client_args = dict(client_args or {})
        self.prefix = transactional_id_prefix
        self.default_partitions = partitions
        self.replication_factor = replication_factor
        self.retention_ms = retention_ms
        self.request_timeout_ms = request_timeout_ms
        self.max_txn_attempts = max_txn_attempts
        self._create_topics = create_topics
        self.topic_prefix = topic_prefix
        self._admin: AIOKafkaAdminClient | None = None
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._state: dict[str, bytes] = {}
        self._state_loaded = False
        self._partitions: dict[str, int] = {}
        self._default_partitioner = DefaultPartitioner()
        self._outage_since: float | None = None
        self._failed_attempts = 0
        self._partition_cache: dict[tuple[bytes, int], int] = {}

    def phys(self, topic: str) -> str:
        """The cluster's name for a logical topic (``topic_prefix`` + name)."""
        return self.topic_prefix + topic

    def logical(self, topic: str) -> str:
        """The logical name of a cluster topic."""
        return topic[len(self.topic_prefix) :] if self.topic_prefix and topic.startswith(self.topic_prefix) else topic

    @classmethod
    def from_config(cls, cfg: KafkaBusConfig) -> KafkaBus:
        """Build from the validated config."""
        sec = cfg.security
        args: dict[str, Any] = {"client_id": cfg.client_id, "security_protocol": sec.protocol}
        if sec.protocol in ("SSL", "SASL_SSL"):
            ctx = create_ssl_context(
                cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
                certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
                keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
            )
            ctx.check_hostname = sec.ssl_check_hostname
            if not sec.ssl_check_hostname:
                ctx.verify_mode = ssl.CERT_REQUIRED
            args["ssl_context"] = ctx
        if sec.protocol.startswith("SASL"):
            args["sasl_mechanism"] = sec.sasl_mechanism or "SCRAM-SHA-512"
            args["sasl_plain_username"] = sec.username
            args["sasl_plain_password"] = sec.password.get_secret_value() if sec.password else None
        return cls(
            cfg.bootstrap_servers,
            client_args=args,
            transactional_id_prefix=cfg.transactional_id_prefix,
            partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            retention_ms=int(cfg.retention_days * DAY_MS),
            request_timeout_ms=int(cfg.request_timeout_secs * 1000),
            topic_prefix=cfg.topic_prefix,
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> KafkaBus:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=self.request_timeout_ms, **self.client_args
        )
        try:
            await self._admin.start()
            if self._create_topics:
                await self.ensure_topics(default_topics(self.default_partitions, self.retention_ms))
        except KafkaError as err:
            await self.__aexit__(None, None, None)
            raise _wrap(err, f"connecting to {','.join(self.bootstrap)}") from None
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in list(self._producers.values()):
            with contextlib.suppress(Exception):
                await p.stop()
        self._producers.clear()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise BusError("the Kafka bus is not open (use 'async with')")
        return self._admin

    # ---- topics ---------------------------------------------------------------------
    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics with their configs (compaction, retention)."""
        admin = self._admin_client()
        existing = set(await admin.list_topics())
        new = []
        for s in specs:
            if self.phys(s.name) in existing:
                continue
            configs: dict[str, str] = dict(s.extra)
            if s.compacted:
                configs["cleanup.policy"] = "compact"
            elif s.retention_ms is not None:
                configs["retention.ms"] = str(s.retention_ms)
            new.append(NewTopic(self.phys(s.name), s.partitions, self.replication_factor, topic_configs=configs))
        if new:
            try:
                resp = await admin.create_topics(new, timeout_ms=self.request_timeout_ms)
            except KafkaError as err:
                raise _wrap(err, "creating topics") from None
            for item in getattr(resp, "topic_errors", []):
                name, code = item[0], item[1]
                if code not in (0, TOPIC_EXISTS):
                    raise BusError(f"kafka could not create topic {name}: error code {code}")
            await self._wait_topics([t.name for t in new])
        for s in specs:
            self._partitions.pop(s.name, None)

    async def _wait_topics(self, names: list[str], limit_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            try:
                desc = await self._admin_client().describe_topics(names)
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
        """Number of partitions of ``topic``."""
        if topic not in self._partitions:
            try:
                desc = await self._admin_client().describe_topics([self.phys(topic)])
            except KafkaError as err:
                raise _wrap(err, f"describing {topic}") from None
            if not desc or desc[0].get("error_code", 0) != 0 or not desc[0].get("partitions"):
                raise BusError(f"topic {topic!r} does not exist on the Kafka cluster")
            self._partitions[topic] = len(desc[0]["partitions"])
        return self._partitions[topic]

    # ---- writers --------------------------------------------------------------------
    async def _producer(self, txn_id: str) -> AIOKafkaProducer:
        p = self._producers.get(txn_id)
        if p is None:
            p = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                transactional_id=f"{self.prefix}-{txn_id}",
                enable_idempotence=True,
                acks="all",
                request_timeout_ms=self.request_timeout_ms,
                max_batch_size=PRODUCER_BATCH_BYTES,
                linger_ms=0,
                **self.client_args,
            )
            try:
                await p.start()  # InitProducerId: fences a zombie and aborts its open transaction
            except KafkaError as err:
                with contextlib.suppress(Exception):
                    await p.stop()
                raise _wrap(err, f"starting the transactional producer {txn_id}") from None
            self._producers[txn_id] = p
        return p

    async def _all_partitions(self, topic: str) -> list[int]:
        n = await self.partitions(topic)
        return list(range(n))

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
        """Claim ``txn_id`` (fencing any zombie) so state reads are not blocked by its open transaction."""
        async with self._locks[txn_id]:
            await self._producer(txn_id)

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[_Txn]:
        """Buffer writes; commit them in one Kafka transaction when the block exits cleanly."""
        txn = _Txn()
        yield txn
        if txn.records or txn.state or txn.offsets:
            await self._commit(txn_id, txn)

    async def publish(self, records: Sequence[Any]) -> None:
        """Publish records in one transaction of the default writer."""
        await self._commit("default", _Txn(records=list(records)))

    async def _commit(self, txn_id: str, txn: _Txn) -> None:
        async with self._locks[txn_id]:
            for attempt in range(1, self.max_txn_attempts + 1):
                try:
                    p = await self._producer(txn_id)
                    await self._watched(txn_id, self._send_txn(p, txn))
                    self._recovered(txn_id)
                    break
                except ProducerFenced:
                    await self._drop_producer(txn_id)
                    raise BusError(
                        f"writer {txn_id} was fenced: another process now uses the same transactional id",
                        retriable=False,
                    ) from None
                except BusError as err:  # starting the producer failed (broker unreachable)
                    self._failed(txn_id, err)
                    if not err.retriable or attempt == self.max_txn_attempts:
                        raise
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
                    continue
                except (TimeoutError, KafkaError) as err:
                    wrapped = _wrap(err, f"transaction of {txn_id}")
                    self._failed(txn_id, err)
                    log.warning(
                        "Kafka transaction failed; aborted",
                        extra={"writer": txn_id, "attempt": attempt, "error": type(err).__name__},
                    )
                    await self._abort_and_replace(txn_id, p)
                    if not wrapped.retriable or attempt == self.max_txn_attempts:
                        raise wrapped from None
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        for k, v in txn.state.items():
            if v is None:
                self._state.pop(k, None)
            else:
                self._state[k] = v

    async def _send_txn(self, p: AIOKafkaProducer, txn: _Txn) -> None:
        # Group by partition (Kafka's murmur2 default partitioner) and hand aiokafka whole
        # record batches: per-message send() costs ~30 µs in Python, a batch append ~3 µs.
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int | None, list[Header]]]] = {}
        parts_of: dict[str, list[int]] = {}
        for r in txn.records:
            parts = parts_of.get(r.topic)
            if parts is None:
                parts = parts_of[r.topic] = await self._all_partitions(r.topic)
            part = self._partitioner(r.key, parts)
            groups.setdefault((self.phys(r.topic), part), []).append((r.key, r.value, r.timestamp_ms, list(r.headers)))
        for k, v in txn.state.items():
            if v is not None and len(v) > STATE_MAX_BYTES:  # the broker would refuse the whole transaction
                raise BusError(
                    f"state value of {k!r} is {len(v):,} bytes, over the Kafka state limit of {STATE_MAX_BYTES:,}"
                    " (the transaction is not committed)"
                )
            groups.setdefault((self.phys(STATE_TOPIC), 0), []).append((k.encode(), v, None, []))
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
        for depth in range(max((len(built) for _t, _p, built in batches), default=0)):  # none: offsets only
            for topic, part, built in batches:
                if depth < len(built):
                    futures.append(await p.send_batch(built[depth], topic, partition=part))
        by_group: dict[str, dict[KTP, OffsetAndMetadata]] = defaultdict(dict)
        for (group, tp), off in txn.offsets.items():
            by_group[group][KTP(self.phys(tp.topic), tp.partition)] = OffsetAndMetadata(off, "")
        for group, offsets in by_group.items():
            await p.send_offsets_to_transaction(offsets, group)
        await asyncio.gather(*futures)
        await p.commit_transaction()

    async def _watched(self, txn_id: str, work: Awaitable[None]) -> None:
        """Run a transaction; if it has not finished after ``STALL_SECS`` (aiokafka retries a dead
        broker internally, silently), say once that publishing is stalled — the recovery is then
        logged when it completes."""

        async def watchdog() -> None:
            await asyncio.sleep(STALL_SECS)
            self._failed(txn_id, TimeoutError(f"transaction not confirmed after {STALL_SECS:.0f}s"))

        dog = asyncio.create_task(watchdog())
        try:
            await work
        finally:
            dog.cancel()

    def _failed(self, txn_id: str, err: BaseException) -> None:
        """Count a failed transaction; say once per outage that publishing is paused."""
        from pipeline.observability.telemetry import get_telemetry

        self._failed_attempts += 1
        get_telemetry().bus_errors("transaction", type(err).__name__)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "Kafka broker unreachable; publishing paused",
                extra={"writer": txn_id, "bootstrap": ",".join(self.bootstrap), "error": type(err).__name__},
            )

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
            await asyncio.wait_for(p.abort_transaction(), self.request_timeout_ms / 1000)
        await self._drop_producer(txn_id)

    async def _drop_producer(self, txn_id: str) -> None:
        p = self._producers.pop(txn_id, None)
        if p is not None:
            with contextlib.suppress(Exception):
                await p.stop()

    # ---- state ----------------------------------------------------------------------
    async def _load_state(self) -> None:
        if self._state_loaded:
            return
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            request_timeout_ms=self.request_timeout_ms,
            **self.client_args,
        )
        tp = KTP(self.phys(STATE_TOPIC), 0)
        try:
            await c.start()
            c.assign([tp])
            await c.seek_to_beginning(tp)
            end = (await c.end_offsets([tp]))[tp]
            state: dict[str, bytes] = {}
            while await c.position(tp) < end:
                batch = await c.getmany(tp, timeout_ms=1000, max_records=5000)
                for rec in batch.get(tp, []):
                    if rec.key is None:
                        continue
                    if rec.value is None:
                        state.pop(rec.key.decode(), None)
                    else:
                        state[rec.key.decode()] = rec.value
        except KafkaError as err:
            raise _wrap(err, "loading state") from None
        finally:
            with contextlib.suppress(Exception):
                await c.stop()
        # Own commits made while loading are newer than what was read.
        state.update(self._state)
        self._state = state
        self._state_loaded = True

    async def get_state(self, key: str) -> bytes | None:
        """Current value of a state key."""
        await self._load_state()
        return self._state.get(key)

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """State entries whose key starts with ``prefix``."""
        await self._load_state()
        return {k: v for k, v in self._state.items() if k.startswith(prefix)}

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets on ``topic``."""
        admin = self._admin_client()
        offsets = await _retrying(lambda: admin.list_consumer_group_offsets(group), f"reading offsets of group {group}")
        return {
            TopicPartition(topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.phys(topic) and meta.offset >= 0
        }

    async def enforce_retention(self) -> int:
        """The broker applies retention itself."""
        return 0

    # ---- readers --------------------------------------------------------------------
    def consumer(
        self, topics: Sequence[str], *, group: str | None = None, start: StartPolicy = "committed"
    ) -> KafkaConsumer:
        """A read_committed consumer over ``topics``."""
        return KafkaConsumer(self, list(topics), group, start)


class KafkaConsumer:
    """A consumer of the Kafka bus (see :mod:`pipeline.bus.base` for semantics)."""

    def __init__(self, bus: KafkaBus, topics: list[str], group: str | None, start: StartPolicy):
        self._bus = bus
        self._topics = topics
        self.group = group
        self._start = start
        self._c: AIOKafkaConsumer | None = None
        self._pos: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> KafkaConsumer:
        reset = "latest" if self._start == "latest" else "earliest"
        self._c = AIOKafkaConsumer(
            bootstrap_servers=self._bus.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset=reset,
            request_timeout_ms=self._bus.request_timeout_ms,
            max_poll_records=5000,
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            **self._bus.client_args,
        )
        try:
            await self._c.start()
            if self.group is None:
                tps = []
                for t in self._topics:
                    n = await self._bus.partitions(t)
                    tps += [KTP(self._bus.phys(t), p) for p in range(n)]
                self._c.assign(tps)
                if self._start == "latest":
                    await self._c.seek_to_end(*tps)
                else:
                    await self._c.seek_to_beginning(*tps)
            else:
                self._c.subscribe([self._bus.phys(t) for t in self._topics])
                await self._wait_assignment()
                tps = list(self._c.assignment())
                if self._start == "earliest":
                    await self._c.seek_to_beginning(*tps)
                elif self._start == "latest":
                    await self._c.seek_to_end(*tps)
            await self._refresh_positions()
        except KafkaError as err:
            await self.__aexit__()
            raise _wrap(err, "starting a consumer") from None
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _wait_assignment(self, limit_s: float = 60.0) -> None:
        c = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while not c.assignment():
            if loop.time() > deadline:
                raise BusError(f"consumer group {self.group} got no partitions within {limit_s:.0f}s", retriable=True)
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        if self._c is not None:
            with contextlib.suppress(Exception):
                await self._c.stop()
            self._c = None

    def _ktp(self, tp: TopicPartition) -> KTP:
        return KTP(self._bus.phys(tp.topic), tp.partition)

    def _client(self) -> AIOKafkaConsumer:
        if self._c is None:
            raise BusError("the Kafka consumer is not open (use 'async with')")
        return self._c

    async def _refresh_positions(self) -> None:
        c = self._client()
        pos: dict[TopicPartition, int] = {}
        for tp in c.assignment():
            pos[TopicPartition(self._bus.logical(tp.topic), tp.partition)] = await c.position(tp)
        self._pos = pos

    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned."""
        return {TopicPartition(self._bus.logical(t.topic), t.partition) for t in self._client().assignment()}

    def positions(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition (past transaction markers)."""
        return dict(self._pos)

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` committed records."""
        c = self._client()
        try:
            batch = await c.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
            await self._refresh_positions()
        except KafkaError as err:
            raise _wrap(err, "polling") from None
        out: list[Record] = []
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            topic = self._bus.logical(tp.topic)  # once per partition, not per record
            for m in batch[tp]:
                out.append(
                    Record(
                        topic,
                        m.partition,
                        m.offset,
                        m.timestamp,
                        m.key,
                        m.value if m.value is not None else b"",
                        m.headers if type(m.headers) is tuple else tuple(m.headers or ()),  # aiokafka: tuple
                    )
                )
        return out

    async def poll_values(self, max_records: int, until: Mapping[TopicPartition, int]) -> list[bytes]:
        """Record values only, below ``until`` per partition — replay's fast path to JSON Lines."""
        c = self._client()
        try:
            batch = await c.getmany(timeout_ms=500, max_records=max_records)
            await self._refresh_positions()
        except KafkaError as err:
            raise _wrap(err, "polling") from None
        out: list[bytes] = []
        for ktp, msgs in batch.items():
            end = until.get(TopicPartition(self._bus.logical(ktp.topic), ktp.partition), 0)
            if msgs and msgs[-1].offset < end:
                out.extend(m.value for m in msgs if m.value is not None)
            else:
                out.extend(m.value for m in msgs if m.offset < end and m.value is not None)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the group's offsets (default: current positions)."""
        if self.group is None:
            raise BusError("this consumer has no group; it cannot commit offsets")
        offs = offsets if offsets is not None else self._pos
        try:
            await self._client().commit({self._ktp(tp): off for tp, off in offs.items()})
        except KafkaError as err:
            raise _wrap(err, f"committing offsets of {self.group}") from None

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next."""
        self._client().seek(self._ktp(tp), offset)
        self._pos[tp] = offset

    async def seek_to_time(self, timestamp_ms: int) -> None:
        """Move each partition to its first record at or after ``timestamp_ms``."""
        c = self._client()
        tps = list(c.assignment())
        try:
            found = await c.offsets_for_times({tp: timestamp_ms for tp in tps})
            ends = await c.end_offsets(tps)
        except KafkaError as err:
            raise _wrap(err, "seeking by time") from None
        for tp in tps:
            hit = found.get(tp)
            c.seek(tp, hit.offset if hit is not None else ends[tp])
        await self._refresh_positions()

    async def seek_to_beginning(self) -> None:
        """Move each partition to its earliest retained record."""
        c = self._client()
        await c.seek_to_beginning(*c.assignment())
        await self._refresh_positions()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The last stable offset per partition (read_committed)."""
        c = self._client()
        tps = list(c.assignment())
        try:
            ends = await c.end_offsets(tps)
        except KafkaError as err:
            raise _wrap(err, "reading end offsets") from None
        return {TopicPartition(self._bus.logical(tp.topic), tp.partition): off for tp, off in ends.items()}
