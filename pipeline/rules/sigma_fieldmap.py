"""pySigma processing pipelines from Event v1 field names to where our own formats put them.

Exported Sigma rules name Event v1 paths (``type``, ``actor.user_id``, ``attributes.activity_code``);
our Elasticsearch sink writes format ``ecs`` (``labels.event_type``, ``user.id``,
``instantly.details.attributes.activity_code``) and the Splunk HEC sink format ``splunk`` (the native
record under ``instantly``: ``instantly.type``; a JSON list is ``name{}`` to Splunk). ``rules export``
writes one pipeline per format (:data:`TARGETS`) next to the rules, so ``sigma convert -p
instantly_ecs.yaml`` queries the fields our sinks fill.

The mapping is not written by hand: :func:`build_pipeline` renders events through the formatter with
each field set to two probe values and keeps the document field that follows the probe
(:func:`locate`). A field mapped to one place in every event is renamed; one that lands in different
places depending on the event (``target.id``: ``user.target.id`` for a member, ``instantly.api_key.id``
for an API key) or nowhere searchable (``raw``: ECS keeps it as the JSON text ``event.original``) is
left unmapped and named in the pipeline's header, and so is a destination the formatter also fills
when the field is missing (a Sigma ``null`` test would not carry over). The shipped files
(``pipeline/rules/sigma_pipelines/``) are generated from every record the pipeline can produce, and
a test regenerates and compares them.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import yaml

from pipeline.formats.cim import to_splunk
from pipeline.formats.ecs import to_ecs
from schemas.event import Event

PRODUCT = "instantly"
PROBE = "zq_probe"
"""An attribute name no event has: where it lands is where any other name of its mapping lands."""
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T")
_RECORDS = ("raw", "change.before", "change.after")
"""Where an event carries an Instantly record (one record may be in two of them)."""
_TEXT = ("Zq_probe.A-1", "Zq_probe.B-2")
"""Probe strings: mixed case, dots, underscores and dashes, so a value a formatter rewrites is not taken
for a copy."""
Fields = dict[str, list[Any]]


def _leaf_fields(doc: Any, list_suffix: str) -> Fields:
    """Dotted object paths to the non-null leaf values of ``doc``; a list's items take its name plus ``list_suffix``."""
    out: Fields = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, f"{name}{list_suffix}")
        elif value is not None:
            out.setdefault(name, []).append(value)

    walk(doc, "")
    return out


def es_fields(doc: Any) -> Fields:
    """The fields Elasticsearch/OpenSearch index for a document: dotted object paths (a list is its values)."""
    return _leaf_fields(doc, "")


def splunk_fields(doc: Any) -> Fields:
    """The fields Splunk extracts from a JSON event (``KV_MODE = json``): dotted paths, ``{}`` after a list."""
    return _leaf_fields(doc, "{}")


@dataclass(frozen=True, slots=True)
class Target:
    """One of our output formats as a Sigma target: the pipeline file and how a document is searched."""

    key: str
    file: str
    title: str
    render: Callable[[Mapping[str, Any]], dict[str, Any]]
    fields: Callable[[Any], Fields]
    usage: str


TARGETS = (
    Target("ecs", "instantly_ecs.yaml", "format ecs (the Elasticsearch/OpenSearch sink's default)", to_ecs, es_fields,
           "sigma convert -t lucene -p DIR/instantly_ecs.yaml DIR/*.yml"),
    Target("splunk", "instantly_splunk.yaml", "format splunk (the Splunk HEC sink's default)", to_splunk,
           splunk_fields, "sigma convert -t splunk -p DIR/instantly_splunk.yaml DIR"),
)  # fmt: skip


