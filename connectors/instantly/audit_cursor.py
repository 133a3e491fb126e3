"""The audit-log cursor: read position, high-water mark and the ids seen within the overlap window.

The audit log is incremental. Its order and the meaning of ``start_date`` (date only;
timezone and inclusivity undocumented) are not documented, so the cursor keeps

* ``last_id`` — the id of the last record listed by a read whose pages came back in ascending
  id order (``None``: no such read yet, or the last read was not ascending);
* ``high_water`` — the newest record timestamp published (capped at the poll time, so a
  future-dated record cannot push the window ahead of real time);
* ``last_full_read`` / ``full_mark`` — when the last full overlap re-read finished (epoch
  seconds, poll time) and the ``high_water`` it left;
* ``seen`` — the ids published whose timestamp is at or after the *threshold*
  ``min(high_water, full_mark) - overlap``, and those greater than ``last_id`` whatever their
  timestamp (until ``last_id`` passes them).

**Order assumption.** The simulator lists audit logs ascending by id, and ids are UUIDv7 (time
ordered), so "everything after ``last_id``" is "everything new". The real API's order is
undocumented, so each page is checked (:func:`page_is_ascending`): ids must increase within the
page and from one page to the next (the first id after ``starting_after=last_id`` must be greater
than ``last_id``; ids compared as strings, which orders UUIDv7 and 24-hex ids by time), a UUID must
be of a time-ordered version (6 or 7: a listing sorted by random version-4 UUIDs is ascending by id,
yet a new record lands anywhere in it, so every poll reads the window), and a page
of three or more records must not have strictly decreasing timestamps. A page that fails the
check makes that poll fall back to the windowed read below, and ``last_id`` is cleared until a
windowed read confirms ascending order again.

**Two reads.**

* *Incremental* (steady state): ``starting_after=last_id``, no date filter: only the new pages
  (with ``limit=1000``: one request per 1,000 new records plus the final empty page).
* *Full overlap re-read*: from ``start_date = date(threshold - 1 day)`` (the extra day absorbs the
  coarse, timezone-unknown date filter), as every poll did before. Without a ``last_id`` it can
  publish nothing older than the threshold, so a listing newest first (timestamps never rising so
  far) is read only down to the page that reaches the threshold (:mod:`connectors.instantly.streams`).
  It runs when no ``last_id`` is known, when ``overlap`` seconds have passed since
  ``last_full_read``, on the first poll of a poller process (``last_full_read`` older than the
  process start — records may have been inserted behind the cursor while nothing was polling),
  whenever the order check fails, and — for the rest of the process — once the API refused
  ``starting_after=last_id`` with a 400 or 404 (the reference documents the cursor as "the ID of
  the last item", but also shows timestamp cursors; a server that accepts only its own must not
  wedge the audit log).

Both keep a record when its id is not in ``seen`` and its timestamp is at or after the threshold.
Because the threshold uses the ``high_water`` left by the last full re-read, a record inserted
behind the cursor (back-dated id) whose timestamp was within ``overlap`` of the high-water mark
when it appeared is still inside the window at the next full re-read, and the ``seen`` set makes
it published exactly once. A record with a new id and an older timestamp comes after ``last_id``
and is published by the next read, however old: an incremental read lists only what lies past
``last_id``, and a full re-read keeps every record whose id is greater than ``last_id`` — also on
the first poll of a process (``run --once``, a restart). Such a record cannot have been published
unless its id is in ``seen``: a read that published ids past ``last_id`` without moving
``last_id`` past them (a full re-read that failed on a later page, a sweep) left them there, and
``seen`` keeps every id greater than ``last_id`` until ``last_id`` passes it. A full re-read
counts a record at or before ``last_id`` older than the threshold as ``too_old`` (logged with a
count) and does not publish it (it may have been published before its id left ``seen``); the
late-record sweep publishes those. Except when its id is greater than ``max_id``, the greatest id
this cursor ever published (kept in the head by cursors started since 2026-12-08): such a record
was never published, so it is published whatever its age. Without it, a full re-read with no
``last_id`` (the first read saw a single record, so none was confirmed) counted new ids inserted
hours late as too old and then confirmed ``last_id`` past them: only the sweep published them.
``seen`` therefore holds at most ``overlap`` plus the time since the last full re-read (at most
about ``2 * overlap``) of ids, plus the ids published past ``last_id`` since the last read ended.

**State layout** (format 2). The cursor is several bounded state keys under the prefix
``cursor/{source_id}/audit_logs/``: ``head`` holds everything but the ids
(:meth:`AuditCursor.head_bytes`), and the ids seen are chunks per hour bucket
(:mod:`connectors.instantly.cursor_state`). :meth:`AuditCursor.state_writes` hands out only what
changed since the last call, so a page's transaction writes the head and the chunks of the
buckets it touched, and buckets that left the window are deleted.

**Migration.** The single value of format 1 (key ``cursor/{source_id}/audit_logs``, with the
ids under ``seen``) is read by :meth:`AuditCursor.load_state` when no head exists yet; the first
transaction writes the new layout and deletes the old key. State written by still older versions
(no ``last_id`` / ``last_full_read``) loads too and makes the next poll a full re-read. A poller
of a version before format 2 does not read the new layout (it would start a new cursor).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import orjson

from connectors.instantly.cursor_state import BUCKET_SECS, SeenChunks
from connectors.instantly.ledger import HourLedgers
from connectors.instantly.receipts import HourReceipts
from pipeline.clock import format_time, parse_time

DATE_SLACK_SECS = 86_400.0
CURSOR_VERSION = 1
"""Format of the single-value cursor (``seen`` inside); read for migration, written by :meth:`AuditCursor.to_bytes`."""
HEAD_VERSION = 2
"""Format of the split layout's ``head`` value."""
JSONDict = dict[str, Any]


