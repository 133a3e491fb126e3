"""The audit cursor's ids-seen set as bounded state chunks, one set of chunks per hour bucket.

The ids the audit cursor has published within its overlap window used to be one state value,
rewritten whole on every page: its size, and the bytes each page's transaction wrote, grew with
the window (past ~75,000 ids it passed Kafka's 4 MiB state limit and the stream stopped). Here
they are kept in chunks:

* an id goes to the *hour bucket* of its record timestamp (``floor(ts / 3600)``);
* a bucket holds chunks of at most :data:`CHUNK_IDS` ids; a page's new ids are appended to the
  bucket's newest chunk when they all fit, else they start new chunks;
* a chunk is the state key ``{prefix}seen/{YYYYMMDDTHH}Z/{n:05d}`` with value
  ``{"v": 1, "ids": {id: ts}}`` (≤ ~64 KiB at :data:`CHUNK_IDS` = 1,000);
* a page's transaction writes only the chunks that page changed (the open chunk of each bucket it
  touched, at most :data:`CHUNK_IDS` ids each), so its cost follows the page, not the window;
* a whole bucket is deleted (``None``: a tombstone on Kafka's compacted state topic, a row
  deleted on the embedded bus) once its last second is older than the cursor's threshold.

Pure bookkeeping: no I/O. :meth:`SeenChunks.writes` hands out the pending writes once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import orjson

BUCKET_SECS = 3600
CHUNK_IDS = 1000
"""Ids per chunk at most (a full audit page of 1,000 new ids fills exactly one chunk)."""
CHUNK_VERSION = 1
_BUCKET_FORMAT = "%Y%m%dT%HZ"

ChunkId = tuple[int, int]
"""(hour bucket = epoch hours, chunk number within the bucket)."""


def bucket_label(bucket: int) -> str:
    """``20261207T01Z`` for the hour bucket ``bucket`` (epoch seconds / 3600)."""
    return datetime.fromtimestamp(bucket * BUCKET_SECS, tz=UTC).strftime(_BUCKET_FORMAT)


def parse_bucket(label: str) -> int | None:
    """Inverse of :func:`bucket_label`; ``None`` for another shape."""
    try:
        when = datetime.strptime(label, _BUCKET_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(when.timestamp()) // BUCKET_SECS


class SeenChunks:
    """The chunked ids-seen set of one audit cursor (see the module docstring)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        """State key prefix, ending in ``/`` (e.g. ``cursor/acme/audit_logs/``)."""
        self.chunks: dict[ChunkId, dict[str, float]] = {}
        self._dirty: set[ChunkId] = set()
        self._deleted: set[str] = set()

    # ---- keys ---------------------------------------------------------------------------------
    def key(self, chunk: ChunkId) -> str:
        """State key of a chunk."""
        return f"{self.prefix}seen/{bucket_label(chunk[0])}/{chunk[1]:05d}"

    def parse_key(self, key: str) -> ChunkId | None:
        """Inverse of :meth:`key`; ``None`` for a key of another shape."""
        if not key.startswith(f"{self.prefix}seen/"):
            return None
        parts = key[len(self.prefix) + len("seen/") :].split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        bucket = parse_bucket(parts[0])
        return None if bucket is None else (bucket, int(parts[1]))

    # ---- load ---------------------------------------------------------------------------------
    def load(self, items: Mapping[str, bytes]) -> dict[str, float]:
        """Adopt stored chunks (other keys are ignored); return every id they hold with its timestamp.

        An unreadable chunk is deleted at the next write (its ids are forgotten, as a corrupt
        single-value cursor was).
        """
        seen: dict[str, float] = {}
        for key, raw in items.items():
            chunk = self.parse_key(key)
            if chunk is None:
                continue
            ids = _decode(raw)
            if ids is None:
                self._deleted.add(key)
                continue
            self.chunks[chunk] = ids
            seen.update(ids)
        return seen

    # ---- changes ------------------------------------------------------------------------------
    def add(self, published: Iterable[tuple[str, float]]) -> None:
        """Record published ids in their buckets: appended to the newest chunk when they all fit,
        else in new chunks (so a page's write holds that page's ids, not a half-full older chunk)."""
        by_bucket: dict[int, dict[str, float]] = {}
        for rid, ts in published:
            by_bucket.setdefault(int(ts // BUCKET_SECS), {})[rid] = ts
        for bucket, items in by_bucket.items():
            numbers = [n for b, n in self.chunks if b == bucket]
            n = max(numbers) if numbers else 0
            ids = self.chunks.setdefault((bucket, n), {})
            fresh = {rid: ts for rid, ts in items.items() if rid not in ids}
            if ids and len(ids) + len(fresh) > CHUNK_IDS:
                n += 1
                ids = self.chunks.setdefault((bucket, n), {})
            for rid, ts in items.items():
                if rid not in ids and len(ids) >= CHUNK_IDS:
                    n += 1
                    ids = self.chunks.setdefault((bucket, n), {})
                ids[rid] = ts
                self._dirty.add((bucket, n))

    def prune(self, threshold: float | None, *, keep_after: str | None = None) -> None:
        """Delete every chunk of the buckets that end at or before ``threshold``, except a chunk
        holding an id greater than ``keep_after`` (the cursor's ``last_id``: still needed)."""
        if threshold is None:
            return
        old = [c for c in self.chunks if (c[0] + 1) * BUCKET_SECS <= threshold]
        if keep_after is not None:
            old = [c for c in old if all(rid <= keep_after for rid in self.chunks[c])]
        for chunk in old:
            del self.chunks[chunk]
            self._dirty.discard(chunk)
            self._deleted.add(self.key(chunk))

    def writes(self) -> dict[str, bytes | None]:
        """The state writes pending since the last call (changed chunks, ``None`` for deleted ones)."""
        out: dict[str, bytes | None] = dict.fromkeys(sorted(self._deleted))
        for chunk in sorted(self._dirty):
            out[self.key(chunk)] = encode_chunk(self.chunks[chunk])
        self._dirty.clear()
        self._deleted.clear()
        return out

    def mark_all_dirty(self) -> None:
        """Write every chunk at the next :meth:`writes` (migration from the single-value cursor)."""
        self._dirty.update(self.chunks)


def encode_chunk(ids: Mapping[str, float]) -> bytes:
    """The state value of a chunk."""
    return orjson.dumps({"v": CHUNK_VERSION, "ids": ids}, option=orjson.OPT_SORT_KEYS)


def _decode(raw: bytes) -> dict[str, float] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != CHUNK_VERSION or not isinstance(doc.get("ids"), dict):
        return None
    return {str(k): float(v) for k, v in doc["ids"].items() if isinstance(v, int | float) and not isinstance(v, bool)}
