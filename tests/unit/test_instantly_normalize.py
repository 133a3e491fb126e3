"""Every documented example response normalizes into schema-valid Event v1 events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connectors.instantly.normalize import iso_time, normalize_audit_record, pipeline_event
from connectors.instantly.snapshots import build_snapshot, diff_snapshots
from pipeline.errors import NormalizeError
from schemas.event import Event, WorkspaceRef
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import load_fixture

WS = WorkspaceRef("019cc043-af79-73db-a904-19add8ce4af2", "My Workspace")
OBSERVED = "2026-11-27T12:00:00.000Z"
AUDIT_FIXTURES = [
    "audit_logs.list.json",
    "audit_logs.list.aug2026.json",
    "audit_logs.list.2025.json",
    "audit_logs.list.mirror.json",
]
SNAPSHOT_FIXTURES = [
    ("api_keys", "api_keys.list.json"),
    ("members", "workspace_members.list.json"),
    ("members", "workspace_members.list.2026-05-18.json"),
    ("webhooks", "webhooks.list.json"),
    ("group_members", "workspace_group_members.list.json"),
    ("block_list", "block_list_entries.list.json"),
]
"""The snapshot examples the golden bus bytes were made from (tests/fixtures/schemas/make_golden.py)."""
NEWER_SNAPSHOT_FIXTURES = [("accounts", "accounts.list.json")]
"""Streams added after the golden file: checked here, not part of it."""
SECRETS = [b"a1b2c3d4e5f6g7h8i9j0", b"dXNlcm5hbWU6cGFzc3dvcmQ="]


def valid(event: Event) -> dict[str, Any]:
    d = event.to_dict()
    assert schema_errors("event", d) == []
    blob = orjson.dumps(d)
    assert not any(s in blob for s in SECRETS)
    assert Event.from_json(event.to_json()) == event
    return d


@pytest.mark.parametrize("fixture", AUDIT_FIXTURES)
def test_documented_audit_examples(fixture: str) -> None:
    """Each documented audit-log example becomes a valid ``audit.*`` event."""
    for record in load_fixture(fixture)["items"]:
        d = valid(normalize_audit_record(record, WS, OBSERVED))
        assert d["source"] == {"kind": "audit_log", "stream": "audit_logs", "record_id": record["id"]}
        assert d["time"] == iso_time(record["timestamp"])
        assert d["actor"]["ip"] == record["ip_address"] and d["actor"]["via_api"] is record["from_api"]
        assert d["attributes"]["activity_code"] == record["activity_type"]


def test_login_example_in_detail() -> None:
    """The list-audit-log example (activity 1) is a login with user target and full actor."""
    record = load_fixture("audit_logs.list.json")["items"][0]
    d = valid(normalize_audit_record(record, WS, OBSERVED))
    assert d["type"] == "audit.user_login"
    assert d["time"] == "2026-03-05T23:09:47.337Z" and d["observed_at"] == OBSERVED
    assert d["actor"] == {
        "user_id": record["user_id"],
        "user_name": "John Doe",
        "api_key_id": None,
        "ip": "127.0.0.1",
        "user_agent": "Mozilla/5.0...",
        "via_api": False,
    }
    assert d["target"] == {"kind": "user", "id": record["user_id"], "name": "John Doe"}
    assert d["attributes"]["activity_label"] == "User login"
    assert d["attributes"]["affected_count"] == 1
    assert d["workspace"] == {"id": WS.id, "name": WS.name}


def test_api_key_created_example_carries_the_acting_key() -> None:
    """The Aug 2026 example (activity 37) names the acting API key and says it came via the API."""
    d = valid(normalize_audit_record(load_fixture("audit_logs.list.aug2026.json")["items"][0], WS, OBSERVED))
    assert d["type"] == "audit.api_key_created"
    assert d["actor"]["api_key_id"] == "01234567-89ab-cdef-0123-456789abcdef" and d["actor"]["via_api"] is True


def test_mirror_example_time_and_metadata() -> None:
    """A timestamp without milliseconds is normalized; ``audit_metadata.key`` is redacted."""
    d = valid(normalize_audit_record(load_fixture("audit_logs.list.mirror.json")["items"][0], WS, OBSERVED))
    assert d["time"] == "2026-03-14T12:34:56.000Z"
    assert d["attributes"]["audit_metadata"] == {"key": "<redacted>"}
    assert d["raw"]["audit_metadata"] == {"key": "<redacted>"}
    assert d["target"]["kind"] == "user"


def test_webhook_activity_targets_the_webhook() -> None:
    """A webhook activity (20) targets the webhook id, not the user."""
    record = {**load_fixture("audit_logs.list.json")["items"][0], "activity_type": 20}
    d = valid(normalize_audit_record(record, WS, OBSERVED))
    assert d["type"] == "audit.webhook_marked_error" and d["target"]["kind"] == "webhook"


def test_ids_are_deterministic_and_scoped() -> None:
    """Same record → same id whatever the observation time; another workspace → another id."""
    record = load_fixture("audit_logs.list.json")["items"][0]
    a = normalize_audit_record(record, WS, OBSERVED)
    b = normalize_audit_record(record, WS, "2030-01-01T00:00:00.000Z")
    c = normalize_audit_record(record, WorkspaceRef("other"), OBSERVED)
    assert a.id == b.id != c.id


def test_unknown_code_and_missing_fields_are_kept() -> None:
    """An unknown code with only the required fields still normalizes; no timestamp → observed_at."""
    d = valid(
        normalize_audit_record(
            {
                "id": "x1",
                "activity_type": 99,
                "ip_address": "10.0.0.1",
                "from_api": False,
                "new_field": {"password": "p"},
            },
            WS,
            OBSERVED,
        )
    )
    assert d["type"] == "audit.activity_99"
    assert d["time"] == OBSERVED and d["attributes"]["time_source"] == "observed_at"
    assert d["raw"]["new_field"] == {"password": "<redacted>"}


def test_record_without_id_is_a_normalize_error() -> None:
    """Without an id there is no deterministic event id: NormalizeError (dead-letter)."""
    with pytest.raises(NormalizeError):
        normalize_audit_record({"activity_type": 1}, WS, OBSERVED)


@pytest.mark.parametrize(("stream", "fixture"), SNAPSHOT_FIXTURES + NEWER_SNAPSHOT_FIXTURES)
def test_documented_snapshot_examples_become_baselines(stream: str, fixture: str) -> None:
    """Each documented list example yields one valid baseline event per resource."""
    items = load_fixture(fixture)["items"]
    snap, skipped = build_snapshot(stream, items)
    assert skipped == 0
    events = diff_snapshots(stream, None, snap, workspace=WS, observed_at=OBSERVED)
    assert len(events) == len(items)
    for event in events:
        d = valid(event)
        assert d["type"].endswith("baseline") and d["source"]["kind"] == "snapshot"
        assert d["change"]["before"] is None and d["change"]["after"] == snap[d["source"]["record_id"]]


def test_workspace_example_becomes_a_baseline() -> None:
    """GET /workspaces/current yields ``workspace.baseline`` with owner and plan attributes."""
    snap, _ = build_snapshot("workspace", [load_fixture("workspace.current.json")])
    [event] = diff_snapshots("workspace", None, snap, workspace=WS, observed_at=OBSERVED)
    d = valid(event)
    assert d["type"] == "workspace.baseline"
    assert d["attributes"]["owner"] == "019cc043-af79-73db-a904-19ae1f9e23e3"
    assert d["attributes"]["plan_id"] == "pid_hg_v1" and d["attributes"]["org_client_domain"] == "example.com"


def test_api_key_and_webhook_attributes() -> None:
    """Key baselines carry scopes/name/created_at/fingerprint; webhook baselines header names only."""
    snap, _ = build_snapshot("api_keys", load_fixture("api_keys.list.json")["items"])
    [key] = diff_snapshots("api_keys", None, snap, workspace=WS, observed_at=OBSERVED)
    assert key.attributes["scopes"] == ["campaigns:create"] and key.attributes["name"] == "My API Key"
    assert key.attributes["created_at"] == "2026-03-05T23:09:47.098Z"
    assert str(key.attributes["key_fingerprint"]).startswith("sha256:")
    snap, _ = build_snapshot("webhooks", load_fixture("webhooks.list.json")["items"])
    [hook] = diff_snapshots("webhooks", None, snap, workspace=WS, observed_at=OBSERVED)
    assert hook.attributes["header_names"] == ["Authorization"] and hook.attributes["has_auth_header"] is True
    assert hook.attributes["url_scheme"] == "https" and hook.attributes["status"] == 1
    assert hook.attributes["event_type"] == "email_sent"


def test_pipeline_event_is_valid() -> None:
    """A poller event (source kind ``pipeline``) is schema-valid and deterministic."""

    def make(observed: str) -> Event:
        return pipeline_event(
            type="pipeline.poller_unauthorized",
            workspace=WS,
            observed_at=observed,
            stream="workspace",
            natural_key=(401, 1_780_000_000),
            attributes={"status": 401},
        )

    d = valid(make(OBSERVED))
    assert d["source"] == {"kind": "pipeline", "stream": "poller", "record_id": None}
    assert make(OBSERVED).id == make("2030-01-01T00:00:00.000Z").id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-05T23:09:47.337Z", "2026-03-05T23:09:47.337Z"),
        ("2024-02-29T12:00:00.000Z", "2024-02-29T12:00:00.000Z"),
        ("2023-02-29T12:00:00.000Z", None),  # canonical shape, no such day
        ("2026-02-30T00:00:00.000Z", None),
        ("2026-13-01T00:00:00.000Z", None),
        ("2026-00-10T00:00:00.000Z", None),
        ("2026-01-00T00:00:00.000Z", None),
        ("0000-01-01T00:00:00.000Z", None),
        ("2026-03-05T24:00:00.000Z", None),
        ("2026-03-05T23:60:00.000Z", None),
        ("2026-03-05T23:59:60.000Z", "2026-03-05T23:59:59.999Z"),  # a leap second: :59.999 of its minute
        ("2026-03-05T23:59:61.000Z", None),  # strptime's %S takes 60 and 61; RFC 3339 only 60
        ("2026-02-30T23:59:60.000Z", None),
        ("2026-03-05T23:09:47Z", "2026-03-05T23:09:47.000Z"),
        ("garbage", None),
        ("", None),
        (5, None),
    ],
)
def test_iso_time_checks_canonical_values_like_strptime(value: Any, expected: str | None) -> None:
    assert iso_time(value) == expected


@pytest.mark.parametrize("fixture", AUDIT_FIXTURES)
def test_audit_events_equal_event_build(fixture: str) -> None:
    """The fast construction builds exactly what Event.build would (same id, fields and JSON bytes)."""
    for record in load_fixture(fixture)["items"]:
        event = normalize_audit_record(record, WS, OBSERVED)
        built = Event.build(
            type=event.type,
            time=event.time,
            observed_at=event.observed_at,
            workspace=event.workspace,
            source=event.source,
            natural_key=(record["id"],),
            actor=event.actor,
            target=event.target,
            attributes=event.attributes,
            raw=event.raw,
        )
        assert event == built and type(event) is Event
        assert event.to_json() == built.to_json()


def test_admin_endpoint_answer_becomes_a_group_members_item() -> None:
    """GET /workspace-group-members/admin → the list's item shape with this workspace as the sub; no admin
    (``has_admin_workspace: false``, the documented ``Undefined`` name) → None; unknown fields are ignored."""
    from connectors.instantly.normalize import ADMIN_LINK_ID, admin_link_item, group_member_attributes, with_admin_link

    link = "019cc043-e416-7bfb-a570-dda14f46c967"
    body = {"workspace_name": "Evil Agency", "has_admin_workspace": True, "workspace_group_member_id": link, "x": 1}
    item = admin_link_item(body, WS.id, WS.name)
    assert item == {
        "id": link, "admin_workspace_id": None, "admin_workspace_name": "Evil Agency",
        "sub_workspace_id": WS.id, "sub_workspace_name": "My Workspace", "status": "accepted",
    }  # fmt: skip
    assert group_member_attributes(item, WS.id)["relation"] == "admin_workspace"
    assert admin_link_item({"workspace_name": "Undefined", "has_admin_workspace": False}, WS.id, None) is None
    assert admin_link_item({"workspace_name": "Undefined"}, WS.id, None) is None
    no_id = admin_link_item({"workspace_name": "A", "has_admin_workspace": True}, None, None)
    assert no_id is not None and no_id["id"] == ADMIN_LINK_ID and no_id["sub_workspace_id"] is None
    listed = {"id": "other", "admin_workspace_id": "a", "sub_workspace_id": WS.id, "status": "accepted"}
    assert with_admin_link([listed], item) == [listed]  # the listing already shows this workspace's admin
    assert with_admin_link([{**listed, "status": "pending"}], item)[-1] is item
    assert with_admin_link([{**listed, "id": link, "sub_workspace_id": "z"}], item) == [
        {**listed, "id": link, "sub_workspace_id": "z"}
    ]
    assert with_admin_link([], None) == []
    [event] = diff_snapshots("group_members", None, build_snapshot("group_members", [item])[0], workspace=WS,
                             observed_at=OBSERVED)  # fmt: skip
    assert valid(event)["type"] == "workspace_group.member_baseline"