def record_time(record: Any) -> float | None:
    """The audit record's ``timestamp`` as epoch seconds, or ``None`` if absent or invalid (or the
    record is no object: the audit read passes such items on to become dead letters)."""
    if not isinstance(record, Mapping):
        return None
    value = record.get("timestamp")
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        return None


@dataclass
class Selection:
    """The outcome of filtering one page of audit records against the cursor."""

    new: list[tuple[JSONDict, float]] = field(default_factory=list)
    already_seen: int = 0
    too_old: int = 0
    no_id: list[JSONDict] = field(default_factory=list)
    """The new records without a usable id (also in :attr:`new`, keyed by :func:`audit_key`: each
    becomes a dead letter naming the problem)."""


def record_id(record: Any) -> str | None:
    """The record's id as a string, or ``None`` when absent, empty or not a string/int (or the record is no object)."""
    if not isinstance(record, Mapping):
        return None
    rid = record.get("id")
    if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
        return None
    return str(rid)


_HEX = "[0-9a-fA-F]"
_UUID_VERSION = re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-({_HEX}){_HEX}{{3}}-{_HEX}{{4}}-{_HEX}{{12}}\Z")


def time_ordered_id(rid: str) -> bool:
    """False for a UUID of a version that does not start with its time (every version but 6 and 7):
    such ids (random version 4 ones above all) sort in no time order, so a record created later may
    get an id below ``last_id`` and a read continuing after it would never list that record.
    Any other id (UUIDv7, 24-hex ObjectId, an opaque string) is taken as the listing orders it."""
    m = _UUID_VERSION.match(rid)
    return m is None or m.group(1) in "67"


NO_ID_PREFIX = "!no-id:"
"""Start of the key of a record without a usable id (``!`` sorts before every id, so such a key never
counts as lying past ``last_id``: it is forgotten with its hour like any other)."""


def audit_key(record: Any) -> str:
    """The key a record is de-duplicated by: its id (:func:`record_id`), or for a record without a
    usable one :data:`NO_ID_PREFIX` and 32 hex digits of the SHA-256 of its canonical JSON (the same
    record listed again has the same key, so its dead letter is published once)."""
    rid = record_id(record)
    if rid is not None:
        return rid
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=repr)
    return NO_ID_PREFIX + hashlib.sha256(canonical).hexdigest()[:32]


def page_is_ascending(page: Sequence[Mapping[str, Any]], after: str | None) -> bool:
    """Whether ``page`` is consistent with a listing ascending by id that continues after ``after``.

    Ids (records without one are ignored) must strictly increase, starting above ``after``, and be
    time-ordered (:func:`time_ordered_id`: a listing sorted by random UUIDs is ascending by id but
    not by creation); a page of three or more records whose timestamps strictly decrease is not
    ascending either.
    """
    ids = [rid for rid in map(record_id, page) if rid is not None]
    if not all(map(time_ordered_id, ids)):
        return False
    previous = after
    for rid in ids:
        if previous is not None and rid <= previous:
            return False
        previous = rid
    times = [t for t in map(record_time, page) if t is not None]
    return not (len(times) >= 3 and all(a > b for a, b in pairwise(times)))


