"""A consumer of the Kafka bus: ``read_committed``, auto-commit off, groups or plain assignment.

A consumer with a group joins it (partitions are shared among the group's members; the rules
and each sink still run one active process, since they commit with one transactional id each);
one without a group is assigned every partition and never commits. A group consumer starts
once it holds every partition of its topics, waiting up to :data:`WHOLE_ASSIGNMENT_WAIT_SECS`
for a member that still holds some (a killed process's, until its session times out), so a
``run_once`` never reports "everything read" while skipping partitions. See
:mod:`pipeline.bus.base` for the semantics every consumer honours.

Group names carry ``topic_prefix`` on the cluster (``staging.rules``), as the topics do. A prefixed
group that has committed nothing yet adopts the offsets its unprefixed name committed (versions
before 2026-12-07 used the bare name), so an upgrade neither re-reads nor skips a record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KTP
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from pipeline.bus.base import Record, StartPolicy, TopicPartition
from pipeline.bus.kafka_admin import KafkaTopics
from pipeline.bus.kafka_client import FETCH_PARTITION_BYTES, KafkaConnection, wrap_error
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger

log = get_logger("bus")

WHOLE_ASSIGNMENT_WAIT_SECS = 30.0
"""How long a group consumer waits, when it starts, for the partitions another member still holds:
a dead member's session (10 s) and the rebalance that follows fit in it."""


