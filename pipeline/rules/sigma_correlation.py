"""Sigma correlation rules (sigma-correlation-rules-specification.md) out of and into our correlations.

**Export** (:func:`export_correlation`). An ``event_count``, ``value_count``, ``temporal`` or
``temporal_ordered`` correlation becomes one multi-document file: the correlation, then one
Sigma rule per entry (``name`` ``<rule id>_<entry name>``, referenced by that name), so each file
stands alone. An entry naming one of our YAML match rules gets a copy of that rule; when the rule
alerts on its own, the correlation says ``generate: true``. ``group-by`` starts with ``workspace.id``: our
correlations always count per workspace. ``absence`` and ``new_terms`` correlations, entries
with ``new_terms`` and fractional thresholds have no Sigma equivalent and are skipped with the
reason. Entries with their own ``group-by`` become Sigma field name ``aliases``.

**Import** (:func:`import_collection`). Sigma documents of one or more files, taken together:
a correlation whose ``rules`` name (by ``name`` or ``id``) plain Sigma rules of the collection
becomes one of our correlations with those rules inline; the rules it uses are not imported on
their own unless it says ``generate: true``; ``aliases`` become per-entry ``group-by``.
Chained correlations, ``value_sum``, ``value_avg``, ``value_percentile``, a ``temporal``
condition other than "all rules" (an extended, text condition included), a condition with an upper
bound or more than one operator are rejected with the reason. Sigma filters in the collection are
applied to the rules they name first (:mod:`pipeline.rules.sigma_filter`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.rules.base import Rule, RuleParams
from pipeline.rules.correlation import (
    UPPER_BOUND_OPS,
    UPPER_BOUND_REASON,
    CorrelationSpec,
    EntrySpec,
    compile_correlation,
)
from pipeline.rules.lifecycle import parse_duration
from pipeline.rules.matcher import MatchRuleSpec, RuleSyntaxError, getter
from pipeline.rules.sigma import (
    DEFAULT_FP,
    LEVELS,
    PRODUCT,
    SERVICE,
    SEVERITIES,
    Exported,
    SigmaExportError,
    SigmaImportError,
    attack_tags,
    check_metadata,
    export_detection,
    import_rule,
    lifecycle_keys,
    rule_id_for,
    sigma_id,
    sigma_title,
    title_note,
    with_origin,
)
from pipeline.rules.sigma_filter import SigmaFilter, applies, apply_filter, named_refs, names_rule, parse_filter

SIGMA_TYPES = ("event_count", "value_count", "temporal", "temporal_ordered")
_UNITS = (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1))
_SPAN = re.compile(r"^(\d+)([smhd])$")  # sigma-correlation-rules-specification.md, "Time Selection"


# ---- export ----------------------------------------------------------------------------------
def _timespan(seconds: float) -> str:
    """Seconds as Sigma's ``number + lower-case letter``, in the largest whole unit."""
    whole = max(1, math.ceil(seconds))
    for unit, size in _UNITS:
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"  # pragma: no cover - the "s" unit always divides


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _entry_doc(spec: CorrelationSpec, entry: EntrySpec, i: int, ref: Rule | None) -> dict[str, Any]:
    """The Sigma rule of one correlation entry, named ``<correlation id>_<entry>`` so the correlation and its
    aliases can name it. An entry referencing one of our rules (``ref``) gets a copy of that rule's
    detection: the file must stand alone (pySigma resolves references within what it loads)."""
    label = entry.name or entry.rule or f"rule{i}"
    where = f"Event {i + 1} of the instantly-audit correlation {spec.id}"
    ref_spec = getattr(ref, "spec", None)
    if isinstance(ref_spec, MatchRuleSpec) and ref is not None:
        types, codes, detection = list(ref_spec.types), ref_spec.activity_codes, ref_spec.detection
        title = f"{spec.title}: {entry.name or ref.meta.title}"
        description = f"{where}: a copy of the instantly-audit rule {ref.meta.id} " + (
            "(also exported on its own); that rule alerts on its own too (generate: true)."
            if ref.params.enabled  # a disabled rule is skipped by the export (unless --include-disabled)
            else "(disabled here: it does not alert on its own)."
        )
    else:
        types, codes, detection = list(entry.types or ["*"]), entry.activity_codes, entry.detection or {}
        title = f"{spec.title}: {entry.name or f'rule {i}'}"
        description = f"{where}; it does not alert on its own."
    doc = {
        "title": sigma_title(title),
        "id": sigma_id(f"{spec.id}#{entry.name or entry.rule or i}"),
        "name": f"{_slug(spec.id)}_{_slug(label)}",
        "description": title_note(title) + description,
        "logsource": {"product": PRODUCT, "service": SERVICE},
        "detection": export_detection(detection, types, list(codes) if codes is not None else None),
    }
    if ref is not None and ref.params.enabled:  # generated on its own: with its own level
        doc["level"] = LEVELS[str(ref.params.severity or ref.meta.severity)]
    return doc


