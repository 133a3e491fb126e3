"""The embedded bus's on-disk format: tables, the rowid layout, the header encoding, the format stamp.

A record's rowid is ``(topic_partition << 40) | offset`` and a topic-partition id is
``(topic_id << 10) | partition``, so reading a partition from an offset is a rowid range
scan and no secondary index is needed. ``tp_meta`` holds each partition's next offset,
first retained offset, last timestamp and size. The ``meta`` table stamps the file with
:data:`FORMAT` and :data:`FORMAT_VERSION`; a file without them is never touched.

Format versions: ``1`` is the tables above with the state keys of releases up to 2026-11-27
(one ``cursor/<source>/audit_logs`` and one ``snapshot/<source>/<stream>`` value each); ``2`` is the
same tables with the state split into bounded keys (``…/head``, ``…/seen/…``, ``…/shard/…``), which
those releases do not read: they would start over and publish everything again. A writable open
of a version 1 file stamps it 2 (the keys migrate on the poller's next write), so an older release
opened on it afterwards refuses it in one line ("has format version 2, this build reads 1")
instead of duplicating the bus. A version newer than this build's is refused the same way.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.bus.base import Header
from pipeline.errors import BusCorruptError, BusError

OFFSET_BITS = 40
PART_BITS = 10
OFFSET_MASK = (1 << OFFSET_BITS) - 1
PART_MASK = (1 << PART_BITS) - 1
FORMAT = "instantly-audit-bus"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
"""Versions this build opens; a writable open stamps an older one :data:`FORMAT_VERSION`."""

SCHEMA = """
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


@dataclass(frozen=True)
class StoredTopic:
    """A row of the ``topics`` table."""

    id: int
    name: str
    partitions: int
    compacted: bool
    retention_ms: int | None

    def tp_id(self, partition: int) -> int:
        """The topic-partition id of ``partition``."""
        return (self.id << PART_BITS) | partition


@dataclass
class CompactionPass:
    """A compaction of one compacted topic-partition under way (:mod:`~pipeline.bus.sqlite_retention`):
    it covers the offsets before ``end`` and has examined ``[cursor, end)``, newest first."""

    end: int
    """The partition's next offset when the pass began: later records wait for the next pass."""
    cursor: int
    """The oldest offset examined so far (records before it are examined next)."""
    seen: set[bytes] = field(default_factory=set)
    """The keys met so far: each one's newest record is kept, every older one is stale."""
    kept: int = 0
    """Records examined and kept (the newest of their key, or without a key)."""


def rowid(tp: int, offset: int) -> int:
    """The rowid of ``offset`` in topic-partition ``tp``."""
    return (tp << OFFSET_BITS) | offset


_DISK_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})
_DISK_MESSAGES = ("database or disk is full", "disk i/o error")


def is_disk_error(err: sqlite3.Error) -> bool:
    """Whether ``err`` is a full disk or an I/O error (SQLITE_FULL, SQLITE_IOERR): the device
    failed, not the bus file, which must never then be reported as damaged."""
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _DISK_CODES:  # extended codes keep the primary in the low byte
        return True
    msg = str(err).lower()
    return any(m in msg for m in _DISK_MESSAGES)


def disk_error(where: str, err: sqlite3.Error) -> BusError:
    """The error to raise for a full disk or an I/O error on the bus file ``where``."""
    return BusError(
        f"cannot write the bus {where}: disk full / I/O error (the bus file is not damaged; "
        f"free space and run again): {err}",
        retriable="full" in str(err).lower(),
    )


def check_format(db: sqlite3.Connection, where: str, *, create: bool) -> str | None:
    """Stamp a new bus file, or verify an existing one's stamp (and, when ``create``, bring an
    older readable version up to :data:`FORMAT_VERSION`).

    Returns:
        The version the file had when this call stamped it newer, else ``None``.

    Raises:
        BusCorruptError: the file has no bus tables, another format or a version this build does not read.
    """
    try:
        rows = dict(db.execute("SELECT k, v FROM meta").fetchall())
    except sqlite3.OperationalError as err:
        if is_disk_error(err):
            raise disk_error(where, err) from err
        raise BusCorruptError(f"bus file {where} has no bus tables ({err}); refusing to touch it") from err
    if not rows and create:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, FORMAT_VERSION))
        db.execute("COMMIT")
        return None
    if rows.get("format") != FORMAT:
        raise BusCorruptError(f"bus file {where} was not written by instantly-audit; refusing to touch it")
    version = rows.get("version")
    if version not in READABLE_VERSIONS:
        raise BusCorruptError(
            f"bus file {where} has format version {version}, this build reads {', '.join(READABLE_VERSIONS)}: "
            "it was written by a newer instantly-audit, and going back is not supported; run that release "
            "again, or restore the copy of the bus taken before the upgrade (docs/operations.md, Upgrading)"
        )
    if version != FORMAT_VERSION and create:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET v=? WHERE k='version'", (FORMAT_VERSION,))
        db.execute("COMMIT")
        return str(version)
    return None


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
