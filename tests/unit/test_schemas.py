"""Event v1 / Alert v1: models validate against the JSON Schemas; bad shapes are rejected; ids are deterministic."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Actor, Alert, Change, Entity, Event, RuleRef, Source, Target, WorkspaceRef
from schemas.event import slug
from schemas.validate import schema_errors

ROOT = Path(__file__).resolve().parents[2]
WS = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme")


def _event(**over: Any) -> Event:
    kw: dict[str, Any] = {
        "type": "api_key.created",
        "time": "2026-03-05T23:09:47.337Z",
        "observed_at": "2026-03-05T23:10:00.000Z",
        "workspace": WS,
        "source": Source("snapshot", "api_keys", "k1"),
        "natural_key": ("k1", "created"),
        "actor": Actor(user_id="u1", ip="203.0.113.9", via_api=True),
        "target": Target("api_key", "k1", "CRM sync"),
        "change": Change(None, {"name": "CRM sync", "key": "sha256:0123abcd"}, ("name",)),
        "attributes": {"scopes": ["all:all"], "key_fingerprint": "sha256:0123abcd"},
        "raw": {"id": "k1", "key": "sha256:0123abcd", "headers": {"X-Secret": "<redacted>"}},
    }
    kw.update(over)
    return Event.build(**kw)


def _alert() -> Alert:
    return Alert.build(
        rule=RuleRef(
            "api_key.all_scope", 1, "API key with all:all", "critical", "Delete it.", ("T1098",), "No all:all"
        ),
        workspace=WS,
        summary="Key CRM sync holds all:all",
        dedup_key="api_key.all_scope:ws:k1",
        event_ids=(_event().id,),
        entities=(Entity("api_key", "k1", "CRM sync"),),
        first_seen="2026-03-05T23:09:47.337Z",
        last_seen="2026-03-05T23:09:47.337Z",
    )


def test_event_validates() -> None:
    """A fully populated event validates against event.v1.json."""
    assert schema_errors("event", _event().to_dict()) == []


def test_minimal_event_validates() -> None:
    """An event with only the required parts (nulls elsewhere) validates."""
    e = Event.build(
        type="audit.activity_99",
        time="2026-01-01T00:00:00Z",
        observed_at="2026-01-01T00:00:00Z",
        workspace=WorkspaceRef("w"),
        source=Source("audit_log", "audit_logs", "r1"),
        natural_key=("r1",),
    )
    assert schema_errors("event", e.to_dict()) == []


def test_alert_validates() -> None:
    """An alert validates against alert.v1.json."""
    assert schema_errors("alert", _alert().to_dict()) == []


def test_round_trip_through_json() -> None:
    """Events and alerts survive to_json → from_json unchanged."""
    e = _event()
    assert Event.from_json(e.to_json()) == e
    a = _alert()
    assert Alert.from_json(a.to_json()) == a


def test_alert_emission_and_raised_at_are_optional() -> None:
    """emission and raised_at: written (before ``schema``) and validated when set; an alert without them is
    written and read as before they existed; neither changes the id; a bad value is refused."""
    from schemas.errors import RecordError

    old = _alert()
    assert (old.emission, old.raised_at) == (None, None)
    assert b'"emission"' not in old.to_json() and "emission" not in old.to_dict() and "raised_at" not in old.to_dict()
    new = msgspec.structs.replace(old, emission=2, raised_at="2026-03-05T23:10:01.500Z")
    assert new.id == old.id
    assert new.to_json().endswith(
        b'"attributes":{},"emission":2,"raised_at":"2026-03-05T23:10:01.500Z","schema":"instantly.alert.v1"}'
    )
    assert Alert.from_json(new.to_json()) == new and Alert.from_dict(new.to_dict()) == new
    assert (new.to_dict()["emission"], new.to_dict()["raised_at"]) == (2, "2026-03-05T23:10:01.500Z")
    assert schema_errors("alert", new.to_dict()) == []
    assert Alert.from_json(old.to_json()) == old
    for field, bad in (("emission", 0), ("emission", "1"), ("raised_at", "yesterday")):
        assert schema_errors("alert", {**new.to_dict(), field: bad}), (field, bad)
    with pytest.raises(RecordError, match=r"\$\.emission"):
        Alert.from_json(json.dumps({**new.to_dict(), "emission": 0}).encode())


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d.pop("id"), "missing id"),
        (lambda d: d.update(id="not-hex"), "bad id"),
        (lambda d: d.update(type="API Key Created"), "type not dotted"),
        (lambda d: d.update(type="apikey"), "type without a dot"),
        (lambda d: d.update(time="yesterday"), "bad time"),
        (lambda d: d["source"].update(kind="email"), "unknown source kind"),
        (lambda d: d.update(extra=1), "unknown top-level field"),
        (lambda d: d["raw"].update(key="a1b2c3d4e5f6g7h8i9j0"), "key secret in raw"),
        (lambda d: d["raw"].update(password="hunter2"), "password in raw"),
        (lambda d: d["raw"]["headers"].update({"Authorization": "Basic dXNlcjpwYXNz"}), "header value in raw"),
        (lambda d: d["raw"].update(nested={"deep": [{"api_key": "live_abcdef"}]}), "nested secret in raw"),
        (lambda d: d["attributes"].update(token="abc123"), "token in attributes"),
        (lambda d: d["change"]["after"].update(key="plaintext"), "secret in change.after"),
    ],
)
def test_schema_rejects_bad_shapes(mutate: Any, why: str) -> None:
    """The schema rejects the obvious bad shapes, including unredacted secrets anywhere."""
    d = copy.deepcopy(_event().to_dict())
    mutate(d)
    assert schema_errors("event", d), why


def test_alert_schema_rejects_bad_severity_and_attack() -> None:
    """Alerts with an unknown severity or a malformed ATT&CK id are rejected."""
    d = _alert().to_dict()
    d["rule"]["severity"] = "urgent"
    assert schema_errors("alert", d)
    d = _alert().to_dict()
    d["rule"]["attack"] = ["Persistence"]
    assert schema_errors("alert", d)


def test_build_rejects_bad_type() -> None:
    """Event.build refuses a type that is not dotted lower_snake."""
    with pytest.raises(ValueError, match="dotted"):
        _event(type="Bad.Type")


def test_ids_deterministic_and_distinct() -> None:
    """The same natural key gives the same id; a different key or workspace a different one."""
    assert _event().id == _event().id
    assert _event(natural_key=("k1", "deleted")).id != _event().id
    assert _event(workspace=WorkspaceRef("other")).id != _event().id
    assert _event(observed_at="2030-01-01T00:00:00Z").id == _event().id


def test_ids_stable_across_processes() -> None:
    """A fresh interpreter (another hash seed) computes the same id."""
    code = (
        "from schemas.ids import deterministic_id;"
        "print(deterministic_id('ws', 'audit_logs', 'r1', {'b': 1, 'a': [1, 2]}))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    from schemas.ids import deterministic_id

    assert outs == {deterministic_id("ws", "audit_logs", "r1", {"a": [1, 2], "b": 1})}


@settings(max_examples=200, deadline=None)
@given(label=st.text(max_size=300), code=st.integers(min_value=0, max_value=10_000))
def test_any_label_or_code_builds_a_valid_type(label: str, code: int) -> None:
    """Any custom webhook label or unknown activity code yields a schema-valid event type."""
    from connectors.instantly.webhook_normalize import event_type_for

    for t in (f"webhook_delivery.{slug(label)}", event_type_for(label), f"audit.activity_{code}"):
        e = _event(type=t)
        assert schema_errors("event", e.to_dict()) == []


def test_schema_files_are_valid_2020_12() -> None:
    """Both schema files are themselves valid JSON Schema 2020-12."""
    from jsonschema import Draft202012Validator

    for name in ("event.v1.json", "alert.v1.json"):
        Draft202012Validator.check_schema(json.loads((ROOT / "schemas" / name).read_text()))
