"""The embedded bus: one SQLite file in WAL mode with the same topics, groups and transactions as Kafka.

Layout: a record's rowid is ``(topic_partition << 40) | offset``, so reading a partition
from an offset is a rowid range scan and no secondary index is needed. ``tp_meta`` holds
each partition's next offset, first retained offset, last timestamp and size; timestamps
are clamped to never decrease within a partition, which makes a time seek a binary search.

All SQLite work runs on one dedicated thread per :class:`SqliteBus`, so any number of
asyncio tasks can share it. Other processes may open the same file (a replay while the
pipeline runs): WAL lets readers proceed while one writer commits. Every write happens in
``BEGIN IMMEDIATE`` … ``COMMIT``: records, state and group offsets commit together or not
at all, and a killed process leaves the last committed transaction intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.bus.base import (
    Header,
    OutRecord,
    Record,
    StartPolicy,
    TopicPartition,
    TopicSpec,
    default_topics,
    partition_for,
)
from pipeline.errors import BusCorruptError, BusError

T = TypeVar("T")
_OFFSET_BITS = 40
_PART_BITS = 10
FORMAT = "instantly-audit-bus"
FORMAT_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL,
  compacted INTEGER NOT NULL, retention_ms INTEGER);
CREATE TABLE IF NOT EXISTS tp_meta (
  tp INTEGER PRIMARY KEY, next_off INTEGER NOT NULL, log_start INTEGER NOT NULL,
  last_ts INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
  id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB);
CREATE TABLE IF NOT EXISTS group_offsets (
  grp TEXT NOT NULL, tp INTEGER NOT NULL, off INTEGER NOT NULL, PRIMARY KEY (grp, tp)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v BLOB NOT NULL, ts INTEGER NOT NULL);
"""


_ENCODE_CACHE: dict[tuple[Header, ...], bytes] = {}


def encode_headers(headers: Sequence[Header]) -> bytes | None:
    """Pack headers as (u16 name length, name, u32 value length, value)* (cached per header set)."""
    if not headers:
        return None
    key = headers if type(headers) is tuple else tuple(headers)
    hit = _ENCODE_CACHE.get(key)
    if hit is None:
        hit = _encode_headers(key)
        if len(_ENCODE_CACHE) >= 4096:
            _ENCODE_CACHE.clear()
        _ENCODE_CACHE[key] = hit
    return hit


def _encode_headers(headers: tuple[Header, ...]) -> bytes:
    out = bytearray()
    for name, value in headers:
        n = name.encode()
        out += struct.pack(">H", len(n)) + n + struct.pack(">I", len(value)) + value
    return bytes(out)


_HEADER_CACHE: dict[bytes, tuple[Header, ...]] = {}


def decode_headers(blob: bytes | None) -> tuple[Header, ...]:
    """Inverse of :func:`encode_headers` (cached: a topic carries few distinct header sets)."""
    if not blob:
        return ()
    hit = _HEADER_CACHE.get(blob)
    if hit is not None:
        return hit
    out = _decode_headers(blob)
    if len(_HEADER_CACHE) >= 4096:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[bytes(blob)] = out
    return out


def _decode_headers(blob: bytes) -> tuple[Header, ...]:
    out: list[Header] = []
    i = 0
    while i < len(blob):
        (nl,) = struct.unpack_from(">H", blob, i)
        i += 2
        name = blob[i : i + nl].decode()
        i += nl
        (vl,) = struct.unpack_from(">I", blob, i)
        i += 4
        out.append((name, bytes(blob[i : i + vl])))
        i += vl
    return tuple(out)


def _rowid(tp: int, offset: int) -> int:
    return (tp << _OFFSET_BITS) | offset


@dataclass
class _Txn:
    """Buffered writes of one transaction."""

    records: list[OutRecord] = field(default_factory=list)
    state: dict[str, bytes | None] = field(default_factory=dict)
    offsets: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        self.records.append(
            OutRecord(topic, value, key, headers if type(headers) is tuple else tuple(headers), timestamp_ms)
        )

    def put_state(self, key: str, value: bytes | None) -> None:
        self.state[key] = value

    def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self.offsets[(group, tp)] = off


@dataclass(frozen=True)
class _Topic:
    id: int
    name: str
    partitions: int
    compacted: bool
    retention_ms: int | None