class KafkaConsumer:
    """A consumer of the Kafka bus (see :mod:`pipeline.bus.base` for semantics)."""

    def __init__(
        self, conn: KafkaConnection, topics_admin: KafkaTopics, topics: list[str], group: str | None, start: StartPolicy
    ):
        self._conn = conn
        self._admin = topics_admin
        self._topics = topics
        self.group = group
        self._group_id = conn.group(group) if group is not None else None
        self._start = start
        self._c: AIOKafkaConsumer | None = None
        self._pos: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> KafkaConsumer:
        reset = "latest" if self._start == "latest" else "earliest"
        self._c = AIOKafkaConsumer(
            bootstrap_servers=self._conn.bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset=reset,
            request_timeout_ms=self._conn.request_timeout_ms,
            max_poll_records=5000,
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            **self._conn.client_args,
        )
        try:
            if self._start == "committed":
                await self._adopt_unprefixed_offsets()
            await self._c.start()
            if self.group is None:
                tps = []
                for t in self._topics:
                    n = await self._admin.partitions(t)
                    tps += [KTP(self._conn.phys(t), p) for p in range(n)]
                self._c.assign(tps)
                if self._start == "latest":
                    await self._c.seek_to_end(*tps)
                else:
                    await self._c.seek_to_beginning(*tps)
            else:
                self._c.subscribe([self._conn.phys(t) for t in self._topics])
                await self._wait_assignment()
                tps = list(self._c.assignment())
                if self._start == "earliest":
                    await self._c.seek_to_beginning(*tps)
                elif self._start == "latest":
                    await self._c.seek_to_end(*tps)
            await self._refresh_positions()
        except KafkaError as err:
            await self.__aexit__()
            raise wrap_error(err, "starting a consumer") from None
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _adopt_unprefixed_offsets(self) -> None:
        """Commit, for a prefixed group with no offsets yet, the offsets of its unprefixed name.

        The commit goes in as a stand-alone consumer's (generation -1), which the broker accepts
        only while the group has no member: a replica already running under the new name keeps
        its own offsets.
        """
        group, new = self.group, self._group_id
        if group is None or new is None or new == group:
            return
        mine = {self._conn.phys(t) for t in self._topics}
        try:
            if any(tp.topic in mine for tp in await self._admin.group_offsets(new)):
                return
            old = {tp: off for tp, off in (await self._admin.group_offsets(group)).items() if tp.topic in mine}
        except BusError as err:  # e.g. ACLs granted on the prefixed names only: the bare group is not ours
            log.warning("consumer group %s: offsets of %s not readable (%s); it starts from its own", new, group,
                        str(err)[:200])  # fmt: skip
            return
        if not old:
            return
        c = AIOKafkaConsumer(
            bootstrap_servers=self._conn.bootstrap,
            group_id=new,
            enable_auto_commit=False,
            request_timeout_ms=self._conn.request_timeout_ms,
            **self._conn.client_args,
        )
        try:
            await c.start()
            c.assign(list(old))
            await c.commit({tp: OffsetAndMetadata(off, "") for tp, off in old.items()})
        except KafkaError as err:
            log.warning("consumer group %s: offsets of %s not adopted (%s); it starts from its own", new, group,
                        type(err).__name__)  # fmt: skip
            return
        finally:
            with contextlib.suppress(Exception):
                await c.stop()
        log.info("consumer group %s adopted the offsets of %s on %d partitions", new, group, len(old))

    async def _wait_assignment(self, limit_s: float = 60.0, whole_s: float = WHOLE_ASSIGNMENT_WAIT_SECS) -> None:
        """Wait for partitions; then, up to ``whole_s``, for every partition of the topics.

        The rules and each sink run one active process per group, and ``run_once`` reads "every
        record committed so far" of the partitions it holds. A member of a process killed while it
        joined (a ``run --once`` killed by a timeout, a crashed replica) can be handed partitions
        in the generation the next process joins, and keeps them until its session times out
        (10 s): reading at once would skip those partitions and report success. Past ``whole_s``
        the consumer goes on with what it holds (a live second member: the rest is read by it).
        """
        c = self._client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not c.assignment():
            if loop.time() > started + limit_s:
                msg = f"consumer group {self._group_id} got no partitions within {limit_s:.0f}s"
                raise BusError(msg, retriable=True)
            await asyncio.sleep(0.05)
        expected = {KTP(self._conn.phys(t), p) for t in self._topics for p in range(await self._admin.partitions(t))}
        waited = False
        while not expected <= c.assignment():
            if loop.time() > started + whole_s:
                log.warning(
                    "consumer group %s holds %d of %d partitions after %.0fs; another member holds the rest",
                    self._group_id, len(expected & c.assignment()), len(expected), whole_s,
                )  # fmt: skip
                return
            if not waited:
                waited = True
                log.info(
                    "consumer group %s: another member holds partitions; waiting for it to leave or time out",
                    self._group_id,
                )
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        if self._c is not None:
            with contextlib.suppress(Exception):
                await self._c.stop()
            self._c = None

    def _ktp(self, tp: TopicPartition) -> KTP:
        return KTP(self._conn.phys(tp.topic), tp.partition)

    def _client(self) -> AIOKafkaConsumer:
        if self._c is None:
            raise BusError("the Kafka consumer is not open (use 'async with')")
        return self._c

    async def _refresh_positions(self) -> None:
        c = self._client()
        pos: dict[TopicPartition, int] = {}
        for tp in c.assignment():
            pos[TopicPartition(self._conn.logical(tp.topic), tp.partition)] = await c.position(tp)
        self._pos = pos

    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned."""
        return {TopicPartition(self._conn.logical(t.topic), t.partition) for t in self._client().assignment()}

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
            raise wrap_error(err, "polling") from None
        out: list[Record] = []
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            topic = self._conn.logical(tp.topic)  # once per partition, not per record
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
            raise wrap_error(err, "polling") from None
        out: list[bytes] = []
        for ktp, msgs in batch.items():
            end = until.get(TopicPartition(self._conn.logical(ktp.topic), ktp.partition), 0)
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
            raise wrap_error(err, f"committing offsets of {self._group_id}") from None

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next.

        Raises:
            BusError: ``tp`` is not assigned to this consumer (aiokafka: ``IllegalStateError``).
        """
        c, ktp = self._client(), self._ktp(tp)
        if ktp not in c.assignment():
            raise BusError(f"{tp.topic}[{tp.partition}] is not assigned to this consumer")
        c.seek(ktp, offset)
        self._pos[tp] = offset

    async def seek_to_time(self, timestamp_ms: int) -> None:
        """Move each partition to its first record at or after ``timestamp_ms``."""
        c = self._client()
        tps = list(c.assignment())
        try:
            found = await c.offsets_for_times({tp: timestamp_ms for tp in tps})
            ends = await c.end_offsets(tps)
        except KafkaError as err:
            raise wrap_error(err, "seeking by time") from None
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
            raise wrap_error(err, "reading end offsets") from None
        return {TopicPartition(self._conn.logical(tp.topic), tp.partition): off for tp, off in ends.items()}


