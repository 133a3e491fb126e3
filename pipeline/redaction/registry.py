"""What the pipeline knows is secret: registered values and connector-contributed value shapes.

* :func:`register_secret` — a value the configuration holds (API keys, tokens, webhook secrets,
  sink credentials). The value pass replaces it wherever it appears, raw or URL-encoded.
* :func:`register_shape` — a connector teaches the runtime what its credentials look like (the
  Instantly connector registers its API-key shape), so ``pipeline/`` hard-codes no vendor format.
* :func:`register_deriver` — a connector teaches the runtime which other values a secret implies
  (an Instantly key is base64 of ``<uuid>:<token>``: the decoded text and the token are secret too).

A value is registered in the forms it takes in text: raw, URL-encoded (``quote`` with no safe
characters, ``quote_plus``, ``quote`` keeping ``/``), and ``repr``-escaped when it holds control
characters; a value with surrounding whitespace (an env var ending in a newline) registers its
stripped core as well.

Registering (and changing the URL host allowlist, :func:`bump`) clears the memo of strings already
found clean (:func:`generation`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import orjson

from schemas.ids import fingerprint_secret

MIN_SECRET_CHARS = 4
"""Shorter values are not registered (they would match everywhere)."""


@dataclass(frozen=True, slots=True)
class KnownSecret:
    """One registered value, the forms it takes in text, and its fingerprint."""

    forms: tuple[str, ...]
    fingerprint: str
    needle: bytes
    """A prefix every encoded form shares (b"" when short): one ``in`` test per clean record."""
    encoded: tuple[bytes, ...]
    """Every form as it appears in JSON bytes (UTF-8, ``"`` and ``\\`` escaped)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """A credential shape: candidates found by ``pattern``, confirmed by ``check`` (None: all are)."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None


_LOCK = threading.Lock()
_SECRETS: dict[str, KnownSecret] = {}
_SHAPES: dict[str, Shape] = {}
_DERIVERS: dict[str, Callable[[str], Iterable[str]]] = {}
_STATE = {"generation": 0}
STATE = _STATE
"""Read only: ``STATE["generation"]`` is :func:`generation` without a call (the gate's fast path)."""
_SORTED: list[list[KnownSecret]] = [[]]
_EXACT: list[dict[str, str]] = [{}]


def _needle(encoded: tuple[bytes, ...]) -> bytes:
    """The longest prefix every encoded form shares (empty when under 8 bytes: test each form)."""
    first = encoded[0]
    n = 0
    while n < len(first) and all(len(f) > n and f[n] == first[n] for f in encoded):
        n += 1
    return first[:n] if n >= 8 else b""


def text_forms(value: str) -> tuple[str, ...]:
    """``value`` as it may appear in text: raw, URL-encoded three ways, ``repr``-escaped."""
    escaped = repr(value)[1:-1]
    return tuple(
        dict.fromkeys((value, quote(value, safe=""), quote_plus(value, safe=""), quote(value, safe="/"), escaped))
    )


def register_secret(value: str) -> None:
    """Remember a secret value: every log line and every published record loses it.

    Also registers the stripped value (when ``value`` has surrounding whitespace) and what the
    registered derivers (:func:`register_deriver`) say ``value`` implies.
    """
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    with _LOCK:
        if value in _SECRETS:
            return
        forms = text_forms(value)
        encoded = tuple(dict.fromkeys(orjson.dumps(f)[1:-1] for f in forms))
        _SECRETS[value] = KnownSecret(forms, fingerprint_secret(value), _needle(encoded), encoded)
        _resort()
        derivers = list(_DERIVERS.values())
    if value.strip() != value:
        register_secret(value.strip())
    for derive in derivers:
        for derived in derive(value):
            register_secret(derived)


def register_deriver(name: str, derive: Callable[[str], Iterable[str]]) -> None:
    """Add (or replace) a deriver: for a registered secret, the other values it makes secret.

    Applied to every value registered later and, at once, to those registered already.
    """
    with _LOCK:
        _DERIVERS[name] = derive
        existing = list(_SECRETS)
    for value in existing:
        for derived in derive(value):
            register_secret(derived)


def register_shape(name: str, pattern: str, check: Callable[[str], bool] | None = None) -> None:
    """Add (or replace) a credential shape: a regex whose matches ``check`` confirms are secrets.

    Raises:
        re.error: ``pattern`` is not a valid regular expression.
    """
    compiled = re.compile(pattern)
    with _LOCK:
        _SHAPES[name] = Shape(name, compiled, check)
        _STATE["generation"] += 1


def _resort() -> None:
    """Under ``_LOCK``: rebuild the longest-first list and move the generation."""
    _SORTED[0] = sorted(_SECRETS.values(), key=lambda s: len(s.forms[0]), reverse=True)
    _EXACT[0] = {form: s.fingerprint for s in _SORTED[0] for form in s.forms}
    _STATE["generation"] += 1


def known_secrets() -> list[KnownSecret]:
    """The registered values, longest first (a secret containing another is replaced first)."""
    return _SORTED[0]


def exact_forms() -> dict[str, str]:
    """Every form of every registered value → its fingerprint (a whole string that *is* a secret)."""
    return _EXACT[0]


def shapes() -> list[Shape]:
    """The registered credential shapes."""
    with _LOCK:
        return list(_SHAPES.values())


def generation() -> int:
    """A number that changes whenever a secret or a shape is registered (memos key on it)."""
    return _STATE["generation"]


def bump() -> None:
    """Move the generation: something the passes depend on changed (the URL host allowlist)."""
    with _LOCK:
        _STATE["generation"] += 1


def forget_secrets() -> None:
    """Drop every registered value (tests; a process reloading its configuration)."""
    with _LOCK:
        _SECRETS.clear()
        _resort()
