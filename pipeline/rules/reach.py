"""Which events reach a YAML rule: its routed types, and selections no routed event can satisfy.

A selection on a ``type`` or an ``attributes.activity_code`` outside what the rule is routed
compiles and never matches; :func:`unreachable` names each such value with its key path, so the
rule is refused at load instead of staying silent. :func:`unknown_types` does the same for a ``types``
pattern that matches no event type the loaded rule packs declare (:attr:`RulePack.event_types`).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.rules.conditions import positive_selections
from pipeline.rules.syntax import RuleSyntaxError


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def plain_values(block: Any, where: str, field: str) -> list[tuple[str, Any]]:
    """(key path, value) of every value a selection of a ``detection``/``resolve`` block gives ``field``
    without a modifier (``{type: [a, b]}``: two), in selections and lists of selections alike; only the
    selections its condition reaches outside a ``not`` (:func:`~pipeline.rules.conditions.positive_selections`)."""
    out: list[tuple[str, Any]] = []
    if not isinstance(block, Mapping):
        return out
    names = [str(k) for k in block if k != "condition"]
    positive = positive_selections(block.get("condition"), names)
    for name, body in block.items():
        if name == "condition" or str(name) not in positive:  # (only negated: it excludes, never a dead rule)
            continue
        alts: list[tuple[str, Any]] = [(f"{where}.{name}", body)]
        if isinstance(body, list):
            alts = [(f"{where}.{name}.{i}", b) for i, b in enumerate(body)]
        for at, sel in alts:
            if isinstance(sel, Mapping) and field in sel:
                v = sel[field]
                out.extend((f"{at}.{field}", x) for x in (v if isinstance(v, list) else [v]))
    return out


def unreachable(
    block: Any, where: str, types: Sequence[str], codes: Sequence[int] | None, types_key: str
) -> list[RuleSyntaxError]:
    """The ``type`` and ``attributes.activity_code`` values of a block's selections that no event routed to
    the rule can have (outside ``types``/``activity_codes``): such a selection compiles and never matches."""
    out: list[RuleSyntaxError] = []
    for at, v in plain_values(block, where, "type"):
        if isinstance(v, str) and not (type_matches(types, v) or type_matches(types, v.lower())):
            out.append(RuleSyntaxError(at, f"{v!r} never reaches the rule: its {types_key} are "
                                           f"{', '.join(types)} (add the type there)"))  # fmt: skip
    if codes is not None:
        for at, v in plain_values(block, where, "attributes.activity_code"):
            n = v if _num(v) else int(v) if isinstance(v, str) and v.strip().isdigit() else None
            if n is not None and n not in codes:
                out.append(RuleSyntaxError(at, f"{v!r} never reaches the rule: its activity_codes are "
                                               f"{', '.join(map(str, codes))} (add the code there)"))  # fmt: skip
    return out


def default_types(types: Sequence[str] | None, codes: Sequence[int] | None) -> list[str]:
    """The types a rule or correlation entry is routed: its ``types``; when it gives none, every type, or
    with ``activity_codes`` the audit records (codes exist only there, and a code list means "these audit
    records": without it, every snapshot, webhook and pipeline event passed the codes, as the rule's Sigma
    export, which tests ``attributes.activity_code``, never did)."""
    if types is not None:
        return list(types)
    return ["audit.*"] if codes is not None else ["*"]


def type_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Whether ``event_type`` matches any of the glob ``patterns``."""
    return any(p == event_type or fnmatch.fnmatchcase(event_type, p) for p in patterns)


def _tokens(glob: str) -> tuple[str, ...]:
    """A glob as tokens: ``*``, ``?``, a ``[...]`` class, or one literal character."""
    out, i = [], 0
    while i < len(glob):
        end = glob.find("]", i + 2) if glob[i] == "[" else -1
        out.append(glob[i : end + 1] if end != -1 else glob[i])
        i = end + 1 if end != -1 else i + 1
    return tuple(out)


def _one(a: str, b: str) -> bool:
    """Whether two one-character tokens (literal, ``?`` or class) can be the same character."""
    if a == "?" or b == "?" or (len(a) > 1 and len(b) > 1):  # (two classes: assume they share one)
        return True
    if len(a) > 1:
        return fnmatch.fnmatchcase(b, a)
    return fnmatch.fnmatchcase(a, b) if len(b) > 1 else a == b


@functools.lru_cache(maxsize=65536)
def _overlap(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    if not x or not y:
        return all(t == "*" for t in x + y)
    if x[0] == "*":
        return _overlap(x[1:], y) or _overlap(x, y[1:])
    if y[0] == "*":
        return _overlap(x, y[1:]) or _overlap(x[1:], y)
    return _one(x[0], y[0]) and _overlap(x[1:], y[1:])


def globs_overlap(a: str, b: str) -> bool:
    """Whether some event type matches both globs (``audit.*`` and ``audit.activity_*``: yes)."""
    return a == b or _overlap(_tokens(a), _tokens(b))


def unknown_types(patterns: Sequence[str], where: str, catalog: Sequence[str]) -> list[RuleSyntaxError]:
    """The ``patterns`` (exact types or globs) that match no type of ``catalog`` (the loaded packs'
    :attr:`~pipeline.rules.base.RulePack.event_types`), each at ``<where>.<index>`` with the closest
    known type as a hint: ``audit.user_logn`` loads and never matches, so it is refused."""
    out: list[RuleSyntaxError] = []
    for i, p in enumerate(patterns):
        if any(globs_overlap(p, t) for t in catalog):
            continue
        close = difflib.get_close_matches(p, catalog, n=1, cutoff=0.6)
        families = sorted({t.split(".", 1)[0] + ".*" for t in catalog})
        hint = f"did you mean '{close[0]}'?" if close else f"the packs' types are {', '.join(families)}"
        out.append(RuleSyntaxError(f"{where}.{i}", f"{p!r} matches no event type of the loaded rule packs ({hint})"))
    return out
