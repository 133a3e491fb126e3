"""Sigma interop: export our rules as Sigma rules, import Sigma rules whose fields are Event v1 paths.

**Export** (:func:`export_rule`). A YAML rule becomes one Sigma rule: its detection keeps its
selections (field names are Event v1 paths such as ``actor.ip`` or ``attributes.activity_code``),
its ``types`` and ``activity_codes`` become two more selections ANDed to the condition, its
severity the ``level`` and its ATT&CK ids the ``attack.tNNNN`` tags. The ``id`` is a UUIDv5 of
the rule id, so it is stable across exports. A ``resolve`` block has no Sigma equivalent and is
only mentioned in the description. A Python rule is exported only when it declares an
equivalent single-event detection (``sigma_detection``); the others are stateful (thresholds,
windows, inventories, ticks) and are reported as skipped with that reason. Correlation rules
are exported by :mod:`pipeline.rules.sigma_correlation`.

**Import** (:func:`import_rule`). A Sigma rule is accepted when its ``logsource.product`` is
``instantly`` (or absent), it is not a correlation or filter, every field maps to an Event v1 path,
every modifier is one the matcher knows and values are plain (:mod:`pipeline.rules.sigma_values`:
wildcards, escapes), and its common keys are what pySigma accepts. Conditions are read as pySigma
reads them (:mod:`pipeline.rules.sigma_condition`); items of one mapping that would share a key of
ours become selections ANDed in the condition. Filters are applied on the way in
(:mod:`pipeline.rules.sigma_filter`). Anything else is rejected with the reason.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from pipeline.rules.base import Rule
from pipeline.rules.matcher import MatchRuleSpec, RuleSyntaxError, compile_detection, getter
from pipeline.rules.sigma_condition import plain_identifiers, rename_in_condition, rewrite_of
from pipeline.rules.sigma_regex import portable_end, re2_problem
from pipeline.rules.sigma_values import SigmaImportError as SigmaImportError  # re-exported: callers import it here
from pipeline.rules.sigma_values import import_selection, split_collisions, split_neq

NAMESPACE = uuid.UUID("5b0ce7a2-6f5e-4c39-9d5b-2f1f8d0b9a41")
"""UUIDv5 namespace of exported rule ids (never change it: ids must stay stable)."""
PRODUCT, SERVICE = "instantly", "audit"
LEVELS = {"info": "informational", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
SEVERITIES = {v: k for k, v in LEVELS.items()}
SIGMA_STATUSES = ("stable", "test", "experimental", "deprecated")
"""Sigma statuses our rules share (Sigma's fifth, ``unsupported``, is never exported and is rejected on import)."""
RELATED_TYPES = ("derived", "obsolete", "merged", "renamed", "similar")
"""sigma-rules-specification.md, "Related": the relation types a ``related`` entry may name."""
FIELD_NOTE = (
    "Field names are instantly-audit Event v1 paths (schemas/event.v1.json): type, time, workspace.id, "
    "source.kind, actor.user_id, actor.ip, actor.api_key_id, target.id, change.after.<field>, "
    "attributes.<name>, raw.<name>. Map them to your SIEM's field names with a pySigma processing pipeline."
)
DEFAULT_FP = "Intended administrative changes (see the runbook)"
_DROP_ON_EXPORT = frozenset({"in", "eq"})  # a list is already "any of"; eq is the default
_WILDCARD = re.compile(r"(?<!\\)[*?]")


class _SigmaDumper(yaml.SafeDumper):
    """Block YAML indented by 4 spaces, lists too (``references:\n    - ...``), as the Sigma rules
    specification asks ("Yaml File": indentation of 4 spaces)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_sigma(docs: list[dict[str, Any]]) -> str:
    """Sigma documents as one YAML text (``---`` between several), 4-space indentation, block style."""
    return yaml.dump_all(docs, Dumper=_SigmaDumper, sort_keys=False, width=100, allow_unicode=True, indent=4,
                         default_flow_style=False, explicit_start=len(docs) > 1)  # fmt: skip


TITLE_MAX = 256
"""sigma-detection-rule-schema.json's ``maxLength`` for ``title``; pySigma refuses a longer one."""


def sigma_title(title: str) -> str:
    """``title`` as Sigma takes it: cut to :data:`TITLE_MAX` characters, ending with "…" when cut."""
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1].rstrip() + "…"