class SqliteBus:
    """The embedded bus (see module docstring)."""

    name = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        partitions: int = 1,
        retention_ms: int | None = None,
        max_bytes_per_partition: int | None = None,
        synchronous: Literal["full", "normal"] = "full",
        read_only: bool = False,
        busy_timeout_ms: int = 10_000,
        create_topics: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.default_partitions = partitions
        self.retention_ms = retention_ms
        self.max_bytes_per_partition = max_bytes_per_partition
        self.synchronous = synchronous
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        self._create_topics = create_topics
        self._clock = clock
        self._ex: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._topics: dict[str, _Topic] = {}
        self._changed = asyncio.Event()

    # ---- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> SqliteBus:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bus")
        try:
            await self._run(self._open)
            if self._create_topics and not self.read_only:
                await self.ensure_topics(default_topics(self.default_partitions, self.retention_ms))
            await self._run(self._load_topics)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ex is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._ex.shutdown(wait=True)
            self._ex = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._ex is None:
            raise BusError("the SQLite bus is not open (use 'async with')")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ex, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BusError("the SQLite bus is closed")
        return self._db

    def _open(self) -> None:
        where = str(self.path)
        try:
            if not self.read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.exists():
                raise BusError(f"bus file {where} does not exist")
            uri = f"file:{self.path}?mode={'ro' if self.read_only else 'rwc'}"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as err:
            raise BusError(f"cannot open bus file {where}: {err}") from err
        except OSError as err:
            raise BusError(f"cannot create the bus directory for {where}: {err.strerror}") from err
        self._db = db
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            if not self.read_only:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise BusError(f"bus file {where}: cannot switch to WAL mode (got {mode})")
                db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
                db.executescript(_SCHEMA)
                self._check_format(db, where, create=True)
            else:
                self._check_format(db, where, create=False)
        except sqlite3.DatabaseError as err:
            db.close()
            self._db = None
            msg = str(err)
            if "locked" in msg or "busy" in msg:
                raise BusError(f"bus file {where} is locked by another process: {msg}", retriable=True) from err
            if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
                raise BusError(f"bus file {where} is not writable: {msg}") from err
            raise BusCorruptError(f"bus file {where} is not a valid SQLite bus ({msg}); refusing to touch it") from err
        except BaseException:
            db.close()
            self._db = None
            raise

    @staticmethod
    def _check_format(db: sqlite3.Connection, where: str, *, create: bool) -> None:
        try:
            rows = dict(db.execute("SELECT k, v FROM meta").fetchall())
        except sqlite3.OperationalError as err:
            raise BusCorruptError(f"bus file {where} has no bus tables ({err}); refusing to touch it") from err
        if not rows and create:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, FORMAT_VERSION))
            db.execute("COMMIT")
            return
        if rows.get("format") != FORMAT:
            raise BusCorruptError(f"bus file {where} was not written by instantly-audit; refusing to touch it")
        if rows.get("version") != FORMAT_VERSION:
            raise BusCorruptError(
                f"bus file {where} has format version {rows.get('version')}, this build reads {FORMAT_VERSION}"
            )

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _load_topics(self) -> None:
        rows = self._conn().execute("SELECT id, name, partitions, compacted, retention_ms FROM topics").fetchall()
        self._topics = {r[1]: _Topic(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows}

    # ---- topics ---------------------------------------------------------------------
    async def ensure_topics(self, specs: Sequence[TopicSpec]) -> None:
        """Create missing topics (and their partitions' metadata)."""
        await self._run(self._ensure_topics, list(specs))

    def _ensure_topics(self, specs: list[TopicSpec]) -> None:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            for spec in specs:
                if spec.partitions < 1 or spec.partitions > (1 << _PART_BITS):
                    raise BusError(f"topic {spec.name}: partitions must be 1..{1 << _PART_BITS}")
                db.execute(
                    "INSERT OR IGNORE INTO topics (name, partitions, compacted, retention_ms) VALUES (?,?,?,?)",
                    (spec.name, spec.partitions, int(spec.compacted), spec.retention_ms),
                )
                tid, parts = db.execute("SELECT id, partitions FROM topics WHERE name=?", (spec.name,)).fetchone()
                for p in range(parts):
                    db.execute("INSERT OR IGNORE INTO tp_meta VALUES (?, 0, 0, 0, 0)", ((tid << _PART_BITS) | p,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._load_topics()

    def _topic(self, name: str) -> _Topic:
        t = self._topics.get(name)
        if t is None:
            self._load_topics()
            t = self._topics.get(name)
        if t is None:
            raise BusError(f"topic {name!r} does not exist on the bus {self.path}")
        return t

    def _tp_id(self, tp: TopicPartition) -> int:
        t = self._topic(tp.topic)
        if not 0 <= tp.partition < t.partitions:
            raise BusError(f"topic {tp.topic!r} has no partition {tp.partition}")
        return (t.id << _PART_BITS) | tp.partition

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic``."""
        return (await self._run(self._topic, topic)).partitions

    # ---- writes -----------------------------------------------------------------------
    async def fence(self, txn_id: str) -> None:
        """No-op: SQLite's write lock already serialises writers."""
        return None

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[_Txn]:
        """Buffer writes; commit them atomically when the block exits without an error."""
        txn = _Txn()
        yield txn
        if txn.records or txn.state or txn.offsets:
            await self._commit(txn)

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Publish ``records`` in one transaction."""
        txn = _Txn(records=list(records))
        await self._commit(txn)

    async def _commit(self, txn: _Txn) -> None:
        if self.read_only:
            raise BusError(f"bus {self.path} was opened read-only")
        await self._run(self._write, txn)
        self._changed.set()
        self._changed = asyncio.Event()

    def _write(self, txn: _Txn) -> None:
        db = self._conn()
        now_ms = int(self._clock() * 1000)
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
                    [(g, self._tp_id(tp), off) for (g, tp), off in txn.offsets.items()],
                )
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            msg = str(err)
            retriable = "locked" in msg or "busy" in msg or "full" in msg
            raise BusError(f"bus write to {self.path} failed: {msg}", retriable=retriable) from err
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _write_records(self, db: sqlite3.Connection, records: list[OutRecord], now_ms: int) -> None:
        by_tp: dict[int, list[OutRecord]] = {}
        topics: dict[str, _Topic] = {}
        tps: dict[tuple[str, bytes | None], int] = {}
        for r in records:
            tp = tps.get((r.topic, r.key))
            if tp is None:
                t = topics.get(r.topic) or topics.setdefault(r.topic, self._topic(r.topic))
                tp = tps[(r.topic, r.key)] = (t.id << _PART_BITS) | partition_for(r.key, t.partitions)
            by_tp.setdefault(tp, []).append(r)
        rows: list[tuple[int, int, bytes | None, bytes, bytes | None]] = []
        for tp, recs in by_tp.items():
            next_off, last_ts, size = db.execute(
                "SELECT next_off, last_ts, bytes FROM tp_meta WHERE tp=?", (tp,)
            ).fetchone()
            base = tp << _OFFSET_BITS
            append = rows.append
            for r in recs:
                ts = r.timestamp_ms
                if ts is not None and ts > last_ts:
                    last_ts = ts
                elif ts is None and now_ms > last_ts:
                    last_ts = now_ms
                hdr = encode_headers(r.headers) if r.headers else None
                append((base | next_off, last_ts, r.key, r.value, hdr))
                size += len(r.value) + (len(r.key) if r.key else 0) + (len(hdr) if hdr else 0)
                next_off += 1
            db.execute("UPDATE tp_meta SET next_off=?, last_ts=?, bytes=? WHERE tp=?", (next_off, last_ts, size, tp))
        db.executemany("INSERT INTO records VALUES (?,?,?,?,?)", rows)

    # ---- state and offsets --------------------------------------------------------------
    async def get_state(self, key: str) -> bytes | None:
        """Current value of a state key."""

        def q() -> bytes | None:
            row = self._conn().execute("SELECT v FROM state WHERE k=?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        """All state entries whose key starts with ``prefix``."""

        def q() -> dict[str, bytes]:
            rows = (
                self._conn()
                .execute("SELECT k, v FROM state WHERE substr(k, 1, ?) = ?", (len(prefix), prefix))
                .fetchall()
            )
            return {k: bytes(v) for k, v in rows}

        return await self._run(q)

    async def committed(self, group: str, topic: str) -> dict[TopicPartition, int]:
        """A group's committed offsets on ``topic``."""

        def q() -> dict[TopicPartition, int]:
            t = self._topic(topic)
            lo, hi = t.id << _PART_BITS, (t.id + 1) << _PART_BITS
            rows = (
                self._conn()
                .execute("SELECT tp, off FROM group_offsets WHERE grp=? AND tp>=? AND tp<?", (group, lo, hi))
                .fetchall()
            )
            return {TopicPartition(topic, tp & ((1 << _PART_BITS) - 1)): off for tp, off in rows}

        return await self._run(q)

    def _bounds(self, tp_id: int) -> tuple[int, int]:
        row = self._conn().execute("SELECT log_start, next_off FROM tp_meta WHERE tp=?", (tp_id,)).fetchone()
        return (0, 0) if row is None else (row[0], row[1])

    # ---- reads ----------------------------------------------------------------------------
    def consumer(
        self, topics: Sequence[str], *, group: str | None = None, start: StartPolicy = "committed"
    ) -> SqliteConsumer:
        """A consumer over ``topics`` (all partitions)."""
        return SqliteConsumer(self, list(topics), group, start)

    def _fetch(self, tp_id: int, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        lo = _rowid(tp_id, offset)
        hi = _rowid(tp_id + 1, 0)
        rows = (
            self._conn()
            .execute(
                "SELECT id, ts, key, value, headers FROM records WHERE id>=? AND id<? ORDER BY id LIMIT ?",
                (lo, hi, limit),
            )
            .fetchall()
        )
        mask = (1 << _OFFSET_BITS) - 1
        return [
            Record(topic, partition, rid & mask, ts, key, value, decode_headers(hdr) if hdr else ())
            for rid, ts, key, value, hdr in rows
        ]

    def _offset_for_time(self, tp_id: int, ts_ms: int) -> int:
        """Binary search: first offset whose timestamp >= ts_ms (timestamps never decrease)."""
        db = self._conn()
        lo, hi = self._bounds(tp_id)
        while lo < hi:
            mid = (lo + hi) // 2
            row = db.execute("SELECT ts FROM records WHERE id=?", (_rowid(tp_id, mid),)).fetchone()
            if row is None or row[0] < ts_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ---- retention ------------------------------------------------------------------------
    async def enforce_retention(self) -> int:
        """Delete records older than the retention age or beyond the size cap; return the count."""
        return await self._run(self._retention)

    def _retention(self) -> int:
        db = self._conn()
        now_ms = int(self._clock() * 1000)
        removed = 0
        for t in list(self._topics.values()):
            if t.compacted:
                continue
            age = t.retention_ms if t.retention_ms is not None else self.retention_ms
            for p in range(t.partitions):
                tp_id = (t.id << _PART_BITS) | p
                start, end = self._bounds(tp_id)
                cut = start
                if age is not None:
                    cut = max(cut, self._offset_for_time(tp_id, now_ms - age))
                if self.max_bytes_per_partition is not None:
                    cut = max(cut, self._size_cut(tp_id, cut, end))
                cut = min(cut, end)
                if cut <= start:
                    continue
                db.execute("BEGIN IMMEDIATE")
                try:
                    gone = db.execute(
                        "SELECT COALESCE(SUM(length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0)),0),"
                        " COUNT(*) FROM records WHERE id>=? AND id<?",
                        (_rowid(tp_id, start), _rowid(tp_id, cut)),
                    ).fetchone()
                    db.execute("DELETE FROM records WHERE id>=? AND id<?", (_rowid(tp_id, start), _rowid(tp_id, cut)))
                    db.execute("UPDATE tp_meta SET log_start=?, bytes=bytes-? WHERE tp=?", (cut, gone[0], tp_id))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                removed += int(gone[1])
        return removed

    def _size_cut(self, tp_id: int, start: int, end: int) -> int:
        db = self._conn()
        (size,) = db.execute("SELECT bytes FROM tp_meta WHERE tp=?", (tp_id,)).fetchone()
        cap = self.max_bytes_per_partition or 0
        if size <= cap:
            return start
        excess = size - cap
        cut = start
        for rid_len in db.execute(
            "SELECT length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0) FROM records"
            " WHERE id>=? AND id<? ORDER BY id",
            (_rowid(tp_id, start), _rowid(tp_id, end)),
        ):
            if excess <= 0:
                break
            excess -= rid_len[0]
            cut += 1
        return cut


class SqliteConsumer:
    """A consumer of the embedded bus (see :mod:`pipeline.bus.base` for semantics)."""

    def __init__(self, bus: SqliteBus, topics: list[str], group: str | None, start: StartPolicy):
        self._bus = bus
        self._topics = topics
        self.group = group
        self._start = start
        self._pos: dict[TopicPartition, int] = {}
        self._ids: dict[TopicPartition, int] = {}
        self._rr = 0
        # Read-ahead: the next batch is fetched on the bus thread while the caller works on this one.
        self._ahead: asyncio.Future[tuple[list[Record], dict[TopicPartition, int], int]] | None = None
        self._ahead_max = 0

    async def __aenter__(self) -> SqliteConsumer:
        await self._bus._run(self._assign)
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
        db = self._bus._conn()
        for name in self._topics:
            t = self._bus._topic(name)
            for p in range(t.partitions):
                tp = TopicPartition(name, p)
                tp_id = (t.id << _PART_BITS) | p
                self._ids[tp] = tp_id
                start, end = self._bus._bounds(tp_id)
                pos: int | None = None
                if self.group is not None and self._start == "committed":
                    row = db.execute(
                        "SELECT off FROM group_offsets WHERE grp=? AND tp=?", (self.group, tp_id)
                    ).fetchone()
                    pos = None if row is None else int(row[0])
                if pos is None:
                    pos = end if self._start == "latest" else start
                self._pos[tp] = max(pos, start)

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
            changed = self._bus._changed
            ahead, self._ahead = self._ahead, None
            if ahead is not None and self._ahead_max == max_records:
                recs, pos, rr = await ahead
            else:
                if ahead is not None:
                    with contextlib.suppress(Exception):
                        await ahead
                recs, pos, rr = await self._bus._run(self._fetch_some, dict(self._pos), self._rr, max_records)
            if recs:
                self._pos.update(pos)
                self._rr = rr
                if len(recs) >= max_records:  # likely more to read: fetch it while the caller works
                    loop = asyncio.get_running_loop()
                    self._ahead_max = max_records
                    self._ahead = asyncio.ensure_future(
                        loop.run_in_executor(self._bus._ex, self._fetch_some, dict(self._pos), self._rr, max_records)
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

    def _fetch_some(
        self, pos: dict[TopicPartition, int], rr: int, max_records: int
    ) -> tuple[list[Record], dict[TopicPartition, int], int]:
        """Read from ``pos`` (a copy): return the records, the positions after them and the next round-robin start."""
        tps = list(pos)
        out: list[Record] = []
        n = len(tps)
        for i in range(n):
            tp = tps[(rr + i) % n]
            tp_id = self._ids[tp]
            start, _ = self._bus._bounds(tp_id)
            if pos[tp] < start:
                pos[tp] = start  # retention removed what we had not read
            recs = self._bus._fetch(tp_id, tp.topic, tp.partition, pos[tp], max_records - len(out))
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
            db = self._bus._conn()
            out: list[bytes] = []
            for tp, tp_id in self._ids.items():
                end = until.get(tp, 0)
                pos = self._pos[tp]
                if pos >= end:
                    continue
                rows = db.execute(
                    "SELECT id, value FROM records WHERE id>=? AND id<? ORDER BY id LIMIT ?",
                    (_rowid(tp_id, pos), _rowid(tp_id, end), max_records - len(out)),
                ).fetchall()
                if rows:
                    self._pos[tp] = (rows[-1][0] & ((1 << _OFFSET_BITS) - 1)) + 1
                    out.extend(v for _, v in rows)
                else:
                    self._pos[tp] = end
                if len(out) >= max_records:
                    break
            return out

        return await self._bus._run(q)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the group's offsets (default: current positions)."""
        if self.group is None:
            raise BusError("this consumer has no group; it cannot commit offsets")
        txn = _Txn()
        txn.commit_offsets(self.group, offsets if offsets is not None else self._pos)
        await self._bus._commit(txn)

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next."""
        if tp not in self._pos:
            raise BusError(f"{tp.topic}[{tp.partition}] is not assigned to this consumer")
        await self._drop_ahead()
        self._pos[tp] = offset

    async def seek_to_time(self, timestamp_ms: int) -> None:
        """Move each partition to its first record at or after ``timestamp_ms``."""

        def q() -> None:
            for tp, tp_id in self._ids.items():
                self._pos[tp] = self._bus._offset_for_time(tp_id, timestamp_ms)

        await self._drop_ahead()
        await self._bus._run(q)

    async def seek_to_beginning(self) -> None:
        """Move each partition to its first retained record."""

        def q() -> None:
            for tp, tp_id in self._ids.items():
                self._pos[tp] = self._bus._bounds(tp_id)[0]

        await self._drop_ahead()
        await self._bus._run(q)

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Offset after the last record per partition."""

        def q() -> dict[TopicPartition, int]:
            return {tp: self._bus._bounds(tp_id)[1] for tp, tp_id in self._ids.items()}

        return await self._bus._run(q)
