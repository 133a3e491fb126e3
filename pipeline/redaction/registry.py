"""What the pipeline knows is secret: registered values and connector-contributed value shapes.

* :func:`register_secret` — a value the configuration holds (API keys, tokens, webhook secrets,
  sink credentials). The value pass replaces it wherever it appears, raw, URL-encoded,
  JSON-escaped or base64-encoded (alone or inside a longer encoded text such as ``user:<value>``).
* :func:`register_shape` — a connector teaches the runtime what its credentials look like (the
  Instantly connector registers its API-key shape), so ``pipeline/`` hard-codes no vendor format.
* :func:`register_deriver` — a connector teaches the runtime which other values a secret implies
  (an Instantly key is base64 of ``<uuid>:<token>``: the decoded text and the token are secret too).

A value is registered in the forms it takes in text: raw, URL-encoded (``quote`` with no safe
characters, ``quote_plus``, ``quote`` keeping ``/``, JavaScript's ``encodeURIComponent`` keeping
``!'()*``, the WHATWG form encoding keeping ``*``; upper- and lower-case escapes; each encoded
a second time, as a URL carried in another URL's query is),
``repr``-escaped when it holds control characters, JSON-escaped (``\\uXXXX``, ``\\/``) when it holds
characters JSON escapes; a value with surrounding whitespace (an env var ending in a newline)
registers its stripped core as well.

Base64: a value of :data:`MIN_B64_BYTES` bytes or more also registers its **base64 cores**
(:func:`base64_cores`): for each of the three offsets a value can sit at inside an encoded text
(``base64(value)``, ``base64("user:" + value)`` in an HTTP Basic header, ...), in the standard and
the URL-safe alphabet, the run of base64 characters that depends on the value's bytes alone. The
value pass replaces a core together with the characters of the neighbouring partial groups (which
mix the value's first or last bytes with its neighbours), so no character computed from the value
is left.

Registering (and changing the URL host allowlist, :func:`bump`) clears the memo of strings already
found clean (:func:`generation`).
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import orjson

from schemas.ids import fingerprint_secret

MIN_SECRET_CHARS = 4
"""Shorter values are not registered (they would match everywhere)."""
MIN_B64_BYTES = 6
"""Shorter values register no base64 form. A core (:func:`base64_cores`) is kept only from 8
characters on (48 bits: a chance match in unrelated base64 text is ~1 in 10^14 per position; 4
characters, all a 4- or 5-byte value can give, would be ~1 in 10^7). From 8 bytes on every alignment
has such a core; a 6-byte value has one at 1 alignment of 3 (the value encoded alone, or after a
prefix of 3n bytes such as ``admin:``), a 7-byte value at 2 of 3."""
_B64_URLSAFE = str.maketrans("+/", "-_")


@dataclass(frozen=True, slots=True)
class KnownSecret:
    """One registered value, the forms it takes in text, and its fingerprint."""

    forms: tuple[str, ...]
    fingerprint: str
    needle: bytes
    """A prefix every encoded form shares (b"" when short): one ``in`` test per clean record."""
    encoded: tuple[bytes, ...]
    """Every form as it appears in JSON bytes (UTF-8, ``"`` and ``\\`` escaped)."""
    b64: tuple[tuple[str, int, int], ...] = ()
    """Base64 cores (:func:`base64_cores`): ``(core, left, right)``, the characters to take with it on each side."""
    prefix: str = ""
    """The longest prefix every text form shares: when it is not in a text, no form is (one ``in`` test)."""
    b64_groups: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...] = ()
    """:attr:`b64` grouped by the prefix the cores of one alignment share (standard and URL-safe differ
    only from their first ``+``/``/``): one ``in`` test per alignment for a text holding none."""


def _common_prefix(texts: Iterable[str]) -> str:
    """The longest prefix every one of ``texts`` starts with."""
    items = list(texts)
    first = min(items, key=len) if items else ""
    n = 0
    while n < len(first) and all(t[n] == first[n] for t in items):
        n += 1
    return first[:n]