def export_correlation(rule: Rule, rules: Mapping[str, Rule] | None = None) -> Exported:
    """Our correlation rule as a Sigma correlation plus its base rules, or skipped with the reason.

    ``rules`` are the rules of the export by id: an entry ``rule: <id>`` is written as a base rule of the
    file (a copy of that rule's detection), and when that rule alerts on its own (it is enabled) the
    correlation says ``generate: true``, so Sigma tools convert the referenced rules on their own too.
    """
    spec = getattr(rule, "spec", None)
    rid = rule.meta.id
    if not isinstance(spec, CorrelationSpec):
        return Exported(rid, None, "not a correlation rule")
    body = spec.correlation
    if body.type not in SIGMA_TYPES:
        return Exported(rid, None, f"{body.type} correlation: Sigma correlations have no {body.type} type")
    bases: list[dict[str, Any]] = []
    refs: list[str] = []
    groups: list[list[str]] = []
    generate = False
    for i, raw in enumerate(body.rules):
        entry = EntrySpec(rule=raw) if isinstance(raw, str) else raw
        if entry.new_terms:
            return Exported(rid, None, f"correlation entry {i} uses new_terms (Sigma has no new-terms correlation)")
        groups.append(list(entry.group_by if entry.group_by is not None else body.group_by))
        ref = None
        if entry.rule is not None:
            ref = (rules or {}).get(entry.rule)
            if not isinstance(getattr(ref, "spec", None), MatchRuleSpec) or ref is None:
                return Exported(rid, None, f"correlation entry {i} references {entry.rule!r}, not a YAML match "
                                           "rule of this export")  # fmt: skip
            generate = generate or ref.params.enabled
        try:
            bases.append(_entry_doc(spec, entry, i, ref))
        except SigmaExportError as err:
            return Exported(rid, None, f"correlation entry {i}: {err}")
        refs.append(bases[-1]["name"])
    if len(set(refs)) != len(refs):
        return Exported(rid, None, "the same rule twice in one correlation: Sigma's rules are unique")
    if len({len(g) for g in groups}) != 1:
        return Exported(rid, None, "entries group by different numbers of fields (Sigma aliases pair them)")
    group, aliases = ["workspace.id"], {}
    for j, fields in enumerate(zip(*groups, strict=True)):
        if len(set(fields)) == 1:
            group.append(fields[0])
        else:  # an entry's own group-by: Sigma's field name aliases
            aliases[f"group_{j + 1}"] = dict(zip(refs, fields, strict=True))
            group.append(f"group_{j + 1}")
    corr: dict[str, Any] = {"type": body.type, "rules": refs, "group-by": list(dict.fromkeys(group))}
    if aliases:
        corr["aliases"] = aliases
    corr["timespan"] = _timespan(parse_duration(body.timespan, "correlation.timespan"))
    if body.type in ("event_count", "value_count"):
        if len(body.condition) != 1:  # pySigma refuses a condition with more than one operator
            return Exported(rid, None, f"condition {body.condition} has {len(body.condition)} operators: a Sigma "
                                       "correlation condition has exactly one")  # fmt: skip
        if any(v != int(v) for v in body.condition.values()):
            return Exported(rid, None, "fractional correlation threshold: Sigma conditions are integers")
        corr["condition"] = {op: int(v) for op, v in body.condition.items()}
        if body.field:
            corr["condition"]["field"] = body.field
    if generate:  # pySigma reads it here; the specification's JSON schema at the top (written there too)
        corr["generate"] = True
    meta = rule.meta
    description = (meta.description or meta.title).strip().rstrip(".") + "."
    doc: dict[str, Any] = {
        "title": sigma_title(meta.title),
        "id": sigma_id(rid),
        "status": meta.status,
        "description": f"{title_note(meta.title) if meta.description else ''}{description} "
        f"instantly-audit correlation {rid} v{meta.version}.",
        "author": meta.author or "instantly-audit",
        **({"references": list(dict.fromkeys(meta.references))} if meta.references else {}),
        **({"generate": True} if generate else {}),
        "correlation": corr,
        "falsepositives": list(dict.fromkeys(meta.falsepositives)) or [DEFAULT_FP],
        "level": LEVELS[str(rule.params.severity or meta.severity)],
    }
    if meta.attack:
        doc["tags"] = attack_tags(meta.attack)
    return Exported(rid, doc, base=tuple(bases))


