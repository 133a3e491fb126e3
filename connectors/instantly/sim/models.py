"""Records held by the simulator and their JSON shapes (newest documented schema, Aug 2026).

Times are stored as epoch seconds and rendered as ISO 8601 UTC with milliseconds and ``Z``.
Each ``to_json`` returns exactly the fields the API reference lists for that object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.clock import format_time

JSON = dict[str, Any]
KeyValueMode = Literal["full", "masked", "absent"]


def iso(t: float | None) -> str | None:
    """Render epoch seconds (or ``None``) like Instantly: ``2026-03-05T23:09:47.337Z``."""
    return None if t is None else format_time(t)


@dataclass(frozen=True)
class Actor:
    """Who did something, as the audit log records it."""

    user_id: str | None = None
    user_name: str | None = None
    api_key_id: str | None = None
    ip_address: str = "127.0.0.1"
    user_agent: str | None = None
    from_api: bool = False


SYSTEM_ACTOR = Actor()
"""Instantly itself (e.g. a webhook disabled after delivery failures)."""


@dataclass
class User:
    """A person with an Instantly login (not exposed by the API; referenced by id)."""

    id: str
    email: str
    first_name: str
    last_name: str

    @property
    def full_name(self) -> str:
        """``First Last``."""
        return f"{self.first_name} {self.last_name}".strip()


@dataclass
class Workspace:
    """A workspace (``organization``); ``has_paid_plan`` False makes every call answer 402."""

    id: str
    name: str
    owner: str
    timestamp_created: float
    timestamp_updated: float
    has_paid_plan: bool = True
    plan_id: str | None = "pid_hg_v1"
    plan_id_bundle: str | None = None
    scheduled_for_removal_at: float | None = None
    org_logo_url: str | None = None
    org_client_domain: str | None = None
    add_unsub_to_block: bool | None = False
    default_opportunity_value: float | None = None

    def to_json(self) -> JSON:
        """The Workspace object."""
        return {
            "id": self.id,
            "timestamp_created": iso(self.timestamp_created),
            "timestamp_updated": iso(self.timestamp_updated),
            "scheduled_for_removal_at": iso(self.scheduled_for_removal_at),
            "owner": self.owner,
            "name": self.name,
            "plan_id": self.plan_id,
            "plan_id_bundle": self.plan_id_bundle,
            "add_unsub_to_block": self.add_unsub_to_block,
            "default_opportunity_value": self.default_opportunity_value,
            "plan_id_leadfinder": None,
            "org_logo_url": self.org_logo_url,
            "org_client_domain": self.org_client_domain,
            "plan_id_crm": None,
            "plan_id_website_visitor": None,
            "plan_id_inbox_placement": None,
        }


@dataclass
class ApiKey:
    """An API key; ``user_id`` (the creator) is internal and only shows up in audit records."""

    id: str
    workspace_id: str
    name: str
    scopes: list[str]
    key: str
    timestamp_created: float
    timestamp_updated: float
    user_id: str | None = None

    def to_json(self, key_value: KeyValueMode = "full") -> JSON:
        """The APIKey object; ``key_value`` decides whether ``key`` is full, masked or absent."""
        out: JSON = {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "organization_id": self.workspace_id,
            "timestamp_created": iso(self.timestamp_created),
            "timestamp_updated": iso(self.timestamp_updated),
        }
        if key_value == "full":
            out["key"] = self.key
        elif key_value == "masked":
            out["key"] = mask_secret(self.key)
        return out


def mask_secret(secret: str) -> str:
    """Keep the first and last four characters: ``MDE5****Zw==``."""
    return secret[:4] + "*" * max(len(secret) - 8, 4) + secret[-4:]


@dataclass
class Member:
    """A workspace membership (an invitation until ``accepted``)."""

    id: str
    workspace_id: str
    user_id: str
    email: str
    role: str
    timestamp_created: float
    accepted: bool = False
    first_name: str = ""
    last_name: str = ""
    user_email: str | None = None
    nickname: str | None = None
    issuer_id: str | None = None
    permissions: list[str] | None = None

    def to_json(self) -> JSON:
        """The WorkspaceMember object."""
        return {
            "id": self.id,
            "email": self.email,
            "user_id": self.user_id,
            "user_email": self.user_email,
            "nickname": self.nickname,
            "name": {"first": self.first_name, "last": self.last_name},
            "role": self.role,
            "timestamp_created": iso(self.timestamp_created),
            "workspace_id": self.workspace_id,
            "accepted": self.accepted,
            "issuer_id": self.issuer_id,
            "permissions": None if self.permissions is None else list(self.permissions),
        }


@dataclass
class Webhook:
    """A webhook subscription; ``headers`` are returned in clear, as the docs show."""

    id: str
    workspace_id: str
    target_hook_url: str
    timestamp_created: float
    name: str | None = None
    campaign: str | None = None
    event_type: str | None = "all_events"
    custom_interest_value: float | None = None
    headers: dict[str, str] | None = None
    status: int | None = 1
    timestamp_error: float | None = None

    def to_json(self) -> JSON:
        """The Webhook object."""
        return {
            "id": self.id,
            "organization": self.workspace_id,
            "campaign": self.campaign,
            "name": self.name,
            "target_hook_url": self.target_hook_url,
            "event_type": self.event_type,
            "custom_interest_value": self.custom_interest_value,
            "headers": None if self.headers is None else dict(self.headers),
            "timestamp_created": iso(self.timestamp_created),
            "status": self.status,
            "timestamp_error": iso(self.timestamp_error),
        }


@dataclass
class WebhookEvent:
    """One delivery attempt of a webhook (the ``webhook-events`` log)."""

    id: str
    workspace_id: str
    webhook_url: str
    timestamp_created: float
    success: bool
    payload: JSON = field(default_factory=dict)
    retry_count: int = 0
    will_retry: bool = False
    status_code: int | None = None
    error_message: str | None = None
    timestamp_next_retry: float | None = None
    retry_group_id: str | None = None
    retry_successful: bool | None = None
    lead_email: str | None = None
    response_time_ms: float | None = None

    def to_json(self) -> JSON:
        """The WebhookEvent object."""
        created = format_time(self.timestamp_created)
        return {
            "id": self.id,
            "timestamp_created": created,
            "timestamp_created_date": created[:10],
            "organization_id": self.workspace_id,
            "payload": dict(self.payload),
            "success": self.success,
            "retry_count": self.retry_count,
            "will_retry": self.will_retry,
            "webhook_url": self.webhook_url,
            "status_code": self.status_code,
            "error_message": self.error_message,
            "timestamp_next_retry": iso(self.timestamp_next_retry),
            "retry_group_id": self.retry_group_id,
            "retry_successful": self.retry_successful,
            "lead_email": self.lead_email,
            "response_time_ms": self.response_time_ms,
        }


@dataclass
class GroupMember:
    """An admin-workspace ↔ sub-workspace link (``pending`` | ``accepted`` | ``rejected``)."""

    id: str
    admin_workspace_id: str
    sub_workspace_id: str
    status: str
    timestamp_created: float
    timestamp_updated: float

    def to_json(self, admin_name: str | None, sub_name: str | None) -> JSON:
        """The WorkspaceGroupMember object (names are resolved by the caller)."""
        return {
            "id": self.id,
            "admin_workspace_id": self.admin_workspace_id,
            "sub_workspace_id": self.sub_workspace_id,
            "status": self.status,
            "timestamp_created": iso(self.timestamp_created),
            "timestamp_updated": iso(self.timestamp_updated),
            "sub_workspace_name": sub_name,
            "admin_workspace_name": admin_name,
        }


@dataclass
class BlockListEntry:
    """A blocked email address or domain."""

    id: str
    workspace_id: str
    bl_value: str
    timestamp_created: float

    @property
    def is_domain(self) -> bool:
        """Derived from the value: no ``@`` means a domain."""
        return "@" not in self.bl_value

    def to_json(self) -> JSON:
        """The BlockListEntry object."""
        return {
            "id": self.id,
            "timestamp_created": iso(self.timestamp_created),
            "organization_id": self.workspace_id,
            "bl_value": self.bl_value,
            "is_domain": self.is_domain,
        }


@dataclass
class AuditRecord:
    """One audit log record; ``timestamp`` may be older than the time encoded in ``id``."""

    id: str
    workspace_id: str
    activity_type: int
    timestamp: float
    actor: Actor = SYSTEM_ACTOR
    affected_count: int | None = None
    campaign_id: str | None = None
    webhook_id: str | None = None
    subsequence_id: str | None = None
    list_id: str | None = None
    audit_metadata: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        """The AuditLog object."""
        return {
            "id": self.id,
            "timestamp": iso(self.timestamp),
            "organization_id": self.workspace_id,
            "activity_type": self.activity_type,
            "ip_address": self.actor.ip_address,
            "from_api": self.actor.from_api,
            "user_agent": self.actor.user_agent,
            "user_id": self.actor.user_id,
            "api_key_id": self.actor.api_key_id,
            "affected_count": self.affected_count,
            "campaign_id": self.campaign_id,
            "webhook_id": self.webhook_id,
            "subsequence_id": self.subsequence_id,
            "list_id": self.list_id,
            "audit_metadata": dict(self.audit_metadata),
            "user_name": self.actor.user_name,
        }


@dataclass
class Account:
    """A sending mailbox (security-relevant fields only)."""

    email: str
    workspace_id: str
    timestamp_created: float
    timestamp_updated: float
    first_name: str = ""
    last_name: str = ""
    provider_code: int = 2
    status: int = 1
    warmup_status: int = 1
    added_by: str | None = None
    modified_by: str | None = None
    reply_to: str | None = None
    stat_warmup_score: float | None = None
    tracking_domain_name: str | None = None
    tracking_domain_status: str | None = None
    setup_pending: bool = False
    is_managed_account: bool = False
    status_message: JSON | None = None
    """The last SMTP/IMAP error (``code``, ``command``, ``response``, ``e_message``, ``responseCode``)."""

    @property
    def cursor(self) -> str:
        """The accounts cursor: ``timestamp_created&email``."""
        return f"{iso(self.timestamp_created)}&{self.email}"

    def to_json(self) -> JSON:
        """The Account object (subset)."""
        return {
            "email": self.email,
            "organization": self.workspace_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "provider_code": self.provider_code,
            "status": self.status,
            "warmup_status": self.warmup_status,
            "added_by": self.added_by,
            "modified_by": self.modified_by,
            "timestamp_created": iso(self.timestamp_created),
            "timestamp_updated": iso(self.timestamp_updated),
            "setup_pending": self.setup_pending,
            "is_managed_account": self.is_managed_account,
            "autofix_failed": False,
            "stat_warmup_score": self.stat_warmup_score,
            "tracking_domain_name": self.tracking_domain_name,
            "tracking_domain_status": self.tracking_domain_status,
            "reply_to": self.reply_to,
            **({"status_message": dict(self.status_message)} if self.status_message is not None else {}),
        }