def _b64_groups(
    cores: tuple[tuple[str, int, int], ...],
) -> tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...]:
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for core in cores:
        groups.setdefault(core[0].translate(_B64_URLSAFE), []).append(core)  # one key per alignment
    return tuple((_common_prefix(c[0] for c in group), tuple(group)) for group in groups.values())


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
B64_GRAM = 4
"""Length of the base64 index's keys and stride of a text's scan (:func:`base64_index`)."""
_B64_INDEX: list[dict[str, tuple[tuple[KnownSecret, str, int, int], ...]]] = [{}]
_B64_GROUPS = [0]


def _needle(encoded: tuple[bytes, ...]) -> bytes:
    """The longest prefix every encoded form shares (empty when under 8 bytes: test each form)."""
    first = encoded[0]
    n = 0
    while n < len(first) and all(len(f) > n and f[n] == first[n] for f in encoded):
        n += 1
    return first[:n] if n >= 8 else b""


def _lower_escapes(text: str) -> str:
    """``text`` with its ``%XX`` escapes in lower case (``%2f``: some encoders write them so)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def text_forms(value: str) -> tuple[str, ...]:
    """``value`` as it may appear in text: raw, URL-encoded five ways (Python's ``quote`` and
    ``quote_plus``, JavaScript's ``encodeURIComponent``, the WHATWG form encoding; upper- and lower-case
    escapes) and each of those URL-encoded again (``%252F``, ``%252f``), ``repr``-escaped,
    JSON-escaped (``\\uXXXX`` for non-ASCII, and ``\\/`` as some encoders write a ``/``)."""
    encoded = (
        quote(value, safe=""), quote_plus(value, safe=""), quote(value, safe="/"),
        quote(value, safe="!'()*"),  # JavaScript's encodeURIComponent
        quote_plus(value, safe="*"),  # WHATWG form encoding (URLSearchParams, HTML forms), Java URLEncoder
    )  # fmt: skip
    once = (*encoded, *(_lower_escapes(e) for e in encoded))
    twice = (quote(e, safe="") for e in once if e != value)  # a URL inside another URL's query: %252F, %252f
    as_json = json.dumps(value)[1:-1]
    return tuple(
        dict.fromkeys(
            (value, *once, *twice, repr(value)[1:-1], as_json, as_json.replace("/", "\\/"))
        )
    )  # fmt: skip


def base64_cores(value: str) -> tuple[tuple[str, int, int], ...]:
    """The base64 text that ``value``'s UTF-8 bytes alone decide, wherever they sit in an encoded text.

    Base64 turns each 3-byte group into 4 characters, so ``value`` inside a longer encoded text
    (``base64("user:" + value)``) is seen through one of three alignments. For each, the groups
    made only of ``value``'s bytes give a fixed run (the *core*), in the standard and the URL-safe
    alphabet. Returned as ``(core, left, right)``: how many characters before and after the core
    also depend on ``value`` (the partial groups that mix its first or last bytes with their
    neighbours: 4 when there is one, else 0). Cores shorter than 8 characters are left out.
    """
    data = value.encode("utf-8", "surrogatepass")
    if len(data) < MIN_B64_BYTES:
        return ()
    out: dict[str, tuple[str, int, int]] = {}
    for offset in range(3):
        text = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start = 4 if offset else 0
        end = 4 * ((offset + len(data)) // 3)
        core = text[start:end]
        if len(core) < 8:
            continue
        right = 4 if (offset + len(data)) % 3 else 0
        for variant in (core, core.translate(_B64_URLSAFE)):
            out.setdefault(variant, (variant, start, right))
    return tuple(out.values())


def register_secret(value: str, *, with_base64: bool = True) -> None:
    """Remember a secret value: every log line and every published record loses it.

    Also registers the stripped value (when ``value`` has surrounding whitespace) and what the
    registered derivers (:func:`register_deriver`) say ``value`` implies. ``with_base64``: also find
    the value base64-encoded (:func:`base64_cores`); derived values are registered without (the
    value they derive from is what gets encoded: an Instantly key *is* base64 of its decoded text).
    """
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    with _LOCK:
        if value in _SECRETS:
            return
        forms = text_forms(value)
        encoded = tuple(dict.fromkeys(orjson.dumps(f)[1:-1] for f in forms))
        cores = base64_cores(value) if with_base64 else ()
        _SECRETS[value] = KnownSecret(
            forms,
            fingerprint_secret(value),
            _needle(encoded),
            encoded,
            cores,
            _common_prefix(forms),
            _b64_groups(cores),
        )
        _add(_SECRETS[value])
        derivers = list(_DERIVERS.values())
    if value.strip() != value:
        register_secret(value.strip(), with_base64=with_base64)
    for derive in derivers:
        for derived in derive(value):
            register_secret(derived, with_base64=False)


def register_deriver(name: str, derive: Callable[[str], Iterable[str]]) -> None:
    """Add (or replace) a deriver: for a registered secret, the other values it makes secret.

    Applied to every value registered later and, at once, to those registered already.
    """
    with _LOCK:
        _DERIVERS[name] = derive
        existing = list(_SECRETS)
    for value in existing:
        for derived in derive(value):
            register_secret(derived, with_base64=False)


def register_shape(name: str, pattern: str, check: Callable[[str], bool] | None = None) -> None:
    """Add (or replace) a credential shape: a regex whose matches ``check`` confirms are secrets.

    Raises:
        re.error: ``pattern`` is not a valid regular expression.
    """
    compiled = re.compile(pattern)
    with _LOCK:
        _SHAPES[name] = Shape(name, compiled, check)
        _STATE["generation"] += 1


def _index_base64(secret: KnownSecret) -> None:
    """Under ``_LOCK``: add ``secret``'s base64 cores to :func:`base64_index` (in place: readers only look up)."""
    index = _B64_INDEX[0]
    for core, left, right in secret.b64:
        entry = (secret, core, left, right)
        for k in range(B64_GRAM):
            gram = core[k : k + B64_GRAM]
            index[gram] = (*index.get(gram, ()), entry)  # a repeat (a core "AAAA…") is only tested twice
    _B64_GROUPS[0] += len(secret.b64_groups)


