"""Instantly audit-log ``activity_type`` codes → stable Event v1 type names.

The Aug 2026 spec documents codes 1-12 and 18-38 (API reference §3.3); older builds had
fewer and newer ones will have more. Every enum is open: an unknown code becomes
``audit.activity_<n>`` and is still published, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AuditCode:
    """One activity type: its code, event type, documented label and a coarse category."""

    code: int | None
    type: str
    label: str
    category: str
    known: bool = True


def _c(code: int, name: str, label: str, category: str) -> AuditCode:
    return AuditCode(code, f"audit.{name}", label, category)


AUDIT_CODES: dict[int, AuditCode] = {
    c.code: c
    for c in (
        _c(1, "user_login", "User login", "authentication"),
        _c(2, "lead_deleted", "Lead deletion", "lead"),
        _c(3, "campaign_deleted", "Campaign deletion", "campaign"),
        _c(4, "campaign_launched", "Campaign launch", "campaign"),
        _c(5, "campaign_paused", "Campaign pause", "campaign"),
        _c(6, "account_added", "Account addition", "sending_account"),
        _c(7, "account_deleted", "Account deletion", "sending_account"),
        _c(8, "lead_moved", "Lead moved", "lead"),
        _c(9, "lead_added", "Lead added", "lead"),
        _c(10, "lead_merged", "Lead merged", "lead"),
        _c(11, "campaign_updated", "Campaign update", "campaign"),
        _c(12, "subsequence_updated", "Subsequence update", "campaign"),
        _c(18, "webhook_created", "Webhook created", "webhook"),
        _c(19, "webhook_updated", "Webhook updated", "webhook"),
        _c(20, "webhook_marked_error", "Webhook marked as error", "webhook"),
        _c(21, "webhook_resumed", "Webhook resumed", "webhook"),
        _c(22, "mfa_totp_enrollment_started", "TOTP enrollment started", "mfa"),
        _c(23, "mfa_totp_enabled", "TOTP enabled", "mfa"),
        _c(24, "mfa_totp_replacement_started", "TOTP replacement started", "mfa"),
        _c(25, "mfa_totp_replaced", "TOTP replaced", "mfa"),
        _c(26, "mfa_totp_disabled", "TOTP disabled", "mfa"),
        _c(27, "mfa_recovery_codes_generated", "MFA recovery codes generated", "mfa"),
        _c(28, "mfa_recovery_code_used", "MFA recovery code used", "mfa"),
        _c(29, "mfa_challenge_failed", "MFA login challenge failed", "mfa"),
        _c(30, "mfa_challenge_failed_too_many", "MFA login challenge failed too many times", "mfa"),
        _c(31, "mfa_login_succeeded", "MFA login succeeded", "mfa"),
        _c(32, "subscriber_import_started", "Subscriber import started", "lead"),
        _c(33, "subscriber_import_cancelled", "Subscriber import cancelled", "lead"),
        _c(34, "lead_exported", "Lead exported", "export"),
        _c(35, "supersearch_enrichment_created", "SuperSearch enrichment created", "lead"),
        _c(36, "account_updated", "Account update", "sending_account"),
        _c(37, "api_key_created", "API key created", "api_key"),
        _c(38, "api_key_deleted", "API key deleted", "api_key"),
    )
    if c.code is not None
}
"""Every documented code (Aug 2026 spec)."""


SNAPSHOT_TRIGGERS: dict[str, str] = {
    "api_key": "api_keys",
    "webhook": "webhooks",
    "member": "members",
    "block_list": "block_list",
    "sending_account": "accounts",
}
"""Audit category → the snapshot stream whose resources such a record says changed.

A record of one of these categories makes the poller list that stream in the same poll
(:func:`triggered_stream`), so the snapshot's diff event (e.g. ``api_key.created`` after code 37)
follows within seconds instead of at the next snapshot interval. The Aug 2026 spec has codes
for API keys (37, 38), webhooks (18-21) and sending accounts (6, 7, 36: added, deleted, updated);
``member`` and ``block_list`` are here for the codes a later spec may add (no documented code has
those categories yet)."""


def triggered_stream(activity_type: Any) -> str | None:
    """The snapshot stream an audit record of ``activity_type`` says changed, or ``None``.

    ``37`` (API key created) → ``"api_keys"``; ``18`` (webhook created) → ``"webhooks"``;
    ``1`` (login) → ``None``.
    """
    return SNAPSHOT_TRIGGERS.get(describe_activity(activity_type).category)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def describe_activity(activity_type: Any) -> AuditCode:
    """Describe an ``activity_type`` value; unknown or malformed values still get a type.

    ``37`` → ``audit.api_key_created``; ``99`` → ``audit.activity_99``; a value that is not a
    non-negative integer (``None``, ``"x"``, ``-1``) → ``audit.activity_unknown``.
    """
    code = _as_int(activity_type)
    if code is not None and code in AUDIT_CODES:
        return AUDIT_CODES[code]
    if code is not None and code >= 0:
        return AuditCode(code, f"audit.activity_{code}", f"Activity {code}", "unknown", known=False)
    return AuditCode(None, "audit.activity_unknown", "Unknown activity", "unknown", known=False)
