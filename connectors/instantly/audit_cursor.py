"""The audit-log cursor: a high-water mark plus the ids seen within the overlap window.

The audit log is incremental. Its order and the meaning of ``start_date`` (date only;
timezone and inclusivity undocumented) are unknown, so the cursor keeps

* ``high_water`` — the newest record timestamp published (capped at the poll time, so a
  future-dated record cannot push the window ahead of real time), and
* ``seen`` — the ids published whose timestamp is within the overlap window.

Each poll lists from ``start_date = date(high_water - overlap - 1 day)`` (the extra day absorbs
the coarse, timezone-unknown date filter) and keeps a record when its id is not in ``seen``
and its timestamp is at or after ``high_water - overlap``. A record that shows up late with
an older timestamp inside the overlap is therefore published exactly once; one later than
the overlap is counted as ``too_old`` and not published (it may have been published before
its id left ``seen``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.clock import format_time, parse_time

DATE_SLACK_SECS = 86_400.0
CURSOR_VERSION = 1
JSONDict = dict[str, Any]


def record_time(record: Mapping[str, Any]) -> float | None:
    """The audit record's ``timestamp`` as epoch seconds, or ``None`` if absent or invalid."""
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


@dataclass
class AuditCursor:
    """The audit-log position (see the module docstring)."""

    high_water: float | None = None
    seen: dict[str, float] = field(default_factory=dict)
    floor: float | None = None
    """Lower bound of the very first poll (``None`` = everything the API still returns)."""

    # ---- window -------------------------------------------------------------------------
    def threshold(self, overlap_secs: float) -> float | None:
        """Records older than this are not published (``None``: no lower bound yet)."""
        if self.high_water is None:
            return self.floor
        return self.high_water - overlap_secs

    def query(self, overlap_secs: float) -> dict[str, str]:
        """The ``start_date`` filter for this poll (empty on a first full backfill)."""
        t = self.threshold(overlap_secs)
        if t is None:
            return {}
        day = datetime.fromtimestamp(max(0.0, t - DATE_SLACK_SECS), tz=UTC).date()
        return {"start_date": day.isoformat()}

    # ---- selection ------------------------------------------------------------------------
    def select(self, records: Iterable[JSONDict], *, overlap_secs: float, now: float) -> Selection:
        """Split a page into new records (with their timestamps), duplicates and too-old ones.

        Records without a usable timestamp are dated ``now`` for de-duplication.
        Pure: the cursor changes only through :meth:`mark` and :meth:`advance`.
        """
        threshold = self.threshold(overlap_secs)
        out = Selection()
        batch: set[str] = set()
        for record in records:
            rid = record.get("id")
            if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
                out.no_id.append(record)
                continue
            key = str(rid)
            if key in self.seen or key in batch:
                out.already_seen += 1
                continue
            ts = record_time(record)
            ts = now if ts is None else ts
            if threshold is not None and ts < threshold:
                out.too_old += 1
                continue
            batch.add(key)
            out.new.append((record, ts))
        return out

    def mark(self, published: Iterable[tuple[str, float]]) -> None:
        """Remember published ids (called with the ids of the batch being committed)."""
        for rid, ts in published:
            self.seen[rid] = ts

    def advance(self, newest: float | None, *, now: float, overlap_secs: float) -> None:
        """Move ``high_water`` to ``min(newest, now)`` (never back) and forget ids below the new window."""
        if newest is not None:
            capped = min(newest, now)
            self.high_water = capped if self.high_water is None else max(self.high_water, capped)
        t = self.threshold(overlap_secs)
        if t is not None:
            self.seen = {rid: ts for rid, ts in self.seen.items() if ts >= t}

    # ---- state ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise for the state store (ids and epoch seconds; ``*_iso`` only for humans)."""
        doc = {
            "v": CURSOR_VERSION,
            "high_water": self.high_water,
            "high_water_iso": format_time(self.high_water) if self.high_water is not None else None,
            "floor": self.floor,
            "seen": self.seen,
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes | None, *, floor: float | None = None) -> AuditCursor:
        """Load a cursor; an absent or unreadable value starts a new one at ``floor``."""
        if not data:
            return cls(floor=floor)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return cls(floor=floor)
        if not isinstance(doc, dict) or doc.get("v") != CURSOR_VERSION:
            return cls(floor=floor)
        hw = doc.get("high_water")
        fl = doc.get("floor")
        seen = doc.get("seen")
        seen = seen if isinstance(seen, dict) else {}
        return cls(
            high_water=float(hw) if isinstance(hw, int | float) else None,
            seen={str(k): float(v) for k, v in seen.items() if isinstance(v, int | float)},
            floor=float(fl) if isinstance(fl, int | float) else floor,
        )