# ---- Event v1 fields ---------------------------------------------------------------------------
def event_fields() -> tuple[dict[str, str], list[str]]:
    """Event v1 fields a rule can name: fixed paths with their kind (``str``, ``bool``, ``list``) and the
    mappings whose keys are open (``attributes``, ``raw``, ``change.before``, ``change.after``)."""
    fixed: dict[str, str] = {}
    open_: list[str] = []

    def walk(cls: Any, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            path = f"{prefix}{name}"
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            core = args[0] if isinstance(hint, types.UnionType) and len(args) == 1 else hint
            origin = typing.get_origin(core)
            if isinstance(core, type) and issubclass(core, msgspec.Struct):
                walk(core, f"{path}.")
            elif origin is dict:
                open_.append(path)
            elif origin in (tuple, list):
                fixed[path] = "list"
            else:
                fixed[path] = "bool" if core is bool else "str"

    walk(Event, "")
    return fixed, open_


# ---- probing -----------------------------------------------------------------------------------
def _get(doc: Mapping[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _parent(doc: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: Any = doc
    for part in path.split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _with(event: Mapping[str, Any], path: str, value: Any) -> dict[str, Any] | None:
    """A copy of ``event`` with ``path`` set (its parent must exist). A record an event carries twice stays
    the same in both places (a snapshot change has its new record as ``raw`` and ``change.after``, a
    removal its old one as ``raw`` and ``change.before``): a probe changes the record, not one copy."""
    doc: dict[str, Any] = orjson.loads(orjson.dumps(event))
    targets = [path]
    home = next((r for r in _RECORDS if path.startswith(f"{r}.")), None)
    if home is not None and isinstance(record := _get(doc, home), dict):
        rest = path.removeprefix(f"{home}.")
        targets += [f"{r}.{rest}" for r in _RECORDS if r != home and _get(doc, r) == record]
    for p in targets:
        parent = _parent(doc, p)
        if parent is None:
            return None
        parent[p.rsplit(".", 1)[-1]] = value
    return doc


def probe_values(kind: str, sample: Any) -> tuple[Any, Any] | None:
    """Two distinct values shaped like ``sample`` (a real value of the field) or of ``kind``."""
    if kind == "list" or isinstance(sample, list):
        if isinstance(sample, list) and not all(isinstance(x, str) for x in sample):
            return None
        return [_TEXT[0]], [_TEXT[1]]
    if kind == "bool" or isinstance(sample, bool):
        return True, False
    if isinstance(sample, int):
        return 900001, 900002
    if isinstance(sample, float):
        return 0.125, 0.375
    if isinstance(sample, str):
        try:
            ip = ipaddress.ip_address(sample)
        except ValueError:
            ip = None
        if ip is not None:
            return ("2001:db8::a", "2001:db8::b") if ip.version == 6 else ("192.0.2.201", "192.0.2.202")
        if _TIME.match(sample):
            return "2001-02-03T04:05:06Z", "2001-02-03T04:05:07Z"
        return _TEXT
    return None if sample is not None else _TEXT


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _holds(values: list[Any], probe: Any) -> bool:
    wanted = probe if isinstance(probe, list) else [probe]
    return all(any(_same(v, w) for v in values) for w in wanted)


def _exact(values: list[Any], probe: Any) -> bool:
    wanted = probe if isinstance(probe, list) else [probe]
    return len(values) == len(wanted) and all(_same(v, w) for v, w in zip(values, wanted, strict=True))


def locate(target: Target, event: Mapping[str, Any], path: str, values: tuple[Any, Any]) -> frozenset[str] | None:
    """The document fields holding exactly ``path``'s value (following both probe values), or None when the
    event has no place for the field."""
    a, b = values
    one, two = _with(event, path, a), _with(event, path, b)
    if one is None or two is None:
        return None
    first, second = target.fields(target.render(one)), target.fields(target.render(two))
    return frozenset(
        p for p, got in first.items()
        if _exact(got, a) and _holds(second.get(p, []), b) and not _holds(second.get(p, []), a)
    )  # fmt: skip


def _scalars(value: Any) -> bool:
    """A scalar or a list of scalars (a field a rule can test; lists of objects are not addressable)."""
    return not isinstance(value, list) or all(not isinstance(x, Mapping | list) for x in value)


def open_leaves(events: Iterable[Mapping[str, Any]], prefixes: list[str]) -> dict[str, Any]:
    """Every leaf path under the open mappings in ``events`` (a scalar or a list of scalars), with a sample."""
    out: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if _KEY.fullmatch(str(k)):
                    walk(v, f"{path}.{k}")
        elif value not in (None, []) and path not in out and _scalars(value):
            out[path] = value

    for ev in events:
        for prefix in prefixes:
            node = _get(ev, prefix)
            if isinstance(node, Mapping):
                walk(node, prefix)
    return dict(sorted(out.items()))


# ---- the pipeline ------------------------------------------------------------------------------
@dataclass
class Mapped:
    """Where each field goes for one target, and what is left unmapped or needs a caveat (with the reason)."""

    fields: dict[str, str] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    unmapped: dict[str, str] = field(default_factory=dict)
    caveats: dict[str, str] = field(default_factory=dict)


def _pick(path: str, dests: frozenset[str]) -> str:
    """Of several fields that always hold the value, the copy named like the Event v1 path (``instantly.<path>``,
    rather than a CIM field derived from it)."""

    def rank(dest: str) -> tuple[bool, bool, int, str]:
        name = dest.removesuffix("{}")  # Splunk's name of a list
        return not name.endswith(f".{path}"), name != path, len(dest), dest

    return min(dests, key=rank)


def _where(path: str, groups: dict[frozenset[str], list[str]]) -> str:
    """Where a field lands instead of one place: each destination with the event types that put it there."""
    merged: dict[str, set[str]] = {}
    for dests, seen in groups.items():
        merged.setdefault(_pick(path, dests).replace(PROBE, "<name>") if dests else "", set()).update(seen)
    parts = []
    for dest, kinds in sorted(merged.items(), key=lambda g: (not g[0], g[0])):
        shown = sorted(kinds)
        more = f", … {len(shown) - 3} more" if len(shown) > 3 else ""
        parts.append(f"{dest or 'nowhere searchable'} ({', '.join(shown[:3])}{more})")
    return "; ".join(parts)


def _field(
    target: Target, events: Sequence[Mapping[str, Any]], path: str, kind: str, sample: Any
) -> tuple[str | None, str]:
    """(destination, "") or (None, where the field lands instead)."""
    groups: dict[frozenset[str], list[str]] = {}
    for ev in events:
        real = _get(ev, path)
        values = probe_values(kind, real if real is not None else sample)
        if values is None:
            continue
        got = locate(target, ev, path, values)
        if got is not None:
            groups.setdefault(got, []).append(str(ev.get("type")))
    if not groups:
        return None, "no event has a place for it"
    common = frozenset.intersection(*groups)
    if common:
        return _pick(path, common), ""
    return None, _where(path, groups)


def map_fields(target: Target, events: Iterable[Mapping[str, Any]]) -> Mapped:
    """Where every Event v1 field a rule can name lands in ``target``'s documents of ``events``."""
    evs = [dict(e) for e in events]
    fixed, open_ = event_fields()
    out = Mapped()
    samples = {p: next((v for e in evs if (v := _get(e, p)) is not None), None) for p in fixed}
    for path, kind in fixed.items():
        dest, why = _field(target, evs, path, kind, samples[path])
        if dest is None:
            out.unmapped[path] = why
        else:
            out.fields[path] = dest
    for prefix in open_:
        dest, why = _field(target, evs, f"{prefix}.{PROBE}", "str", "zq")
        if dest is None or not dest.endswith(f".{PROBE}"):
            out.unmapped[f"{prefix}.<name>"] = why or f"{dest} (not a prefix)"
        else:
            out.prefixes[f"{prefix}."] = dest.removesuffix(PROBE)
    for leaf, sample in open_leaves(evs, open_).items():
        under = next((p for p in out.prefixes if leaf.startswith(p)), "")
        carrying = [e for e in evs if _get(e, leaf) is not None]
        found, why = _field(target, carrying, leaf, "str", sample)
        if under and found == out.prefixes[under] + leaf.removeprefix(under):
            continue
        if found is not None:
            out.fields[leaf] = found
        elif under:
            out.excluded.append(leaf)
            out.unmapped[leaf] = why
    rendered = [target.fields(target.render(e)) for e in evs]
    for path, dest in out.fields.items():
        filled = sorted({str(e.get("type")) for e, got in zip(evs, rendered, strict=True)
                         if _get(e, path) is None and dest in got})  # fmt: skip
        if filled:
            more = f", … {len(filled) - 3} more" if len(filled) > 3 else ""
            out.caveats[path] = (f"{dest} is also filled on events without {path} ({', '.join(filled[:3])}{more}): "
                                 f"a Sigma test for a missing {path} (null) does not carry over")  # fmt: skip
    return out


def pipeline_document(target: Target, mapped: Mapped) -> dict[str, Any]:
    """The pySigma processing pipeline (``ProcessingPipeline.from_yaml``) for rules of log source ``instantly``."""

    def item(kind: str, name: str, mapping: Mapping[str, str]) -> dict[str, Any]:
        return {"id": f"instantly_{target.key}_{name}", "type": kind, "mapping": dict(sorted(mapping.items())),
                "rule_conditions": [{"type": "logsource", "product": PRODUCT}]}  # fmt: skip

    items = [item("field_name_mapping", "fields", mapped.fields)]
    if mapped.prefixes:
        prefix_item = item("field_name_prefix_mapping", "prefixes", mapped.prefixes)
        if mapped.excluded:
            prefix_item["field_name_conditions"] = [{"type": "exclude_fields", "fields": sorted(mapped.excluded)}]
        items.append(prefix_item)
    return {"name": f"instantly-audit Event v1 fields to {target.title}", "priority": 20, "transformations": items}


def notes(target: Target, mapped: Mapped) -> list[str]:
    """What the pipeline leaves unmapped, and the caveats of what it maps, one line each."""
    lines = [f"Unmapped: {path}: {why}." for path, why in sorted(mapped.unmapped.items())]
    return lines + [f"Caveat: {path}: {why}." for path, why in sorted(mapped.caveats.items())]


def pipeline_text(target: Target, mapped: Mapped) -> str:
    """The pipeline file: a header (what it is for, how to use it, its notes) and the YAML document."""
    head = [f"pySigma processing pipeline: instantly-audit Event v1 field names -> {target.title}.",
            f"Use: {target.usage}", "Generated from the formatter (pipeline/rules/sigma_fieldmap.py); do not edit.",
            "A field named below is left unmapped: a rule using it finds nothing in this format as is."]  # fmt: skip
    header = "".join(
        f"# {wrapped}\n"
        for line in head + notes(target, mapped)
        for wrapped in textwrap.wrap(line, 98, subsequent_indent="  ", break_on_hyphens=False)
    )
    body = yaml.safe_dump(pipeline_document(target, mapped), sort_keys=False, width=100, allow_unicode=True)
    return header + body


def build_pipelines(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Every target's pipeline file (name → text) for the event dicts ``events``."""
    evs = list(events)
    return {t.file: pipeline_text(t, map_fields(t, evs)) for t in TARGETS}


def shipped_pipelines() -> dict[str, str]:
    """The pipeline files shipped with the package (name → text), in :data:`TARGETS` order."""
    base = importlib.resources.files("pipeline.rules") / "sigma_pipelines"
    return {t.file: (base / t.file).read_text(encoding="utf-8") for t in TARGETS}


def header_notes(text: str) -> list[str]:
    """The ``Unmapped:`` / ``Caveat:`` notes of a pipeline file's header, one string each."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[2:]
        if body.startswith(("Unmapped: ", "Caveat: ")):
            lines.append(body)
        elif body.startswith("  ") and lines:
            lines[-1] += " " + body.strip()
    return lines