EXACT_LAG_WINDOW = 500
"""A partition at most this many offsets behind has its lag counted record by record (see
:class:`RecordCounter`); further behind, the lag is the offset distance."""


class RecordCounter:
    """Counts the committed data records in offset ranges: consumer lag without transaction markers.

    A transaction's commit marker takes an offset of every partition it wrote, and a consumer
    commits ``last record + 1`` — the marker's offset. The end offset lies past the marker, so
    ``end - committed`` is 1 per partition per transaction even when everything was read (and a
    ``bus.max_consumer_lag`` of 1 to 3 would pause the pollers for ever). A ``read_committed`` reader
    skips markers and aborted records: reading ``[committed, end)`` gives the true count. Only
    ranges of at most :data:`EXACT_LAG_WINDOW` offsets are read (one fetch; the usual case is the
    single marker); a longer one, or one not read within ``limit_s``, keeps the offset distance.

    One group-less consumer stays open between counts; :meth:`close` stops it.
    """

    def __init__(self, conn: KafkaConnection):
        self._conn = conn
        self._c: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Stop the reader (errors while stopping are ignored)."""
        c, self._c = self._c, None
        if c is not None:
            with contextlib.suppress(Exception):
                await c.stop()

    async def lags(
        self, ranges: Mapping[TopicPartition, tuple[int, int]], limit_s: float = 5.0
    ) -> dict[TopicPartition, int]:
        """Per partition, the data records in ``[committed, end)`` (``ranges`` maps each to that pair).

        Raises:
            BusError: the cluster cannot be read.
        """
        out = {tp: max(0, end - start) for tp, (start, end) in ranges.items()}
        todo = {tp: r for tp, r in ranges.items() if 0 < r[1] - r[0] <= EXACT_LAG_WINDOW}
        if not todo:
            return out
        async with self._lock:
            try:
                out.update(await self._count(todo, limit_s))
            except KafkaError as err:
                await self.close()
                raise wrap_error(err, "counting unread records") from None
        return out

    async def stable_offsets(self, parts: list[KTP]) -> dict[KTP, int]:
        """The last stable offset (what ``read_committed`` readers see up to) of each partition.

        Raises:
            BusError: the cluster cannot be read.
        """
        async with self._lock:
            try:
                c = await self._reader()
                return dict(await c.end_offsets(parts))
            except KafkaError as err:
                await self.close()
                raise wrap_error(err, "reading last stable offsets") from None

    async def _reader(self) -> AIOKafkaConsumer:
        if self._c is None:
            c = AIOKafkaConsumer(
                bootstrap_servers=self._conn.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                request_timeout_ms=self._conn.request_timeout_ms,
                fetch_max_wait_ms=50,  # a range ends at the end offset: never wait there for more
                max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
                **self._conn.client_args,
            )
            await c.start()
            self._c = c
        return self._c

    async def _count(
        self, ranges: Mapping[TopicPartition, tuple[int, int]], limit_s: float
    ) -> dict[TopicPartition, int]:
        c = await self._reader()
        parts = {KTP(self._conn.phys(tp.topic), tp.partition): tp for tp in ranges}
        counts = dict.fromkeys(parts, 0)
        c.assign(list(parts))
        try:
            for ktp, tp in parts.items():
                c.seek(ktp, ranges[tp][0])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit_s
            pending = set(parts)
            while True:
                for ktp in list(pending):
                    if await c.position(ktp) >= ranges[parts[ktp]][1]:
                        pending.discard(ktp)
                if not pending or loop.time() >= deadline:
                    break
                batch = await c.getmany(*pending, timeout_ms=20)  # a fetch of markers only returns nothing
                for ktp, msgs in batch.items():
                    end = ranges[parts[ktp]][1]
                    counts[ktp] += sum(1 for m in msgs if m.offset < end)
        finally:
            c.pause(*parts)  # no background fetches until the next count
        return {parts[ktp]: n for ktp, n in counts.items() if ktp not in pending}
