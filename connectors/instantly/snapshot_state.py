"""A stream's last published snapshot as bounded state shards: ``meta`` plus one key per shard.

A snapshot (id → redacted record) used to be one state value, rewritten whole whenever anything
changed; a large block list made it grow without bound (Kafka refuses state values over 4 MiB).
Now it is split by a stable hash of the record id (CRC-32 of the id, modulo the shard count):

* ``snapshot/{source_id}/{stream}/meta`` — ``{"v": 2, "shards": N, "records": count}``; its
  presence says "a snapshot exists" (so an empty listing is not mistaken for a first poll);
* ``snapshot/{source_id}/{stream}/shard/{i:04d}`` — the records of shard ``i`` (only shards
  holding records are stored), in the format of :func:`~connectors.instantly.snapshots.encode_snapshot`.

``N`` starts at 1 and doubles while a shard would exceed :data:`SHARD_TARGET_BYTES`; it never
shrinks (a shrinking list would otherwise rewrite every shard). A change writes only the shards
whose bytes changed, and deletes (``None``) the shards that became empty.

**Redaction.** Records are stored after the publish gate's passes; a stored snapshot is passed
through the gate again when loaded (:func:`~connectors.instantly.snapshots.gate_snapshot`), so
shards written by older versions (name pass only) compare equal to the new listing and are
rewritten once, without ``*.updated`` events.

**Migration.** The single value of format 1 (key ``snapshot/{source_id}/{stream}``) is read when
no ``meta`` exists; the first write stores the shards and deletes the old key.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from connectors.instantly.snapshots import Snapshot, decode_snapshot, encode_snapshot, gate_snapshot

META_VERSION = 2
SHARD_TARGET_BYTES = 256 * 1024
MAX_SHARDS = 4096


def shard_of(record_id: str, shards: int) -> int:
    """The shard of a record id (stable across processes and versions)."""
    return zlib.crc32(record_id.encode()) % shards if shards > 1 else 0


@dataclass
class StoredSnapshot:
    """What the state store holds for one stream: the snapshot (``None``: none yet) and its raw keys."""

    prefix: str
    """``snapshot/{source_id}/{stream}/``"""
    snapshot: Snapshot | None
    shards: int = 1
    raw: dict[str, bytes] = field(default_factory=dict)
    legacy: bool = False
    """The single-value key exists and is deleted by the next write."""

    @classmethod
    def load(cls, prefix: str, items: Mapping[str, bytes], legacy: bytes | None) -> StoredSnapshot:
        """Read the sharded layout from ``items`` (the state entries under ``prefix``), else migrate ``legacy``."""
        raw = {k: v for k, v in items.items() if k.startswith(prefix)}
        meta = _meta(raw.get(f"{prefix}meta"))
        if meta is None:
            old = decode_snapshot(legacy)
            return cls(prefix, None if old is None else gate_snapshot(old), 1, raw, legacy is not None)
        snap: Snapshot = {}
        for key, value in raw.items():
            if key.startswith(f"{prefix}shard/"):
                snap.update(decode_snapshot(value) or {})
        return cls(prefix, gate_snapshot(snap), meta, raw, legacy is not None)

    def writes(self, current: Snapshot) -> dict[str, bytes | None]:
        """The state writes that store ``current`` in place of what is stored (``{}`` when unchanged)."""
        shards = self.shards
        while True:
            parts: dict[int, Snapshot] = {}
            for rid, record in current.items():
                parts.setdefault(shard_of(rid, shards), {})[rid] = record
            encoded = {f"{self.prefix}shard/{i:04d}": encode_snapshot(p) for i, p in parts.items()}
            if shards >= MAX_SHARDS or all(len(v) <= SHARD_TARGET_BYTES for v in encoded.values()):
                break
            shards *= 2
        wanted: dict[str, bytes] = {
            f"{self.prefix}meta": orjson.dumps({"v": META_VERSION, "shards": shards, "records": len(current)}),
            **encoded,
        }
        out: dict[str, bytes | None] = {k: v for k, v in wanted.items() if self.raw.get(k) != v}
        out.update((k, None) for k in self.raw if k not in wanted)
        if self.legacy:
            out[self.prefix.rstrip("/")] = None
        return out


def _meta(raw: bytes | None) -> int | None:
    """The shard count of a ``meta`` value, or ``None`` when absent or unreadable."""
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != META_VERSION:
        return None
    n = doc.get("shards")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_SHARDS else None
