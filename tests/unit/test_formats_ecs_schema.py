"""Format ``ecs`` against the ECS 8.17.0 field definitions (``tests/fixtures/ecs-8.17.0``, from ``ecs_flat.yml``).

Every record the pipeline can produce (:mod:`tests.event_corpus`) is rendered in ECS and walked
field by field: each path is an ECS field, a ``labels`` key (a keyword) or under ``instantly`` (the
custom namespace docs/sinks.md declares); each value has its ECS type (a ``keyword`` gets a string,
never an object; an ``ip`` an address; a ``date`` RFC 3339 with a zone; a ``long`` an integer), a
field ECS normalizes to an array is one, and ``event.kind/category/type/outcome`` take allowed values,
each type one some category of the document expects. ``@timestamp`` precedes ``event.created`` (when
the pipeline read the record, or raised the alert), ``related.*`` holds every user and IP named, and
the shipped index template maps every ECS field with its ECS type.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from connectors.elasticsearch_setup import component_template
from pipeline.clock import parse_time
from pipeline.formats import to_ecs
from pipeline.formats.ecs import ECS_VERSION
from tests.unit.test_formats_mapping import corpus

FIELDS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / f"ecs-{ECS_VERSION}" / "fields.json"
CUSTOM = "instantly"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_TEXT = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}
_OBJECT = {"object", "flattened", "nested"}


@functools.cache
def ecs_fields() -> dict[str, dict[str, Any]]:
    return dict(json.loads(FIELDS_FILE.read_text()))


def _value_problem(path: str, ecs_type: str, value: Any) -> str | None:
    if ecs_type in _TEXT:
        ok = isinstance(value, str)
    elif ecs_type == "date":
        ok = isinstance(value, str) and _DATE.match(value) is not None
    elif ecs_type == "ip":
        try:
            ipaddress.ip_address(value)
            ok = True
        except (TypeError, ValueError):
            ok = False
    elif ecs_type in ("long", "integer", "short", "byte", "unsigned_long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ecs_type in ("float", "scaled_float", "double", "half_float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif ecs_type == "boolean":
        ok = isinstance(value, bool)
    else:
        return f"{path}: ECS type {ecs_type} is not checked here"
    return None if ok else f"{path}: {value!r} is no {ecs_type}"


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    """What ECS 8.17.0's field definitions find wrong with ``doc`` (empty: nothing)."""
    fields = ecs_fields()
    problems: list[str] = []

    def walk(node: Any, path: str) -> None:
        spec = fields.get(path)
        if path == CUSTOM or path.startswith(f"{CUSTOM}."):
            return
        if path.startswith("labels."):
            if not isinstance(node, str):
                problems.append(f"{path}: labels are keywords, got {type(node).__name__}")
            return
        if isinstance(node, dict):
            if spec is not None and spec["type"] not in _OBJECT:
                problems.append(f"{path}: an object where ECS has a {spec['type']}")
                return
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)
            return
        if spec is None:
            problems.append(f"{path}: no ECS field")
            return
        values = node if isinstance(node, list) else [node]
        if "array" in spec.get("normalize", []) and not isinstance(node, list):
            problems.append(f"{path}: ECS normalizes it to an array")
        for value in values:
            if isinstance(value, dict | list):
                problems.append(f"{path}: an object or list inside the array")
                continue
            problem = _value_problem(path, spec["type"], value)
            if problem:
                problems.append(problem)
            allowed = spec.get("allowed_values")
            if allowed and value not in allowed:
                problems.append(f"{path}: {value!r} is no allowed value")

    walk(doc, "")
    event = doc.get("event") or {}
    expected = fields["event.category"]["allowed_values"]
    categories = [c for c in event.get("category", []) if c in expected]
    for etype in event.get("type", []):  # as Kibana's categorization check reads it: expected by some category
        if categories and not any(etype in expected[c] for c in categories):
            problems.append(f"event.type {etype!r} is expected by none of {categories}")
    for category in categories:
        if not set(event.get("type", [])) & set(expected[category]):
            problems.append(f"event.category {category!r} gets none of its expected types")
    if doc.get("ecs", {}).get("version") != ECS_VERSION:
        problems.append("ecs.version is not the version the fields come from")
    if "@timestamp" not in doc:
        problems.append("@timestamp missing")
    if "ingested" in event:
        problems.append("event.ingested is the data store's to set (its ingest pipeline), not the producer's")
    return problems


def test_every_record_is_valid_ecs() -> None:
    """Every event and alert the pipeline produces, in ECS, passes the ECS 8.17.0 field definitions: 0 problems."""
    failures = {}
    for record in corpus():
        problems = ecs_problems(to_ecs(record))
        if problems:
            failures[str(record.get("type") or record["rule"]["id"])] = problems
    assert failures == {}


def test_the_validator_catches_what_a_search_engine_refuses() -> None:
    """The validator fails an object in a keyword, a non-IP in an ip, a scalar where ECS wants an array, a type no
    category expects, a value ECS does not allow, an unknown field; a label must be a keyword."""
    doc = to_ecs(corpus()[0])
    bad = {**doc, "user": {"name": {"first": "A"}}, "source": {"ip": "not-an-ip"}, "related": {"user": "one"},
           "event": {**doc["event"], "kind": "happening", "category": ["authentication"], "type": ["creation"]},
           "labels": {"n": 1}, "vendor": {"thing": "x"}}  # fmt: skip
    found = " | ".join(ecs_problems(bad))
    expected = [
        "user.name: an object", "source.ip: 'not-an-ip' is no ip", "related.user: ECS normalizes",
        "event.kind: 'happening'", "'creation' is expected by none", "labels.n", "vendor.thing: no ECS",
    ]  # fmt: skip
    assert [e for e in expected if e not in found] == [], found


def test_timestamps_related_fields_and_the_template() -> None:
    """``@timestamp`` <= ``event.created`` (read or raised after it happened); every user and IP named is in
    ``related``; the shipped Elasticsearch template maps every ECS field with ECS's type and multi-fields."""
    for record in corpus():
        doc = to_ecs(record)
        event, user = doc["event"], doc.get("user", {})
        if "created" in event:
            assert parse_time(doc["@timestamp"]) <= parse_time(event["created"]), record.get("type")
        named = {user.get(k) for k in ("id", "name", "email")} | {user.get("target", {}).get(k) for k in ("id", "name")}
        assert named - {None} <= set(doc.get("related", {}).get("user", [])), record.get("type")
        if "source" in doc:
            assert doc["source"]["ip"] in doc["related"]["ip"]
    fields = ecs_fields()

    def leaves(props: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, spec in props.items():
            if "properties" in spec:
                out += leaves(spec["properties"], f"{prefix}{name}.")
            else:
                out.append((f"{prefix}{name}", spec))
        return out

    mapped = leaves(component_template("elasticsearch")["template"]["mappings"]["properties"])
    ecs_mapped = [(p, s) for p, s in mapped if not p.startswith((f"{CUSTOM}.", "labels."))]
    assert len(ecs_mapped) > 40
    for path, spec in ecs_mapped:
        want = fields[path]
        assert spec["type"] == want["type"], path
        assert {k: v["type"] for k, v in spec.get("fields", {}).items()} == want.get("multi_fields", {}), path
        assert spec.get("index", True) == want.get("index", True), path