def title_note(title: str) -> str:
    """What opens a description when :func:`sigma_title` cut the title: the whole title; else nothing."""
    return f"{' '.join(title.split()).rstrip('.')}. " if len(title) > TITLE_MAX else ""


def sigma_id(rule_id: str) -> str:
    """The stable Sigma ``id`` of one of our rules."""
    return str(uuid.uuid5(NAMESPACE, rule_id))


def sigma_filename(rule_id: str) -> str:
    """The exported file name: lower-case letters, digits and ``_``, 10 to 70 characters, ``.yml``.

    sigma-rules-specification.md ("Yaml File") asks for that shape; ``api_key.all_scope`` →
    ``api_key_all_scope.yml``, a short id gets an ``instantly_`` prefix, a long one is cut and
    ends with 8 hex digits of its Sigma id so it stays unique.
    """
    stem = re.sub(r"[^a-z0-9]+", "_", rule_id.lower()).strip("_")
    if len(stem) < 6:
        stem = f"instantly_{stem}"
    if len(stem) > 66:
        stem = f"{stem[:57].rstrip('_')}_{sigma_id(rule_id)[:8]}"
    return f"{stem}.yml"


def attack_tags(attack: tuple[str, ...] | list[str]) -> list[str]:
    """``T1098.001`` → ``attack.t1098.001`` (each once: Sigma tags are unique)."""
    return list(dict.fromkeys(f"attack.{t.lower()}" for t in attack))


# ---- export ----------------------------------------------------------------------------------
def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    return value


def _export_item(path: str, kept: list[str], value: Any) -> tuple[str, Any]:
    if "all" in kept and not (isinstance(value, list) and len(value) > 1):
        kept = [m for m in kept if m != "all"]  # Sigma forbids |all on a single value; for one it changes nothing
    literal = not ({"re", "cidr"} & set(kept))
    v = ([_escape(x) for x in value] if isinstance(value, list) else _escape(value)) if literal else value
    if "re" in kept:
        v = [_export_regex(path, kept, x) for x in value] if isinstance(value, list) else _export_regex(path, kept, v)
    return "|".join([path, *kept]), v


def _export_regex(path: str, mods: list[str], pattern: Any) -> Any:
    """A regex as RE2 (pySigma's engine) reads it: ``\\Z`` (imported wildcards end with it) written as ``$``.

    Raises:
        SigmaExportError: RE2 cannot compile the pattern even so (a lookaround, a backreference...).
    """
    if not isinstance(pattern, str):
        return pattern
    flags = "".join(m for m in mods if m in ("i", "m", "s"))
    out = portable_end(pattern, flags)
    if problem := re2_problem(out, flags):
        raise SigmaExportError(f"{path}|re {pattern!r}: RE2, pySigma's regex engine, cannot compile it: {problem}")
    return out


def _export_selection(body: Any) -> Any:
    """One selection as Sigma. ``null`` cannot be part of a Sigma value list (sigma-rules-specification.md):
    ``{f: [null, a, b]}`` ("f is missing, a or b") becomes the list of mappings ``[{f: null}, {f: [a, b]}]``,
    each with the selection's other fields; with ``|all`` the null and the rest go in one mapping."""
    if isinstance(body, list):
        flat: list[Any] = []
        for b in body:
            got = _export_selection(b)
            flat += got if isinstance(got, list) else [got]  # an OR inside an OR
        return flat
    out: dict[str, Any] = {}
    alternatives: list[list[tuple[str, Any]]] = []  # per field with null in its list: its OR
    for key, value in body.items():
        path, *mods = str(key).split("|")
        kept = [m for m in mods if m not in _DROP_ON_EXPORT]
        if isinstance(value, list) and None in value and len(value) > 1:
            rest = [x for x in value if x is not None]
            if not rest or "all" in kept:  # every value: null and each of the rest (|all needs two)
                out[path] = None
                if rest:
                    k, v = _export_item(path, kept, rest if len(rest) > 1 else rest * 2)
                    out[k] = v
            else:
                alternatives.append([(path, None), _export_item(path, kept, rest if len(rest) > 1 else rest[0])])
            continue
        k, v = _export_item(path, kept, value)
        out[k] = v
    if not alternatives:
        return out
    return [out | dict(combo) for combo in itertools.product(*alternatives)]


