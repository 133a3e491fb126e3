"""Sigma values and selections as ours: wildcards, escapes and modifiers (sigma-rules-specification.md).

A plain Sigma string has the wildcards ``*`` and ``?`` and the escapes ``\\*``, ``\\?``, ``\\\\``
("Escape Character"); a backslash before anything else is a plain backslash. ``re`` and
``cidr`` values are not Sigma strings and stay verbatim. Wildcards become ``startswith`` /
``endswith`` / ``contains`` when they can, else an anchored case-insensitive regex.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipeline.rules.matcher import RuleSyntaxError, getter

_SIGMA_MODS = frozenset({"contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte", "exists",
                         "all", "cased", "i", "m", "s"})  # fmt: skip


class SigmaImportError(ValueError):
    """A Sigma rule cannot become one of our rules; the message says why."""


def _sigma_string(value: str) -> list[str | None]:
    """A Sigma string as literal chunks (non-empty) and wildcards (``None`` for ``*``, ``""`` for ``?``).

    ``\\*``, ``\\?`` and ``\\\\`` are escapes; a backslash before anything else is a plain backslash
    (sigma-rules-specification.md, "Escape Character").
    """
    out: list[str | None] = []
    lit, i = "", 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in "*?\\":
            lit, i = lit + value[i + 1], i + 2
            continue
        if c in "*?":
            if lit:
                out.append(lit)
            out.append(None if c == "*" else "")
            lit = ""
        else:
            lit += c
        i += 1
    return [*out, lit] if lit else out


def _convert_value(path: str, mods: list[str], value: Any, regex: bool) -> tuple[str, Any]:
    """One Sigma value as (our key, our value); ``regex`` forces the anchored-regex form."""
    if not isinstance(value, str) or {"re", "cidr"} & set(mods):
        return "|".join([path, *mods]), value  # regex and CIDR values are not Sigma strings: no unescaping
    parts = _sigma_string(value)
    kind = next((m for m in mods if m in ("contains", "startswith", "endswith")), "")
    wild = [p for p in parts if p is None or p == ""]
    if not wild and not regex:
        return "|".join([path, *mods]), "".join(p for p in parts if p)
    if parts == [None] and not kind and not regex and not mods:
        return f"{path}|exists", True  # a lone "*": any value
    lits = [p for p in parts if p]
    if not kind and not regex and len(lits) == 1 and all(p is None for p in wild) and len(parts) > 1:
        inner = {(True, True): "contains", (False, True): "startswith", (True, False): "endswith"}
        shape = (parts[0] is None, parts[-1] is None)
        if shape in inner and len(parts) == 1 + sum(shape):
            return "|".join([path, inner[shape], *mods]), lits[0]
    body = "".join(".*" if p is None else "." if p == "" else re.escape(p) for p in parts)
    head = "" if kind in ("contains", "endswith") else "^"
    tail = "" if kind in ("contains", "startswith") else "$"
    rest = [m for m in mods if m not in ("contains", "startswith", "endswith", "cased")]
    flags = [] if "cased" in mods else ["i"]
    return "|".join([path, "re", *rest, *flags]), f"{head}{body}{tail}"


def import_selection(body: Any, where: str) -> Any:
    """One Sigma search identifier (a mapping or a list of mappings) as our selection.

    Raises:
        SigmaImportError: a keyword search, an unknown modifier or field, or a value Sigma forbids.
    """
    if isinstance(body, list) and body and all(isinstance(b, Mapping) for b in body):
        return [import_selection(b, f"{where}.{i}") for i, b in enumerate(body)]
    if not isinstance(body, Mapping) or any(str(k).startswith("|") for k in body):
        raise SigmaImportError(f"{where}: keyword (field-less) searches have no Event v1 field")
    out: dict[str, Any] = {}
    for key, value in body.items():
        path, *mods = str(key).split("|")
        bad = [m for m in mods if m not in _SIGMA_MODS]
        if bad:
            raise SigmaImportError(f"{where}.{key}: modifier |{bad[0]} has no equivalent in the rule language")
        flags = [m for m in mods if m in ("i", "m", "s")]
        if flags and "re" not in mods:
            raise SigmaImportError(f"{where}.{key}: |{flags[0]} is a regular expression flag; it needs |re "
                                   "(modifiers appendix)")  # fmt: skip
        try:
            getter(path, f"{where}.{key}")
        except RuleSyntaxError as err:
            raise SigmaImportError(f"{err} — the field does not map to Event v1") from None
        values = value if isinstance(value, list) else [value]
        if not values:  # Sigma has no meaning for it (pySigma reads it as null); say so instead of guessing
            raise SigmaImportError(f"{where}.{key}: the list of values is empty")
        if any(isinstance(v, Mapping | list) for v in values):
            raise SigmaImportError(f"{where}.{key}: values must be plain (strings, numbers, booleans, null)")
        if "all" in mods and len(values) < 2:
            raise SigmaImportError(f"{where}.{key}: |all needs a list of two or more values (Sigma forbids it "
                                   "on a single value)")  # fmt: skip
        if isinstance(value, list) and len(values) > 1 and any(v is None for v in values):
            raise SigmaImportError(f"{where}.{key}: null cannot be part of a list of values (Sigma: make it "
                                   "its own selection)")  # fmt: skip
        converted = [_convert_value(path, mods, v, False) for v in values]
        if len({k for k, _ in converted}) > 1:  # mixed shapes in one list: all as anchored regexes
            if not all(isinstance(v, str) for v in values):
                raise SigmaImportError(f"{where}.{key}: a list mixing wildcards with non-strings is not supported")
            converted = [_convert_value(path, mods, v, True) for v in values]
        vals = [v for _, v in converted]
        out[converted[0][0]] = vals if isinstance(value, list) else vals[0]
    return out
