"""A consumer of the embedded bus: positions per partition, group offsets, seeks and read-ahead.

See :mod:`pipeline.bus.base` for the semantics every consumer honours. Reads run on the
store's thread; when a poll fills its batch, the next batch is fetched there while the
caller works on this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from pipeline.bus.base import Record, StartPolicy, TopicPartition
from pipeline.bus.sqlite_format import OFFSET_MASK, rowid
from pipeline.bus.sqlite_store import SqliteStore
from pipeline.bus.txn import BufferedTxn
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger

log = get_logger("bus")

_Fetched = tuple[list[Record], dict[TopicPartition, int], int]


class SqliteConsumer:
    """A consumer of the embedded bus (see :mod:`pipeline.bus.base` for semantics)."""

    def __init__(self, store: SqliteStore, topics: list[str], group: str | None, start: StartPolicy):
        self._store = store
        self._topics = topics
        self.group = group
        self._start = start
        self._pos: dict[TopicPartition, int] = {}
        self._ids: dict[TopicPartition, int] = {}
        self._rr = 0
        # Read-ahead: the next batch is fetched on the bus thread while the caller works on this one.
        self._ahead: asyncio.Future[_Fetched] | None = None
        self._ahead_max = 0

    async def __aenter__(self) -> SqliteConsumer:
        await self._store.run(self._assign)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drop_ahead()

    async def _drop_ahead(self) -> None:
        """Forget a read-ahead (after a seek or on close); its result is discarded."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                await ahead

    def _assign(self) -> None:
        store = self._store
        for name in self._topics:
            t = store.topic(name)
            for p in range(t.partitions):
                tp = TopicPartition(name, p)
                tp_id = t.tp_id(p)
                self._ids[tp] = tp_id
                start, end = store.bounds(tp_id)
                pos: int | None = None
                if self.group is not None and self._start == "committed":
                    pos = store.group_offset(self.group, tp_id)
                if pos is None:
                    pos = end if self._start == "latest" else start
                self._pos[tp] = max(pos, start)
                self._note_skipped(tp, pos, start)

    def _note_skipped(self, tp: TopicPartition, pos: int, start: int) -> None:
        """A group that had not read ``pos`` … ``start - 1`` before the retention deleted them says so:
        those records are lost to it (a sink down longer than ``bus.retention``), never silently."""
        if self.group is not None and pos < start:
            log.warning(
                "Records were deleted by the bus retention before this consumer group read them",
                extra={"group": self.group, "topic": tp.topic, "partition": tp.partition,
                       "first_offset": pos, "records": start - pos},
            )  # fmt: skip

    def assignment(self) -> set[TopicPartition]:
        """All partitions of the subscribed topics."""
        return set(self._pos)

    def positions(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition."""
        return dict(self._pos)

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout_s`` for new ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            changed = self._store.changed
            ahead, self._ahead = self._ahead, None
            if ahead is not None and self._ahead_max == max_records:
                recs, pos, rr = await ahead
            else:
                if ahead is not None:
                    with contextlib.suppress(Exception):
                        await ahead
                recs, pos, rr = await self._store.run(self._fetch_some, dict(self._pos), self._rr, max_records)
            if recs:
                self._pos.update(pos)
                self._rr = rr
                if len(recs) >= max_records:  # likely more to read: fetch it while the caller works
                    loop = asyncio.get_running_loop()
                    self._ahead_max = max_records
                    self._ahead = asyncio.ensure_future(
                        loop.run_in_executor(
                            self._store.executor, self._fetch_some, dict(self._pos), self._rr, max_records
                        )
                    )
                return recs
            self._rr = rr
            if timeout_s <= 0:
                return recs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Wake at once on a commit in this process; re-check often for other writers.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 0.05))

    def _fetch_some(self, pos: dict[TopicPartition, int], rr: int, max_records: int) -> _Fetched:
        """Read from ``pos`` (a copy): return the records, the positions after them and the next round-robin start."""
        tps = list(pos)
        out: list[Record] = []
        n = len(tps)
        for i in range(n):
            tp = tps[(rr + i) % n]
            tp_id = self._ids[tp]
            start, _ = self._store.bounds(tp_id)
            if pos[tp] < start:
                self._note_skipped(tp, pos[tp], start)
                pos[tp] = start  # retention removed what we had not read
            recs = self._store.fetch(tp_id, tp.topic, tp.partition, pos[tp], max_records - len(out))
            if recs:
                pos[tp] = recs[-1].offset + 1
                out.extend(recs)
            if len(out) >= max_records:
                break
        return out, pos, (rr + 1) % max(n, 1)

    async def poll_values(self, max_records: int, until: Mapping[TopicPartition, int]) -> list[bytes]:
        """Record values only, up to ``until`` (exclusive) per partition — replay's fast path to JSON Lines."""
        await self._drop_ahead()

        def q() -> list[bytes]:
            db = self._store.conn()
            out: list[bytes] = []
            for tp, tp_id in self._ids.items():
                end = until.get(tp, 0)
                pos = self._pos[tp]
                if pos >= end:
                    continue
                rows = db.execute(
                    "SELECT id, value FROM records WHERE id>=? AND id<? ORDER BY id LIMIT ?",
                    (rowid(tp_id, pos), rowid(tp_id, end), max_records - len(out)),
                ).fetchall()
                if rows:
                    self._pos[tp] = (rows[-1][0] & OFFSET_MASK) + 1
                    out.extend(v for _, v in rows)
                else:
                    self._pos[tp] = end
                if len(out) >= max_records:
                    break
            return out

        return await self._store.run(q)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the group's offsets (default: current positions).

        Raises:
            BusError: the consumer has no group, or the write failed.
        """
        if self.group is None:
            raise BusError("this consumer has no group; it cannot commit offsets")
        txn = BufferedTxn()
        txn.commit_offsets(self.group, offsets if offsets is not None else self._pos)
        await self._store.commit(txn)

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next.

        Raises:
            BusError: ``tp`` is not assigned to this consumer.
        """
        if tp not in self._pos:
            raise BusError(f"{tp.topic}[{tp.partition}] is not assigned to this consumer")
        await self._drop_ahead()
        self._pos[tp] = offset

    async def seek_to_time(self, timestamp_ms: int) -> None:
        """Move each partition to its first record at or after ``timestamp_ms``."""

        def q() -> None:
            for tp, tp_id in self._ids.items():
                self._pos[tp] = self._store.offset_for_time(tp_id, timestamp_ms)

        await self._drop_ahead()
        await self._store.run(q)

    async def seek_to_beginning(self) -> None:
        """Move each partition to its first retained record."""

        def q() -> None:
            for tp, tp_id in self._ids.items():
                self._pos[tp] = self._store.bounds(tp_id)[0]

        await self._drop_ahead()
        await self._store.run(q)

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Offset after the last record per partition."""

        def q() -> dict[TopicPartition, int]:
            return {tp: self._store.bounds(tp_id)[1] for tp, tp_id in self._ids.items()}

        return await self._store.run(q)
