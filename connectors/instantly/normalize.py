"""Pure functions that turn Instantly records into Event v1 (no I/O, no clock reads).

* :func:`normalize_audit_record` — one audit-log record → one ``audit.*`` event whose id hashes
  (workspace, ``audit_logs``, record id), so a re-read record gets the same id.
* :func:`snapshot_event` and the ``*_attributes`` / ``*_target`` helpers — the building blocks
  :mod:`connectors.instantly.snapshots` uses for snapshot-diff events.
* :func:`pipeline_event` — facts about the poller itself (``pipeline.poller_unauthorized``, ...).

Every input is redacted before it is copied into ``raw``, ``change`` or ``attributes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from connectors.instantly import enums
from connectors.instantly.api import AUDIT_LOGS
from connectors.instantly.audit_codes import describe_activity
from connectors.instantly.redact import header_names, redact_record, set_header_names
from pipeline.clock import format_time, parse_time
from pipeline.errors import NormalizeError
from schemas.event import Actor, Change, Event, Source, Target, WorkspaceRef

AUDIT_STREAM = AUDIT_LOGS.name
JSONDict = dict[str, Any]


_CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def iso_time(value: Any) -> str | None:
    """Render an Instantly timestamp as RFC 3339 UTC with milliseconds; ``None`` if absent or invalid."""
    if not isinstance(value, str) or not value.strip():
        return None
    if _CANONICAL.match(value):
        # Already canonical (Instantly's own format): only check it is a real date and time, as
        # strptime("%Y-%m-%dT%H:%M:%S") would (a fifth of the audit normalization when it did).
        try:
            datetime(  # noqa: DTZ001 - validity check only
                int(value[0:4]), int(value[5:7]), int(value[8:10]),
                int(value[11:13]), int(value[14:16]), int(value[17:19]),
            )  # fmt: skip
            return value
        except ValueError:
            if value[17:19] == "60":  # a leap second (valid RFC 3339): :59.999 of its minute, as parse_time
                return iso_time(f"{value[:17]}59.999Z")
            return None
    try:
        return format_time(parse_time(value))
    except (ValueError, OverflowError, OSError):
        return None


def _str(value: Any) -> str | None:
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if value is None or t is bool:
        return None
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _record_id(record: Mapping[str, Any], what: str) -> str:
    rid = _str(record.get("id"))
    if not rid:
        raise NormalizeError(f"{what} record has no usable 'id'")
    return rid


# ---------------------------------------------------------------------------------- audit log
_TARGET_FIELDS = (
    ("webhook_id", "webhook"),
    ("subsequence_id", "subsequence"),
    ("campaign_id", "campaign"),
    ("list_id", "lead_list"),
)
_TARGET_KIND = dict(_TARGET_FIELDS)
_PREFERRED_TARGET = {"webhook": "webhook_id", "campaign": "campaign_id", "lead": "list_id", "export": "list_id"}
_USER_TARGET = {"authentication", "mfa"}


def _audit_target(record: Mapping[str, Any], category: str) -> Target | None:
    if category in _USER_TARGET:
        user_id = _str(record.get("user_id"))
        if user_id:
            return Target("user", user_id, _str(record.get("user_name")))
    preferred = _PREFERRED_TARGET.get(category)
    if preferred:
        value = _str(record.get(preferred))
        if value:
            return Target(_TARGET_KIND[preferred], value, None)
    for field, kind in _TARGET_FIELDS:
        value = _str(record.get(field))
        if value:
            return Target(kind, value, None)
    return None


def normalize_audit_record(record: Mapping[str, Any], workspace: WorkspaceRef, observed_at: str) -> Event:
    """Normalize one audit-log record; ``time`` is the record's timestamp (``observed_at`` if missing).

    Raises:
        NormalizeError: the record is not an object or has no ``id``.
    """
    if type(record) is not dict and not isinstance(record, Mapping):
        raise NormalizeError("audit-log record is not a JSON object")
    rid = _record_id(record, "audit-log")
    code = describe_activity(record.get("activity_type"))
    when = iso_time(record.get("timestamp"))
    from_api = record.get("from_api")
    actor: Actor = Actor(
        _str(record.get("user_id")),
        _str(record.get("user_name")),
        _str(record.get("api_key_id")),
        _str(record.get("ip_address")),
        _str(record.get("user_agent")),
        from_api if isinstance(from_api, bool) else None,
    )
    affected = record.get("affected_count")
    metadata = record.get("audit_metadata")
    attributes: JSONDict = {
        "activity_code": code.code if code.code is not None else _str(record.get("activity_type")),
        "activity_label": code.label,
        "activity_category": code.category,
        "activity_known": code.known,
        "affected_count": affected if isinstance(affected, int | float) and not isinstance(affected, bool) else None,
        "organization_id": _str(record.get("organization_id")),
        "campaign_id": _str(record.get("campaign_id")),
        "webhook_id": _str(record.get("webhook_id")),
        "subsequence_id": _str(record.get("subsequence_id")),
        "list_id": _str(record.get("list_id")),
        "audit_metadata": redact_record(metadata) if isinstance(metadata, Mapping) else None,
    }
    if when is None:
        attributes["time_source"] = "observed_at"
    return Event.build(
        type=code.type,
        time=when or observed_at,
        observed_at=observed_at,
        workspace=workspace,
        source=Source("audit_log", AUDIT_STREAM, rid),
        natural_key=(rid,),
        actor=actor,
        target=_audit_target(record, code.category),
        attributes=attributes,
        raw=redact_record(record),
    )


# ---------------------------------------------------------------------------------- snapshots
def snapshot_event(
    *,
    type: str,
    stream: str,
    change_kind: str,
    resource_id: str,
    before: JSONDict | None,
    after: JSONDict | None,
    fields: tuple[str, ...],
    attributes: JSONDict,
    target: Target | None,
    workspace: WorkspaceRef,
    observed_at: str,
    time: str | None = None,
    actor: Actor | None = None,
) -> Event:
    """Build a snapshot-diff event; the id hashes (resource id, change kind, redacted after-state, observed_at).

    ``observed_at`` is part of the natural key so that a change that repeats an earlier one
    (editor → admin → editor → admin) is a new fact with a new id, not a duplicate that
    sinks would drop. Exactly-once into the bus comes from the transaction that writes the
    events with the new snapshot, so a retried poll never publishes a change twice; a
    replay or re-delivery reads the same record and so the same id.

    ``before``/``after`` must already be redacted (snapshots store only redacted records);
    they are redacted again defensively (redaction is idempotent).
    """
    b = redact_record(before) if before is not None else None
    a = redact_record(after) if after is not None else None
    return Event.build(
        type=type,
        time=time or observed_at,
        observed_at=observed_at,
        workspace=workspace,
        source=Source("snapshot", stream, resource_id),
        natural_key=(resource_id, change_kind, a, observed_at),
        actor=actor,
        target=target,
        change=Change(b, a, tuple(sorted(set(fields)))),
        attributes=redact_record(attributes),
        raw=a if a is not None else b,
    )


_API_KEY_ENUMS: Mapping[str, enums.Known] = {"scopes": enums.SCOPES}
_MEMBER_ENUMS: Mapping[str, enums.Known] = {"role": enums.ROLES, "permissions": enums.PERMISSIONS}
_WEBHOOK_ENUMS: Mapping[str, enums.Known] = {"event_type": enums.WEBHOOK_EVENT_TYPES, "status": enums.WEBHOOK_STATUSES}
_GROUP_ENUMS: Mapping[str, enums.Known] = {"status": enums.GROUP_STATUSES}
_ACCOUNT_ENUMS: Mapping[str, enums.Known] = {
    "status": enums.ACCOUNT_STATUSES,
    "warmup_status": enums.WARMUP_STATUSES,
    "provider_code": enums.PROVIDER_CODES,
}
"""The documented enums of each snapshot resource; a value outside them is named in
``attributes.unknown_values`` (:func:`connectors.instantly.enums.flagged`)."""


def api_key_attributes(r: Mapping[str, Any]) -> JSONDict:
    """What rules need about an API key (``key_fingerprint`` is the redacted ``key``)."""
    scopes = r.get("scopes")
    attributes = {
        "name": _str(r.get("name")),
        "scopes": [str(s) for s in scopes] if isinstance(scopes, list) else [],
        "created_at": iso_time(r.get("timestamp_created")),
        "key_fingerprint": _str(r.get("key")),
    }
    return enums.flagged(attributes, r, _API_KEY_ENUMS)


def member_attributes(r: Mapping[str, Any]) -> JSONDict:
    """What rules need about a workspace member."""
    perms = r.get("permissions")
    attributes = {
        "email": _str(r.get("email")),
        "role": _str(r.get("role")),
        "accepted": r.get("accepted") if isinstance(r.get("accepted"), bool) else None,
        "permissions": [str(p) for p in perms] if isinstance(perms, list) else None,
        "user_id": _str(r.get("user_id")),
        "user_email": _str(r.get("user_email")),
        "issuer_id": _str(r.get("issuer_id")),
        "created_at": iso_time(r.get("timestamp_created")),
    }
    return enums.flagged(attributes, r, _MEMBER_ENUMS)


# Headers that carry no secret: a webhook whose only custom headers are these is unauthenticated.
NON_AUTH_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-language",
        "content-type",
        "user-agent",
        "x-request-id",
        "x-correlation-id",
        "x-source",
        "x-event-type",
    }
)


def has_auth_header(names: list[str]) -> bool:
    """True when at least one custom header could carry a secret (anything but well-known plain headers)."""
    return any(n.strip().lower() not in NON_AUTH_HEADERS for n in names)


def webhook_attributes(r: Mapping[str, Any]) -> JSONDict:
    """What rules need about a webhook (header names only — values are secrets)."""
    url = _str(r.get("target_hook_url"))
    scheme = None
    if url:
        try:
            scheme = urlsplit(url).scheme.lower() or None
        except ValueError:
            scheme = None
    names = header_names(r.get("headers"))
    set_names = set_header_names(r.get("headers"))
    attributes = {
        "name": _str(r.get("name")),
        "target_hook_url": url,
        "url_scheme": scheme,
        "header_names": names,
        "has_auth_header": has_auth_header(set_names),
        "empty_header_names": sorted(set(names) - set(set_names)),
        "status": r.get("status") if isinstance(r.get("status"), int | float) else None,
        "event_type": _str(r.get("event_type")),
        "campaign": _str(r.get("campaign")),
        "timestamp_error": iso_time(r.get("timestamp_error")),
    }
    return enums.flagged(attributes, r, _WEBHOOK_ENUMS)


def workspace_attributes(r: Mapping[str, Any]) -> JSONDict:
    """What rules need about the workspace itself."""
    return {
        "name": _str(r.get("name")),
        "owner": _str(r.get("owner")),
        "plan_id": _str(r.get("plan_id")),
        "plan_id_bundle": _str(r.get("plan_id_bundle")),
        "scheduled_for_removal_at": iso_time(r.get("scheduled_for_removal_at")),
        "org_client_domain": _str(r.get("org_client_domain")),
    }


def group_member_attributes(r: Mapping[str, Any], workspace_id: str) -> JSONDict:
    """An agency link; ``relation`` says whether the other side is our sub-workspace or our admin."""
    admin, sub = _str(r.get("admin_workspace_id")), _str(r.get("sub_workspace_id"))
    relation = "sub_workspace" if admin == workspace_id else ("admin_workspace" if sub == workspace_id else "unknown")
    attributes = {
        "admin_workspace_id": admin,
        "admin_workspace_name": _str(r.get("admin_workspace_name")),
        "sub_workspace_id": sub,
        "sub_workspace_name": _str(r.get("sub_workspace_name")),
        "status": _str(r.get("status")),
        "relation": relation,
        # only when true, so links stored before this attribute existed do not read as changed
        **({"admin_is_key_owner": True} if r.get("admin_is_key_owner") is True else {}),
    }
    return enums.flagged(attributes, r, _GROUP_ENUMS)


ADMIN_LINK_ID = "admin_workspace"
"""The snapshot id of an admin link whose ``GET /workspace-group-members/admin`` answer names no link id."""


def admin_link_item(
    body: Mapping[str, Any], workspace_id: str | None, workspace_name: str | None, *, key_owner: bool = False
) -> JSONDict | None:
    """The ``GET /workspace-group-members/admin`` answer as a ``group_members`` item, or ``None`` without an admin.

    The answer (``{workspace_name, has_admin_workspace, workspace_group_member_id}``) is what a
    sub-workspace sees of its agency: the list endpoint shows only an admin workspace its subs.
    The item has the list's shape with this workspace as the sub (``relation: admin_workspace``
    when ``workspace_id`` is known), the admin's name, and status ``accepted`` (the endpoint
    reports the current admin); the admin's id is not in the answer. ``has_admin_workspace:
    false`` (or absent with no link id) means none; other fields are ignored. ``key_owner``: this
    workspace is polled with the admin workspace's own key (``as_workspace``), so the link is the
    access the pipeline itself uses (``admin_is_key_owner``).
    """
    has = body.get("has_admin_workspace")
    link_id = _str(body.get("workspace_group_member_id"))
    if has is False or (has is not True and not link_id):
        return None
    return {
        "id": link_id or ADMIN_LINK_ID,
        "admin_workspace_id": None,
        "admin_workspace_name": _str(body.get("workspace_name")),
        "sub_workspace_id": workspace_id or None,
        "sub_workspace_name": workspace_name,
        "status": "accepted",
        **({"admin_is_key_owner": True} if key_owner else {}),
    }


def with_admin_link(items: list[JSONDict], link: JSONDict | None) -> list[JSONDict]:
    """``items`` (the listed links) plus ``link`` unless the listing already has it (same id, or an
    accepted link whose sub-workspace is this one)."""
    if link is None:
        return items
    sub = link.get("sub_workspace_id")
    for r in items:
        if str(r.get("id")) == link["id"]:
            return items
        if sub is not None and r.get("sub_workspace_id") == sub and r.get("status") == "accepted":
            return items
    return [*items, link]


def block_list_attributes(r: Mapping[str, Any]) -> JSONDict:
    """A block-list entry: the blocked value and whether it is a domain."""
    value = _str(r.get("bl_value"))
    is_domain = r.get("is_domain")
    return {
        "value": value,
        "is_domain": is_domain if isinstance(is_domain, bool) else (None if value is None else "@" not in value),
    }


# ------------------------------------------------------------------------------------ accounts
ACCOUNT_FIELDS = (
    "email", "status", "warmup_status", "provider_code", "added_by", "modified_by", "reply_to",
    "tracking_domain_name", "tracking_domain_status", "setup_pending", "is_managed_account", "timestamp_created",
)  # fmt: skip
"""The sending-account fields a snapshot keeps: stable and security-relevant. Everything else is
dropped before storing: ``status_message`` (the last SMTP/IMAP server response), warmup statistics,
daily limits and ``timestamp_*`` that move on every send, and anything password-like."""

ACCOUNT_STATUS = {1: "active", 2: "paused", 3: "maintenance", -1: "connection_error", -2: "soft_bounce_error",
                  -3: "sending_error"}  # fmt: skip
WARMUP_STATUS = {0: "paused", 1: "active", -1: "banned", -2: "spam_folder_unknown", -3: "permanent_suspension"}
PROVIDER = {1: "custom_imap_smtp", 2: "google", 3: "microsoft", 4: "aws", 8: "airmail", 11: "airmail_instant"}
"""Instantly's account enums (API reference §9); every enum is open: another number is labelled ``unknown``."""


