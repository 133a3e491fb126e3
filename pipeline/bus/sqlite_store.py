"""The embedded bus's storage engine: one SQLite connection on one dedicated thread.

All SQLite work runs on the store's thread (:meth:`SqliteStore.run`), so any number of
asyncio tasks can share it. Other processes may read the same file (a replay while the
pipeline runs): WAL lets readers proceed while the one writer commits. Every write happens
in ``BEGIN IMMEDIATE`` … ``COMMIT``: records, state and group offsets commit together or
not at all, and a killed process leaves the last committed transaction intact. Timestamps
are clamped to never decrease within a partition, which makes a time seek a binary search.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.bus.base import OutRecord, Record, TopicPartition, TopicSpec, partition_for
from pipeline.bus.sqlite_files import (
    acquire_writer_lock,
    create_private,
    make_private_dirs,
    refuse_symlinks,
    release_writer_lock,
)
from pipeline.bus.sqlite_format import (
    FORMAT_VERSION,
    OFFSET_BITS,
    OFFSET_MASK,
    PART_BITS,
    SCHEMA,
    CompactionPass,
    StoredTopic,
    check_format,
    decode_headers,
    disk_error,
    encode_headers,
    is_disk_error,
    rowid,
)
from pipeline.bus.txn import BufferedTxn
from pipeline.errors import BusCorruptError, BusError
from pipeline.observability.logs import get_logger

T = TypeVar("T")
log = get_logger("bus")

WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""``PRAGMA journal_size_limit``: after a checkpoint the WAL file is cut back to this size. Without
it the WAL keeps the largest size it ever reached, e.g. everything written while a long ``replay``
held a read snapshot in another process, until the pipeline stops."""


