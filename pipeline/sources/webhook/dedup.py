"""The duplicate-delivery window of one source, kept in bus state (``webhook/seen/<source>/<slot>``),
and the key it holds: the delivery's body digest."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import orjson

SEEN_PREFIX = "webhook/seen/"
SEEN_SLOTS = 2048
"""Hash shards of a source's dedup window; a commit rewrites only the shards it touches."""
_SEEN_VERSION = 1
_ENTRY = struct.Struct(">16sI")


def body_digest(body: bytes) -> str:
    """SHA-256 of the delivery's canonical JSON (keys sorted, no whitespace), or of the raw bytes
    when it does not parse (the normalizer refuses it then).

    The duplicate window and the event id both come from it, so a retry whose JSON was serialized
    again — other key order or spacing, the same content — is the same delivery, not a second event.
    """
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError, TypeError):
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


# --------------------------------------------------------------------------------- dedup window
class SeenWindow:
    """The recently published body hashes of one source (bounded by age and count).

    Stored as :data:`SEEN_SLOTS` state keys ``webhook/seen/<source>/<slot>``; each holds up to
    ``ceil(max_entries / SEEN_SLOTS)`` entries of (16-byte hash prefix, epoch seconds), oldest first.
    """

    def __init__(self, source: str, window_secs: float, max_entries: int):
        self.source = source
        self.window_secs = window_secs
        self.slot_cap = max(1, -(-max_entries // SEEN_SLOTS))
        self.slots: dict[int, dict[bytes, int]] = {}

    @property
    def prefix(self) -> str:
        """The state key prefix of this source."""
        return f"{SEEN_PREFIX}{self.source}/"

    def key(self, slot: int) -> str:
        """The state key of ``slot``."""
        return f"{self.prefix}{slot:03x}"

    @staticmethod
    def slot_of(h: bytes) -> int:
        """The shard a hash belongs to."""
        return int.from_bytes(h[:4], "big") % SEEN_SLOTS

    def __len__(self) -> int:
        return sum(len(s) for s in self.slots.values())

    def contains(self, h: bytes, now: int) -> bool:
        """Whether ``h`` was published within the window."""
        ts = self.slots.get(self.slot_of(h), {}).get(h)
        return ts is not None and now - ts < self.window_secs

    def staged(
        self, slot: int, added: Iterable[bytes], now: int, base: Mapping[bytes, int] | None = None
    ) -> dict[bytes, int]:
        """The new content of ``slot`` with ``added`` (evicting expired, then the oldest over the cap)."""
        d = {
            h: ts
            for h, ts in (base if base is not None else self.slots.get(slot, {})).items()
            if now - ts < self.window_secs
        }
        for h in added:
            d.pop(h, None)
            d[h] = now
        while len(d) > self.slot_cap:
            d.pop(next(iter(d)))
        return d

    @staticmethod
    def encode(content: Mapping[bytes, int]) -> bytes:
        """The state value of a slot."""
        return bytes([_SEEN_VERSION]) + b"".join(_ENTRY.pack(h, ts & 0xFFFFFFFF) for h, ts in content.items())

    @staticmethod
    def decode(data: bytes) -> dict[bytes, int]:
        """Inverse of :meth:`encode`; unreadable values decode as empty."""
        if not data or data[0] != _SEEN_VERSION or (len(data) - 1) % _ENTRY.size:
            return {}
        return dict(_ENTRY.iter_unpack(data[1:]))

    def load(self, items: Mapping[str, bytes]) -> None:
        """Fill from state entries (any slot layout: entries are re-sharded by hash)."""
        self.slots = {}
        for value in items.values():
            for h, ts in self.decode(value).items():
                self.slots.setdefault(self.slot_of(h), {})[h] = ts
