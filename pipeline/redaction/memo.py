"""What the gate already knows is clean: strings and map keys the passes leave as they are.

* :data:`MEMO` — strings ``s`` for which :func:`clean_text` returns ``s`` itself, plus ``None``,
  ``True`` and the plain numbers seen (the fast path, :mod:`.fast`, tests a map's values in one
  C-level ``issuperset``);
* :data:`NAMES` — map keys that are clean, not secret-named and not a ``headers`` name;
* :func:`sync` — both are forgotten whenever a secret or a shape is registered or the URL host
  allowlist changes (:func:`pipeline.redaction.registry.generation`), so an entry never outlives
  the registry it was checked against.

Both are bounded (:data:`MEMO_MAX`, cleared when full): a stream's repeated values (labels, user
agents, names) cost one set lookup, its unique ids are checked again after a clear.
"""

from __future__ import annotations

from pipeline.redaction import registry
from pipeline.redaction.text import CLEAN_CHARS, looks_clean, redact_text

MEMO_MAX = 65_536
MEMO_STR_MAX = 1024
"""Longer strings are checked every time (not remembered)."""
MEMO: set[object] = {None, True}
NAMES: set[str] = set()
NAMES_EPOCH = [0]
"""Moves whenever names leave :data:`NAMES` (it only grows in between): the C accelerator keeps
the key layouts of maps it found all known for one epoch."""
CLEAN_FORMS: set[str] = set()
"""Registered forms made of :data:`CLEAN_CHARS` alone (usually none): the only secrets an id-shaped string can be."""
RISKY_FORMS: list[str] = []
"""Registered forms an id-shaped or short (< 6 characters) string can hold: :data:`CLEAN_FORMS` and
forms shorter than 6 (usually none). Such a string is clean when none of them is *inside* it."""
SYNCED = [-1]
"""The registry generation the memo was last checked against (:func:`sync`)."""


def sync() -> None:
    """Forget everything when the registry moved since the last call."""
    if SYNCED[0] != registry.generation():
        reset()
        SYNCED[0] = registry.generation()
        CLEAN_FORMS.clear()
        CLEAN_FORMS.update(f for f in registry.exact_forms() if not f.strip(CLEAN_CHARS))
        RISKY_FORMS[:] = sorted(CLEAN_FORMS | {f for f in registry.exact_forms() if len(f) < 6})


def reset() -> None:
    """Forget every remembered string and key."""
    MEMO.clear()
    MEMO.update((None, True))
    NAMES.clear()
    NAMES_EPOCH[0] += 1


def remember(s: str | float | None) -> None:
    """Add a string :func:`clean_text` leaves as is (or a plain number: nothing to redact there)."""
    if len(MEMO) >= MEMO_MAX:
        MEMO.clear()
        MEMO.update((None, True))
    if type(s) is not str or len(s) <= MEMO_STR_MAX:
        MEMO.add(s)


def remember_name(k: str) -> None:
    """Add a clean, not secret-named, not ``headers`` map key."""
    if len(NAMES) >= MEMO_MAX:
        NAMES.clear()
        NAMES_EPOCH[0] += 1
    NAMES.add(k)


def id_clean(s: str) -> bool:
    """Whether an id-shaped or short string ``s`` holds no registered value (no :data:`RISKY_FORMS` inside it)."""
    return all(form not in s for form in RISKY_FORMS)


def clean_text(s: str) -> str:
    """``s`` after the value, shape and URL passes (``s`` itself, the same object, when they change nothing)."""
    if s in MEMO:
        return s
    if looks_clean(s) and id_clean(s):  # ids, timestamps, addresses: only a registered value can hide here
        remember(s)
        return s
    out = redact_text(s, fingerprint=True)
    if out is s or out == s:
        remember(s)
        return s
    return out


__all__ = [
    "CLEAN_CHARS",
    "CLEAN_FORMS",
    "MEMO",
    "MEMO_MAX",
    "NAMES",
    "NAMES_EPOCH",
    "RISKY_FORMS",
    "SYNCED",
    "clean_text",
    "id_clean",
    "remember",
    "remember_name",
    "reset",
    "sync",
]
