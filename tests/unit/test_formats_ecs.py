"""ECS: documents have the Elastic shape, only allowed event.kind/category/type values, and drop nothing."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.formats import to_ecs
from pipeline.rules.testing import make_event
from tests.unit.test_formats_native import SEEN, T0, WS, normalizer_events, sample_alert, sample_events
from tests.unit.test_formats_ocsf import dropped

# ECS 8.x allowed values: event.category → the event.type values it may be paired with.
ALLOWED_TYPES: dict[str, set[str]] = {
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "email": {"info"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "session": {"start", "end", "info"},
    "web": {"access", "error", "info"},
}
KINDS = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
TOP_LEVEL = {"@timestamp", "ecs", "message", "event", "user", "source", "user_agent", "organization", "related",
             "labels", "rule", "threat", "instantly"}  # fmt: skip


def _check_shape(doc: dict[str, Any]) -> None:
    """Every event.type is one some event.category of the document expects (two categories share one type
    list, as Kibana's categorization check reads it), and every category gets a type it expects."""
    assert set(doc) <= TOP_LEVEL, set(doc) - TOP_LEVEL
    event = doc["event"]
    assert event["kind"] in KINDS
    expected = set().union(*(ALLOWED_TYPES[c] for c in event["category"]))
    assert set(event["type"]) <= expected, (event["category"], event["type"])
    for category in event["category"]:
        assert set(event["type"]) & ALLOWED_TYPES[category], (category, event["type"])
    if "iam" in event["category"]:  # ECS user usage guide: the subject (user or group) and the activity
        assert len(event["type"]) == 2 and len({"user", "group"} & set(event["type"])) == 1, event["type"]
    assert event.get("outcome", "unknown") in ("success", "failure", "unknown")
    assert all(isinstance(v, str) for v in doc.get("labels", {}).values()), "ECS labels are keywords"
    assert doc["ecs"]["version"].startswith("8.")


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_event_shape(name: str) -> None:
    """Every sample event becomes an ECS document with allowed category/type pairs and its id."""
    event = sample_events()[name]
    doc = to_ecs(event)
    _check_shape(doc)
    assert doc["@timestamp"] == T0
    assert doc["event"]["created"] == SEEN
    assert doc["event"]["id"] == event.id
    assert doc["organization"] == {"id": WS.id, "name": WS.name}
    assert dropped(event.to_dict(), doc, "instantly", mixed=True) == []


def test_login_fields() -> None:
    """A login is authentication/start with user, source.ip, user_agent.original and the audit code."""
    doc = to_ecs(sample_events()["login"])
    assert doc["event"]["category"] == ["authentication"]
    assert doc["event"]["type"] == ["start"]
    assert doc["event"]["action"] == "user-login"
    assert doc["event"]["code"] == "1"
    assert doc["event"]["outcome"] == "success"
    assert doc["user"] == {"id": "8c1f3a52-6f1e-4d7a-9d55-0b1c2d3e4f50", "name": "Jane Doe"}
    assert doc["source"] == {"ip": "203.0.113.9"}
    assert doc["user_agent"] == {"original": "Mozilla/5.0 (X11; Linux x86_64)"}
    assert doc["related"]["ip"] == ["203.0.113.9"]
    assert to_ecs(sample_events()["mfa_failed"])["event"]["outcome"] == "failure"


def test_api_key_fields() -> None:
    """API key creation is iam+configuration/creation with key details under instantly.api_key."""
    doc = to_ecs(sample_events()["key_created"])
    assert doc["event"]["category"] == ["iam", "configuration"]
    assert doc["event"]["type"] == ["user", "creation"]
    assert doc["event"]["action"] == "api-key-created"
    assert doc["instantly"]["api_key"] == {
        "id": "3f9e0c1a-2b4d-4e6f-8a0b-1c2d3e4f5a6b",
        "name": "CRM sync",
        "scopes": ["all:all"],
        "fingerprint": "sha256:0123abcd",
    }
    assert to_ecs(sample_events()["key_deleted"])["event"]["type"] == ["user", "deletion"]


def test_member_role_change_fields() -> None:
    """A role change names the member in user.target with old role in target.roles and new in changes.roles."""
    doc = to_ecs(sample_events()["role_up"])
    assert doc["event"]["category"] == ["iam"]
    assert doc["event"]["type"] == ["user", "change"]
    assert doc["user"]["target"]["email"] == "mallory@example.com"
    assert doc["user"]["target"]["roles"] == ["view"]
    assert doc["user"]["changes"]["roles"] == ["admin"]
    assert "mallory@example.com" in doc["related"]["user"]
    invited = to_ecs(sample_events()["member_invited"])
    assert invited["event"]["type"] == ["user", "creation"]
    assert invited["user"]["target"]["roles"] == ["admin"]


def test_iam_events_have_two_types() -> None:
    """Every IAM event carries the activity and its subject (ECS user usage guide, Categorization): API keys
    (a credential of a user) and members "user", workspace groups "group", baselines included."""
    from tests.unit.test_formats_mapping import corpus

    pairs: dict[str, list[str]] = {}
    for record in corpus():
        event = to_ecs(record)["event"]
        if "iam" in event["category"]:
            pairs[str(record.get("type"))] = event["type"]
    assert pairs["api_key.created"] == pairs["audit.api_key_created"] == ["user", "creation"]
    assert pairs["api_key.scopes_changed"] == ["user", "change"]
    assert pairs["member.baseline"] == ["user", "info"]
    assert pairs["workspace_group.member_baseline"] == ["group", "info"]
    assert pairs["workspace_group.member_added"] == ["group", "creation"]
    assert all(len(types) == 2 for types in pairs.values()), pairs


def test_one_user_events_have_root_user_fields() -> None:
    """An event with no actor user (a snapshot member change) mentions one user, the member: ECS's user usage
    guide puts that user in the root user.* fields, so it is user.id/name/email as well as user.target.*;
    with an actor the root stays the actor."""
    doc = to_ecs(sample_events()["role_up"])
    assert doc["user"]["id"] == doc["user"]["target"]["id"] == "5d6e7f80-9a0b-4c1d-8e2f-3a4b5c6d7e8f"
    assert doc["user"]["name"] == doc["user"]["email"] == "mallory@example.com"
    owner = to_ecs(sample_events()["owner_changed"])  # the new owner, a user id: no name, no email
    assert owner["user"]["id"] == owner["user"]["target"]["id"] == "u-new-owner"
    assert "name" not in owner["user"] and "email" not in owner["user"]
    acted = to_ecs({**sample_events()["role_up"].to_dict(), "actor": {"user_id": "u-1", "user_name": "Jane Doe"}})
    assert (acted["user"]["id"], acted["user"]["name"]) == ("u-1", "Jane Doe") and "email" not in acted["user"]
    assert acted["user"]["target"]["email"] == "mallory@example.com"
    for event in normalizer_events():
        doc = to_ecs(event)
        if "target" in doc.get("user", {}):
            assert doc["user"].get("id") or doc["user"].get("name"), event.type


def test_alert_event_created_is_when_the_engine_raised_it() -> None:
    """ECS event.created is when the pipeline created the event: an alert's raised_at (absent without one);
    @timestamp stays the latest activity (last_seen), event.start/end the events' range."""
    raised = "2026-03-05T23:15:00.250Z"
    doc = to_ecs(sample_alert(raised_at=raised, emission=1))
    assert doc["event"]["created"] == raised and "raised_at" not in doc.get("instantly", {}).get("details", {})
    assert (doc["@timestamp"], doc["event"]["start"], doc["event"]["end"]) == (SEEN, T0, SEEN)
    assert "created" not in to_ecs(sample_alert())["event"]


def test_alert_fields() -> None:
    """An alert is event.kind=alert with rule.*, threat.technique.* and a risk score."""
    alert = sample_alert()
    doc = to_ecs(alert)
    _check_shape(doc)
    assert doc["event"]["kind"] == "alert"
    assert doc["@timestamp"] == alert.last_seen
    assert doc["rule"]["id"] == "api_key.all_scope"
    assert doc["rule"]["name"] == alert.rule.title
    assert doc["rule"]["version"] == "2"
    assert doc["rule"]["reference"] == alert.rule.runbook
    assert doc["threat"]["technique"]["id"] == ["T1098"]
    assert doc["threat"]["technique"]["subtechnique"]["id"] == ["T1098.001"]
    assert doc["event"]["risk_score"] == 99.0
    assert doc["message"] == alert.summary
    assert doc["instantly"]["details"]["dedup_key"] == alert.dedup_key
    assert "Jane Doe" in doc["related"]["user"]
    assert dropped(alert.to_dict(), doc, "instantly", mixed=True) == []


def test_real_normalizer_events() -> None:
    """Every event the Instantly normalizer makes gets a valid ECS shape and loses nothing."""
    for event in normalizer_events():
        doc = to_ecs(event)
        _check_shape(doc)
        assert dropped(event.to_dict(), doc, "instantly", mixed=True) == [], event.type


def test_baselines_are_state_and_raw_is_event_original() -> None:
    """A snapshot baseline is event.kind=state/type=info (an IAM one also user or group, with no outcome);
    the raw record is event.original, a JSON string."""
    import json

    events = [e for e in normalizer_events() if e.type.endswith("baseline")]
    assert events
    subjects = {"api_key.baseline": ["user", "info"], "member.baseline": ["user", "info"],
                "workspace_group.member_baseline": ["group", "info"]}  # fmt: skip
    for event in events:
        doc = to_ecs(event)
        assert doc["event"]["kind"] == "state", event.type
        assert doc["event"]["type"] == subjects.get(event.type, ["info"]), event.type
        assert "outcome" not in doc["event"], event.type
        if event.raw is not None:
            assert json.loads(doc["event"]["original"]) == event.raw
            assert "raw" not in doc.get("instantly", {}).get("details", {})


def test_events_and_alerts_share_one_provider() -> None:
    """event.provider is the same for events and alerts."""
    providers = {to_ecs(e)["event"]["provider"] for e in sample_events().values()}
    assert providers | {to_ecs(sample_alert())["event"]["provider"]} == {"instantly-audit"}


def test_outcome_only_where_ecs_populates_it() -> None:
    """ECS event.outcome: never "unknown" for a record whose result is no attempt's (webhook deliveries,
    unknown audit codes), not populated for a successful event.type info (baselines); failures kept."""
    from tests.unit.test_formats_mapping import corpus

    outcomes: set[str | None] = set()
    for record in corpus():
        event = to_ecs(record)["event"]
        outcomes.add(event.get("outcome"))
        assert event.get("outcome") != "unknown", record.get("type")
        if "info" in event["type"] or event["kind"] != "event":  # also ["user", "info"]
            assert event.get("outcome") in (None, "failure"), record.get("type")
    assert {"success", "failure", None} <= outcomes
    started = make_event("audit.mfa_totp_enrollment_started", time=T0, attributes={"activity_code": 22})
    enrollment = to_ecs(started)["event"]
    assert enrollment["type"] == ["user", "info"] and "outcome" not in enrollment
    assert "outcome" not in to_ecs(sample_events()["reply"])["event"]
    assert to_ecs(sample_events()["poller_unauthorized"])["event"]["outcome"] == "failure"


def test_leftovers_too_long_for_one_term_are_kept_unindexed() -> None:
    """A leftover string over 8,191 UTF-8 bytes (a list holding one moves whole) goes to ``instantly.unindexed`` at
    its path, mapped ``enabled: false`` by the shipped templates: under ``instantly.details`` (``flattened`` /
    ``flat_object``, one term per leaf) Lucene's 32,766-byte term limit refused the whole document. Shorter
    leftovers, including 2,730 three-byte characters (8,190 bytes), stay; nothing is dropped."""
    from connectors.elasticsearch_setup import UNINDEXED, component_template
    from pipeline.formats import get_format

    near, long, wide = "€" * 2730, "x" * 8192, "é" * 4096  # 8,190 / 8,192 / 8,192 bytes
    attrs = {"activity_code": 11, "audit_metadata": {"near": near, "long": long, "list": ["a", wide], "n": {"x": long}}}
    event = make_event("audit.campaign_update", time=T0, attributes=attrs)
    doc = to_ecs(event)
    assert doc["instantly"]["unindexed"] == {"attributes": {"audit_metadata": {"long": long, "list": ["a", wide],
                                                                               "n": {"x": long}}}}  # fmt: skip
    assert doc["instantly"]["details"]["attributes"]["audit_metadata"] == {"near": near}
    assert dropped(event.to_dict(), doc, "instantly", mixed=True) == []
    assert "unindexed" not in to_ecs(make_event("audit.campaign_update", time=T0, attributes={"a": near}))["instantly"]
    assert UNINDEXED in get_format("ecs").opaque
    for flavor in ("elasticsearch", "opensearch"):
        mapping = component_template(flavor)["template"]["mappings"]["properties"]["instantly"]["properties"]
        assert mapping["unindexed"] == {"type": "object", "enabled": False}


def test_leftovers_nested_past_the_flattened_depth_limit_are_kept_unindexed() -> None:
    """Elasticsearch's ``flattened`` refuses a document nested past its ``depth_limit`` (20) and Event v1 allows 64
    levels: the part of a leftover object below 16 levels of ``instantly.details`` goes to ``instantly.unindexed``
    (a list holding such an object as a whole); what is shallower stays; nothing is dropped."""

    def nest(levels: int) -> dict[str, Any]:
        node: dict[str, Any] = {"leaf": "v"}
        for _ in range(levels):
            node = {"k": node}
        return node

    def depth(node: Any) -> int:
        return 1 + max((depth(v) for v in node.values()), default=0) if isinstance(node, dict) else 0

    attrs = {"activity_code": 11, "audit_metadata": {"deep": nest(30), "ok": nest(12), "list": [nest(30)]}}
    event = make_event("audit.campaign_update", time=T0, attributes=attrs)
    doc = to_ecs(event)
    details, unindexed = doc["instantly"]["details"], doc["instantly"]["unindexed"]
    assert depth(details) <= 16 and details["attributes"]["audit_metadata"]["ok"] == nest(12), depth(details)
    assert unindexed["attributes"]["audit_metadata"]["list"] == [nest(30)]
    assert unindexed["attributes"]["audit_metadata"]["deep"] == nest(30)
    assert "deep" not in details["attributes"]["audit_metadata"]
    assert dropped(event.to_dict(), doc, "instantly", mixed=True) == []
