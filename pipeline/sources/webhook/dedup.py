"""The duplicate-delivery window of one source, kept in bus state, and the key it holds: the
delivery's body digest.

Each receiver writes only its own keys, ``webhook/seen/<source>/<writer id>/<slot>``: replicas
of the receiver (one writer id each) would otherwise overwrite each other's slots with their own
view and lose entries. A receiver loads the window from every writer's keys (and from the
``webhook/seen/<source>/<slot>`` keys of releases before writer-scoped keys), so a delivery
committed before it started is a duplicate whichever replica took it. Writer ids that changed
(a replica's id is its host name by default: a new pod, a new id) leave keys behind;
:func:`stale_keys` names those of writers gone for longer than the window, which the receiver
deletes when it opens.
"""

from __future__ import annotations

import hashlib
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping

import orjson

from pipeline.clock import parse_time

SEEN_PREFIX = "webhook/seen/"
HEARTBEAT_PREFIX = "webhook/heartbeat/"
"""A receiver's readiness heartbeat, ``webhook/heartbeat/<writer id>`` (:mod:`.readiness`)."""
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

    Stored as :data:`SEEN_SLOTS` state keys ``webhook/seen/<source>/<writer>/<slot>`` (without a
    ``writer``: ``webhook/seen/<source>/<slot>``, as before writer-scoped keys); each holds up to
    ``ceil(max_entries / SEEN_SLOTS)`` entries of (16-byte hash prefix, epoch seconds), oldest first.
    """

    def __init__(self, source: str, window_secs: float, max_entries: int, *, writer: str | None = None):
        self.source = source
        self.writer = writer
        self.window_secs = window_secs
        self.slot_cap = max(1, -(-max_entries // SEEN_SLOTS))
        self.slots: dict[int, dict[bytes, int]] = {}
        self.unscoped = False
        """Whether :meth:`load` found entries under keys without a writer (releases before
        writer-scoped keys; up to 2026-11-27 these hold digests of the raw body, not the canonical JSON)."""

    @property
    def prefix(self) -> str:
        """The state key prefix of this source (every writer's keys)."""
        return f"{SEEN_PREFIX}{self.source}/"

    def key(self, slot: int) -> str:
        """The state key of ``slot`` written by this window's writer."""
        own = f"{self.writer}/" if self.writer else ""
        return f"{self.prefix}{own}{slot:03x}"

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
        """Fill from state entries (any writer, any slot layout: entries are re-sharded by hash;
        a hash several writers hold keeps its latest time)."""
        self.slots = {}
        self.unscoped = False
        for key, value in items.items():
            entries = self.decode(value)
            if entries and "/" not in key[len(self.prefix) :]:
                self.unscoped = True
            for h, ts in entries.items():
                slot = self.slots.setdefault(self.slot_of(h), {})
                if ts >= slot.get(h, ts):
                    slot.pop(h, None)
                    slot[h] = ts  # kept oldest first: the cap evicts from the front


def stale_keys(state: Mapping[str, bytes], *, writer: str, window_secs: float, now: float) -> list[str]:
    """The keys of other writers that are gone, from ``state`` (every ``webhook/`` state entry).

    A writer is gone when each of its window keys, in every source, holds only entries older than
    ``window_secs`` (nothing a duplicate check would still find) and its heartbeat, if any, is that
    old too: a live receiver writes a slot with each delivery and its heartbeat while idle. Keys of
    the layout before writer ids are judged the same way, per source. ``writer``'s own keys are
    never named.
    """
    groups: defaultdict[str, list[str]] = defaultdict(list)
    fresh: set[str] = set()
    for key, value in state.items():
        if key.startswith(SEEN_PREFIX):
            parts = key[len(SEEN_PREFIX) :].split("/")
            owner = parts[1] if len(parts) == 3 else f"/{parts[0]}"  # "/<source>": the old shared layout
            entries = SeenWindow.decode(value).values()
            live = any(now - ts < window_secs for ts in entries)
        elif key.startswith(HEARTBEAT_PREFIX):
            owner = key[len(HEARTBEAT_PREFIX) :]
            try:
                live = now - parse_time(value.decode()) < window_secs
            except (UnicodeDecodeError, ValueError):
                live = False
        else:
            continue
        groups[owner].append(key)
        if live:
            fresh.add(owner)
    return sorted(k for owner, keys in groups.items() if owner != writer and owner not in fresh for k in keys)
