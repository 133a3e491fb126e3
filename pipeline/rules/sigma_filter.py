"""Sigma filters (sigma-filters-specification.md) applied on import, as pySigma 2 applies them.

A filter document names rules (by ``id`` or ``name``, or ``any``) and has a ``logsource`` and its own
selections and ``condition``. pySigma (``SigmaFilter.apply_on_rule``) adds the filter's selections to
each rule it applies to, under names with a prefix starting with ``_`` (so the rule's own ``1 of
them`` does not reach them), and makes the rule's condition ``(<rule condition>) and (<filter
condition>)`` with the filter's identifiers prefixed (``them`` becomes ``<prefix>_*``). A filter
applies to a rule it names whose log source its own contains (each of ``category``, ``product``,
``service`` it sets is the rule's). Importing a named rule without its filter would alert on what
the filter excludes, so a filter that cannot be read refuses the rules it names.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.rules.sigma_values import SigmaImportError

_KEYWORDS = frozenset({"not", "and", "or", "all", "any", "of", "1"})
_TOKEN = re.compile(r"[a-zA-Z*][a-zA-Z0-9*_-]*")  # pySigma's token for filter conditions


@dataclass(frozen=True, slots=True)
class SigmaFilter:
    """One filter document, read."""

    title: str
    refs: tuple[str, ...] | None  # None: ``any``
    logsource: Mapping[str, Any]
    selections: Mapping[str, Any]
    condition: str


def named_refs(doc: Mapping[str, Any]) -> list[str]:
    """The rule references a filter document names, read leniently (to refuse them when it is invalid)."""
    body = doc.get("filter")
    rules = body.get("rules") if isinstance(body, Mapping) else None
    if isinstance(rules, str):
        return [] if rules.lower() == "any" else [rules]
    return [str(r) for r in rules] if isinstance(rules, list) else []


def parse_filter(doc: Mapping[str, Any]) -> SigmaFilter:
    """A filter document as pySigma reads it (``SigmaFilter.from_dict``).

    Raises:
        SigmaImportError: naming what is missing or malformed.
    """
    body = doc.get("filter")
    if not isinstance(body, Mapping):
        raise SigmaImportError("filter must be a mapping of rules, selections and condition")
    cond = body.get("condition")
    if not isinstance(cond, str):
        raise SigmaImportError("filter.condition must be one string (Sigma filters have exactly one condition)")
    if "|" in cond or re.search(r"\bnear\b", cond):
        raise SigmaImportError("filter.condition: aggregations and near are not supported")
    rules = body.get("rules")
    refs: tuple[str, ...] | None
    if isinstance(rules, str):
        refs = None if rules.lower() == "any" else (rules,)
    elif isinstance(rules, list):
        refs = tuple(str(r) for r in rules) or None  # an empty list is "any" for pySigma
    else:
        raise SigmaImportError("filter.rules must be 'any', a rule id or name, or a list of them")
    ls = doc.get("logsource")
    if ls is not None and not isinstance(ls, Mapping):
        raise SigmaImportError("filter logsource must be a mapping")
    selections = {str(k): v for k, v in body.items() if k not in ("rules", "condition")}
    if not selections:
        raise SigmaImportError("filter has no selection")
    return SigmaFilter(str(doc.get("title", "")), refs, ls or {}, selections, cond)


def _is(ref: str, doc: Mapping[str, Any]) -> bool:
    """pySigma's lookup: a reference that is a UUID names a rule ``id``, anything else a ``name``."""
    try:
        want = uuid.UUID(ref)
    except ValueError:
        return doc.get("name") is not None and str(doc.get("name")) == ref
    try:
        return uuid.UUID(str(doc.get("id"))) == want
    except ValueError:
        return False


def names_rule(refs: list[str] | tuple[str, ...], doc: Mapping[str, Any]) -> bool:
    return any(_is(r, doc) for r in refs)


def applies(f: SigmaFilter, doc: Mapping[str, Any]) -> bool:
    """The filter applies to the rule document: it names the rule (or ``any``) and contains its log source."""
    raw = doc.get("logsource")
    ls: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    for key in ("category", "product", "service"):
        if f.logsource.get(key) is not None and f.logsource.get(key) != ls.get(key):
            return False
    return f.refs is None or names_rule(f.refs, doc)


def apply_filter(f: SigmaFilter, doc: Mapping[str, Any], n: int) -> dict[str, Any]:
    """A copy of the rule document with the filter ANDed in (``n`` makes the prefix unique per filter)."""
    det = doc.get("detection")
    if not isinstance(det, Mapping) or "condition" not in det:
        return dict(doc)  # import_rule rejects it with its own reason
    taken = {str(k) for k in det}
    prefix = f"_filt{n}"
    while any(k.startswith(prefix) for k in taken):
        prefix += "_"

    def token(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.lower() in _KEYWORDS:
            return tok
        return f"{prefix}_*" if tok == "them" else f"{prefix}_{tok}"

    fcond = _TOKEN.sub(token, f.condition)
    conds = det["condition"] if isinstance(det["condition"], list) else [det["condition"]]
    new_det = {**det, **{f"{prefix}_{k}": v for k, v in f.selections.items()}}
    new_det["condition"] = [f"({c}) and ({fcond})" for c in conds]
    if not isinstance(det["condition"], list):
        new_det["condition"] = new_det["condition"][0]
    return {**doc, "detection": new_det}
