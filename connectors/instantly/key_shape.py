"""The shape of an Instantly API key, registered with the redaction gate at import.

Instantly keys in public examples are base64 of ``<uuid>:<token>`` (the real format is
undocumented). :func:`instantly_key_shape` confirms a base64 run decodes to that; the runtime's
gate (:mod:`pipeline.redaction`) gets the pattern and the check through
:func:`pipeline.redaction.register_shape`, so ``pipeline/`` hard-codes no vendor format.
"""

from __future__ import annotations

import base64
import binascii

from connectors.instantly.api import is_id
from pipeline.redaction.registry import register_deriver, register_shape

B64_RUN = r"(?<![A-Za-z0-9])[A-Za-z0-9]{40,}={0,2}(?![A-Za-z0-9])"
"""A run of 40+ letters and digits (and its ``=`` padding): the candidates :func:`instantly_key_shape` checks.

Base64 of ``<uuid>:<token>`` (hex digits, ``-``, ``:``, then letters and digits) has no ``+``, ``/``,
``-`` or ``_``: no 6-bit group of those bytes reaches 62 or 63. So the candidate ends at any other
character, and a key between two ``/`` of a URL path (``/sync/<key>/run``) or after ``=`` in a
query (``?k=<key>``) is the whole candidate, not a piece of a longer base64-looking run that fails
the check (the standard and URL-safe alphabets need no separate runs)."""


def _decode(candidate: str) -> tuple[str, str] | None:
    """``(decoded, token)`` when ``candidate`` is base64 of ``<uuid>:<token>``, else None."""
    text = candidate.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None,
                               validate=True)  # fmt: skip
        decoded = raw.decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    uid, sep, token = decoded.partition(":")
    return (decoded, token) if sep and is_id(uid) and 6 <= len(token) <= 128 and token.isalnum() else None


def instantly_key_shape(candidate: str) -> bool:
    """Whether ``candidate`` is base64 of ``<uuid>:<token>`` — the shape of Instantly keys in public examples."""
    return _decode(candidate) is not None


def instantly_key_parts(value: str) -> tuple[str, ...]:
    """For a registered Instantly key: its decoded ``<uuid>:<token>`` text and the token (both secret).

    An error body may echo the key decoded, or only its token part; the uuid alone is the key's id
    and stays readable.
    """
    parts = _decode(value)
    return parts if parts is not None else ()


register_shape("instantly_api_key", B64_RUN, instantly_key_shape)
register_deriver("instantly_api_key", instantly_key_parts)