def account_id(r: Mapping[str, Any]) -> str | None:
    """An account's identity: its ``email``, trimmed and lower-cased (``None`` without a usable one)."""
    email = r.get("email")
    if not isinstance(email, str) or "@" not in email.strip():
        return None
    return email.strip().lower()


def _enum(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _label(table: Mapping[int, str], value: Any) -> str | None:
    code = _enum(value)
    if code is None:
        return None if value is None else "unknown"
    return table.get(code, "unknown")


def redact_account(r: Mapping[str, Any]) -> JSONDict:
    """A sending account reduced to :data:`ACCOUNT_FIELDS` (email lower-cased), then redacted as usual.

    Missing optional fields stay absent, extra fields are dropped, so routine churn (warmup
    scores, sending limits, SMTP responses) never shows up as a change.
    """
    kept = {k: r[k] for k in ACCOUNT_FIELDS if k in r}
    email = account_id(r)
    if email is not None:
        kept["email"] = email
    if isinstance(kept.get("reply_to"), str):
        kept["reply_to"] = kept["reply_to"].strip().lower() or None
    return redact_record(kept)


def email_domain(value: Any) -> str | None:
    """The domain of an email address, lower-cased (``None`` when it is not one)."""
    if not isinstance(value, str) or "@" not in value:
        return None
    domain = value.strip().lower().rpartition("@")[2].rstrip(".")
    return domain or None


def account_attributes(r: Mapping[str, Any]) -> JSONDict:
    """What rules need about a sending account: the kept fields, enum labels and the two domains."""

    def flag(name: str) -> bool | None:
        v = r.get(name)
        return v if isinstance(v, bool) else None

    reply_to = _str(r.get("reply_to")) or None
    attributes = {
        "email": account_id(r),
        "domain": email_domain(r.get("email")),
        "status": _enum(r.get("status")),
        "status_label": _label(ACCOUNT_STATUS, r.get("status")),
        "warmup_status": _enum(r.get("warmup_status")),
        "warmup_status_label": _label(WARMUP_STATUS, r.get("warmup_status")),
        "provider_code": _enum(r.get("provider_code")),
        "provider_label": _label(PROVIDER, r.get("provider_code")),
        "added_by": _str(r.get("added_by")),
        "modified_by": _str(r.get("modified_by")),
        "reply_to": reply_to,
        "reply_to_domain": email_domain(reply_to),
        "tracking_domain_name": _str(r.get("tracking_domain_name")) or None,
        "tracking_domain_status": _str(r.get("tracking_domain_status")),
        "setup_pending": flag("setup_pending"),
        "is_managed_account": flag("is_managed_account"),
        "created_at": iso_time(r.get("timestamp_created")),
    }
    return enums.flagged(attributes, r, _ACCOUNT_ENUMS)


def target_for(stream: str, r: Mapping[str, Any], resource_id: str) -> Target:
    """The event target of a snapshot record of ``stream``."""
    name_field = {
        "api_keys": "name",
        "members": "email",
        "webhooks": "name",
        "workspace": "name",
        "group_members": "sub_workspace_name",
        "block_list": "bl_value",
        "accounts": "email",
    }.get(stream, "name")
    kind = {
        "api_keys": "api_key",
        "members": "member",
        "webhooks": "webhook",
        "workspace": "workspace",
        "group_members": "workspace_group_member",
        "block_list": "block_list_entry",
        "accounts": "account",
    }.get(stream, stream)
    return Target(kind, resource_id, _str(r.get(name_field)))


# ----------------------------------------------------------------------------------- pipeline
def pipeline_event(
    *,
    type: str,
    workspace: WorkspaceRef,
    observed_at: str,
    stream: str,
    natural_key: tuple[Any, ...],
    attributes: JSONDict,
) -> Event:
    """A fact about the poller itself (source kind ``pipeline``, stream ``poller``)."""
    return Event.build(
        type=type,
        time=observed_at,
        observed_at=observed_at,
        workspace=workspace,
        source=Source("pipeline", "poller", None),
        natural_key=(stream, *natural_key),
        target=Target("stream", stream, None),
        attributes=redact_record(attributes),
    )
