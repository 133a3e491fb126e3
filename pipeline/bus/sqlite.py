"""The embedded bus: one SQLite file in WAL mode with the same topics, groups and transactions as Kafka.

:class:`SqliteBus` is the async face of the bus; the work is done by its parts:
:mod:`~pipeline.bus.sqlite_store` (the connection and its thread, atomic writes, reads),
:mod:`~pipeline.bus.sqlite_format` (tables, rowid layout, header encoding),
:mod:`~pipeline.bus.sqlite_files` (0600 files, 0700 directories, no symlinks, one writer
process), :mod:`~pipeline.bus.sqlite_consumer` and :mod:`~pipeline.bus.sqlite_retention`.
A second process may open the file read-only (a replay while the pipeline runs); a second
*writer* process is refused with the holder's pid.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import EllipsisType
from typing import Literal

from pipeline.bus import oversize
from pipeline.bus.base import OutRecord, StartPolicy, TopicPartition, TopicSpec, default_topics
from pipeline.bus.sqlite_consumer import SqliteConsumer
from pipeline.bus.sqlite_format import PART_BITS, PART_MASK
from pipeline.bus.sqlite_retention import enforce_retention
from pipeline.bus.sqlite_store import WAL_LIMIT_BYTES, SqliteStore
from pipeline.bus.txn import BufferedTxn

RETENTION_STEP = 5_000
"""Records :meth:`SqliteBus.enforce_retention` deletes per transaction."""

__all__ = ["SqliteBus", "SqliteConsumer"]


class SqliteBus:
    """The embedded bus (see module docstring)."""

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        partitions: int = 1,
        retention_ms: int | EllipsisType | None = ...,
        max_bytes_per_partition: int | None = None,
        synchronous: Literal["full", "normal"] = "full",
        read_only: bool = False,
        busy_timeout_ms: int = 10_000,
        create_topics: bool = True,
        clock: Callable[[], float] = time.time,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        max_record_bytes: int = oversize.SQLITE_RECORD_BYTES,
    ):
        """``retention_ms`` is the data topics' age limit (None: keep forever), written to the file's
        topics at open; left out, the file keeps the one its topics were created with.
        ``wal_limit_bytes``: the size the WAL file is cut back to after a checkpoint.
        ``max_record_bytes``: an event larger than this (value, key and headers) is replaced by a
        dead letter in its transaction (:mod:`pipeline.bus.oversize`)."""
        self.path = Path(path)
        self.default_partitions = partitions
        self.retention_ms = retention_ms
        self.max_bytes_per_partition = max_bytes_per_partition
        self.max_record_bytes = max_record_bytes
        self.read_only = read_only
        self._create_topics = create_topics
        self._store = SqliteStore(
            self.path,
            synchronous=synchronous,
            read_only=read_only,
            busy_timeout_ms=busy_timeout_ms,
            clock=clock,
            wal_limit_bytes=wal_limit_bytes,
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> SqliteBus:
        """Open the file (taking the writer lock unless read-only) and create the default topics.

        Raises:
            BusError: the file cannot be opened, is a symlink, or another process writes it.
            BusCorruptError: the file is not an instantly-audit bus.
        """
        self._store.start()
        try:
            await self._store.run(self._store.open)
            if self._create_topics and not self.read_only:
                given = self.retention_ms is not ...
                specs = default_topics(self.default_partitions, self._retention())
                await self._store.run(self._store.ensure_topics, specs, given)
            await self._store.run(self._store.load_topics)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._store.stop()

    # ---- topics ---------------------------------------------------------------------
    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics (and their partitions' metadata)."""
        await self._store.run(self._store.ensure_topics, list(specs))

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``."""
        return (await self._store.run(self._store.topic, topic)).partitions

    # ---- writes -----------------------------------------------------------------------
    async def fence(self, txn_id: str) -> None:
        """No-op: SQLite's write lock already serialises writers."""
        return None

    async def wait_visible(self, max_wait_secs: float = 30.0) -> bool:
        """True at once: a committed SQLite transaction is visible to every reader."""
        return True

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[BufferedTxn]:
        """Buffer writes; commit them atomically when the block exits without an error."""
        txn = BufferedTxn()
        yield txn
        if txn.records or txn.state or txn.offsets:
            await self._commit(txn, txn_id)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Publish ``records`` in one transaction."""
        await self._commit(BufferedTxn(records=list(records)), "publish")

    async def _commit(self, txn: BufferedTxn, txn_id: str) -> None:
        """Commit ``txn``, its oversized events replaced by dead letters (reported once committed)."""
        where = f"the embedded bus's record limit (max_record_bytes) in {self.path.name}"
        letters = oversize.divert(txn.records, self.max_record_bytes, where=where, writer=txn_id, bus="sqlite")
        await self._store.commit(txn)
        oversize.report(letters, txn_id, "sqlite")

    # ---- state and offsets --------------------------------------------------------------
    async def get_state(self, key: str) -> bytes | None:
        """Current value of a state key."""

        def q() -> bytes | None:
            row = self._store.conn().execute("SELECT v FROM state WHERE k=?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._store.run(q)

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """All state entries whose key starts with ``prefix``."""

        def q() -> dict[str, bytes]:
            rows = (
                self._store.conn()
                .execute("SELECT k, v FROM state WHERE substr(k, 1, ?) = ?", (len(prefix), prefix))
                .fetchall()
            )
            return {k: bytes(v) for k, v in rows}

        return await self._store.run(q)

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets on ``topic``."""

        def q() -> dict[TopicPartition, int]:
            t = self._store.topic(topic)
            rows = (
                self._store.conn()
                .execute(
                    "SELECT tp, off FROM group_offsets WHERE grp=? AND tp>=? AND tp<?",
                    (group, t.tp_id(0), (t.id + 1) << PART_BITS),
                )
                .fetchall()
            )
            return {TopicPartition(topic, tp & PART_MASK): off for tp, off in rows}

        return await self._store.run(q)

    # ---- reads and retention ----------------------------------------------------------------
    def consumer(
        self, topics: Sequence[str], *, group: str | None = None, start: StartPolicy = "committed"
    ) -> SqliteConsumer:
        """A consumer over ``topics`` (all partitions)."""
        return SqliteConsumer(self._store, list(topics), group, start)

    def _retention(self) -> int | None:
        """The retention this process was given (None: none given, or keep forever)."""
        return None if isinstance(self.retention_ms, EllipsisType) else self.retention_ms

    async def enforce_retention(self) -> int:
        """Delete records older than the retention age or beyond the size cap; return the count.

        In steps of :data:`RETENTION_STEP` records, each its own transaction and its own turn on the
        store's thread, so the pipeline's commits (a webhook's acknowledgement) wait for one step at
        most, never for a whole backlog.
        """
        removed = 0
        while True:
            n = await self._store.run(
                enforce_retention, self._store, self._retention(), self.max_bytes_per_partition, RETENTION_STEP
            )
            removed += n
            if n < RETENTION_STEP and not self._store.compacting:  # a compaction pass is resumed
                return removed