def _resort() -> None:
    """Under ``_LOCK``: rebuild the longest-first list and move the generation."""
    _SORTED[0] = sorted(_SECRETS.values(), key=_longest_first)
    _EXACT[0] = {form: s.fingerprint for s in _SORTED[0] for form in (*s.forms, *(c[0] for c in s.b64))}
    _STATE["generation"] += 1


def _longest_first(secret: KnownSecret) -> int:
    return -len(secret.forms[0])


def _add(secret: KnownSecret) -> None:
    """Under ``_LOCK``: :func:`_resort` for one new value, without sorting everything again.

    Copy on write: a reader iterating the previous list or dict (another thread's log line) is
    never disturbed. An agency registers thousands of values at start (three per workspace key).
    """
    ordered = list(_SORTED[0])
    bisect.insort(ordered, secret, key=_longest_first)
    exact = dict(_EXACT[0])
    exact.update((form, secret.fingerprint) for form in (*secret.forms, *(c[0] for c in secret.b64)))
    _index_base64(secret)
    _SORTED[0], _EXACT[0] = ordered, exact
    _STATE["generation"] += 1


def known_secrets() -> list[KnownSecret]:
    """The registered values, longest first (a secret containing another is replaced first)."""
    return _SORTED[0]


def base64_index() -> dict[str, tuple[tuple[KnownSecret, str, int, int], ...]]:
    """The base64 cores of every registered value by each of their first :data:`B64_GRAM` grams
    (:data:`B64_GRAM` characters at offsets 0 to ``B64_GRAM - 1``): a core (8 characters or more)
    found in a text covers a gram starting at a multiple of :data:`B64_GRAM`, so scanning a text
    at that stride finds every candidate in ``len(text) / B64_GRAM`` lookups, however many values
    are registered. Values: ``(secret, core, left, right)``."""
    return _B64_INDEX[0]


def base64_groups() -> int:
    """How many alignment groups (:attr:`KnownSecret.b64_groups`) the registered values have in all."""
    return _B64_GROUPS[0]


def exact_forms() -> dict[str, str]:
    """Every form (and base64 core) of every registered value → its fingerprint."""
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
        _B64_INDEX[0] = {}
        _B64_GROUPS[0] = 0
        _resort()