class SigmaExportError(ValueError):
    """One of our rules has no Sigma form; the message says why (the rule is skipped with it)."""


MAX_GLOB_EXPANSION = 64
"""Event types one glob with ``[...]`` classes may expand to on export."""


def expand_classes(glob: str) -> list[str]:
    """An fnmatch glob's ``[...]`` classes as the alternatives they stand for (Sigma has no classes):
    ``api_key.[cd]*`` → ``api_key.c*``, ``api_key.d*``. An unclosed ``[`` is a literal, as in fnmatch.

    Raises:
        SigmaExportError: a negated class ``[!...]``, a class holding a wildcard character, or more
            than :data:`MAX_GLOB_EXPANSION` alternatives.
    """
    parts: list[list[str]] = []
    i = 0
    while i < len(glob):
        end = glob.find("]", i + 2) if glob[i] == "[" else -1  # "[]" : a "]" first in a class is a member
        if end == -1:
            parts.append([glob[i]])
            i += 1
            continue
        body = glob[i + 1 : end]
        if body.startswith("!"):
            raise SigmaExportError(f"event type glob {glob!r}: a negated class [!...] has no Sigma form")
        chars: set[str] = set()
        j = 0
        while j < len(body):
            if j + 2 < len(body) and body[j + 1] == "-":
                chars.update(chr(c) for c in range(ord(body[j]), ord(body[j + 2]) + 1))
                j += 3
            else:
                chars.add(body[j])
                j += 1
        if chars & set("*?\\"):
            raise SigmaExportError(f"event type glob {glob!r}: a class holding a wildcard character has no Sigma form")
        parts.append(sorted(chars))
        i = end + 1
    if math.prod(len(p) for p in parts) > MAX_GLOB_EXPANSION:
        raise SigmaExportError(f"event type glob {glob!r} stands for more than {MAX_GLOB_EXPANSION} patterns")
    return ["".join(p) for p in itertools.product(*parts)]


def _types_selection(types: list[str]) -> Any:
    """Event type globs as Sigma, modifiers before wildcards (pySigma's ``wildcards_instead_of_modifiers``):
    ``audit.*`` → ``type|startswith: audit.``, ``*.deleted`` → ``endswith``, ``*key*`` → ``contains``;
    ``[...]`` classes expanded (:func:`expand_classes`)."""
    shapes: dict[str, list[str]] = {}
    for t in dict.fromkeys(x for g in types for x in expand_classes(g)):
        core = t.strip("*")
        if _WILDCARD.search(core) or not core:
            key, value = "type", t
        else:
            key = {(True, True): "type|contains", (False, True): "type|startswith", (True, False): "type|endswith",
                   (False, False): "type"}[(t.startswith("*"), t.endswith("*"))]  # fmt: skip
            value = core
        shapes.setdefault(key, []).append(value)
    alts = [{k: v[0] if len(v) == 1 else v} for k, v in shapes.items()]
    return alts[0] if len(alts) == 1 else alts


