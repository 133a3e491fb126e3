"""Per-hour ledgers of the audit ids published: a fixed-size set sketch that can name what is missing.

The late-record sweep (:mod:`connectors.instantly.sweep`) re-reads days of audit log, long after
the ids left the cursor's overlap window. Keeping every id for days would be large; instead each
hour bucket (by record timestamp) keeps an **invertible Bloom lookup table** of the 64-bit hashes
of the ids published in it: :data:`CELLS` cells of ``(count, xor of id hashes, xor of check
hashes)``, each id in :data:`K` cells — about 4 KB an hour however busy. Subtracting the ledger
from the same sketch of a fresh listing of that hour and "peeling" it yields the hashes listed
but never published (and those published but no longer listed) — exactly, as long as an hour
differs by at most ~20 ids (at :data:`CELLS` = 90, 23 ids apart fail to decode 0.5 % of the
time); beyond that :meth:`Sketch.decode` says it cannot tell and
the sweep reports the hour instead of guessing.

Value of a ledger key: ``{"v": 1, "n": count, "c": [[count, key, check], ...]}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import orjson

from connectors.instantly.cursor_state import BUCKET_SECS, bucket_label, parse_bucket

CELLS = 90
K = 3
LEDGER_VERSION = 1
_MASK = (1 << 64) - 1


def id_hash(record_id: str) -> int:
    """The 64-bit hash of an audit id (non-zero)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big") or 1


def _check(h: int) -> int:
    return int.from_bytes(hashlib.blake2b(h.to_bytes(8, "big"), digest_size=8, person=b"chk").digest(), "big")


def _cells(h: int) -> list[int]:
    """K distinct cells, one in each of K equal ranges of the table."""
    part = CELLS // K
    return [j * part + ((h >> (16 * j)) & 0xFFFF) % part for j in range(K)]


class Sketch:
    """The invertible Bloom lookup table of one hour (see the module docstring)."""

    def __init__(self) -> None:
        self.n = 0
        self.count = [0] * CELLS
        self.key = [0] * CELLS
        self.chk = [0] * CELLS

    def add(self, h: int, sign: int = 1) -> None:
        """Insert (``sign`` = 1) or remove (-1) the id hash ``h``."""
        self.n += sign
        c = _check(h)
        for i in _cells(h):
            self.count[i] += sign
            self.key[i] ^= h
            self.chk[i] ^= c

    def add_ids(self, ids: Iterable[str]) -> None:
        """Insert the hashes of ``ids``."""
        for rid in ids:
            self.add(id_hash(rid))

    def minus(self, other: Sketch) -> Sketch:
        """This sketch less ``other`` (cell-wise)."""
        out = Sketch()
        out.n = self.n - other.n
        out.count = [a - b for a, b in zip(self.count, other.count, strict=True)]
        out.key = [a ^ b for a, b in zip(self.key, other.key, strict=True)]
        out.chk = [a ^ b for a, b in zip(self.chk, other.chk, strict=True)]
        return out

    def decode(self) -> tuple[set[int], set[int]] | None:
        """Peel a difference: (hashes only in the minuend, hashes only in the subtrahend), or
        ``None`` when the difference is too large to tell apart. Consumes the sketch."""
        plus: set[int] = set()
        minus: set[int] = set()
        progress = True
        while progress:
            progress = False
            for i in range(CELLS):
                if self.count[i] in (1, -1) and self.key[i] and _check(self.key[i]) == self.chk[i]:
                    h, sign = self.key[i], self.count[i]
                    (plus if sign == 1 else minus).add(h)
                    self.add(h, -sign)
                    progress = True
        if any(self.count) or any(self.key) or any(self.chk):
            return None
        return plus, minus

    def to_bytes(self) -> bytes:
        """The state value of the ledger."""
        cells = [[c, k, x] for c, k, x in zip(self.count, self.key, self.chk, strict=True)]
        return orjson.dumps({"v": LEDGER_VERSION, "n": self.n, "c": cells})

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Sketch | None:
        """Inverse of :meth:`to_bytes`; ``None`` when absent or unreadable."""
        if not data:
            return None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        cells = doc.get("c") if isinstance(doc, dict) and doc.get("v") == LEDGER_VERSION else None
        if not isinstance(cells, list) or len(cells) != CELLS:
            return None
        out = cls()
        try:
            out.n = int(doc["n"])
            out.count = [int(c[0]) for c in cells]
            out.key = [int(c[1]) & _MASK for c in cells]
            out.chk = [int(c[2]) & _MASK for c in cells]
        except (TypeError, ValueError, IndexError, KeyError):
            return None
        return out


class HourLedgers:
    """The ledgers of one audit cursor by hour bucket, with pending state writes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        """``cursor/{source}/audit_logs/`` (ledgers live under ``ledger/``)."""
        self.hours: dict[int, Sketch] = {}
        self._dirty: set[int] = set()
        self._deleted: set[int] = set()

    def key(self, bucket: int) -> str:
        """State key of an hour's ledger."""
        return f"{self.prefix}ledger/{bucket_label(bucket)}"

    def load(self, items: dict[str, bytes]) -> None:
        """Adopt the stored ledgers among ``items`` (an unreadable one starts empty and is rewritten)."""
        start = f"{self.prefix}ledger/"
        for key, raw in items.items():
            if key.startswith(start):
                bucket = parse_bucket(key[len(start) :])
                if bucket is not None:
                    self.hours[bucket] = Sketch.from_bytes(raw) or Sketch()

    def add(self, published: Iterable[tuple[str, float]]) -> None:
        """Record published ids in their hours' ledgers."""
        for rid, ts in published:
            bucket = int(ts // BUCKET_SECS)
            self.hours.setdefault(bucket, Sketch()).add(id_hash(rid))
            self._dirty.add(bucket)

    def prune(self, before: float) -> None:
        """Forget the ledgers of hours that end at or before ``before``."""
        for bucket in [b for b in self.hours if (b + 1) * BUCKET_SECS <= before]:
            del self.hours[bucket]
            self._dirty.discard(bucket)
            self._deleted.add(bucket)

    def writes(self) -> dict[str, bytes | None]:
        """Pending state writes (changed ledgers, ``None`` for forgotten ones), handed out once."""
        out: dict[str, bytes | None] = {self.key(b): None for b in sorted(self._deleted)}
        out.update((self.key(b), self.hours[b].to_bytes()) for b in sorted(self._dirty))
        self._dirty.clear()
        self._deleted.clear()
        return out
