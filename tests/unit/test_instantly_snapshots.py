"""Snapshot diffs for every resource kind: the right event types, fields and attributes, all schema-valid."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from connectors.instantly.snapshots import (
    KINDS,
    build_snapshot,
    changed_fields,
    decode_snapshot,
    diff_snapshots,
    encode_snapshot,
)
from schemas.event import Event, WorkspaceRef
from schemas.ids import fingerprint_secret
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import load_fixture

WS = WorkspaceRef("019cc043-af8a-72ef-8129-91ffeaad760b", "Agency")
T0 = "2026-11-27T12:00:00.000Z"


def items(fixture: str) -> list[dict[str, Any]]:
    doc = load_fixture(fixture)
    return list(doc["items"]) if "items" in doc else [doc]


def diff(stream: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[Event]:
    prev, _ = build_snapshot(stream, before)
    cur, _ = build_snapshot(stream, after)
    events = diff_snapshots(stream, prev, cur, workspace=WS, observed_at=T0)
    for e in events:
        assert schema_errors("event", e.to_dict()) == [], e.type
        assert e.source.kind == "snapshot" and e.source.stream == stream
    return events


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def one(events: list[Event], type_: str) -> Event:
    found = [e for e in events if e.type == type_]
    assert len(found) == 1, types(events)
    return found[0]


# ------------------------------------------------------------------------------------ api keys
def test_api_key_created_deleted_scopes_renamed() -> None:
    """New key → created (time = timestamp_created); gone → deleted; scope and name changes → their own events."""
    key = items("api_keys.list.json")[0]
    new = {
        **key,
        "id": "k2",
        "name": "CI",
        "scopes": ["all:all"],
        "key": "s2",
        "timestamp_created": "2026-11-27T11:00:00Z",
    }
    created = one(diff("api_keys", [key], [key, new]), "api_key.created")
    assert created.time == "2026-11-27T11:00:00.000Z" and created.attributes["scopes"] == ["all:all"]
    assert created.change is not None and created.change.before is None
    deleted = one(diff("api_keys", [key, new], [key]), "api_key.deleted")
    assert deleted.target is not None and deleted.target.id == "k2" and deleted.change is not None
    assert deleted.change.after is None and deleted.attributes["name"] == "CI"
    changed = {
        **key,
        "scopes": ["campaigns:create", "all:read"],
        "name": "Renamed",
        "timestamp_updated": "2026-11-27T11:30:00.000Z",
    }
    events = diff("api_keys", [key], [changed])
    assert sorted(types(events)) == ["api_key.renamed", "api_key.scopes_changed"]
    scopes = one(events, "api_key.scopes_changed")
    assert scopes.attributes["scopes_added"] == ["all:read"] and scopes.attributes["scopes_removed"] == []
    assert scopes.change is not None and scopes.change.fields == ("scopes",)
    assert scopes.time == "2026-11-27T11:30:00.000Z"
    assert one(events, "api_key.renamed").attributes["previous_name"] == "My API Key"


def test_api_key_secret_never_in_change() -> None:
    """before/after/raw of key events hold the fingerprint, never the secret."""
    key = items("api_keys.list.json")[0]
    events = diff("api_keys", [key], [{**key, "key": "rotated-secret-value"}])
    assert types(events) == ["api_key.updated"]
    blob = orjson.dumps([e.to_dict() for e in events])
    assert b"a1b2c3d4e5f6g7h8i9j0" not in blob and b"rotated-secret-value" not in blob
    assert events[0].change is not None and events[0].change.fields == ("key",)


# ------------------------------------------------------------------------------------- members
def test_member_lifecycle() -> None:
    """invited (actor = issuer) → accepted → role/permissions changed → removed."""
    m = items("workspace_members.list.json")[0]
    invited = one(diff("members", [], [m]), "member.invited")
    assert invited.actor is not None and invited.actor.user_id == m["issuer_id"]
    assert invited.attributes["email"] == "user@example.com" and invited.attributes["accepted"] is False
    accepted = {**m, "accepted": True}
    assert types(diff("members", [m], [accepted])) == ["member.accepted"]
    promoted = {**accepted, "role": "admin", "permissions": ["dashboard.view", "organization.users.manage"]}
    events = diff("members", [accepted], [promoted])
    assert sorted(types(events)) == ["member.permissions_changed", "member.role_changed"]
    assert one(events, "member.role_changed").attributes["previous_role"] == "editor"
    assert one(events, "member.role_changed").attributes["role"] == "admin"
    perms = one(events, "member.permissions_changed").attributes
    assert perms["permissions_added"] == ["organization.users.manage"] and perms["permissions_removed"] == []
    removed = one(diff("members", [promoted], []), "member.removed")
    assert removed.attributes["role"] == "admin"


def test_member_appearing_already_accepted() -> None:
    """A member first seen already accepted yields invited and accepted."""
    m = {**items("workspace_members.list.json")[0], "accepted": True}
    assert types(diff("members", [], [m])) == ["member.invited", "member.accepted"]


def test_permission_order_is_not_a_change() -> None:
    """Reordered permissions or scopes are the same set: no event."""
    m = {**items("workspace_members.list.json")[0], "permissions": ["a.b", "c.d"]}
    assert diff("members", [m], [{**m, "permissions": ["c.d", "a.b"]}]) == []


# ------------------------------------------------------------------------------------ webhooks
def test_webhook_created_updated_deleted() -> None:
    """Webhook created, URL/event type updated (with change.fields) and deleted."""
    h = items("webhooks.list.json")[0]
    created = one(diff("webhooks", [], [h]), "webhook.created")
    assert created.attributes["target_hook_url"] == "https://webhook.site/" + fingerprint_secret("/unique-url")
    moved = {**h, "target_hook_url": "http://attacker.example/x", "event_type": "all_events"}
    updated = one(diff("webhooks", [h], [moved]), "webhook.updated")
    assert updated.change is not None and updated.change.fields == ("event_type", "target_hook_url")
    assert updated.attributes["url_scheme"] == "http"
    assert one(diff("webhooks", [h], []), "webhook.deleted").target is not None


def test_webhook_status_error_and_resumed() -> None:
    """status 1 → -1 is ``error``; -1 → 1 is ``resumed``; timestamp_error travels with it."""
    h = {**items("webhooks.list.json")[0], "timestamp_error": None}
    broken = {**h, "status": -1, "timestamp_error": "2026-11-27T11:59:00.000Z"}
    err = one(diff("webhooks", [h], [broken]), "webhook.status_changed")
    assert err.attributes["status_change"] == "error" and err.attributes["previous_status"] == 1
    assert err.change is not None and err.change.fields == ("status", "timestamp_error")
    resumed = one(diff("webhooks", [broken], [h]), "webhook.status_changed")
    assert resumed.attributes["status_change"] == "resumed"


def test_webhook_headers_changed_names_only() -> None:
    """Adding or removing a header is ``headers_changed`` with names only; values never appear."""
    h = items("webhooks.list.json")[0]
    more = copy.deepcopy(h)
    more["headers"]["X-Secret"] = "hunter2-very-secret"
    ev = one(diff("webhooks", [h], [more]), "webhook.headers_changed")
    assert ev.attributes["header_names_added"] == ["X-Secret"]
    assert ev.attributes["header_names"] == ["Authorization", "X-Secret"]
    assert b"hunter2" not in ev.to_json() and b"dXNlcm5h" not in ev.to_json()
    none = {**h, "headers": None}
    gone = one(diff("webhooks", [h], [none]), "webhook.headers_changed")
    assert gone.attributes["header_names_removed"] == ["Authorization"] and gone.attributes["has_auth_header"] is False


def test_webhook_auth_header_emptied_is_a_change() -> None:
    """Emptying the Authorization value (the name stays) is ``headers_changed`` with no auth header;
    whether a value is set is recorded, never the value; setting it again is a change back."""
    h = items("webhooks.list.json")[0]
    emptied = {**h, "headers": {"Authorization": ""}}
    ev = one(diff("webhooks", [h], [emptied]), "webhook.headers_changed")
    assert ev.attributes["header_values_emptied"] == ["Authorization"] and ev.attributes["has_auth_header"] is False
    assert ev.attributes["empty_header_names"] == ["Authorization"] and b"dXNlcm5h" not in ev.to_json()
    spaces = {**h, "headers": {"Authorization": "  "}}
    assert not [e for e in diff("webhooks", [emptied], [spaces]) if e.type == "webhook.headers_changed"]
    back = one(diff("webhooks", [emptied], [h]), "webhook.headers_changed")
    assert back.attributes["header_values_set"] == ["Authorization"] and back.attributes["has_auth_header"] is True


# ----------------------------------------------------------------------------------- workspace
def test_workspace_changes() -> None:
    """Owner, plan, removal scheduling and white-label domain changes each get their event."""
    w = items("workspace.current.json")[0]
    changed = {
        **w,
        "owner": "new-owner",
        "plan_id": "pid_free",
        "org_client_domain": "evil.example",
        "scheduled_for_removal_at": "2026-11-28T12:00:00.000Z",
        "timestamp_updated": "2026-11-27T11:00:00Z",
    }
    events = diff("workspace", [w], [changed])
    assert sorted(types(events)) == [
        "workspace.owner_changed",
        "workspace.plan_changed",
        "workspace.removal_scheduled",
        "workspace.whitelabel_domain_changed",
    ]
    assert one(events, "workspace.owner_changed").attributes["previous_owner"] == w["owner"]
    assert one(events, "workspace.plan_changed").attributes["previous_plan_id"] == "pid_hg_v1"
    assert one(events, "workspace.whitelabel_domain_changed").attributes["previous_org_client_domain"] == "example.com"
    cancelled = one(
        diff("workspace", [changed], [{**changed, "scheduled_for_removal_at": None}]), "workspace.removal_cancelled"
    )
    assert cancelled.attributes["previous_scheduled_for_removal_at"] == "2026-11-28T12:00:00.000Z"


def test_volatile_fields_only_is_no_event() -> None:
    """A change in ``timestamp_updated`` (also nested) alone emits nothing."""
    w = items("workspace.current.json")[0]
    later = copy.deepcopy(w)
    later["timestamp_updated"] = "2030-01-01T00:00:00.000Z"
    later["plan_id_verification"]["timestamp_updated"] = "2030-01-01T00:00:00.000Z"
    assert diff("workspace", [w], [later]) == []
    assert changed_fields(w, later) == frozenset()


# ------------------------------------------------------------------------------- group members
def test_group_member_added_status_removed() -> None:
    """Agency links: added, status changed (pending → accepted), removed; relation seen from our side."""
    g = {**items("workspace_group_members.list.json")[0], "status": "pending"}
    added = one(diff("group_members", [], [g]), "workspace_group.member_added")
    assert added.attributes["relation"] == "sub_workspace"  # WS is the admin workspace
    accepted = {**g, "status": "accepted"}
    ev = one(diff("group_members", [g], [accepted]), "workspace_group.member_status_changed")
    assert ev.attributes["previous_status"] == "pending" and ev.attributes["status"] == "accepted"
    assert types(diff("group_members", [accepted], [])) == ["workspace_group.member_removed"]


# ---------------------------------------------------------------------------------- block list
def test_block_list_added_removed() -> None:
    """Block-list entries: added and removed with value and is_domain."""
    domain, email = items("block_list_entries.list.json")
    added = one(diff("block_list", [domain], [domain, email]), "block_list.entry_added")
    assert added.attributes == {"value": "someone@example.com", "is_domain": False}
    removed = one(diff("block_list", [domain, email], [email]), "block_list.entry_removed")
    assert removed.attributes == {"value": "example.com", "is_domain": True}


# ------------------------------------------------------------------------------------ accounts
def test_account_snapshot_keeps_only_stable_fields() -> None:
    """Accounts are keyed by lower-cased email and keep only the listed fields: no status_message (SMTP
    responses), no warmup statistics, no timestamp_updated; extra, missing and null fields are tolerated."""
    google, microsoft = items("accounts.list.json")
    snap, skipped = build_snapshot("accounts", [google, microsoft, {"first_name": "no email"}, {"email": 7}])
    assert skipped == 2 and sorted(snap) == ["sales@example.com", "user@example.com"]
    assert set(snap["user@example.com"]) == {
        "email", "status", "warmup_status", "provider_code", "added_by", "modified_by", "tracking_domain_name",
        "tracking_domain_status", "setup_pending", "is_managed_account", "timestamp_created",
    }  # fmt: skip
    assert snap["sales@example.com"]["reply_to"] == "replies@example.com"
    data = encode_snapshot(snap)
    assert b"status_message" not in data and b"550-5.4.5" not in data and b"warmup_custom_ftag" not in data
    assert b"timestamp_updated" not in data and b"stat_warmup_score" not in data
    churn = {**google, "timestamp_updated": "2026-12-01T00:00:00.000Z", "stat_warmup_score": 42,
             "status_message": {"code": "ETIMEDOUT"}, "timestamp_last_used": "2026-12-01T00:00:00.000Z",
             "daily_limit": 30, "warmup": {"limit": 5}, "brand_new_field": True}  # fmt: skip
    assert diff("accounts", [google], [churn]) == []
    assert diff("accounts", [google], [{**google, "email": "USER@example.com "}]) == []


def test_account_baseline_attributes_label_enums() -> None:
    """A baseline names the account (target kind account, id = name = email) with enum labels; unknown
    enum numbers and missing optional fields do not fail."""
    google, microsoft = items("accounts.list.json")
    odd = {"email": "odd@example.org", "status": 99, "warmup_status": None, "provider_code": "x"}
    cur, _ = build_snapshot("accounts", [google, microsoft, odd])
    events = {e.source.record_id: e for e in diff_snapshots("accounts", None, cur, workspace=WS, observed_at=T0)}
    assert {e.type for e in events.values()} == {"account.baseline"}
    ms = events["sales@example.com"]
    assert ms.target is not None and (ms.target.kind, ms.target.name) == ("account", "sales@example.com")
    assert ms.attributes["provider_label"] == "microsoft" and ms.attributes["status_label"] == "paused"
    assert ms.attributes["warmup_status_label"] == "paused"
    assert ms.attributes["reply_to"] == "replies@example.com" and ms.attributes["reply_to_domain"] == "example.com"
    g = events["user@example.com"].attributes
    assert g["reply_to"] is None and g["tracking_domain_name"] == "example.com" and g["provider_label"] == "google"
    o = events["odd@example.org"].attributes
    assert (o["status"], o["status_label"], o["warmup_status_label"], o["provider_label"]) == (99, "unknown", None,
                                                                                               "unknown")  # fmt: skip
    for e in events.values():
        assert "status_message" not in orjson.dumps(e.to_dict()).decode()


def test_account_changes() -> None:
    """added (actor = added_by), removed, reply_to_changed, tracking_domain_changed, status_changed (status or
    warmup_status), each with change.before/after and the previous value; other kept fields → updated."""
    google, microsoft = items("accounts.list.json")
    added = one(diff("accounts", [google], [google, microsoft]), "account.added")
    assert added.target is not None and added.target.id == "sales@example.com" and added.actor is not None
    assert added.actor.user_id == "019d9c5f-9677-78ed-b2c4-298d410e72fb"
    assert added.time == "2026-04-18T09:12:01.120Z" and added.change is not None and added.change.before is None
    removed = one(diff("accounts", [google, microsoft], [google]), "account.removed")
    assert removed.target is not None and removed.target.id == "sales@example.com" and removed.change is not None
    assert removed.change.after is None and removed.change.before is not None
    assert (
        "moved to another workspace" in removed.attributes["removal"]
        and "no audit record" in removed.attributes["removal"]
    )

    redirected = {**google, "reply_to": "Collect@Attacker.example"}
    ev = one(diff("accounts", [google], [redirected]), "account.reply_to_changed")
    assert ev.change is not None and ev.change.fields == ("reply_to",)
    assert ev.change.before is not None and "reply_to" not in ev.change.before
    assert ev.change.after is not None and ev.change.after["reply_to"] == "collect@attacker.example"
    assert ev.attributes["previous_reply_to"] is None and ev.attributes["reply_to_domain"] == "attacker.example"
    cleared = one(diff("accounts", [redirected], [{**redirected, "reply_to": None}]), "account.reply_to_changed")
    assert cleared.attributes["previous_reply_to"] == "collect@attacker.example"
    assert cleared.attributes["reply_to"] is None

    moved = {**google, "tracking_domain_name": "track.attacker.example", "tracking_domain_status": "pending"}
    ev = one(diff("accounts", [google], [moved]), "account.tracking_domain_changed")
    assert ev.change is not None and ev.change.fields == ("tracking_domain_name", "tracking_domain_status")
    assert ev.attributes["previous_tracking_domain_name"] == "example.com"
    assert ev.attributes["tracking_domain_name"] == "track.attacker.example"

    broken = {**google, "status": -1, "warmup_status": -1}
    ev = one(diff("accounts", [google], [broken]), "account.status_changed")
    assert ev.change is not None and ev.change.fields == ("status", "warmup_status")
    assert ev.attributes["previous_status"] == 1 and ev.attributes["status_label"] == "connection_error"
    assert ev.attributes["warmup_status_label"] == "banned"
    assert types(diff("accounts", [google], [{**google, "warmup_status": 0}])) == ["account.status_changed"]
    assert types(diff("accounts", [google], [{**google, "modified_by": "someone-else"}])) == ["account.updated"]
    by_other = {**redirected, "modified_by": "someone-else"}
    assert types(diff("accounts", [google], [by_other])) == ["account.reply_to_changed"]
    assert types(diff("accounts", [google], [{**google, "tracking_domain_status": "pending"}])) == ["account.updated"]


# ------------------------------------------------------------------------------------- general
@pytest.mark.parametrize(
    ("stream", "fixture", "baseline"),
    [
        ("api_keys", "api_keys.list.json", "api_key.baseline"),
        ("members", "workspace_members.list.json", "member.baseline"),
        ("webhooks", "webhooks.list.json", "webhook.baseline"),
        ("workspace", "workspace.current.json", "workspace.baseline"),
        ("group_members", "workspace_group_members.list.json", "workspace_group.member_baseline"),
        ("block_list", "block_list_entries.list.json", "block_list.entry_baseline"),
        ("accounts", "accounts.list.json", "account.baseline"),
    ],
)
def test_first_snapshot_is_baselines(stream: str, fixture: str, baseline: str) -> None:
    """The first snapshot of a workspace yields one baseline per resource and no created events."""
    cur, _ = build_snapshot(stream, items(fixture))
    events = diff_snapshots(stream, None, cur, workspace=WS, observed_at=T0)
    assert {e.type for e in events} == {baseline} and len(events) == len(cur)
    assert all(schema_errors("event", e.to_dict()) == [] for e in events)


def test_ids_are_deterministic() -> None:
    """Event id = hash(resource id, change kind, after-state, observed_at): the same diff seen at the same time
    gives the same ids; a different after-state or a later repeat of the same change gives a new id."""
    key = items("api_keys.list.json")[0]
    new = {**key, "id": "k9"}
    prev, _ = build_snapshot("api_keys", [key])
    cur, _ = build_snapshot("api_keys", [key, new])
    at = "2031-01-01T00:00:00.000Z"
    a = diff_snapshots("api_keys", prev, cur, workspace=WS, observed_at=at)
    b = diff_snapshots("api_keys", prev, cur, workspace=WS, observed_at=at)
    assert [e.id for e in a] == [e.id for e in b]
    changed, _ = build_snapshot("api_keys", [key, {**new, "name": "different"}])
    c = diff_snapshots("api_keys", prev, changed, workspace=WS, observed_at=at)
    assert a[0].id != c[0].id
    later = diff_snapshots("api_keys", prev, cur, workspace=WS, observed_at="2031-01-02T00:00:00.000Z")
    assert later[0].id != a[0].id, "a repeated change (e.g. a second escalation) must not be deduplicated away"


def test_snapshot_state_roundtrip() -> None:
    """Snapshots are stored redacted and read back unchanged; junk reads as no snapshot."""
    snap, skipped = build_snapshot("api_keys", [*items("api_keys.list.json"), {"name": "no id"}])
    assert skipped == 1
    data = encode_snapshot(snap)
    assert b"a1b2c3d4e5f6g7h8i9j0" not in data
    assert decode_snapshot(data) == snap
    assert decode_snapshot(b"not json") is None and decode_snapshot(None) is None
    assert set(KINDS) == {"api_keys", "members", "webhooks", "workspace", "group_members", "block_list", "accounts"}


def test_plain_headers_do_not_count_as_authentication() -> None:
    """A webhook whose only custom headers are plain ones (Content-Type) is unauthenticated; a secret header counts."""
    from connectors.instantly.normalize import webhook_attributes

    plain = webhook_attributes(
        {"target_hook_url": "https://x.example", "headers": {"Content-Type": "application/json"}}
    )
    assert plain["has_auth_header"] is False
    secret = webhook_attributes(
        {"target_hook_url": "https://x.example", "headers": {"X-Webhook-Secret": "s3cr3t-value"}}
    )
    assert secret["has_auth_header"] is True
    assert webhook_attributes({"target_hook_url": "https://x.example", "headers": None})["has_auth_header"] is False
