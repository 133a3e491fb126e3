"""The credential blast-radius table (derived from the OpenAPI v2 spec) and the scope arithmetic on it."""

from __future__ import annotations

from connectors.instantly.blast import (
    ACTIVITY_SCOPES,
    grants,
    operations,
    table_source,
    unaudited_reach,
    used_scopes,
)
from connectors.instantly.blast.check import KeyUsage, check_unaudited_reach, check_unused_scopes

UNAUDITED = {
    "POST /api/v2/emails/forward", "POST /api/v2/accounts/move", "POST /api/v2/campaigns/{id}/share",
    "POST /api/v2/dfy-email-account-orders", "POST /api/v2/workspaces/current/change-owner",
    "POST /api/v2/leads/list", "POST /api/v2/workspaces/current/schedule-for-removal",
}  # fmt: skip


def test_table_names_its_source_and_covers_the_spec() -> None:
    """The shipped table says where it came from and holds every documented operation, with scopes."""
    src = table_source()
    assert src["repository"] == "api-evangelist/instantly-ai" and len(str(src["commit"])) == 40
    ops = operations()
    assert len(ops) == 173
    assert {o.label for o in ops if o.high_impact and not o.audit_record} == UNAUDITED
    forward = next(o for o in ops if o.label == "POST /api/v2/emails/forward")
    assert set(forward.scopes) == {"emails:create", "emails:all", "all:create", "all:all"}


def test_reach_follows_the_spec_and_undocumented_ops_need_all_all() -> None:
    """Scopes reach what the spec says; operations without documented scopes only with all:all."""
    assert unaudited_reach(["emails:create"]) == {"POST /api/v2/emails/forward": ["emails:create"]}
    assert unaudited_reach(["campaigns:read", "campaigns:update"]) == {}
    assert "POST /api/v2/accounts/move" in unaudited_reach(["all:all"])
    assert "POST /api/v2/accounts/move" not in unaudited_reach(["accounts:all", "all:update"])
    assert set(unaudited_reach(["all:create"])) == {
        "POST /api/v2/emails/forward",
        "POST /api/v2/dfy-email-account-orders",
    }


def test_grants_and_used_scopes() -> None:
    """Wildcards grant by resource or action; audited activity marks only the scopes it needed."""
    assert grants("leads:all", "leads:create") and grants("all:create", "leads:create") and grants("all:all", "x:y")
    assert not grants("leads:read", "leads:create") and not grants("campaigns:all", "leads:create")
    assert used_scopes(["leads:all", "webhooks:create", "campaigns:update"], [9, 9]) == {"leads:all"}
    assert all(":" in s for s in ACTIVITY_SCOPES.values())
    # every scope an audited activity maps to is one the spec's table names (35 is plural there)
    named = {s for o in operations() for s in o.scopes}
    assert set(ACTIVITY_SCOPES.values()) <= named, set(ACTIVITY_SCOPES.values()) - named
    assert used_scopes(["supersearch_enrichments:all", "leads:read"], [35]) == {"supersearch_enrichments:all"}


def test_check_findings() -> None:
    """Fail per key reaching unaudited writes; read-only reach is only named; unused write scopes warn."""
    keys = {
        "k1": {"name": "inbox", "scopes": ["emails:create"], "timestamp_created": "2026-01-01T00:00:00Z"},
        "k2": {"name": "sync", "scopes": ["leads:read", "leads:create", "webhooks:update"],
               "timestamp_created": "2026-01-01T00:00:00Z"},
        "k3": {"name": "new", "scopes": ["webhooks:create"], "timestamp_created": "2026-03-30T00:00:00Z"},
    }  # fmt: skip
    reach = check_unaudited_reach("ws", keys)
    assert [(r.status, r.resources[0].id) for r in reach] == [("fail", "k1")]
    assert [r.status for r in check_unaudited_reach("ws", {"k2": keys["k2"]})] == ["pass"]
    assert "POST /api/v2/leads/list" in check_unaudited_reach("ws", {"k2": keys["k2"]})[0].message
    now = 1_775_000_000.0  # 2026-03-31
    usage = KeyUsage(True, 30.0, True, {"k2": {9: 4}})
    unused = check_unused_scopes("ws", keys, usage, now)
    assert [(r.status, r.resources[0].id, r.attributes["unused_scopes"]) for r in unused] == [
        ("warn", "k1", ["emails:create"]),
        ("warn", "k2", ["webhooks:update"]),
    ]
    assert [r.status for r in check_unused_scopes("ws", keys, KeyUsage(False, 30.0), now)] == ["skip"]
