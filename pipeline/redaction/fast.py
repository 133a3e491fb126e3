"""The gate's fast path: proving, without rewriting anything, that the passes would leave an event as it is.

:func:`event_unchanged` walks an event the way :func:`pipeline.redaction.gate.gate_event` does, but
only *checks*: every string must be one the passes already left unchanged (:data:`.memo.MEMO`) or
one they leave unchanged now (:func:`.memo.clean_text` returns the same object; it is then
remembered); every map key must be a known clean, non-secret, non-``headers`` name
(:data:`.memo.NAMES`), or a secret-named key whose value is already ``null`` or redacted; every
other value a plain ``None``/``bool``/``int``/``float`` or a plain ``dict``/``list``/``tuple`` no
deeper than :data:`.check.MAX_DEPTH`. Anything else — a ``headers`` map, a non-string key, a
string the passes would change — answers ``False`` and the full gate runs.

Keys and values are matched by their hash and equality (in C, a whole map at a time), as the full
walk already matches keys: a ``str`` subclass overriding ``__eq__``/``__hash__`` could pass for a
known clean string. JSON decoding and the normalizers produce plain types only.

The common case (an event without ``change`` whose every string, key and value is plainly clean
or known) also has a C version, :data:`native_common_case` (``_fastgate.c``, compiled at install
by ``hatch_build.py`` when a C compiler is there; ``INSTANTLY_AUDIT_PURE_PYTHON=1`` leaves it out):
it reads the structs' slots directly and judges a fresh id, time or address by its characters
instead of hashing it, at about a third of the Python cost. Without it, :func:`_common_case`
decides.

When it answers ``True``, ``gate_event(event) is event`` holds, so ``event.to_json()`` *is* the
gated bytes (byte for byte; ``tests/unit/test_redaction_fastpath.py`` checks the two paths agree
on generated events with planted secrets). It touches each value once, with no rebuilding and
no rewrite bookkeeping: the cost of a set lookup per value.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.redaction import registry
from pipeline.redaction.check import MAX_DEPTH
from pipeline.redaction.memo import (
    CLEAN_CHARS,
    MEMO,
    MEMO_MAX,
    MEMO_STR_MAX,
    NAMES,
    NAMES_EPOCH,
    RISKY_FORMS,
    SYNCED,
    clean_text,
    id_clean,
    remember,
    remember_name,
    reset,
    sync,
)
from pipeline.redaction.text import is_redacted
from schemas.event import Actor, Event, Source, Target, WorkspaceRef
from schemas.secret_names import HEADERS_NAME, is_secret_name

_REGISTRY_STATE = registry.STATE
PURE_PYTHON_ENV = "INSTANTLY_AUDIT_PURE_PYTHON"
"""Set (not ``0``) to leave the C accelerator out: at install (``hatch_build.py``) and at import here."""


def _load_native() -> Callable[[Event], bool] | None:
    """``_fastgate.common_case`` configured with this module's memo, or None (not built, or switched off)."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:  # built at install when a C compiler is there (hatch_build.py)
        from pipeline.redaction import _fastgate
    except ImportError:
        return None
    _fastgate.configure(
        Event,
        Source,
        WorkspaceRef,
        Actor,
        Target,
        MEMO,
        NAMES,
        NAMES_EPOCH,
        SYNCED,
        _REGISTRY_STATE,
        RISKY_FORMS,
        CLEAN_CHARS,
    )
    return _fastgate.common_case


native_common_case = _load_native()
"""The common case in C (``_fastgate.c``; None without it): True only when the memo is synced to the
registry, no registered value can hide in an id-shaped string, the event has no ``change``, and its
every field, key and value is plainly clean or known clean, so the gate would return it as is."""

_NUMBERS = (int, bool, float)
_ID_TABLE = bytes(0 if chr(b) in CLEAN_CHARS else 1 for b in range(256))
"""Bytes → 0 for :data:`CLEAN_CHARS`, 1 for any other (UTF-8 of a non-ASCII character included)."""
_DIRTY = 1
_chain = itertools.chain


def _new_string(s: Any) -> bool:
    """Whether ``s``, not yet known, is a plain string the passes leave as is (then remembered)."""
    if type(s) is not str:
        return False
    if not s.strip(CLEAN_CHARS) and (not RISKY_FORMS or id_clean(s)):  # an id, a time, an address
        remember(s)
        return True
    return clean_text(s) is s


def _strings_ok(strings: tuple[Any, ...]) -> bool:
    """Every one ``None``, known, or a plain string the passes leave as is (the new ones are remembered).

    In C for the common case: the unknown ones are a stream's fresh ids, times and addresses,
    made of :data:`CLEAN_CHARS` alone and no registered value: one join, one strip, one lookup.
    """
    missing = {*strings}.difference(MEMO)
    if not missing:
        return True
    try:
        joined = "".join(missing)
    except TypeError:  # not all plain strings: let the full gate decide
        return False
    if not joined.strip(CLEAN_CHARS) and (not RISKY_FORMS or id_clean(joined)):  # none inside any of them
        if len(MEMO) + len(missing) > MEMO_MAX:
            reset()
        MEMO.update(missing if len(joined) <= MEMO_STR_MAX else (s for s in missing if len(s) <= MEMO_STR_MAX))
        return True
    return all(map(_new_string, missing))


