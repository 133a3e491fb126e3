"""UUIDv7 identifiers (RFC 9562) minted from an injectable clock, and fake API key secrets.

Ids minted "now" are strictly increasing even when the clock stands still (the 12-bit
``rand_a`` field is used as a counter within one millisecond, RFC 9562 §6.2 method 1), so
sorting ids sorts records by creation time. An id can also be minted at a past instant
(``at=``) for back-dated fixtures; such ids sort before newer ones.
"""

from __future__ import annotations

import base64
import random
import string
import uuid

from .clock import Clock

_MS_MASK = (1 << 48) - 1
_COUNTER_MAX = 0xFFF


class UUIDv7Factory:
    """Mints UUIDv7 strings; deterministic for a given clock and ``rng``."""

    def __init__(self, clock: Clock, rng: random.Random):
        self._clock = clock
        self._rng = rng
        self._last_ms = -1
        self._counter = 0

    def __call__(self, at: float | None = None) -> str:
        """A new id for the current time, or for the instant ``at`` (epoch seconds) if given."""
        if at is not None:
            return _pack(int(at * 1000), self._rng.getrandbits(12), self._rng.getrandbits(62))
        ms = int(self._clock() * 1000)
        if ms > self._last_ms:
            self._last_ms = ms
            self._counter = self._rng.getrandbits(10)  # leave headroom for the counter
        else:  # same millisecond (or the clock went back): count up, borrowing the next ms if full
            self._counter += 1
            if self._counter > _COUNTER_MAX:
                self._last_ms += 1
                self._counter = 0
        return _pack(self._last_ms, self._counter, self._rng.getrandbits(62))


def _pack(ms: int, rand_a: int, rand_b: int) -> str:
    value = (ms & _MS_MASK) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def uuid7_time(value: str) -> float:
    """The instant (epoch seconds, ms precision) encoded in a UUIDv7 string.

    Raises:
        ValueError: ``value`` is not a UUID of version 7.
    """
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        raise ValueError(f"not a UUIDv7: {value}")
    return (parsed.int >> 80) / 1000


_TOKEN_ALPHABET = string.ascii_letters + string.digits


def fake_key_secret(key_id: str, rng: random.Random) -> str:
    """A secret shaped like Instantly v2 keys seen in public examples: base64 of ``<uuid>:<12 chars>``.

    The format is not documented (API reference §13.3); only the shape matters here.
    """
    token = "".join(rng.choice(_TOKEN_ALPHABET) for _ in range(12))
    return base64.b64encode(f"{key_id}:{token}".encode()).decode("ascii")
