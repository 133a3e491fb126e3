"""Deterministic identifiers and secret fingerprints.

An event id is a hash of the event's natural key, so a replay, a retry or a second
process builds the same id for the same fact, and every sink can de-duplicate by it.
Nothing here depends on Python's per-process ``hash()`` randomisation.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def deterministic_id(*parts: Any) -> str:
    """Return 32 hex chars (128 bits) of SHA-256 over the canonical JSON of ``parts``.

    ``parts`` may hold any JSON-serialisable values; dict keys are sorted so the id
    does not depend on insertion order.
    """
    canonical = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def fingerprint_secret(secret: str) -> str:
    """Fingerprint a secret for display and comparison: ``sha256:`` + first 8 hex of its SHA-256.

    Eight hex digits identify a key among a workspace's keys without letting anyone
    recover or brute-force a high-entropy secret from it.
    """
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]
