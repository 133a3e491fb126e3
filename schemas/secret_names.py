"""The one name rule: which field and header names hold secrets (part of the record contracts).

A field whose name matches :data:`SECRET_NAME_PATTERN` may only hold ``null``, ``<redacted>`` or a
``sha256:`` fingerprint in an Event, Alert or DeadLetter. The rule is case- and
separator-insensitive (``api_key``, ``apiKey``, ``x-api-key``, ``API KEY``) and covers camelCase
(``accessToken``, ``clientSecret``), ``*_key`` / ``*-key`` names (``secret_key``, ``private_key``)
except a few that name non-secrets (``public_key``, ``dedup_key``, ``partition_key``…), and
``credentials``, ``passphrase``, ``password``, ``cookie``, ``authorization``.

The JSON Schemas (``event.v1.json``, ``alert.v1.json``, ``deadletter.v1.json``) carry this exact
pattern; a unit test checks they are equal. The runtime (``pipeline.redaction``) imports it.
"""

from __future__ import annotations

import re

_SEP = "[-_ .]?"
_NOT_SECRET_KEYS = "dedup|idempotency|partition|sort|cache|natural|primary|foreign|public|group|row|lookup"  # noqa: S105
_WORDS = "token|secret|password|passwd|passphrase|credentials?|cookie|authorization"
_KEY_PREFIXES = (
    "api|access|secret|private|client|auth|refresh|session|signing|encryption|master|license|webhook|bearer|id"
)

SECRET_NAME_PATTERN = (
    "^(?i:"
    f"(?!.*(?:{_NOT_SECRET_KEYS}){_SEP}key$)"
    "(?:key|sec|pwd|auth|"
    f".*(?:{_WORDS})|"
    f".*[-_ .]key|"
    f".*(?:{_KEY_PREFIXES}){_SEP}(?:key|token|secret)"
    "))$"
)
"""Full-match, case-insensitive; the pattern the JSON Schemas use as ``patternProperties``."""

HEADERS_NAME_PATTERN = "^(?i:headers)$"
"""A header map: names kept, every value redacted."""

SECRET_NAME = re.compile(SECRET_NAME_PATTERN)
HEADERS_NAME = re.compile(HEADERS_NAME_PATTERN)

_CACHE: dict[str, bool] = {}
_MAX_CACHE = 8192


def is_secret_name(name: str) -> bool:
    """Whether a field or header called ``name`` holds a secret (cached: records repeat their names)."""
    hit = _CACHE.get(name)
    if hit is None:
        hit = bool(SECRET_NAME.match(name))
        if len(_CACHE) >= _MAX_CACHE:
            _CACHE.clear()
        _CACHE[name] = hit
    return hit
