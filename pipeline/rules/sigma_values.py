"""Sigma values and selections as ours: wildcards, escapes and modifiers (sigma-rules-specification.md).

A plain Sigma string has the wildcards ``*`` and ``?`` and the escapes ``\\*``, ``\\?``, ``\\\\``
("Escape Character"); a backslash before anything else is a plain backslash. ``re`` and
``cidr`` values are not Sigma strings and stay verbatim. Wildcards become ``startswith`` /
``endswith`` / ``contains`` when they can, else an anchored case-insensitive regex (``re|i|s``: a
wildcard matches newlines too, and the end is ``\\Z``, the end of the value).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.rules.matcher import BOOLEAN_FIELDS, RuleSyntaxError, getter
from pipeline.rules.sigma_regex import re2_problem

_SIGMA_MODS = frozenset({"contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte", "exists",
                         "all", "cased", "i", "m", "s"})  # fmt: skip
"""The modifiers a selection may keep (``neq`` is taken out before, by :func:`split_neq`)."""


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
    literal = "".join(p for p in parts if p)
    if not wild and not regex and (kind or not (literal.startswith("*") or literal.endswith("*"))):
        return "|".join([path, *mods]), literal
    if not wild and not regex:  # an escaped \* at an end: a plain value there reads as a wildcard, so refused
        return _convert_value(path, mods, value, True)
    if parts == [None] and not kind and not regex and not mods:
        return f"{path}|exists", True  # a lone "*": any value
    lits = [p for p in parts if p]
    if not kind and not regex and len(lits) == 1 and all(p is None for p in wild) and len(parts) > 1:
        inner = {(True, True): "contains", (False, True): "startswith", (True, False): "endswith"}
        shape = (parts[0] is None, parts[-1] is None)
        if shape in inner and len(parts) == 1 + sum(shape):
            return "|".join([path, inner[shape], *mods]), lits[0]
    body = "".join(".*" if p is None else "." if p == "" else re.escape(p) for p in parts)
    # a Sigma wildcard matches any character, a newline too (s: DOTALL), and the value ends at the end
    # of the field: \Z, since $ also matches before a trailing newline
    head = "" if kind in ("contains", "endswith") else "^"
    tail = "" if kind in ("contains", "startswith") else "\\Z"
    rest = [m for m in mods if m not in ("contains", "startswith", "endswith", "cased")]
    flags = ["s"] if "cased" in mods else ["i", "s"]
    return "|".join([path, "re", *rest, *flags]), f"{head}{body}{tail}"


def _star(key: Any, value: Any) -> bool:
    """A lone ``*`` (``f: '*'`` or ``f|neq: '*'``): any value, but not a missing or null field."""
    return str(key).split("|")[1:] in ([], ["neq"]) and (value == "*" or value == ["*"])


def _has_neq(body: Any) -> bool:
    return isinstance(body, Mapping) and any("neq" in str(k).split("|")[1:] or _star(k, v) for k, v in body.items())


def _namer(taken: set[str]) -> Callable[[str], str]:
    """A function giving ``base``, else ``base2``, ``base3``… — a selection name not in ``taken`` (then taken)."""

    def fresh(base: str) -> str:
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name)
        return name

    return fresh


def split_neq(selections: Mapping[str, Any]) -> tuple[dict[str, tuple[str, Any]], dict[str, str]]:
    """Sigma's ``|neq`` (modifiers appendix, 2.1: the field differs from the values) as negated selections.

    pySigma negates the whole field item, values and other modifiers included (``f|contains|neq: [a, b]``
    is ``not (f contains a or f contains b)``), which is exactly ``not`` of the selection ``{f|contains:
    [a, b]}``. A mapping with ``neq`` items becomes its other items (if any) and one selection per
    ``neq`` item; a list of mappings, one such group per mapping that has them. A lone ``*`` (any value
    but not a missing or null field, as Sigma backends read ``f=*``; ``|exists`` would also hold for a
    null) is its own selection ``{f: null}``: negated for ``f: '*'``, as is for ``f|neq: '*'`` (``not (f:
    '*')``: the field is missing or null). Returns the new
    selections (name → (the Sigma selection it came from, body)) and, per original name whose
    meaning moved into the condition, the expression that replaces it there (``(s and not s_not1)``).
    """
    taken = set(selections)
    out: dict[str, tuple[str, Any]] = {}
    exprs: dict[str, str] = {}

    fresh = _namer(taken)

    def one(name: str, origin: str, body: Mapping[str, Any], keep_name: bool) -> str:
        pos = {k: v for k, v in body.items() if "neq" not in str(k).split("|")[1:] and not _star(k, v)}
        terms = []
        if pos:
            pname = name if keep_name else fresh(name)
            out[pname] = (origin, pos)
            terms.append(pname)
        for k, v in body.items():
            path, *mods = str(k).split("|")
            if _star(k, v):  # f: '*' is not (f is null); f|neq: '*' is not that: f is null (or missing)
                nname = fresh(f"{name}_not" if not mods else f"{name}_null")
                out[nname] = (origin, {path: None})
                terms.append(f"not {nname}" if not mods else nname)
            elif "neq" in mods:
                nname = fresh(f"{name}_not")
                out[nname] = (origin, {"|".join([path, *(m for m in mods if m != "neq")]): v})
                terms.append(f"not {nname}")
        return "(" + " and ".join(terms) + ")"

    for name, body in selections.items():
        if _has_neq(body):
            exprs[name] = one(name, name, body, True)
        elif isinstance(body, list) and any(_has_neq(b) for b in body):
            plain = [b for b in body if not _has_neq(b)]
            parts = []
            if plain:
                out[name] = (name, plain)
                parts.append(name)
            parts += [one(f"{name}_{i}", name, b, False) for i, b in enumerate(body) if _has_neq(b)]
            exprs[name] = "(" + " or ".join(parts) + ")"
        else:
            out[name] = (name, body)
    return out, exprs


def split_collisions(selections: Mapping[str, Any]) -> tuple[dict[str, tuple[str, Any]], dict[str, str]]:
    """Items of one mapping that become the same key of ours, as extra selections ANDed in the condition.

    Sigma ANDs the items of a mapping (``{f: 'adm*', f|startswith: x}``: both), but both convert to
    ``f|startswith`` and a mapping holds one value per key. Each item goes to the first part of its
    mapping that does not have its key yet: ``s`` → ``(s and s_and)``; in a list of mappings (an OR),
    a mapping with such items becomes its own group: ``s`` → ``(s or (s_1 and s_1_and))``. ``neq``
    items and lone ``*`` are left in the first part (:func:`split_neq` makes each its own selection). Returns the
    selections (name → (the Sigma selection it came from, body)) and the expressions that replace
    the names whose meaning moved into the condition.
    """
    taken = set(selections)
    out: dict[str, tuple[str, Any]] = {}
    exprs: dict[str, str] = {}

    fresh = _namer(taken)

    def parts(body: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        layers: list[tuple[set[str], dict[str, Any]]] = []
        for k, v in body.items():
            mods = str(k).split("|")[1:]
            key = None if "neq" in mods or _star(k, v) else next(iter(import_selection({k: v}, where)))
            layer = next((x for x in layers if key is None or key not in x[0]), None)
            if layer is None:
                layers.append(layer := (set(), {}))
            if key is not None:
                layer[0].add(key)
            layer[1][k] = v
        return [b for _, b in layers]

    def group(name: str, origin: str, layers: list[dict[str, Any]], keep_name: bool) -> str:
        names = [name if keep_name else fresh(name)] + [fresh(f"{name}_and") for _ in layers[1:]]
        for n, b in zip(names, layers, strict=True):
            out[n] = (origin, b)
        return "(" + " and ".join(names) + ")"

    for name, body in selections.items():
        where = f"detection.{name}"
        if isinstance(body, Mapping) and len(layers := parts(body, where)) > 1:
            exprs[name] = group(name, name, layers, True)
        elif isinstance(body, list) and all(isinstance(b, Mapping) for b in body):
            split = [parts(b, f"{where}.{i}") for i, b in enumerate(body)]
            if all(len(x) == 1 for x in split):
                out[name] = (name, body)
                continue
            plain = [b for b, x in zip(body, split, strict=True) if len(x) == 1]
            terms = []
            if plain:
                out[name] = (name, plain)
                terms.append(name)
            terms += [group(f"{name}_{i}", name, x, False) for i, x in enumerate(split) if len(x) > 1]
            exprs[name] = "(" + " or ".join(terms) + ")"
        else:
            out[name] = (name, body)
    return out, exprs


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
        if path in BOOLEAN_FIELDS and not mods:  # 'true' as Splunk and Elasticsearch match it: the boolean
            values = [v.lower() == "true" if isinstance(v, str) and v.lower() in ("true", "false") else v
                      for v in values]  # fmt: skip
            value = values if isinstance(value, list) else values[0]
        _check_types(f"{where}.{key}", mods, values)
        converted = [_convert_value(path, mods, v, False) for v in values]
        if len({k for k, _ in converted}) > 1:  # mixed shapes in one list: all as anchored regexes
            if not all(isinstance(v, str) for v in values):
                raise SigmaImportError(f"{where}.{key}: a list mixing wildcards with non-strings is not supported")
            converted = [_convert_value(path, mods, v, True) for v in values]
        vals = [v for _, v in converted]
        out[converted[0][0]] = vals if isinstance(value, list) else vals[0]
    return out


_STRING_MODS = ("contains", "startswith", "endswith", "cased")


def _check_types(where: str, mods: list[str], values: list[Any]) -> None:
    """What pySigma refuses in a value: a number, boolean or null under a string modifier (``SigmaTypeError``),
    and a regex RE2 cannot compile (``SigmaRegularExpressionError``: pySigma 2 compiles with RE2).

    Raises:
        SigmaImportError: naming the field, the modifier and the value.
    """
    for mod in (m for m in _STRING_MODS if m in mods):
        bad = next((v for v in values if not isinstance(v, str)), "")
        if not isinstance(bad, str):
            got = "null" if bad is None else repr(bad)
            raise SigmaImportError(f"{where}: |{mod} needs a string, got {got} (pySigma refuses other types; quote "
                                   "the value)")  # fmt: skip
    if "re" in mods:
        flags = "".join(m for m in mods if m in ("i", "m", "s"))
        for v in values:
            if isinstance(v, str) and (problem := re2_problem(v, flags)):
                raise SigmaImportError(f"{where}: RE2, pySigma's regex engine, cannot compile {v!r}: {problem}")
