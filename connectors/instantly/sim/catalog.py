"""Enumerations of the Instantly API v2 (Aug 2026 spec), used to validate request bodies.

Sources: API reference §3.3 (audit activity types), §4.2 (scopes: the resources and actions are
the connector's own, :mod:`connectors.instantly.enums`), §5 (roles, permissions),
§7.2 (webhook event types). The simulator validates what it accepts against these lists;
it may emit values outside them (e.g. unknown activity types) because clients must treat
every enum as open.
"""

from __future__ import annotations

from connectors.instantly.enums import (
    PERMISSION_ORDER,
    ROLE_ORDER,
    SCOPE_ACTIONS,
    SCOPE_RESOURCES,
    WEBHOOK_EVENT_TYPE_ORDER,
)

SCOPES: tuple[str, ...] = tuple(
    f"{resource}:{action}"
    for resource in SCOPE_RESOURCES
    for action in SCOPE_ACTIONS
    if resource != "email_verifications" or action in ("all", "create", "read")
)
"""The 178 creatable scopes, in the spec's order."""

POLLER_SCOPES: tuple[str, ...] = (
    "audit_logs:read",
    "api_keys:read",
    "workspace_members:read",
    "workspaces:read",
    "workspace_group_members:read",
    "webhooks:read",
    "webhook_events:read",
    "block_list_entries:read",
    "accounts:read",
)
"""The minimum read scopes of a security poller (API reference §4)."""

DEMO_POLLER_SCOPES: tuple[str, ...] = tuple(s for s in POLLER_SCOPES if s != "webhook_events:read")
"""The demo world's poller key: what the default streams and ``check`` read, as README lists it.
``webhook_events:read`` serves only the opt-in ``webhook_deliveries`` stream, and ``check`` tells a
key holding it without that stream to drop it (it did, on ``simulate --write-config``'s own key)."""

ACTIVITY_TYPES: dict[int, str] = {
    1: "User login",
    2: "Lead deletion",
    3: "Campaign deletion",
    4: "Campaign launch",
    5: "Campaign pause",
    6: "Account addition",
    7: "Account deletion",
    8: "Lead moved",
    9: "Lead added",
    10: "Lead merged",
    11: "Campaign update",
    12: "Subsequence update",
    18: "Webhook created",
    19: "Webhook updated",
    20: "Webhook marked as error",
    21: "Webhook resumed",
    22: "TOTP enrollment started",
    23: "TOTP enabled",
    24: "TOTP replacement started",
    25: "TOTP replaced",
    26: "TOTP disabled",
    27: "MFA recovery codes generated",
    28: "MFA recovery code used",
    29: "MFA login challenge failed",
    30: "MFA login challenge failed too many times",
    31: "MFA login succeeded",
    32: "Subscriber import started",
    33: "Subscriber import cancelled",
    34: "Lead exported",
    35: "SuperSearch enrichment created",
    36: "Account update",
    37: "API key created",
    38: "API key deleted",
}

AUDIT_USER_LOGIN = 1
AUDIT_WEBHOOK_CREATED = 18
AUDIT_WEBHOOK_UPDATED = 19
AUDIT_WEBHOOK_ERROR = 20
AUDIT_WEBHOOK_RESUMED = 21
AUDIT_LEAD_EXPORTED = 34
AUDIT_API_KEY_CREATED = 37
AUDIT_API_KEY_DELETED = 38

ROLES: tuple[str, ...] = ROLE_ORDER
ASSIGNABLE_ROLES: tuple[str, ...] = ("admin", "editor", "view")
"""``owner`` is only the creator (or via change-owner); ``client`` is not available in the API."""

PERMISSIONS: tuple[str, ...] = PERMISSION_ORDER

WEBHOOK_EVENT_TYPES: tuple[str, ...] = WEBHOOK_EVENT_TYPE_ORDER
"""Subscribable event types (19); the list filter accepts only the first 17."""

WEBHOOK_LIST_FILTER_TYPES: tuple[str, ...] = WEBHOOK_EVENT_TYPES[:17]
