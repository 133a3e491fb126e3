"""The closed lists Instantly documents for the fields the snapshots read, and what falls outside them.

Instantly's enums grow (API reference §0: the audit types went from 10 to 38 in a year), so every
enum is open: a value outside these lists is kept as sent, and the event names it in
``attributes.unknown_values`` — ``{field: the value}``, or for a list the items outside it — so a
role, scope, permission, webhook event type or status Instantly added since is visible and
matchable (``attributes.unknown_values.role``) instead of passing as nothing in particular.
Audit records say the same with ``activity_known`` (:mod:`connectors.instantly.audit_codes`).

Sources: API reference §4.2 (scopes), §5.1 (roles, permissions), §6.2 (agency link status),
§7.2 (webhook ``event_type`` and ``status``), §9 (account enums). The simulator's enums
(:mod:`connectors.instantly.sim.catalog`) are these lists, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SCOPE_ACTIONS: tuple[str, ...] = ("all", "create", "read", "update", "delete")
"""The actions of a scope (``<resource>:<action>``)."""
SCOPE_RESOURCES: tuple[str, ...] = (
    "all", "ai_agents", "api_keys", "audit_logs", "custom_prompt_templates",
    "account_campaign_mappings", "campaigns", "inbox_placement_tests", "inbox_placement_analytics",
    "inbox_placement_reports", "lead_lists", "leads", "background-jobs", "custom_tags",
    "custom_tag_mappings", "crm_actions", "accounts", "block_list_entries", "lead-labels",
    "email_verifications", "emails", "email_templates", "workspaces", "workspace_billing",
    "workspace_group_members", "workspace_members", "subsequences", "ai_sdr", "ai_sdr_replies",
    "ai_inbox_manager_analytics", "sales_flows", "webhooks", "webhook_events", "security_tokens",
    "dfy_email_account_orders", "auth",
)  # fmt: skip
"""The resources of a scope, in the spec's order."""

SCOPES: frozenset[str] = frozenset(
    f"{resource}:{action}"
    for resource in SCOPE_RESOURCES
    for action in SCOPE_ACTIONS
    if resource != "email_verifications" or action in ("all", "create", "read")
)
"""The 178 scopes an API key can be created with."""

ROLE_ORDER: tuple[str, ...] = ("owner", "admin", "editor", "view", "client")
"""A workspace member's ``role``, in the spec's order (the simulator's enum)."""
ROLES: frozenset[str] = frozenset(ROLE_ORDER)

PERMISSION_ORDER: tuple[str, ...] = (
    "dashboard.view", "campaigns.view", "campaigns.create", "campaigns.edit", "campaigns.delete",
    "organization.manage", "organization.integrations", "organization.billing",
    "organization.users.manage", "leadFinder.view", "customLeadLabels.create", "customLeadLabels.edit",
    "customLeadLabels.delete", "unibox.all", "analytics.view", "websiteChat.view", "websiteChat.manage",
    "agency.manage", "accounts.view", "accounts.manage", "leadManagement.view", "leads.move", "crm.view",
    "websiteVisitors.view", "blocklist.manage", "preferences.manage", "inboxPlacement.view",
    "aiAgents.manage", "workspaceGroupMembers.invite", "workspaceGroupMembers.remove",
    "workspaceGroupMembers.leave",
)  # fmt: skip
"""A workspace member's in-app ``permissions``, in the spec's order."""
PERMISSIONS: frozenset[str] = frozenset(PERMISSION_ORDER)

WEBHOOK_EVENT_TYPE_ORDER: tuple[str, ...] = (
    "all_events", "email_sent", "email_opened", "email_link_clicked", "reply_received", "email_bounced",
    "lead_unsubscribed", "campaign_completed", "account_error", "lead_neutral", "lead_interested",
    "lead_not_interested", "lead_meeting_booked", "lead_meeting_completed", "lead_closed",
    "lead_out_of_office", "lead_wrong_person", "lead_no_show", "supersearch_enrichment_completed",
)  # fmt: skip
"""A webhook subscription's ``event_type``, in the spec's order (``null`` is documented too: a custom-label
subscription)."""
WEBHOOK_EVENT_TYPES: frozenset[str] = frozenset(WEBHOOK_EVENT_TYPE_ORDER)

WEBHOOK_STATUSES: frozenset[int] = frozenset({1, -1})
GROUP_STATUSES: frozenset[str] = frozenset({"pending", "accepted", "rejected"})
ACCOUNT_STATUSES: frozenset[int] = frozenset({1, 2, 3, -1, -2, -3})
WARMUP_STATUSES: frozenset[int] = frozenset({0, 1, -1, -2, -3})
PROVIDER_CODES: frozenset[int] = frozenset({1, 2, 3, 4, 8, 11})

Known = frozenset[str] | frozenset[int]


def _number(value: Any) -> Any:
    """An integral float as its int (``1.0`` → ``1``: JSON numbers carry no type), anything else as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _outside(value: Any, known: Known) -> bool:
    if isinstance(value, bool):
        return True
    try:
        return _number(value) not in known
    except TypeError:  # unhashable (an object where a string belongs)
        return True


MAX_SHOWN = 128
"""Longest unknown string kept as sent (longer ones are cut)."""


def _shown(value: Any) -> Any:
    """An unknown value as the event shows it: a number or a string (cut to :data:`MAX_SHOWN`), else its type."""
    if isinstance(value, str):
        return value[:MAX_SHOWN]
    if isinstance(value, int | float):
        return _number(value)
    return f"<{type(value).__name__}>"


def unknown_values(record: Mapping[str, Any], fields: Mapping[str, Known]) -> dict[str, Any]:
    """``{field: value}`` for each of ``fields`` whose value is not in its documented list; a list
    field gives its items outside the list. Absent and ``null`` values are not unknown (optional
    fields); a value of the wrong type is (shown as ``<type>``)."""
    out: dict[str, Any] = {}
    for name, known in fields.items():
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, list):
            extra = [_shown(v) for v in value if _outside(v, known)]
            if extra:
                out[name] = extra
        elif _outside(value, known):
            out[name] = _shown(value)
    return out


def flagged(attributes: dict[str, Any], record: Mapping[str, Any], fields: Mapping[str, Known]) -> dict[str, Any]:
    """``attributes`` plus ``unknown_values`` when ``record`` holds a value outside ``fields``' lists
    (left out otherwise, so events of documented records are unchanged)."""
    unknown = unknown_values(record, fields)
    if unknown:
        attributes["unknown_values"] = unknown
    return attributes
