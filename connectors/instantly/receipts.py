"""The audit stream's per-hour completeness ledgers, kept in state and published as receipts.

For every UTC hour (by the audit record's own ``timestamp``) the poller counts the distinct ids it
listed and accounted for (``seen``), how many it published, dead-lettered, or listed too late to
publish (``late``: ledgers written before 2026-12-07, when an incremental read counted a new id
older than the cursor's threshold here; it now publishes it), and the
XOR of the ids' 64-bit hashes (:func:`connectors.instantly.ledger.id_hash`). Each hour's ledger is
the state key ``cursor/{source}/audit_logs/receipt/{YYYYMMDDTHH}Z`` (a few hundred bytes; at most
:data:`MAX_LATE_IDS` late ids are remembered), written in the transaction of the page that changed
it, beside the Receipt v1 published to ``instantly.receipts.v1`` (:mod:`schemas.receipt`).

* **Closing.** An hour closes when the cursor's threshold (``min(high_water, full_mark) -
  audit_overlap_secs``) passes its end: ``first_closed_at`` is set and ``revision`` becomes 1. A
  later change of a closed hour's counts or hash (a late record, the sweep publishing it) writes
  ``revision`` + 1 — what ``instantly-audit gaps`` lists. An hour first touched after the threshold
  had passed it (a late record in an hour that had none) counts as closed empty, so its first
  record is already a change.
* **Interruptions.** ``cursor/{source}/audit_logs/receipts`` keeps the time of the last poll that
  read the audit log to the end (written at most every quarter of the bound; kept exactly in
  memory). When a poll finds the gap since then longer than the bound (``2 * poll_interval_secs +
  audit_overlap_secs``), every hour from the last poll's to the current one is marked
  ``interrupted``.
* Hour ledgers are deleted from state :attr:`ReceiptSettings.retention_secs` after the threshold
  passed them (their last receipt stays on the topic).

Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from connectors.instantly.cursor_state import BUCKET_SECS, bucket_label, parse_bucket
from connectors.instantly.ledger import id_hash
from schemas.receipt import CHANGED_AFTER_CLOSE, INTERRUPTED

RECEIPT_VERSION = 1
MAX_LATE_IDS = 200
"""Late ids remembered per hour (so the sweep publishing one is not counted as seen twice)."""
Fingerprint = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class ReceiptSettings:
    """When a gap between polls is an interruption, and how long hour ledgers stay in state."""

    interruption_secs: float
    retention_secs: float = 8 * 86_400.0


@dataclass
class HourLedger:
    """One hour's counts (see the module docstring)."""

    seen: int = 0
    published: int = 0
    dead_lettered: int = 0
    late: int = 0
    id_hash: int = 0
    closed_at: float | None = None
    revision: int = 0
    interrupted: bool = False
    late_ids: set[str] = field(default_factory=set)

    def fingerprint(self) -> Fingerprint:
        """What a revision compares: the counts and the hash."""
        return (self.seen, self.published, self.dead_lettered, self.late, self.id_hash)

    def to_bytes(self) -> bytes:
        """The state value."""
        doc = {
            "v": RECEIPT_VERSION, "seen": self.seen, "published": self.published, "dead": self.dead_lettered,
            "late": self.late, "hash": f"{self.id_hash:016x}", "closed_at": self.closed_at,
            "revision": self.revision, "interrupted": self.interrupted, "late_ids": sorted(self.late_ids),
        }  # fmt: skip
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, raw: bytes) -> HourLedger | None:
        """Inverse of :meth:`to_bytes`; ``None`` when unreadable."""
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or doc.get("v") != RECEIPT_VERSION:
                return None
            closed = doc.get("closed_at")
            return cls(
                seen=int(doc["seen"]),
                published=int(doc["published"]),
                dead_lettered=int(doc["dead"]),
                late=int(doc["late"]),
                id_hash=int(doc["hash"], 16),
                closed_at=float(closed) if isinstance(closed, int | float) else None,
                revision=int(doc["revision"]),
                interrupted=bool(doc["interrupted"]),
                late_ids={str(i) for i in doc.get("late_ids") or ()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Flushed:
    """What one transaction carries: state writes, the hours whose receipt to publish, gaps found."""

    state: dict[str, bytes | None]
    hours: list[tuple[int, HourLedger]]
    gaps: Counter[str]


class HourReceipts:
    """The per-hour ledgers of one audit cursor, with pending writes (see the module docstring)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        """``cursor/{source}/audit_logs/``."""
        self.hours: dict[int, HourLedger] = {}
        self.last_poll: float | None = None
        self.closed_before: float | None = None
        """The threshold last passed to :meth:`close`: hours ending at or before it are closed."""
        self._persisted_poll: float | None = None
        self._written: dict[int, Fingerprint] = {}
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()
        self._meta_dirty = False
        self._gaps: Counter[str] = Counter()

    def key(self, bucket: int) -> str:
        """State key of an hour's ledger."""
        return f"{self.prefix}receipt/{bucket_label(bucket)}"

    @property
    def meta_key(self) -> str:
        """State key of the last poll time."""
        return f"{self.prefix}receipts"

    def load(self, items: Mapping[str, bytes]) -> None:
        """Adopt the stored ledgers and last poll time among ``items`` (unreadable ones start empty)."""
        start = f"{self.prefix}receipt/"
        for key, raw in items.items():
            if key.startswith(start):
                bucket = parse_bucket(key[len(start) :])
                if bucket is not None:
                    ledger = HourLedger.from_bytes(raw) or HourLedger()
                    self.hours[bucket] = ledger
                    self._written[bucket] = ledger.fingerprint()
        meta = items.get(self.meta_key)
        try:
            doc = orjson.loads(meta) if meta else None
        except orjson.JSONDecodeError:
            doc = None
        last = doc.get("last_poll") if isinstance(doc, dict) else None
        if isinstance(last, int | float) and not isinstance(last, bool):
            self.last_poll = self._persisted_poll = float(last)

    # ---- changes ------------------------------------------------------------------------------
    def _hour(self, bucket: int, now: float) -> HourLedger:
        ledger = self.hours.get(bucket)
        if ledger is None:
            ledger = self.hours[bucket] = HourLedger()
            self._written[bucket] = ledger.fingerprint()
            if self.closed_before is not None and (bucket + 1) * BUCKET_SECS <= self.closed_before:
                ledger.closed_at, ledger.revision = now, 1  # closed while empty
        self._dirty.add(bucket)
        return ledger

    def record(self, items: Iterable[tuple[str, float, bool]], *, now: float) -> None:
        """Count records just published (``dead``: to the dead letters instead) in their hours."""
        for rid, ts, dead in items:
            ledger = self._hour(int(ts // BUCKET_SECS), now)
            if rid in ledger.late_ids:  # counted late by a version before 2026-12-07, published now
                ledger.late_ids.discard(rid)
                ledger.late -= 1
            else:
                ledger.seen += 1
                ledger.id_hash ^= id_hash(rid)
            if dead:
                ledger.dead_lettered += 1
            else:
                ledger.published += 1

    def close(self, threshold: float | None, *, now: float, retention_secs: float) -> None:
        """Close the hours that end at or before ``threshold``; forget those ``retention_secs`` older."""
        if threshold is None:
            return
        self.closed_before = threshold
        for bucket, ledger in list(self.hours.items()):
            end = (bucket + 1) * BUCKET_SECS
            if end <= threshold - retention_secs:
                del self.hours[bucket]
                self._written.pop(bucket, None)
                self._dirty.discard(bucket)
                self._deleted.add(bucket)
            elif end <= threshold and ledger.closed_at is None:
                ledger.closed_at, ledger.revision = now, 1
                self._written[bucket] = ledger.fingerprint()
                self._dirty.add(bucket)

    def check_interruption(self, *, now: float, bound: float) -> list[int]:
        """Mark the hours since the last poll ``interrupted`` when the gap exceeds ``bound``; return them."""
        if self.last_poll is None or now - self.last_poll <= bound:
            return []
        hours = list(range(int(self.last_poll // BUCKET_SECS), int(now // BUCKET_SECS) + 1))
        for bucket in hours:
            ledger = self.hours.get(bucket)
            if ledger is None or not ledger.interrupted:
                self._hour(bucket, now).interrupted = True
                self._gaps[INTERRUPTED] += 1
        return hours

    def polled(self, now: float, *, persist_every: float) -> None:
        """The audit log was read to the end at ``now`` (persisted at most every ``persist_every`` s)."""
        self.last_poll = now
        if self._persisted_poll is None or now - self._persisted_poll >= persist_every:
            self._meta_dirty = True

    # ---- writes -------------------------------------------------------------------------------
    def flush(self) -> Flushed:
        """The pending state writes and receipts (a closed hour whose counts changed gets a new
        revision), handed out once."""
        state: dict[str, bytes | None] = {self.key(b): None for b in sorted(self._deleted)}
        hours: list[tuple[int, HourLedger]] = []
        gaps, self._gaps = self._gaps, Counter()
        for bucket in sorted(self._dirty):
            ledger = self.hours[bucket]
            before = self._written.get(bucket)
            if ledger.closed_at is not None and before is not None and before != ledger.fingerprint():
                ledger.revision += 1
                if ledger.revision == 2:
                    gaps[CHANGED_AFTER_CLOSE] += 1
            self._written[bucket] = ledger.fingerprint()
            state[self.key(bucket)] = ledger.to_bytes()
            hours.append((bucket, ledger))
        if self._meta_dirty and self.last_poll is not None:
            state[self.meta_key] = orjson.dumps({"v": RECEIPT_VERSION, "last_poll": self.last_poll})
            self._persisted_poll = self.last_poll
        self._meta_dirty = False
        self._dirty.clear()
        self._deleted.clear()
        return Flushed(state, hours, gaps)