# ---- import ----------------------------------------------------------------------------------
def _span_seconds(value: Any) -> float:
    m = _SPAN.match(str(value))
    if m is None:
        raise SigmaImportError(f"timespan {value!r} is not a number and one of s, m, h, d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)]


def _entry_group(
    group: list[str], aliases: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any], ref: str
) -> list[str]:
    """One entry's own group-by: each alias resolved to the field it names for this rule."""
    keys = {ref, str(base.get("name")), str(base.get("id"))}
    out = []
    for g in group:
        if g in aliases:
            hit = [str(f) for k, f in aliases[g].items() if str(k) in keys]
            if not hit:
                raise SigmaImportError(f"correlation.aliases.{g} names no field for rule {ref!r}")
            g = hit[0]
        if g != "workspace.id":
            out.append(g)
    return out


def _correlation(
    doc: Mapping[str, Any], by_ref: Mapping[str, Mapping[str, Any]], prefix: str, refused: Mapping[int, str]
) -> dict[str, Any]:
    """One Sigma correlation (its rules looked up in ``by_ref``) as one of our correlation rules; ``refused``:
    why a rule document may not be used (by ``id`` of the document)."""
    body = doc.get("correlation")
    if not isinstance(body, Mapping):
        raise SigmaImportError("correlation must be a mapping")
    check_metadata(doc)
    kind = body.get("type")
    if kind not in SIGMA_TYPES:
        raise SigmaImportError(f"correlation type {kind!r} is not supported (supported: {', '.join(SIGMA_TYPES)})")
    aliases = body.get("aliases") or {}
    if not isinstance(aliases, Mapping) or not all(isinstance(v, Mapping) for v in aliases.values()):
        raise SigmaImportError("correlation.aliases must map each alias to {rule name: field}")
    names = _rule_refs(body)
    if not isinstance(names, list) or not names:
        raise SigmaImportError("correlation.rules must list the correlated rules")
    if twice := next((str(n) for i, n in enumerate(names) if str(n) in map(str, names[:i])), None):
        raise SigmaImportError(f"correlation.rules names {twice!r} more than once")  # the JSON schema: uniqueItems
    entries: list[dict[str, Any]] = []
    raw_group = body.get("group-by") or []
    if isinstance(raw_group, str):  # pySigma reads a plain string as a one-field list
        raw_group = [raw_group]
    if not isinstance(raw_group, list):
        raise SigmaImportError("correlation.group-by must be a field or a list of fields")
    group = [str(g) for g in raw_group]
    for ref in names:
        base = by_ref.get(str(ref))
        if base is None:
            raise SigmaImportError(f"correlation.rules: {ref!r} names no rule of the imported files")
        if "correlation" in base:
            raise SigmaImportError(
                f"correlation.rules: {ref!r} is a correlation (chained correlations are not supported)"
            )
        if id(base) in refused:
            raise SigmaImportError(f"correlation.rules: {ref!r}: {refused[id(base)]}")
        try:
            rule = import_rule(base, prefix)
        except SigmaImportError as err:
            raise SigmaImportError(f"correlation.rules: {ref!r}: {err}") from None
        entries.append({"name": re.sub(r"[^A-Za-z0-9_]+", "_", str(base.get("name") or ref)),
                        "types": rule["types"], "detection": rule["detection"]})  # fmt: skip
        if aliases:
            entries[-1]["group-by"] = _entry_group(group, aliases, base, str(ref))
    for g in [g for g in group if g not in aliases] + [g for e in entries for g in e.get("group-by", [])]:
        try:
            getter(g, "correlation.group-by")
        except RuleSyntaxError as err:
            raise SigmaImportError(f"{err} — the field does not map to Event v1") from None
    cond = body.get("condition")
    if cond is not None and not isinstance(cond, Mapping):
        if isinstance(cond, str) and kind in ("temporal", "temporal_ordered"):
            # pySigma reads it as a boolean expression over the rules (key_created and not key_deleted);
            # dropping it would alert on exactly what it excludes
            raise SigmaImportError(f"condition {cond!r}: extended temporal conditions are not supported")
        raise SigmaImportError(f"correlation.condition {cond!r} is not a mapping of one operator to a number")
    out: dict[str, Any] = {"type": kind, "rules": entries, "group-by": [g for g in group if g != "workspace.id"]}
    if aliases:
        out["group-by"] = []
    span = str(body.get("timespan"))
    _span_seconds(span)  # a number and one of s, m, h, d, or rejected
    out["timespan"] = span
    if isinstance(cond, Mapping):
        ops = {k: v for k, v in cond.items() if k != "field"}
        if kind in ("temporal", "temporal_ordered"):
            if ops and ops not in ({"gte": len(entries)}, {"eq": len(entries)}):
                raise SigmaImportError(f"a {kind} condition other than all {len(entries)} rules is not supported")
        else:
            bad = [k for k in ops if k not in ("gt", "gte", "lt", "lte", "eq", "neq")]
            if bad or not ops or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in ops.values()):
                raise SigmaImportError(f"condition {dict(cond)} needs numeric gt, gte, lt, lte, eq or neq")
            if upper := [k for k in ops if k in UPPER_BOUND_OPS]:  # first: the specification's ranges have one
                raise SigmaImportError(f"condition {upper[0]}: {UPPER_BOUND_REASON}")
            if len(ops) > 1:  # pySigma: "exactly one condition operator"
                raise SigmaImportError(f"condition {dict(cond)}: a Sigma correlation condition has exactly one "
                                       "operator")  # fmt: skip
            out["condition"] = dict(ops)
        if "field" in cond:
            field = cond["field"]
            if not isinstance(field, str):
                raise SigmaImportError("condition.field must be one field")
            getter(field, "correlation.condition.field")
            out["field"] = field
    elif kind in ("event_count", "value_count"):
        raise SigmaImportError(f"{kind} needs a condition")
    if kind == "value_count" and "field" not in out:
        raise SigmaImportError("value_count needs condition.field")
    level = str(doc.get("level", "medium")).lower()  # pySigma reads the level in any case
    if level not in SEVERITIES:
        raise SigmaImportError(f"unknown level {level!r}")
    tags = [str(t).lower() for t in doc.get("tags") or []]
    cid = doc.get("id", "(no id)")
    return {
        "id": rule_id_for(doc, prefix),
        "title": str(doc.get("title", "")),
        "severity": SEVERITIES[level],
        "description": with_origin(str(doc.get("description") or ""), f"Imported from Sigma correlation {cid}."),
        "attack": [t.split(".", 1)[1].upper() for t in tags if re.fullmatch(r"attack\.t\d{4}(\.\d{3})?", t)],
        "correlation": out,
        **lifecycle_keys(doc),
    }


