"""The one name rule: which field and header names hold secrets (part of the record contracts).

A field whose name matches :data:`SECRET_NAME_PATTERN` may only hold ``null``, ``<redacted>`` or a
``sha256:`` fingerprint in an Event, Alert or DeadLetter. The rule is case- and
separator-insensitive (``api_key``, ``apiKey``, ``x-api-key``, ``API KEY``) and covers camelCase
(``accessToken``, ``clientSecret``), ``*_key`` / ``*-key`` names (``secret_key``, ``private_key``)
except a few that name non-secrets (``public_key``, ``dedup_key``, ``partition_key``…), and
``credentials``, ``passphrase``, ``password``, ``cookie``, ``authorization`` (and their plurals:
``secrets``, ``tokens``, ``passwords``, ``api_keys``); ``pass``/``pw`` as a whole word or after a
separator (``smtp_pass``, ``pw``; not ``bypass``, ``compass``, ``passenger``); ``passcode``,
``recovery_codes``, ``auth_header``, a bare ``session``, and signatures of requests
(``x-signature``, ``hmac_signature``).

Readable on purpose: a bare ``signature`` (an Instantly sending account's *email* signature),
``sessionId``/``session_id`` (the OAuth connection flow's id), ``api_key_id``.

The JSON Schemas (``event.v1.json``, ``alert.v1.json``, ``deadletter.v1.json``) carry this exact
pattern; a unit test checks they are equal. The runtime (``pipeline.redaction``) imports it.
"""

from __future__ import annotations

import re

_SEP = "[-_ .]?"
_NOT_SECRET_KEYS = "dedup|idempotency|partition|sort|cache|natural|primary|foreign|public|group|row|lookup"  # noqa: S105
_WORDS = "tokens?|secrets?|passwords?|passwd|passphrase|passcodes?|credentials?|cookies?|authorization"
_TOKEN_COUNTS = "prompt|completion|total|input|output|max|num|used|remaining|reasoning|cached"  # noqa: S105
"""``*_tokens`` that count tokens (an AI model's usage), not hold them."""
_KEY_PREFIXES = (
    "api|access|secret|private|client|auth|refresh|session|signing|encryption|master|license|webhook|bearer|id"
)
_PASS_PREFIXES = "smtp|imap|pop3?|db|user|admin|root|mail|email|app|account|proxy|ftp|ssh"  # noqa: S105
"""camelCase ``smtpPass``/``dbPw`` (with a separator any word may precede ``pass``/``pw``)."""

SECRET_NAME_PATTERN = (
    "^(?i:"
    f"(?!.*(?:{_NOT_SECRET_KEYS}){_SEP}keys?$)"
    f"(?!.*(?:{_TOKEN_COUNTS}){_SEP}tokens$)"
    "(?:key|sec|pwd|auth|session|"
    f"(?:.*[-_ .]|.*(?:{_PASS_PREFIXES}))?(?:pass|pw)|"
    f".*(?:{_WORDS})|"
    f".*[-_ .]key|"
    f".*(?:{_KEY_PREFIXES}){_SEP}(?:keys?|tokens?|secrets?)|"
    f"(?:mfa|2fa|totp|otp)?{_SEP}(?:recovery|backup){_SEP}codes?|"
    f"(?:x{_SEP})?auth(?:orization)?{_SEP}header|"
    f"x[-_ .].*signature(?:{_SEP}256)?|(?:hmac|webhook|request){_SEP}signature"
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
