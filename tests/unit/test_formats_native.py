"""Native format: Event/Alert JSON as on the bus; also home of the sample records every format test uses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.formats import native_json, render, render_bytes
from schemas import Actor, Alert, Change, Entity, Event, RuleRef, Source, Target, WorkspaceRef
from schemas.validate import schema_errors

WS = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme | Growth = \\ team")
T0 = "2026-03-05T23:09:47.337Z"
SEEN = "2026-03-05T23:10:00.000Z"
USER = Actor(
    user_id="8c1f3a52-6f1e-4d7a-9d55-0b1c2d3e4f50",
    user_name="Jane Doe",
    ip="203.0.113.9",
    user_agent="Mozilla/5.0 (X11; Linux x86_64)",
    via_api=False,
)
API = Actor(api_key_id="3f9e0c1a-2b4d-4e6f-8a0b-1c2d3e4f5a6b", ip="2001:db8::7", via_api=True)


def _audit(code: int, type_: str, *, actor: Actor = USER, target: Target | None = None, **attrs: Any) -> Event:
    raw: dict[str, Any] = {
        "id": f"0199{code:04d}-aaaa-7bbb-8ccc-000000000000",
        "timestamp": T0,
        "organization_id": WS.id,
        "activity_type": code,
        "ip_address": actor.ip,
        "from_api": bool(actor.via_api),
        "user_agent": actor.user_agent,
        "user_id": actor.user_id,
        "audit_metadata": {"note": "sanitized"},
        "user_name": actor.user_name,
    }
    return Event.build(
        type=type_,
        time=T0,
        observed_at=SEEN,
        workspace=WS,
        source=Source("audit_log", "audit_logs", raw["id"]),
        natural_key=(raw["id"],),
        actor=actor,
        target=target,
        attributes={"activity_type": code, **attrs},
        raw=raw,
    )


def _snap(
    type_: str,
    target: Target,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    fields: tuple[str, ...] = (),
    **attrs: Any,
) -> Event:
    return Event.build(
        type=type_,
        time=T0,
        observed_at=SEEN,
        workspace=WS,
        source=Source("snapshot", type_.split(".")[0] + "s", target.id),
        natural_key=(target.id, type_, after),
        target=target,
        change=Change(before, after, fields),
        attributes=attrs,
        raw=after or before,
    )


KEY = Target("api_key", "3f9e0c1a-2b4d-4e6f-8a0b-1c2d3e4f5a6b", "CRM sync")
HOOK = Target("webhook", "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d", "Zapier | replies")
MEMBER = Target("member", "5d6e7f80-9a0b-4c1d-8e2f-3a4b5c6d7e8f", "mallory@example.com")
SUB_WS = Target("workspace", "11111111-2222-4333-8444-555555555555", "Sub = workspace")
KEY_AFTER = {"name": "CRM sync", "scopes": ["all:all"], "key": "sha256:0123abcd"}


def sample_events() -> dict[str, Event]:
    """One event per family the formats distinguish (name → event)."""
    return {
        "login": _audit(1, "audit.user_login", activity_label="User login"),
        "mfa_failed": _audit(29, "audit.mfa_login_challenge_failed"),
        "totp_enabled": _audit(23, "audit.totp_enabled"),
        "recovery_codes": _audit(27, "audit.mfa_recovery_codes_generated"),
        "audit_webhook_created": _audit(18, "audit.webhook_created", target=HOOK),
        "audit_webhook_error": _audit(20, "audit.webhook_marked_as_error", target=HOOK),
        "audit_key_created": _audit(37, "audit.api_key_created", actor=API, target=KEY),
        "audit_key_deleted": _audit(38, "audit.api_key_deleted", target=KEY),
        "campaign_deleted": _audit(3, "audit.campaign_deletion", affected_count=1),
        "lead_exported": _audit(34, "audit.lead_exported", actor=API, affected_count=5000),
        "audit_unknown": _audit(99, "audit.activity_99", actor=Actor()),
        "key_created": _snap(
            "api_key.created", KEY, None, KEY_AFTER, ("name", "scopes"),
            scopes=["all:all"], key_fingerprint="sha256:0123abcd",
        ),
        "key_deleted": _snap("api_key.deleted", KEY, KEY_AFTER, None, key_fingerprint="sha256:0123abcd"),
        "key_scopes": _snap(
            "api_key.scopes_changed", KEY, KEY_AFTER, {**KEY_AFTER, "scopes": ["leads:read"]}, ("scopes",),
            scopes=["leads:read"],
        ),
        "webhook_created": _snap(
            "webhook.created", HOOK, None,
            {"target_hook_url": "https://hooks.example.com/x", "headers": {"X-Secret": "<redacted>"}},
        ),
        "webhook_updated": _snap(
            "webhook.updated", HOOK, {"event_type": "reply_received"}, {"event_type": "all_events"}, ("event_type",)
        ),
        "webhook_deleted": _snap("webhook.deleted", HOOK, {"event_type": "all_events"}, None),
        "member_invited": _snap("member.invited", MEMBER, None, {"role": "admin", "accepted": False}, role="admin"),
        "member_accepted": _snap(
            "member.accepted", MEMBER, {"role": "admin", "accepted": False}, {"role": "admin", "accepted": True},
            ("accepted",),
        ),
        "member_removed": _snap("member.removed", MEMBER, {"role": "editor", "accepted": True}, None),
        "role_up": _snap("member.role_changed", MEMBER, {"role": "view"}, {"role": "admin"}, ("role",)),
        "role_down": _snap("member.role_changed", MEMBER, {"role": "owner"}, {"role": "editor"}, ("role",)),
        "permissions": _snap(
            "member.permissions_changed", MEMBER, {"permissions": ["dashboard.view"]},
            {"permissions": ["dashboard.view", "organization.billing"]}, ("permissions",),
        ),
        "owner_changed": _snap(  # as the connector makes it: the target is the workspace, the owners user ids
            "workspace.owner_changed", Target("workspace", WS.id, WS.name), {"owner": "u-old"},
            {"owner": "u-new-owner"}, ("owner",), owner="u-new-owner", previous_owner="u-old",
        ),
        "workspace_renamed": _snap(
            "workspace.renamed", Target("workspace", WS.id, "Acme 2"), {"name": "Acme"}, {"name": "Acme 2"}, ("name",)
        ),
        "group_added": _snap("workspace_group.member_added", SUB_WS, None, {"status": "accepted"}),
        "group_removed": _snap("workspace_group.member_removed", SUB_WS, {"status": "accepted"}, None),
        "block_removed": _snap(
            "block_list.entry_removed", Target("block_list_entry", "b-1", "competitor.example"),
            {"bl_value": "competitor.example"}, None,
        ),
        "reply": Event.build(
            type="webhook_delivery.reply_received", time=T0, observed_at=SEEN, workspace=WS,
            source=Source("webhook", "webhook_deliveries", None), natural_key=("body-hash",),
            attributes={"campaign_id": "c-1", "lead_email": "lead@example.com"},
            raw={"event_type": "reply_received", "reply_text": "Hi | there = \\n"},
        ),
        "poller_unauthorized": Event.build(
            type="pipeline.poller_unauthorized", time=T0, observed_at=SEEN, workspace=WS,
            source=Source("pipeline", "audit_logs", None), natural_key=("401", T0),
            attributes={"status": 401, "stream": "audit_logs"},
        ),
    }  # fmt: skip


def sample_alert(**over: Any) -> Alert:
    """An alert with every field populated (overrides by keyword)."""
    kw: dict[str, Any] = {
        "rule": RuleRef(
            "api_key.all_scope", 2, "API key with all:all scope", "critical",
            "https://runbooks.example.com/api-key-all-scope", ("T1098", "T1098.001"), "Scoped API keys",
        ),
        "workspace": WS,
        "summary": "Key 'CRM sync' holds all:all | rotate = now",
        "dedup_key": f"instantly:{WS.id}:api_key.all_scope:{KEY.id}",
        "event_ids": (sample_events()["key_created"].id,),
        "entities": (Entity("api_key", KEY.id, KEY.name), Entity("user", USER.user_id, "Jane Doe")),
        "first_seen": T0,
        "last_seen": SEEN,
    }  # fmt: skip
    kw.update(over)
    return Alert.build(**kw)


def normalizer_events() -> list[Event]:
    """Events made by the real Instantly normalizer: every audit code (and an unknown one) and snapshot diffs."""
    from connectors.instantly.audit_codes import AUDIT_CODES
    from connectors.instantly.normalize import normalize_audit_record
    from connectors.instantly.snapshots import build_snapshot, diff_snapshots

    events = []
    for code in [*AUDIT_CODES, 99]:
        record = {
            "id": f"0199{code:04d}-0000-7000-8000-000000000000", "timestamp": T0, "organization_id": WS.id,
            "activity_type": code, "ip_address": "203.0.113.9", "from_api": code % 2 == 0,
            "user_agent": "curl/8.5", "user_id": "u-1", "user_name": "Jane | Doe", "api_key_id": "k-1",
            "affected_count": 2, "webhook_id": "w-1", "audit_metadata": {"note": "x=y"},
        }  # fmt: skip
        events.append(normalize_audit_record(record, WS, SEEN))
    key = {"id": "k-1", "name": "CRM", "scopes": ["leads:read"], "key": "sk_live_canary", "timestamp_created": T0}
    member = {"id": "m-1", "email": "eve@example.com", "user_id": "u-9", "role": "view", "accepted": False,
              "permissions": ["dashboard.view"], "timestamp_created": T0, "workspace_id": WS.id}  # fmt: skip
    hook = {"id": "w-1", "name": "Zap", "target_hook_url": "https://x.example/h", "headers": {"X-S": "v"}}
    group = {"id": "g-1", "admin_workspace_id": WS.id, "sub_workspace_id": "s-1", "status": "pending"}
    account = {"email": "Sales@Example.com", "status": 1, "warmup_status": 1, "provider_code": 2,
               "tracking_domain_name": "t.example.com", "tracking_domain_status": "active", "added_by": "u-1",
               "setup_pending": False, "modified_by": "u-1", "timestamp_created": T0}  # fmt: skip
    changes: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
        "api_keys": ([key], [{**key, "scopes": ["all:all"]}, {**key, "id": "k-2"}]),
        "members": ([member], [{**member, "role": "admin", "accepted": True, "permissions": []}]),
        "webhooks": ([hook], [{**hook, "headers": {"X-T": "v"}, "name": "Zap 2"}]),
        "workspace": ([{"id": WS.id, "name": "Acme", "owner": "u-1"}], [{"id": WS.id, "name": "Acme", "owner": "u-2"}]),
        "group_members": (
            [group],
            [{**group, "status": "accepted"}, {**group, "id": "g-2", "sub_workspace_id": "s-2"}],
        ),
        "block_list": ([{"id": "b-1", "bl_value": "x.example"}], []),
        "accounts": (
            [account],
            [
                {
                    **account,
                    "reply_to": "eve@elsewhere.example",
                    "tracking_domain_name": "t.elsewhere.example",
                    "status": -1,
                    "modified_by": "u-2",
                    "first_name": "ignored",
                },
                {**account, "email": "new@example.com"},
            ],
        ),
    }
    for stream, (before, after) in changes.items():
        events += diff_snapshots(stream, None, build_snapshot(stream, before)[0], workspace=WS, observed_at=SEEN)
        prev, cur = build_snapshot(stream, before)[0], build_snapshot(stream, after)[0]
        events += diff_snapshots(stream, prev, cur, workspace=WS, observed_at=SEEN)
        events += diff_snapshots(stream, cur, {}, workspace=WS, observed_at=SEEN)
    return events


def test_samples_are_valid_events() -> None:
    """Every sample event validates against event.v1.json (the formats' input contract)."""
    for name, event in sample_events().items():
        assert schema_errors("event", event.to_dict()) == [], name
    real = normalizer_events()
    assert len({e.type for e in real}) > 50
    for event in real:
        assert schema_errors("event", event.to_dict()) == [], event.type
    assert schema_errors("alert", sample_alert().to_dict()) == []


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_native_json_is_the_bus_json(name: str) -> None:
    """native_json of an event is its bus JSON byte for byte; of its dict form, the same JSON document."""
    event = sample_events()[name]
    assert native_json(event) == event.to_json()
    assert orjson.loads(native_json(event.to_dict())) == orjson.loads(event.to_json()) == event.to_dict()
    assert orjson.loads(render_bytes(event.to_dict(), "native")) == event.to_dict()


def test_native_alert_roundtrip() -> None:
    """An alert rendered natively parses back into the same Alert."""
    alert = sample_alert()
    assert Alert.from_json(native_json(alert)) == alert
    assert render(alert.to_dict(), "native") == alert.to_dict()


def test_native_has_no_raw_control_characters() -> None:
    """Native JSON escapes newlines and control characters, so it can travel line-framed."""
    event = sample_events()["reply"]
    hostile = Event.from_dict({**event.to_dict(), "raw": {"text": "a\nb\rc\x00d\x1b[31m"}})
    data = native_json(hostile)
    assert not any(b < 0x20 for b in data)


def test_render_rejects_unknown_format() -> None:
    """Asking for a format that does not exist is a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="native"):
        render(sample_alert().to_dict(), "xml")