def _rule_refs(body: Mapping[str, Any]) -> Any:
    """``correlation.rules`` as pySigma reads it: one string is that one rule (like ``group-by``)."""
    refs = body.get("rules")
    return [refs] if isinstance(refs, str) else refs


def import_collection(
    docs: Sequence[tuple[str, Any]], prefix: str = "sigma"
) -> list[tuple[str, dict[str, Any] | None, str]]:
    """Every document of a Sigma collection as (where, our rule or None, message).

    A correlation's base rules are resolved by ``name`` or ``id`` across all ``docs``; they are
    reported as used by it and not imported alone unless a correlation using them has
    ``generate: true``.
    """
    docs, notes, refused = _apply_filters(docs)
    by_ref: dict[str, Mapping[str, Any]] = {}
    for _, doc in docs:
        if isinstance(doc, Mapping):
            for key in ("name", "id"):
                if doc.get(key) is not None:
                    by_ref[str(doc[key])] = doc
    used: dict[int, str] = {}
    generated: set[int] = set()
    for _, doc in docs:
        if isinstance(doc, Mapping) and isinstance(doc.get("correlation"), Mapping):
            # the JSON schema puts generate beside correlation; pySigma reads it inside: either counts
            gen = doc.get("generate") is True or doc["correlation"].get("generate") is True
            for ref in _rule_refs(doc["correlation"]) or []:
                if (base := by_ref.get(str(ref))) is not None and "correlation" not in base:
                    if gen:
                        generated.add(id(base))
                    else:
                        used.setdefault(id(base), str(doc.get("title", "")))
    used = {k: v for k, v in used.items() if k not in generated}
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    taken: set[str] = set()
    for where, doc in docs:
        if id(doc) in notes:
            out.append((where, None, notes[id(doc)]))
            continue
        if id(doc) in refused:
            out.append((where, None, f"rejected: {refused[id(doc)]}"))
            continue
        try:
            if isinstance(doc, Mapping) and "correlation" in doc:
                rule = _correlation(doc, by_ref, prefix, refused)
                # compiled as the engine will load it: a one-rule temporal or a 0s timespan is refused there
                compile_correlation(CorrelationSpec.model_validate(rule), RuleParams(), {})
            elif id(doc) in used:
                out.append((where, None, f"used by correlation {used[id(doc)]!r}"))
                continue
            else:
                rule = import_rule(doc, prefix)
        except SigmaImportError as err:
            out.append((where, None, f"rejected: {err}"))
            continue
        except (RuleSyntaxError, ValueError) as err:
            out.append((where, None, f"rejected: {err}"))
            continue
        rule["id"] = _unique_id(rule["id"], doc, taken)
        taken.add(rule["id"])
        out.append((where, rule, f"imported as {rule['id']}{notes.get(-id(doc), '')}"))
    return out