def _free_name(base: str, taken: list[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... when the rule has a selection of that name already."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def _exported_keys(key: str, value: Any) -> set[str]:
    got = _export_selection({key: value})
    return {str(k) for m in (got if isinstance(got, list) else [got]) for k in m}


def _layers(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A mapping's items in parts whose exported keys do not collide (``f|in: [a, b]`` and ``f|eq: b`` both
    become ``f``); each item goes to the first part that has none of its keys yet."""
    parts: list[tuple[set[str], dict[str, Any]]] = []
    for k, v in body.items():
        keys = _exported_keys(str(k), v)
        part = next((p for p in parts if not keys & p[0]), None)
        if part is None:
            parts.append(part := (set(), {}))
        part[0].update(keys)
        part[1][k] = v
    return [b for _, b in parts]


def _split_collisions(detection: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Our selections with items whose exported keys collide split into selections ANDed in the condition
    (a Sigma mapping holds one value per key, and ANDs its items): ``s`` → ``(s and s_and)``, in a list
    (an OR) ``s`` → ``(s or (s_1 and s_1_and))``. Returns the selections and the names' replacements."""
    taken = [str(k) for k in detection]
    out: dict[str, Any] = {}
    exprs: dict[str, str] = {}

    def group(name: str, layers: list[dict[str, Any]], keep: bool) -> str:
        names = [name if keep else _free_name(name, taken)]
        taken.append(names[0])
        for _ in layers[1:]:
            names.append(_free_name(f"{name}_and", taken))
            taken.append(names[-1])
        out.update(zip(names, layers, strict=True))
        return "(" + " and ".join(names) + ")"

    for k, body in detection.items():
        name = str(k)
        if k == "condition":
            continue
        if isinstance(body, Mapping) and len(layers := _layers(body)) > 1:
            exprs[name] = group(name, layers, True)
        elif isinstance(body, list) and any(isinstance(b, Mapping) and len(_layers(b)) > 1 for b in body):
            split = [_layers(b) if isinstance(b, Mapping) else [b] for b in body]
            plain = [b for b, x in zip(body, split, strict=True) if len(x) == 1]
            terms = []
            if plain:
                out[name] = plain
                terms.append(name)
            terms += [group(f"{name}_{i}", x, False) for i, x in enumerate(split) if len(x) > 1]
            exprs[name] = "(" + " or ".join(terms) + ")"
        else:
            out[name] = body
    return out, exprs


def export_detection(detection: Mapping[str, Any], types: list[str], codes: list[int] | None) -> dict[str, Any]:
    cond = detection.get("condition")
    if cond is None:
        cond = next(k for k in detection if k != "condition")
    names = [str(k) for k in detection if k != "condition"]
    parted, collided = _split_collisions(detection)
    if collided:  # patterns written out as our reading first: the split names must not widen one
        cond = rename_in_condition(rewrite_of(str(cond), names, names, to_sigma=True, force=True), collided)
    sels = {k: _export_selection(v) for k, v in parted.items()}
    names = list(sels)
    added: dict[str, Any] = {}
    if "*" not in types:
        added[_free_name("rule_types", names)] = _types_selection(types)
    if codes is not None:
        added[_free_name("rule_activity_codes", names)] = {
            "attributes.activity_code": codes[0] if len(codes) == 1 else list(codes)}  # fmt: skip
    extra = list(added)
    # our patterns reach _-prefixed selections and never the added ones; Sigma's may differ
    cond = rewrite_of(str(cond), names, [*names, *extra], to_sigma=True)
    sels.update(added)
    if extra:
        cond = f"({cond}) and " + " and ".join(extra)
    return {**sels, "condition": cond}


@dataclass(frozen=True, slots=True)
class Exported:
    """One export outcome: the Sigma document (and a correlation's base rules), or why the rule was skipped."""

    rule_id: str
    document: dict[str, Any] | None
    skipped: str = ""
    base: tuple[dict[str, Any], ...] = ()


def export_rule(rule: Rule) -> Exported:
    """Our rule as a Sigma rule document, or skipped with the reason."""
    meta = rule.meta
    spec = getattr(rule, "spec", None)
    resolve_note = ""
    if spec is not None and not isinstance(spec, MatchRuleSpec):
        return Exported(meta.id, None, "correlation rule: exported as a single-event Sigma rule it would "
                                       "change meaning (Sigma correlation export is not implemented)")  # fmt: skip
    try:
        if spec is not None:
            types, codes = list(spec.types), (list(spec.activity_codes) if spec.activity_codes is not None else None)
            detection = export_detection(spec.detection, types, codes)
            if spec.resolve is not None:
                resolve_note = " Resolution (a later event that clears the alert) is not expressed in Sigma."
        else:
            native = getattr(rule, "sigma_detection", None)
            if not isinstance(native, Mapping):
                return Exported(meta.id, None, "stateful Python rule (state, thresholds, windows or ticks): "
                                               "no single-event Sigma detection expresses it")  # fmt: skip
            types = [t for t in meta.event_types] or ["*"]
            codes = sorted(meta.activity_codes) if meta.activity_codes is not None else None
            detection = export_detection(native, types, codes)
    except SigmaExportError as err:
        return Exported(meta.id, None, str(err))
    status = getattr(meta, "status", None)
    fps = list(dict.fromkeys(getattr(meta, "falsepositives", None) or ())) or [DEFAULT_FP]  # unique, as Sigma asks
    description = (meta.description or meta.title).strip().rstrip(".") + "."
    if meta.basic:
        description += f" Security basic: {meta.basic}."
    doc: dict[str, Any] = {
        "title": sigma_title(meta.title),
        "id": sigma_id(meta.id),
        "status": status if status in SIGMA_STATUSES else "experimental",
        "description": f"{title_note(meta.title) if meta.description else ''}{description}{resolve_note} "
        f"instantly-audit rule {meta.id} v{meta.version}. {FIELD_NOTE}",
        "author": getattr(meta, "author", "") or "instantly-audit",
        "logsource": {"product": PRODUCT, "service": SERVICE},
        "detection": detection,
        "falsepositives": fps,
        "level": LEVELS[str(rule.params.severity or meta.severity)],
    }
    if shown := list(dict.fromkeys(getattr(spec, "fields", None) or ())):
        doc["fields"] = shown
    if refs := list(dict.fromkeys(getattr(meta, "references", None) or ())):
        doc["references"] = refs
    if related := _related(rule):
        doc["related"] = related
    if meta.attack:
        doc["tags"] = attack_tags(meta.attack)
    return Exported(meta.id, doc)


def _related(rule: Rule) -> list[dict[str, str]]:
    """Sigma ``related`` entries: the related rule's exported id and the relation (``similar`` if unstated)."""
    spec = getattr(rule, "spec", None)
    typed = [(r.id, r.type) for r in getattr(spec, "related", None) or ()]
    pairs = typed or [(rid, "similar") for rid in getattr(rule.meta, "related", None) or ()]
    return [{"id": sigma_id(rid), "type": kind} for rid, kind in pairs]


# ---- import ----------------------------------------------------------------------------------
def rule_id_for(doc: Mapping[str, Any], prefix: str = "sigma") -> str:
    """Our rule id for an imported Sigma rule: ``<prefix>.<title as snake case>``."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(doc.get("title", "")).lower()).strip("_") or "rule"
    if slug[0].isdigit():
        slug = f"r_{slug}"
    return f"{prefix}.{slug}"[:100].rstrip("_")


def with_origin(description: str, origin: str) -> str:
    """A Sigma description (often without a final stop) followed by the sentence naming its origin."""
    text = " ".join(description.split())
    if text and not text.endswith((".", "!", "?", ":")):
        text += "."
    return f"{text} {origin}".strip()


def import_rule(doc: Any, prefix: str = "sigma") -> dict[str, Any]:
    """One Sigma rule document as one of our YAML rules (a mapping ready to dump).

    Raises:
        SigmaImportError: the rule cannot be expressed; the message says why.
    """
    if not isinstance(doc, Mapping):
        raise SigmaImportError("not a Sigma rule (expected a mapping)")
    if "correlation" in doc or "filter" in doc or "action" in doc:
        raise SigmaImportError("correlation, filter and collection documents are not imported")
    check_metadata(doc)
    for need in ("title", "logsource", "detection"):
        if need not in doc:
            raise SigmaImportError(f"missing {need!r}")
    ls = doc["logsource"]
    if not isinstance(ls, Mapping):  # pySigma: "Sigma logsource must be a valid YAML map"
        raise SigmaImportError(f"logsource must be a mapping (product: {PRODUCT}), got {type(ls).__name__}")
    if not any(ls.get(k) is not None for k in ("product", "category", "service")):  # pySigma: "can't be empty"
        raise SigmaImportError(f"logsource must name a product, category or service (product: {PRODUCT})")
    product = ls.get("product")
    if product not in (None, PRODUCT) or ls.get("category") is not None:
        raise SigmaImportError(f"logsource {dict(ls)} is not instantly-audit's (product: {PRODUCT})")
    det = doc["detection"]
    if not isinstance(det, Mapping):
        raise SigmaImportError("detection must be a mapping")
    cond = det.get("condition")
    if cond is None:
        raise SigmaImportError("detection.condition is missing (Sigma requires it)")
    if isinstance(cond, list):  # a list of conditions is their OR (sigma-rules-specification.md, Condition)
        if not cond or not all(isinstance(c, str) for c in cond):
            raise SigmaImportError("condition must be a string or a non-empty list of strings")
        cond = cond[0] if len(cond) == 1 else " or ".join(f"({c})" for c in cond)
    if isinstance(cond, str) and ("|" in cond or re.search(r"\bnear\b", cond)):
        raise SigmaImportError("aggregations (| count() ...) and near are not supported; use correlation rules")
    if "timeframe" in det:
        raise SigmaImportError("timeframe belongs to correlations; single-event rules have none")
    raw = {str(k): v for k, v in det.items() if k != "condition"}
    names = list(raw)
    # items of one mapping that would share a key of ours become selections ANDed in the condition
    parted, collided = split_collisions(raw)
    split, negated = split_neq({k: v for k, (_, v) in parted.items()})  # |neq items, lone '*': own selections
    detection = {k: import_selection(v, f"detection.{parted.get(o, (o,))[0]}") for k, (o, v) in split.items()}
    renames = plain_identifiers(list(detection))
    # Sigma's patterns skip _-prefixed names; renaming or splitting could widen one: write them all out
    cond = rewrite_of(str(cond), names, names, to_sigma=False, force=bool(renames or negated or collided))
    cond = rename_in_condition(rename_in_condition(cond, collided), negated)
    detection = {renames.get(k, k): v for k, v in detection.items()}
    detection["condition"] = rename_in_condition(cond, renames)
    try:
        compile_detection(detection)
    except RuleSyntaxError as err:
        raise SigmaImportError(str(err)) from None
    level = str(doc.get("level", "medium")).lower()  # pySigma reads the level in any case
    if level not in SEVERITIES:
        raise SigmaImportError(f"unknown level {level!r}")
    tags = [str(t) for t in doc.get("tags") or []]
    attack = [t.split(".", 1)[1].upper() for t in tags if re.fullmatch(r"attack\.t\d{4}(\.\d{3})?", t.lower())]
    desc = " ".join(str(doc.get("description") or "").replace(FIELD_NOTE, "").split())
    origin = f"Imported from Sigma rule {doc.get('id', '(no id)')}."
    return {
        "id": rule_id_for(doc, prefix),
        "title": str(doc["title"]),
        "severity": SEVERITIES[level],
        "description": with_origin(desc, origin),
        "attack": attack,
        "types": ["*"],
        "detection": detection,
        **lifecycle_keys(doc),
        **_display_fields(doc),
    }


def check_metadata(doc: Mapping[str, Any]) -> None:
    """Reject what the Sigma specification forbids in ``status``, ``id`` and ``related`` (pySigma does too).

    Raises:
        SigmaImportError: naming the key and what is wrong with it.
    """
    _check_common(doc)
    status = doc.get("status")
    if status == "unsupported":
        raise SigmaImportError("status unsupported: the rule cannot be used in its current state")
    if status is not None and status not in SIGMA_STATUSES:
        raise SigmaImportError(f"status {status!r} is not a Sigma status (one of: {', '.join(SIGMA_STATUSES)}, "
                               "unsupported)")  # fmt: skip
    if "id" in doc and not _is_uuid(doc["id"]):
        raise SigmaImportError(f"id {doc['id']!r} is not a UUID (Sigma rule ids are UUIDs)")
    related = doc.get("related")
    if related is None:
        return
    if not isinstance(related, list):
        raise SigmaImportError("related must be a list of {id, type} entries")
    for i, rel in enumerate(related):
        if not isinstance(rel, Mapping) or not _is_uuid(rel.get("id")):
            raise SigmaImportError(f"related.{i}: needs an id that is a UUID")
        if rel.get("type") not in RELATED_TYPES:
            raise SigmaImportError(f"related.{i}.type {rel.get('type')!r} is not a Sigma relation (one of: "
                                   f"{', '.join(RELATED_TYPES)})")  # fmt: skip


_DATE = (re.compile(r"[1-3]\d{3}-[01]\d-[0-3]\d"), re.compile(r"[1-3]\d{3}/[01]?\d/[0-3]?\d"))
_TYPED = (("title", str, "a string"), ("author", str, "a string"), ("description", str, "a string"),
          ("license", str, "a string"), ("name", str, "a string"), ("taxonomy", str, "a string"),
          ("level", str, "a string"), ("status", str, "a string"), ("tags", list, "a list"),
          ("references", list, "a list"), ("falsepositives", list, "a list"), ("fields", list, "a list"),
          ("scope", list, "a list"))  # fmt: skip
"""The common keys pySigma's ``from_dict_common_params`` types (a wrong type is an error there, not ignored)."""


def _check_common(doc: Mapping[str, Any]) -> None:
    """What pySigma refuses in the common keys: types, a title over 256 characters, tags without a namespace,
    dates it cannot read."""
    for key, kind, name in _TYPED:
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            raise SigmaImportError(f"{key} must be {name} (got {type(doc[key]).__name__})")
    if len(str(doc.get("title") or "")) > 256:
        raise SigmaImportError("title is longer than 256 characters (Sigma's limit)")
    for tag in doc.get("tags") or ():
        if not isinstance(tag, str) or not re.fullmatch(r"[^.\s]+\.\S.*", tag):
            raise SigmaImportError(f"tag {tag!r} is not <namespace>.<name> (such as attack.t1078)")
    for key in ("date", "modified"):
        value = doc.get(key)
        if value is None or isinstance(value, datetime.date):
            continue
        m = next((m for rx in _DATE if (m := rx.fullmatch(str(value)))), None)
        try:
            if m is None:
                raise ValueError
            y, mo, d = (int(x) for x in re.split(r"[-/]", m.group(0)))
            datetime.date(y, mo, d)
        except ValueError:
            raise SigmaImportError(f"{key} {value!r} is not a date (yyyy-mm-dd)") from None


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _display_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Sigma ``fields`` (shown to the analyst) that are Event v1 paths, as our ``fields``."""
    fields = doc.get("fields")
    if not isinstance(fields, list):
        return {}
    out = []
    for f in fields:
        try:
            getter(str(f))
        except RuleSyntaxError:
            continue
        out.append(str(f))
    return {"fields": list(dict.fromkeys(out))} if out else {}


def lifecycle_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The Sigma lifecycle keys our rules share: status, author, references, falsepositives."""
    out: dict[str, Any] = {}
    if doc.get("status") in SIGMA_STATUSES:
        out["status"] = doc["status"]
    if isinstance(doc.get("author"), str) and doc["author"].strip():
        out["author"] = doc["author"].strip()
    for key in ("references", "falsepositives"):
        items = doc.get(key)
        if isinstance(items, list) and items and all(isinstance(i, str) for i in items):
            out[key] = list(items)
    return out
