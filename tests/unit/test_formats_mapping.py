"""One type per field path: every event type and alert the pipeline can produce, in every JSON format.

The records come from :mod:`tests.event_corpus`: the connector's normalizer over the API
fixtures (every audit code, every snapshot stream), the webhook receiver over every known
delivery type, and the simulator's scripted incident through the real poller and rules.
A search engine maps a field path once: a path carrying a string in one record and an object
(or a number) in another is rejected in the second. Subtrees a format declares opaque (kept as
``flattened``/``flat_object`` by the shipped templates) are not looked into. CEF is a text line
whose extension values are all strings, so it cannot clash.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import pytest

from connectors.elasticsearch_setup import ECS_FIELDS, OPAQUE
from pipeline.formats import get_format, json_format_names, render, to_cef, to_ecs, to_ocsf, to_splunk
from tests.event_corpus import fixture_events, incident_records, webhook_events
from tests.unit.test_formats_cef import parse_cef
from tests.unit.test_formats_native import normalizer_events, sample_alert, sample_events


@functools.cache
def corpus() -> list[dict[str, Any]]:
    """Every record as a dict: fixtures, webhook receiver, the scripted incident's events and alerts."""
    events, alerts = incident_records()
    records = [e.to_dict() for e in fixture_events() + webhook_events()]
    return records + events + alerts + [sample_alert().to_dict()]


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def walk(
    node: Any, path: str, opaque: tuple[str, ...], seen: dict[str, set[str]], origin: dict[str, str], who: str
) -> None:
    if node is None:
        return
    t = json_type(node)
    seen[path].add(t)
    origin.setdefault(f"{path}:{t}", who)
    if path in opaque:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            walk(v, f"{path}.{k}" if path else k, opaque, seen, origin, who)
    elif isinstance(node, list):
        for v in node:
            walk(v, f"{path}[]", opaque, seen, origin, who)


def paths_and_types(fmt: str) -> tuple[dict[str, set[str]], dict[str, str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    origin: dict[str, str] = {}
    opaque = get_format(fmt).opaque
    for record in corpus():
        doc = render(record, fmt)
        assert isinstance(doc, dict)
        walk(doc, "", opaque, seen, origin, str(record.get("type") or "alert"))
    return seen, origin


def test_corpus_covers_every_family_and_the_incident() -> None:
    """The corpus holds audit, snapshot, baseline, webhook-delivery events and the incident's alerts."""
    types = {r.get("type") for r in corpus()}
    prefixes = {str(t).split(".")[0] for t in types if t}
    assert {"audit", "api_key", "member", "webhook", "workspace", "workspace_group", "block_list",
            "webhook_delivery"} <= prefixes  # fmt: skip
    assert any(str(t).endswith("baseline") for t in types)
    _, alerts = incident_records()
    assert {a["rule"]["id"] for a in alerts} >= {"api_key.all_scope", "member.privileged", "data.lead_export"}


@pytest.mark.parametrize("fmt", json_format_names())
def test_one_type_per_field_path(fmt: str) -> None:
    """No field path carries two JSON types across every record the pipeline can produce (0 conflicts)."""
    seen, origin = paths_and_types(fmt)
    conflicts = {p: sorted(ts) for p, ts in seen.items() if len(ts - {"null"}) > 1}
    detail = {p: [f"{t} (e.g. {origin[f'{p}:{t}']})" for t in ts] for p, ts in conflicts.items()}
    assert conflicts == {}, detail


def test_ecs_template_maps_every_emitted_field() -> None:
    """Every leaf the ECS formatter emits (outside instantly.details) has an explicit template mapping."""
    seen, _ = paths_and_types("ecs")
    leaves = {p.replace("[]", "") for p, ts in seen.items() if ts - {"object", "array"} and p}
    unmapped = sorted(p for p in leaves if p not in ECS_FIELDS and not p.startswith(OPAQUE))
    assert unmapped == []


def test_owner_change_user_is_the_new_owner_not_the_workspace() -> None:
    """workspace.owner_changed targets the workspace; the user it is about is the new owner (change.after.owner).

    ECS (user usage guide: ``user.target`` is the affected user's prior state, ``user.changes`` only what
    changed): the new owner in ``user.target.id``, ``user.changes.roles: ["owner"]``, the previous owner in
    ``related.user``; OCSF User Management ``user.uid`` is the new owner. No format names the workspace as a user.
    """
    records = [r for r in corpus() if r.get("type") == "workspace.owner_changed"]
    records += [e.to_dict() for e in normalizer_events() if e.type == "workspace.owner_changed"]
    records.append(sample_events()["owner_changed"].to_dict())
    assert len(records) >= 3
    for record in records:
        new, previous = record["change"]["after"]["owner"], record["attributes"]["previous_owner"]
        workspace = {record["workspace"]["id"], record["workspace"]["name"], record["target"]["id"]}
        assert record["target"]["kind"] == "workspace" and new and previous and new != previous
        ecs = to_ecs(record)
        assert ecs["user"]["target"] == {"id": new}  # the new owner's prior role is unknown: no roles
        assert ecs["user"]["changes"] == {"roles": ["owner"]}
        assert set(ecs["related"]["user"]) == {new, previous}
        ecs_users = {v for k, v in ecs["user"].items() if isinstance(v, str)} | set(ecs["user"]["target"].values())
        assert not ecs_users & workspace
        assert ecs["organization"]["id"] == record["workspace"]["id"]
        ocsf = to_ocsf(record)
        assert ocsf["user"] == {"uid": new} and ocsf["privileges"] == ["owner"]
        assert ocsf["resources"][0]["uid"] == record["workspace"]["id"]
        assert to_splunk(record)["user"] not in workspace  # CIM: the changer (unknown for a snapshot diff)
        cef = dict(parse_cef(to_cef(record))[1])
        assert not {cef.get("duid"), cef.get("duser"), cef.get("suid"), cef.get("suser")} & workspace