class SqliteStore:
    """One bus file, its connection and its thread (see module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["full", "normal"],
        read_only: bool,
        busy_timeout_ms: int,
        clock: Callable[[], float] = time.time,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
    ):
        self.path = path
        self.synchronous = synchronous
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        self.wal_limit_bytes = wal_limit_bytes
        self.clock = clock
        self.executor: ThreadPoolExecutor | None = None
        self.topics: dict[str, StoredTopic] = {}
        self.compacted: dict[int, tuple[int, int]] = {}
        """Per compacted topic-partition: the end offset of its last compaction and the records it kept
        (:mod:`~pipeline.bus.sqlite_retention`)."""
        self.compacting: dict[int, CompactionPass] = {}
        """The compactions under way, per topic-partition (each step resumes where the last stopped)."""
        self.changed = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._lock_key: str | None = None

    # ---- thread and connection --------------------------------------------------------
    def start(self) -> None:
        """Start the store's thread (open the file with :meth:`open` on it)."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bus")

    async def stop(self) -> None:
        """Close the connection, release the writer lock and stop the thread."""
        if self.executor is None:
            return
        try:
            await self.run(self.close)
        finally:
            self.executor.shutdown(wait=True)
            self.executor = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread.

        Raises:
            BusError: the store is not open.
        """
        if self.executor is None:
            raise BusError("the SQLite bus is not open (use 'async with')")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def conn(self) -> sqlite3.Connection:
        """The open connection (store thread only).

        Raises:
            BusError: the store is closed.
        """
        if self._db is None:
            raise BusError("the SQLite bus is closed")
        return self._db

    def open(self) -> None:
        """Open (creating if writable) the bus file (store thread only).

        Raises:
            BusError: the file is missing, a symlink, locked by another writer or not writable.
            BusCorruptError: the file is not an instantly-audit bus.
        """
        where = str(self.path)
        refuse_symlinks(self.path)
        if self.read_only:
            if not self.path.exists():
                raise BusError(f"bus file {where} does not exist")
        else:
            make_private_dirs(self.path.parent)
            self._lock_key = acquire_writer_lock(self.path)
        try:
            if not self.read_only:
                create_private(self.path)
            uri = f"file:{self.path}?mode={'ro' if self.read_only else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as err:
            self._release()
            raise BusError(f"cannot open bus file {where}: {err}") from err
        except BaseException:
            self._release()
            raise
        self._db = db
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            if not self.read_only:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise BusError(f"bus file {where}: cannot switch to WAL mode (got {mode})")
                db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
                db.execute(f"PRAGMA journal_size_limit={int(self.wal_limit_bytes)}")
                db.executescript(SCHEMA)
            upgraded = check_format(db, where, create=not self.read_only)
            if upgraded is not None:
                log.info(
                    "Bus file upgraded to a newer format version; releases that read only the old one now "
                    "refuse it (see docs/operations.md, Upgrading).",
                    extra={"path": where, "from_version": upgraded, "to_version": FORMAT_VERSION},
                )
        except sqlite3.DatabaseError as err:
            self.close()
            msg = str(err)
            if "locked" in msg or "busy" in msg:
                raise BusError(f"bus file {where} is locked by another process: {msg}", retriable=True) from err
            if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
                raise BusError(f"bus file {where} is not writable: {msg}") from err
            if is_disk_error(err):
                raise disk_error(where, err) from err
            raise BusCorruptError(f"bus file {where} is not a valid SQLite bus ({msg}); refusing to touch it") from err
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection and release the writer lock (store thread only)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._release()

    def _release(self) -> None:
        if self._lock_key is not None:
            release_writer_lock(self._lock_key)
            self._lock_key = None

    # ---- topics -------------------------------------------------------------------------
    def load_topics(self) -> None:
        """Re-read the topics table."""
        rows = self.conn().execute("SELECT id, name, partitions, compacted, retention_ms FROM topics").fetchall()
        self.topics = {r[1]: StoredTopic(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows}

    def ensure_topics(self, specs: list[TopicSpec], set_retention: bool = False) -> None:
        """Create missing topics and their partitions' metadata; with ``set_retention``, give the
        existing non-compacted ones the specs' retention too (the configured one: a changed
        ``retention.max_age_days`` applies from the next start, not only to a new file).

        Raises:
            BusError: a spec asks for an impossible partition count.
        """
        db = self.conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            for spec in specs:
                if spec.partitions < 1 or spec.partitions > (1 << PART_BITS):
                    raise BusError(f"topic {spec.name}: partitions must be 1..{1 << PART_BITS}")
                db.execute(
                    "INSERT OR IGNORE INTO topics (name, partitions, compacted, retention_ms) VALUES (?,?,?,?)",
                    (spec.name, spec.partitions, int(spec.compacted), spec.retention_ms),
                )
                if set_retention:
                    db.execute(
                        "UPDATE topics SET retention_ms=? WHERE name=? AND compacted=0 AND retention_ms IS NOT ?",
                        (spec.retention_ms, spec.name, spec.retention_ms),
                    )
                tid, parts = db.execute("SELECT id, partitions FROM topics WHERE name=?", (spec.name,)).fetchone()
                for p in range(parts):
                    db.execute("INSERT OR IGNORE INTO tp_meta VALUES (?, 0, 0, 0, 0)", ((tid << PART_BITS) | p,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.load_topics()

    def topic(self, name: str) -> StoredTopic:
        """The stored topic ``name``.

        Raises:
            BusError: no such topic.
        """
        t = self.topics.get(name)
        if t is None:
            self.load_topics()
            t = self.topics.get(name)
        if t is None:
            raise BusError(f"topic {name!r} does not exist on the bus {self.path}")
        return t

    def tp_id(self, tp: TopicPartition) -> int:
        """The topic-partition id of ``tp``.

        Raises:
            BusError: no such topic or partition.
        """
        t = self.topic(tp.topic)
        if not 0 <= tp.partition < t.partitions:
            raise BusError(f"topic {tp.topic!r} has no partition {tp.partition}")
        return t.tp_id(tp.partition)

    # ---- writes -------------------------------------------------------------------------
    async def commit(self, txn: BufferedTxn) -> None:
        """Write ``txn`` atomically and wake this process's waiting consumers.

        Raises:
            BusError: the bus is read-only or the write failed (retriable when SQLite was busy).
        """
        if self.read_only:
            raise BusError(f"bus {self.path} was opened read-only")
        await self.run(self._write, txn)
        self.changed.set()
        self.changed = asyncio.Event()

    def _write(self, txn: BufferedTxn) -> None:
        db = self.conn()
        now_ms = int(self.clock() * 1000)
        try:
            db.execute("BEGIN IMMEDIATE")
            if txn.records:
                self._write_records(db, txn.records, now_ms)
            for k, v in txn.state.items():
                if v is None:
                    db.execute("DELETE FROM state WHERE k=?", (k,))
                else:
                    db.execute("INSERT OR REPLACE INTO state VALUES (?,?,?)", (k, v, now_ms))
            if txn.offsets:
                db.executemany(
                    "INSERT OR REPLACE INTO group_offsets VALUES (?,?,?)",
                    [(g, self.tp_id(tp), off) for (g, tp), off in txn.offsets.items()],
                )
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if is_disk_error(err):
                raise disk_error(str(self.path), err) from err
            msg = str(err)
            retriable = "locked" in msg or "busy" in msg or "full" in msg
            raise BusError(f"bus write to {self.path} failed: {msg}", retriable=retriable) from err
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _write_records(self, db: sqlite3.Connection, records: list[OutRecord], now_ms: int) -> None:
        by_tp: dict[int, list[OutRecord]] = {}
        topics: dict[str, StoredTopic] = {}
        tps: dict[tuple[str, bytes | None], int] = {}
        for r in records:
            tp = tps.get((r.topic, r.key))
            if tp is None:
                t = topics.get(r.topic) or topics.setdefault(r.topic, self.topic(r.topic))
                tp = tps[(r.topic, r.key)] = t.tp_id(partition_for(r.key, t.partitions))
            by_tp.setdefault(tp, []).append(r)
        rows: list[tuple[int, int, bytes | None, bytes, bytes | None]] = []
        for tp, recs in by_tp.items():
            next_off, last_ts, size = db.execute(
                "SELECT next_off, last_ts, bytes FROM tp_meta WHERE tp=?", (tp,)
            ).fetchone()
            base = tp << OFFSET_BITS
            append = rows.append
            for r in recs:
                ts = r.timestamp_ms
                if ts is not None and ts > last_ts:
                    last_ts = ts
                elif ts is None and now_ms > last_ts:
                    last_ts = now_ms
                hdr = encode_headers(r.headers) if r.headers else None
                value = r.value if r.value is not None else b""  # a tombstone: no compaction here
                append((base | next_off, last_ts, r.key, value, hdr))
                size += len(value) + (len(r.key) if r.key else 0) + (len(hdr) if hdr else 0)
                next_off += 1
            db.execute("UPDATE tp_meta SET next_off=?, last_ts=?, bytes=? WHERE tp=?", (next_off, last_ts, size, tp))
        db.executemany("INSERT INTO records VALUES (?,?,?,?,?)", rows)

    # ---- reads (store thread only) ------------------------------------------------------
    def bounds(self, tp_id: int) -> tuple[int, int]:
        """First retained offset and next offset of a topic-partition."""
        row = self.conn().execute("SELECT log_start, next_off FROM tp_meta WHERE tp=?", (tp_id,)).fetchone()
        return (0, 0) if row is None else (row[0], row[1])

    def fetch(self, tp_id: int, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of a topic-partition from ``offset``."""
        rows = (
            self.conn()
            .execute(
                "SELECT id, ts, key, value, headers FROM records WHERE id>=? AND id<? ORDER BY id LIMIT ?",
                (rowid(tp_id, offset), rowid(tp_id + 1, 0), limit),
            )
            .fetchall()
        )
        return [
            Record(topic, partition, rid & OFFSET_MASK, ts, key, value, decode_headers(hdr) if hdr else ())
            for rid, ts, key, value, hdr in rows
        ]

    def offset_for_time(self, tp_id: int, ts_ms: int) -> int:
        """Binary search: first offset whose timestamp >= ts_ms (timestamps never decrease)."""
        db = self.conn()
        lo, hi = self.bounds(tp_id)
        while lo < hi:
            mid = (lo + hi) // 2
            row = db.execute(  # the first record at or after ``mid``: a compacted partition has holes
                "SELECT ts FROM records WHERE id>=? AND id<? ORDER BY id LIMIT 1",
                (rowid(tp_id, mid), rowid(tp_id, hi)),
            ).fetchone()
            if row is None or row[0] < ts_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def group_offset(self, group: str, tp_id: int) -> int | None:
        """``group``'s committed offset on a topic-partition, if any."""
        row = self.conn().execute("SELECT off FROM group_offsets WHERE grp=? AND tp=?", (group, tp_id)).fetchone()
        return None if row is None else int(row[0])
