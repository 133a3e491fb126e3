"""The rules read what the Instantly connector really emits (snapshot diffs, audit records, pipeline events)."""

from __future__ import annotations

from typing import Any

from connectors.instantly import normalize, snapshots
from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.rules.engine import RulesEngine
from schemas.alert import Alert
from schemas.event import Event, WorkspaceRef
from schemas.validate import schema_errors

WS = WorkspaceRef("ws-1", "Acme")
T0 = parse_time("2026-03-01T00:00:00Z")


def diff(stream: str, before: list[dict[str, Any]] | None, after: list[dict[str, Any]], t: float) -> list[Event]:
    prev = snapshots.build_snapshot(stream, before)[0] if before is not None else None
    cur = snapshots.build_snapshot(stream, after)[0]
    return list(snapshots.diff_snapshots(stream, prev, cur, workspace=WS, observed_at=format_time(t)))


def audit(code: int, t: float, **fields: Any) -> Event:
    rec = {"id": f"a-{code}-{t}", "timestamp": format_time(t), "organization_id": "ws-1", "activity_type": code,
           "ip_address": "198.51.100.4", "from_api": False, "user_id": "u1", "user_name": "Ann", **fields}  # fmt: skip
    ev: Event = normalize.normalize_audit_record(rec, WS, format_time(t))
    return ev


def run(events: list[Event], cfg: dict[str, Any] | None = None) -> list[Alert]:
    for e in events:
        assert schema_errors("event", e.to_dict()) == []
    result = RulesEngine.from_config(cfg or {}, clock=FakeClock(T0)).evaluate(events)
    assert not result.failures, result.failures
    for a in result.alerts:
        assert schema_errors("alert", a.to_dict()) == []
    return list(result.alerts)


