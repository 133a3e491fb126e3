"""Which scope lists are ``all:all`` in effect (``api_key.all_scope``), beyond the cases' spellings."""

from __future__ import annotations

from connectors.instantly.enums import SCOPE_RESOURCES, SCOPES
from connectors.instantly.rules.api_keys import unrestricted

RESOURCES = [r for r in SCOPE_RESOURCES if r != "all"]


def test_wildcards_per_action_and_per_resource_mix() -> None:
    """all:read + every resource's create/update/delete (spelled :all or one by one) reaches what all:all reaches."""
    mixed = ["all:read"] + [f"{r}:all" for r in RESOURCES[1:]]
    mixed += [s for s in (f"{RESOURCES[0]}:{a}" for a in ("create", "update", "delete")) if s in SCOPES]
    assert unrestricted(mixed)
    every_scope = sorted(s for s in SCOPES if not s.startswith("all:"))
    assert unrestricted(every_scope)
    assert unrestricted(["all:all", "leads:read"]) == ["all:all"]


def test_one_action_short_is_not_all_all() -> None:
    """Missing one action on one resource (or email_verifications' nonexistent update) decides."""
    short = [s for s in SCOPES if not s.startswith("all:") and s not in ("leads:all", "leads:delete")]
    assert unrestricted(short) == []
    assert unrestricted(["all:create", "all:read", "all:update"]) == []
    assert unrestricted(["campaigns:all", "leads:all"]) == []