def still_newest_first(page: Sequence[Any], oldest: float | None) -> tuple[bool, float | None, bool]:
    """Whether the listing is still newest first after ``page`` (timestamps never rising, within the
    page and from the previous page's ``oldest``), the oldest timestamp read so far, and whether a
    timestamp strictly fell in this page (only that proves a newest-first order: one record, or
    records sharing one timestamp, fit an ascending listing as well). Records without a usable
    timestamp are ignored."""
    previous = oldest
    fell = False
    for ts in map(record_time, page):
        if ts is None:
            continue
        if previous is not None:
            if ts > previous:
                return False, oldest, fell
            fell = fell or ts < previous
        previous = ts
    return True, previous, fell


def last_page_id(page: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the last record of ``page`` that has one."""
    for record in reversed(page):
        rid = record_id(record)
        if rid is not None:
            return rid
    return None


@dataclass
class AuditCursor:
    """The audit-log position (see the module docstring)."""

    high_water: float | None = None
    seen: dict[str, float] = field(default_factory=dict)
    floor: float | None = None
    """Lower bound of the very first poll (``None`` = everything the API still returns)."""
    last_id: str | None = None
    """Where the next incremental read continues (``starting_after``); ``None``: read the window."""
    last_full_read: float | None = None
    """Poll time (epoch seconds) of the last completed full overlap re-read."""
    full_mark: float | None = None
    """``high_water`` when the last full re-read completed (lower end of the threshold)."""
    covered_from: float | None = None
    """Ledgers (late-record sweep) hold every id published with a timestamp at or after this."""
    last_sweep: float | None = None
    """Poll time of the last completed late-record sweep."""
    max_id: str | None = None
    """The greatest id ever published (as strings compare), tracked only when ``max_id_known``."""
    max_id_known: bool = False
    """``max_id`` covers every id this cursor ever published (a cursor started by this version, or
    whose head stores it): an id greater than it was never published, however old its timestamp."""
    ledgers: HourLedgers | None = field(default=None, compare=False, repr=False)
    """Per-hour ledgers of the ids published (only when the sweep is on)."""
    receipts: HourReceipts | None = field(default=None, compare=False, repr=False)
    """Per-hour completeness ledgers (:mod:`connectors.instantly.receipts`), loaded with the state;
    the streams write them only when receipts are on."""
    continuation_refused: bool = field(default=False, compare=False)
    """The API refused ``starting_after=last_id`` (400/404): this process reads the window on every
    poll instead (not stored: a restarted poller tries the continuation once more)."""
    chunks: SeenChunks | None = field(default=None, compare=False, repr=False)
    """Where ``seen`` is stored (split layout); ``None`` for a cursor not bound to state keys."""
    _head: bytes | None = field(default=None, compare=False, repr=False)
    _legacy_key: str | None = field(default=None, compare=False, repr=False)

    # ---- window -------------------------------------------------------------------------
    def threshold(self, overlap_secs: float) -> float | None:
        """Records older than this are not published (``None``: no lower bound yet)."""
        if self.high_water is None:
            return self.floor
        mark = self.high_water if self.full_mark is None else min(self.high_water, self.full_mark)
        return mark - overlap_secs

    def query(self, overlap_secs: float) -> dict[str, str]:
        """The ``start_date`` filter of a full re-read (empty on a first full backfill)."""
        t = self.threshold(overlap_secs)
        if t is None:
            return {}
        day = datetime.fromtimestamp(max(0.0, t - DATE_SLACK_SECS), tz=UTC).date()
        return {"start_date": day.isoformat()}

    def full_read_due(self, *, now: float, overlap_secs: float, started_at: float | None = None) -> bool:
        """Whether this poll must re-read the whole window instead of continuing after ``last_id``.

        Due when no ``last_id`` is known, when no full re-read is recorded (state of an older
        version), when ``overlap_secs`` have passed since the last one, or when the last one
        happened before ``started_at`` (the poller process started since).
        """
        if self.last_id is None or self.last_full_read is None:
            return True
        if now - self.last_full_read >= overlap_secs:
            return True
        return started_at is not None and self.last_full_read < started_at

    def finish_full_read(self, *, now: float, last_id: str | None, overlap_secs: float) -> None:
        """Record a completed full re-read (after :meth:`advance`): its time, mark and end position.

        ``last_id``: the last id listed when every page was ascending, else ``None`` (the next
        poll reads the window again, so the time is not recorded either: a quiet workspace
        whose order cannot be confirmed writes no state). Ids below the new threshold are
        forgotten.
        """
        if last_id is not None:
            self.last_full_read = now
        self.full_mark = self.high_water
        self.last_id = last_id
        self._prune(overlap_secs)

    # ---- selection ------------------------------------------------------------------------
    def select(
        self, records: Iterable[JSONDict], *, overlap_secs: float, now: float, keep_old: bool = False
    ) -> Selection:
        """Split a page into new records (with their timestamps), duplicates and too-old ones.

        Records without a usable timestamp are dated ``now`` for de-duplication. ``keep_old``
        (an incremental read): nothing is too old. Otherwise (a full re-read) a record whose id is
        past ``last_id`` is not too old either, however old its timestamp (Instantly inserted it
        late): every id published past ``last_id`` is still in ``seen`` (:meth:`_prune` keeps
        them until ``last_id`` passes them), so one not there was never published. A full re-read
        cannot say that of a record at or before ``last_id`` older than the threshold: it may have
        been published before its id left ``seen``.
        Pure: the cursor changes only through :meth:`mark` and :meth:`advance`.
        """
        threshold = None if keep_old else self.threshold(overlap_secs)
        after = self.last_id
        out = Selection()
        batch: set[str] = set()
        for record in records:
            key = record_id(record)
            if key is None:  # new like any record: normalizing it makes its dead letter, once
                key = audit_key(record)
                if key not in self.seen and key not in batch:
                    out.no_id.append(record)
            if key in self.seen or key in batch:
                out.already_seen += 1
                continue
            ts = record_time(record)
            ts = now if ts is None else ts
            if threshold is not None and ts < threshold and (after is None or key <= after) and not self._new_id(key):
                out.too_old += 1
                continue
            batch.add(key)
            out.new.append((record, ts))
        return out

    def _new_id(self, key: str) -> bool:
        """Whether ``key`` is past every id ever published, so it never was (see ``max_id_known``)."""
        return self.max_id_known and self.max_id is not None and key > self.max_id

    def mark(self, published: Iterable[tuple[str, float]]) -> None:
        """Remember published ids (called with the ids of the batch being committed)."""
        items = list(published)
        for rid, ts in items:
            self.seen[rid] = ts
            if self.max_id_known and (self.max_id is None or rid > self.max_id):
                self.max_id = rid
        if self.chunks is not None:
            self.chunks.add(items)
        if self.ledgers is not None:
            self.ledgers.add(items)

    def advance(self, newest: float | None, *, now: float, overlap_secs: float) -> None:
        """Move ``high_water`` to ``min(newest, now)`` (never back) and forget ids below the new window."""
        if newest is not None:
            capped = min(newest, now)
            self.high_water = capped if self.high_water is None else max(self.high_water, capped)
        self._prune(overlap_secs)

    def forget_old(self, overlap_secs: float) -> None:
        """Forget ids below the threshold (and delete their whole hour buckets from state)."""
        self._prune(overlap_secs)

    def _prune(self, overlap_secs: float) -> None:
        """Forget ids below the threshold, except those past ``last_id``: a read continuing after
        ``last_id`` (or a full re-read keeping what lies past it) lists them again."""
        t = self.threshold(overlap_secs)
        if t is not None:
            after = self.last_id
            self.seen = {rid: ts for rid, ts in self.seen.items() if ts >= t or (after is not None and rid > after)}
            if self.chunks is not None:
                self.chunks.prune(t, keep_after=after)

    # ---- state: split layout -----------------------------------------------------------------
    def head_bytes(self) -> bytes:
        """The ``head`` value: the cursor without its ids (epoch seconds; ``*_iso`` only for humans)."""
        doc = {
            "v": HEAD_VERSION,
            "high_water": self.high_water,
            "high_water_iso": _iso(self.high_water),
            "floor": self.floor,
            "last_id": self.last_id,
            "last_full_read": self.last_full_read,
            "last_full_read_iso": _iso(self.last_full_read),
            "full_mark": self.full_mark,
        }
        if self.covered_from is not None or self.last_sweep is not None:
            doc |= {"covered_from": self.covered_from, "last_sweep": self.last_sweep}
        if self.max_id_known:
            doc["max_id"] = self.max_id
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def enable_ledgers(self, *, overlap_secs: float) -> None:
        """Keep per-hour ledgers from now on; the first time, seed them with the ids seen.

        Coverage starts at the first whole hour after the current threshold (every id published
        since is either in ``seen`` or in a ledger). Raises nothing.
        """
        if self.chunks is None:
            return
        if self.ledgers is None:
            self.ledgers = HourLedgers(self.chunks.prefix)
        if self.covered_from is None:
            t = self.threshold(overlap_secs)
            start = -1.0 if t is None else t
            self.covered_from = (int(start // BUCKET_SECS) + 1) * BUCKET_SECS if t is not None else 0.0
            self.ledgers.add(self.seen.items())

    @classmethod
    def load_state(
        cls, prefix: str, items: Mapping[str, bytes], *, legacy: bytes | None = None, floor: float | None = None
    ) -> AuditCursor:
        """Load the split layout under ``prefix`` (``…/audit_logs/``) from ``items`` (its state entries).

        Without a head, the single-value cursor ``legacy`` (format 1, stored at ``prefix``
        without the slash) is migrated: every id goes to a chunk and the next
        :meth:`state_writes` writes them all, the head, and deletes the old key.
        """
        chunks = SeenChunks(prefix)
        legacy_key = prefix.rstrip("/")
        head = items.get(f"{prefix}head")
        doc = _loads(head)
        if doc is None or doc.get("v") != HEAD_VERSION:
            cur = cls.from_bytes(legacy, floor=floor)
            cur.chunks = chunks
            cur.seen = {**chunks.load(items), **cur.seen}  # chunks without a head: kept, rewritten
            cur.max_id_known = doc is None and legacy is None and not cur.seen  # new: it sees every publish
            chunks.add(cur.seen.items())
            chunks.mark_all_dirty()
            cur._legacy_key = legacy_key if legacy is not None else None
            cur.receipts = HourReceipts(prefix)
            cur.receipts.load(items)
            return cur
        fl = _num(doc.get("floor"))
        last_id = doc.get("last_id")
        cur = cls(
            high_water=_num(doc.get("high_water")),
            seen=chunks.load(items),
            floor=fl if fl is not None else floor,
            last_id=last_id if isinstance(last_id, str) and last_id else None,
            last_full_read=_num(doc.get("last_full_read")),
            full_mark=_num(doc.get("full_mark")),
            covered_from=_num(doc.get("covered_from")),
            last_sweep=_num(doc.get("last_sweep")),
            max_id=doc["max_id"] if isinstance(doc.get("max_id"), str) else None,
            max_id_known="max_id" in doc,
            chunks=chunks,
            _head=head,
            _legacy_key=legacy_key if legacy is not None else None,
        )
        if cur.covered_from is not None:
            cur.ledgers = HourLedgers(prefix)
            cur.ledgers.load(dict(items))
        cur.receipts = HourReceipts(prefix)
        cur.receipts.load(items)
        return cur

    def state_writes(self) -> dict[str, bytes | None]:
        """What changed since the last call, as state writes: the head, chunks, deletions.

        Empty when nothing changed. Raises nothing; a cursor without ``chunks`` returns ``{}``.
        """
        if self.chunks is None:
            return {}
        out = self.chunks.writes()
        if self.ledgers is not None:
            out |= self.ledgers.writes()
        head = self.head_bytes()
        if head != self._head:
            out[f"{self.chunks.prefix}head"] = head
            self._head = head
        if self._legacy_key is not None:
            out[self._legacy_key] = None
            self._legacy_key = None
        return out

    # ---- state: single value (format 1) --------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise for the state store (ids and epoch seconds; ``*_iso`` only for humans)."""
        doc = {
            "v": CURSOR_VERSION,
            "high_water": self.high_water,
            "high_water_iso": _iso(self.high_water),
            "floor": self.floor,
            "seen": self.seen,
            "last_id": self.last_id,
            "last_full_read": self.last_full_read,
            "last_full_read_iso": _iso(self.last_full_read),
            "full_mark": self.full_mark,
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes | None, *, floor: float | None = None) -> AuditCursor:
        """Load a cursor; an absent or unreadable value starts a new one at ``floor``.

        State without ``last_id`` / ``last_full_read`` (older versions) loads with both ``None``:
        the next poll is a full re-read.
        """
        if not data:
            return cls(floor=floor)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return cls(floor=floor)
        if not isinstance(doc, dict) or doc.get("v") != CURSOR_VERSION:
            return cls(floor=floor)
        fl = _num(doc.get("floor"))
        seen = doc.get("seen")
        seen = seen if isinstance(seen, dict) else {}
        last_id = doc.get("last_id")
        return cls(
            high_water=_num(doc.get("high_water")),
            seen={str(k): float(v) for k, v in seen.items() if isinstance(v, int | float)},
            floor=fl if fl is not None else floor,
            last_id=last_id if isinstance(last_id, str) and last_id else None,
            last_full_read=_num(doc.get("last_full_read")),
            full_mark=_num(doc.get("full_mark")),
        )


def _loads(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _iso(value: float | None) -> str | None:
    return format_time(value) if value is not None else None