def rules(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return sorted((a.rule.id, a.rule.severity, a.status) for a in alerts)


def key(kid: str, scopes: list[str], created: str = "2026-02-25T00:00:00Z") -> dict[str, Any]:
    return {"id": kid, "name": f"key-{kid}", "scopes": scopes, "key": "s3cr3t-value", "organization_id": "ws-1",
            "timestamp_created": created, "timestamp_updated": created}  # fmt: skip


def test_api_key_snapshots_open_and_resolve_all_scope() -> None:
    """An all:all key in the connector's baseline alerts; the diff that deletes it resolves."""
    base = diff("api_keys", None, [key("k1", ["all:all"]), key("k2", ["leads:read"])], T0)
    gone = diff("api_keys", [key("k1", ["all:all"]), key("k2", ["leads:read"])], [key("k2", ["leads:read"])], T0 + 60)
    assert rules(run(base + gone)) == [
        ("api_key.all_scope", "critical", "open"),
        ("api_key.all_scope", "critical", "resolved"),
    ]


def test_webhook_snapshot_without_auth_over_http() -> None:
    """A webhook to http:// with no headers raises webhook.unauthenticated and webhook.insecure_target (high)."""
    hook = {"id": "h1", "organization": "ws-1", "name": "crm", "target_hook_url": "http://crm.acme.com/in?token=abc",
            "headers": None, "status": 1, "timestamp_created": "2026-02-01T00:00:00Z"}  # fmt: skip
    alerts = run(diff("webhooks", None, [hook], T0))
    assert rules(alerts) == [("webhook.insecure_target", "high", "open"), ("webhook.unauthenticated", "high", "open")]
    assert all("token" not in a.summary and "abc" not in a.summary for a in alerts)


def test_webhook_disabled_then_resumed() -> None:
    """The connector's status_changed diff to -1 opens webhook.failing; back to 1 resolves it."""
    h = {"id": "h1", "organization": "ws-1", "target_hook_url": "https://crm.acme.com/in",
         "headers": {"X-Webhook-Secret": "v"}, "status": 1, "timestamp_created": "2026-02-01T00:00:00Z"}  # fmt: skip
    bad = {**h, "status": -1, "timestamp_error": "2026-03-01T00:01:00Z"}
    evs = diff("webhooks", [h], [bad], T0 + 60) + diff("webhooks", [bad], [h], T0 + 120)
    assert rules(run(evs)) == [("webhook.failing", "medium", "open"), ("webhook.failing", "medium", "resolved")]


def test_member_invited_as_admin_outside_the_allowlist() -> None:
    """A new admin member from an unknown domain raises member.unexpected and member.privileged."""
    m = {"id": "m1", "email": "eve@gmail.com", "user_id": "u9", "role": "admin", "accepted": False,
         "timestamp_created": "2026-03-01T00:00:30Z", "workspace_id": "ws-1", "issuer_id": "u1"}  # fmt: skip
    evs = diff("members", [], [m], T0 + 60)
    alerts = run(evs, {"allowlists": {"member_domains": ["acme.com"]}})
    assert rules(alerts) == [("member.privileged", "high", "open"), ("member.unexpected", "high", "open")]


def test_role_change_and_owner_change() -> None:
    """The connector's role_changed and owner_changed diffs raise member.privileged (high, critical)."""
    m = {"id": "m2", "email": "ed@acme.com", "user_id": "u2", "role": "editor", "accepted": True,
         "timestamp_created": "2026-01-01T00:00:00Z", "workspace_id": "ws-1"}  # fmt: skip
    w = {"id": "ws-1", "name": "Acme", "owner": "u1", "timestamp_created": "2025-01-01T00:00:00Z"}
    evs = diff("members", [m], [{**m, "role": "admin"}], T0) + diff("workspace", [w], [{**w, "owner": "u9"}], T0 + 1)
    assert rules(run(evs)) == [("member.privileged", "critical", "open"), ("member.privileged", "high", "open")]


def test_audit_records_reach_the_audit_rules() -> None:
    """Normalized audit records (26, 28, 30, 34, 20, 2) reach their rules by activity code."""
    evs = [audit(26, T0), audit(28, T0 + 1), audit(30, T0 + 2), audit(34, T0 + 3, affected_count=5000),
           audit(20, T0 + 4, webhook_id="h1"), audit(2, T0 + 5, affected_count=2500)]  # fmt: skip
    assert rules(run(evs)) == [
        ("auth.mfa_attack", "high", "open"), ("auth.mfa_disabled", "high", "open"),
        ("auth.recovery_code_used", "medium", "open"), ("data.lead_export", "medium", "open"),
        ("data.mass_deletion", "high", "open"), ("webhook.failing", "medium", "open"),
    ]  # fmt: skip


def test_pipeline_events_and_block_list() -> None:
    """The poller's 401 event alerts critical; a protected domain removed from the block list alerts medium."""
    unauthorized = normalize.pipeline_event(
        type="pipeline.poller_unauthorized", workspace=WS, observed_at=format_time(T0), stream="api_keys",
        natural_key=("x", 401, 0), attributes={"stream": "api_keys", "status": 401},
    )  # fmt: skip
    entries = [
        {"id": "b1", "bl_value": "rival.io", "organization_id": "ws-1", "timestamp_created": "2026-01-01T00:00:00Z"}
    ]
    removed = diff("block_list", entries, [], T0 + 60)
    alerts = run([unauthorized, *removed], {"protected_domains": ["rival.io"]})
    assert ("pipeline.poller_unauthorized", "critical", "open") in rules(alerts)
    assert ("block_list.protected_domain_removed", "medium", "open") in rules(alerts)


def mailbox(email: str, **fields: Any) -> dict[str, Any]:
    return {"email": email, "organization": "ws-1", "status": 1, "warmup_status": 1, "provider_code": 2,
            "timestamp_created": "2026-01-01T00:00:00Z", "timestamp_updated": "2026-01-01T00:00:00Z",
            "status_message": {"code": "EAUTH", "response": "535 auth failed"}, **fields}  # fmt: skip


def test_account_snapshots_drive_the_account_rules() -> None:
    """A reply_to outside the mailbox's domain (already at baseline, or set later) alerts high and resolves when
    cleared; a new tracking domain and a mailbox gone (deleted or moved) alert medium; in-domain is quiet."""
    base_accounts = [
        mailbox("Dana@Acme.io", reply_to="dana.private@gmail.com"),
        mailbox("sales@acme.io", reply_to="replies@acme.io", tracking_domain_name="t.acme.io"),
        mailbox("ops@acme.io"),
    ]
    base = diff("accounts", None, base_accounts, T0)
    later = [
        mailbox("Dana@Acme.io", reply_to=None),
        mailbox("sales@acme.io", reply_to="x@attacker.example", tracking_domain_name="t.attacker.example"),
    ]
    changed = diff("accounts", base_accounts, later, T0 + 60)
    assert {e.type for e in changed} == {"account.reply_to_changed", "account.tracking_domain_changed",
                                         "account.removed"}  # fmt: skip
    alerts = run(base + changed)
    assert rules(alerts) == [
        ("account.removed", "medium", "open"),
        ("account.reply_redirect", "high", "open"),
        ("account.reply_redirect", "high", "open"),
        ("account.reply_redirect", "high", "resolved"),
        ("account.tracking_domain_changed", "medium", "open"),
    ]
    by_key = {(a.dedup_key, a.status) for a in alerts}
    assert ("account.reply_redirect:ws-1:account:dana@acme.io:reply_to:dana.private@gmail.com", "resolved") in by_key
    assert ("account.reply_redirect:ws-1:account:sales@acme.io:reply_to:x@attacker.example", "open") in by_key
    assert ("account.removed:ws-1:account:ops@acme.io", "open") in by_key