def _apply_filters(
    docs: Sequence[tuple[str, Any]],
) -> tuple[list[tuple[str, Any]], dict[int, str], dict[int, str]]:
    """The documents with every Sigma filter applied to the rules it applies to, as pySigma does.

    Returns the documents (a filtered rule replaced by its filtered copy), messages by ``id`` of a
    document (for a filter; under ``-id`` the note an imported rule carries) and, by ``id`` of a
    rule document, why it is refused (a filter naming it cannot be read).
    """
    parsed: list[tuple[int, SigmaFilter | None, str, list[str]]] = []
    for n, (_, doc) in enumerate(docs):
        if isinstance(doc, Mapping) and "filter" in doc:
            try:
                parsed.append((n, parse_filter(doc), "", named_refs(doc)))
            except SigmaImportError as bad:
                parsed.append((n, None, str(bad), named_refs(doc)))
    if not parsed:
        return list(docs), {}, {}
    out = list(docs)
    notes: dict[int, str] = {}
    refused: dict[int, str] = {}
    hits = {n: 0 for n, *_ in parsed}
    other_source: dict[int, list[str]] = {n: [] for n, *_ in parsed}  # named rules of another log source
    for k, (where, doc) in enumerate(docs):
        if not isinstance(doc, Mapping) or any(key in doc for key in ("filter", "correlation", "action")):
            continue
        applied = []
        for n, f, why, refs in parsed:
            if f is None:
                if names_rule(refs, doc):
                    refused[id(doc)] = (f"filter {docs[n][0]} names this rule and cannot be applied ({why}); "
                                        "without it the rule would match what the filter excludes")  # fmt: skip
                    hits[n] += 1
            elif applies(f, doc):
                doc = apply_filter(f, doc, n)
                applied.append(f.title or docs[n][0])
                hits[n] += 1
            elif f.refs is not None and names_rule(f.refs, doc):
                other_source[n].append(f"{where}: {dict(doc.get('logsource') or {})}")
        if id(docs[k][1]) in refused:
            continue
        if applied:
            out[k] = (where, doc)
            notes[-id(doc)] = " (filtered by " + ", ".join(repr(a) for a in applied) + ")"
    for n, f, why, _ in parsed:
        doc = docs[n][1]
        if f is None:
            notes[id(doc)] = f"rejected: {why}"
        elif hits[n]:
            notes[id(doc)] = f"filter applied to {hits[n]} rule(s)"
        elif other_source[n]:
            which = "the rule it names" if len(other_source[n]) == 1 else "the rules it names"
            notes[id(doc)] = (f"rejected: the filter's logsource {dict(f.logsource)} is not that of {which} "
                              f"({'; '.join(other_source[n])}); pySigma applies a filter only to rules of its "
                              "log source")  # fmt: skip
        else:
            notes[id(doc)] = ("rejected: the filter applies to no rule of the imported files (import it with "
                              "the rules it filters)")  # fmt: skip
    return out, notes, refused


def _unique_id(rule_id: str, doc: Mapping[str, Any], taken: set[str]) -> str:
    """``rule_id``, or when an earlier rule of the import has it (two Sigma rules with one title), the
    id with the first 8 characters of the Sigma ``id`` appended (``_2``, ``_3``... without one): our ids
    must be unique or the imported file does not load."""
    if rule_id not in taken:
        return rule_id
    sid = re.sub(r"[^a-z0-9]", "", str(doc.get("id") or "").lower())[:8]
    suffixes = ([sid] if sid else []) + [str(n) for n in range(2, len(taken) + 3)]
    for suffix in suffixes:
        new = f"{rule_id[: 99 - len(suffix)].rstrip('_')}_{suffix}"
        if new not in taken:
            return new
    raise AssertionError("unreachable: more suffixes than taken ids")  # pragma: no cover