def _key_ok(k: Any, v: Any) -> bool:
    """A key not yet known: clean and plain (then remembered), or secret-named with a redacted value."""
    if type(k) is not str or clean_text(k) is not k or HEADERS_NAME.match(k):
        return False  # a rewritten key, or a header map (its values are always rebuilt)
    if is_secret_name(k):
        return v is None or is_redacted(v)
    remember_name(k)
    return True


def _map_ok(d: dict[Any, Any], depth: int) -> bool:
    """Whether the passes leave the map ``d`` (at ``depth``) as it is."""
    if depth < MAX_DEPTH:
        try:  # in C: every key known, every truthy value known (falsy ones are empty or zero: nothing to redact)
            if NAMES.issuperset(d) and MEMO.issuperset(filter(None, d.values())):
                return True
        except TypeError:  # a non-empty list or map among the values: walk it below
            pass
    elif depth > MAX_DEPTH:
        return False
    if not NAMES.issuperset(d):
        for k, v in d.items():
            if k not in NAMES and not _key_ok(k, v):
                return False
    return _values_ok(d.values(), depth)


def _values_ok(values: Iterable[Any], depth: int) -> bool:
    """Whether the passes leave every value (of a map or a list at ``depth``) as it is; numbers are remembered."""
    memo = MEMO
    for v in values:
        tv = type(v)
        if tv is str:
            if v in memo or _new_string(v):
                continue
            return False
        if v is None or tv in _NUMBERS:
            remember(v)
            continue
        if tv is dict:
            if _map_ok(v, depth + 1):
                continue
            return False
        if (tv is list or tv is tuple) and depth < MAX_DEPTH and _values_ok(v, depth + 1):
            continue
        return False
    return True


def _common_case(event: Event, attrs: dict[Any, Any], raw: dict[Any, Any] | None) -> bool:
    """An event without ``change`` whose every string, key and truthy value is already known, in C.

    A stream's fresh time and record id (``raw`` repeats them) are checked first — made of
    :data:`CLEAN_CHARS` alone (one ``translate`` of both, one ``memchr``) and no registered value —
    and known for this event only, so the memo keeps the stream's repeated values (small, fast)
    rather than every id it ever saw. Then three ``issuperset`` over the keys, three over the
    strings and the truthy map values (~60 lookups, no Python loop).
    """
    memo = MEMO
    src, a, t, ws = event.source, event.actor, event.target, event.workspace
    time, rid = event.time, src.record_id
    if type(time) is not str or type(rid) is not str:
        return False
    new_time, new_rid = time not in memo, rid not in memo
    if new_time or new_rid:
        fresh = (time if new_time else "") + (rid if new_rid else "")
        # surrogatepass: a lone surrogate is marked like any non-ASCII character, not an encode error
        if _DIRTY in fresh.encode("utf-8", "surrogatepass").translate(_ID_TABLE):
            return False
        if RISKY_FORMS and not (id_clean(time) and id_clean(rid)):  # a registered value inside either
            return False
    strings: tuple[str | None, ...] = (event.type, event.observed_at, ws.id, ws.name, src.stream)
    if a is not None:
        strings += (a.user_id, a.user_name, a.api_key_id, a.ip, a.user_agent)
    if t is not None:
        strings += (t.kind, t.id, t.name)
    try:
        if not (memo.issuperset(strings) and NAMES.issuperset(attrs) and memo.issuperset(filter(None, attrs.values()))):
            return False
        if raw is None:
            return True
        if not NAMES.issuperset(raw):
            return False
        # raw holds the time and the record id again: known for this one test
        if new_time:
            memo.add(time)
        if new_rid:
            memo.add(rid)
        try:
            return memo.issuperset(filter(None, raw.values()))
        finally:
            if new_time:
                memo.discard(time)
            if new_rid:
                memo.discard(rid)
    except TypeError:  # a non-empty list or map among the values: the walk decides
        return False


def event_unchanged(event: Event) -> bool:
    """True only when the gate would return ``event`` itself: nothing to redact, nothing to refuse.

    Conservative: ``False`` means "run the full gate", which may still change nothing.
    """
    native = native_common_case
    if native is not None:
        if native(event):
            return True
        if SYNCED[0] == _REGISTRY_STATE["generation"] and not RISKY_FORMS:  # it decided: the walk remains
            return _walk(event, tried_common=True)
    if SYNCED[0] != _REGISTRY_STATE["generation"]:  # sync() without two calls per event
        sync()
    return _walk(event, tried_common=False)


def _walk(event: Event, *, tried_common: bool) -> bool:
    """:func:`event_unchanged` after the registry check: the common case, then every string and map."""
    attrs, raw, c = event.attributes, event.raw, event.change
    if type(attrs) is not dict or (raw is not None and type(raw) is not dict):
        return False
    if not tried_common and c is None and _common_case(event, attrs, raw):
        return True
    ws, src, a, t = event.workspace, event.source, event.actor, event.target
    strings: tuple[Any, ...] = (event.type, event.time, event.observed_at, ws.id, ws.name, src.stream, src.record_id)
    if a is not None:
        strings += (a.user_id, a.user_name, a.api_key_id, a.ip, a.user_agent)
    if t is not None:
        strings += (t.kind, t.id, t.name)
    if not _strings_ok(strings):
        return False
    if c is not None:
        if type(c.fields) is not tuple or None in c.fields or not _strings_ok(c.fields):
            return False
        for side in (c.before, c.after):
            if side is not None and (type(side) is not dict or not _map_ok(side, 0)):
                return False
    return _map_ok(attrs, 0) and (raw is None or _map_ok(raw, 0))
