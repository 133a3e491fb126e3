"""The identities of ``check``'s results: which stream rules it reports on, and the checks only it makes.

A stream rule keeps its identity from the rule catalog; :data:`OWN_CHECKS` are the checks that
need a one-shot view (the pipeline's own key, shared keys, admins, invitations). :func:`own_result`
builds a result of one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.instantly.checklist import Basic
from connectors.instantly.posture.snapshot import WorkspaceSnapshot
from pipeline.checks.report import CheckResult, Resource, Status
from schemas.alert import Severity

STREAM_CHECKS: dict[str, str] = {
    "api_key.all_scope": "api_keys",
    "api_key.broad_scope": "api_keys",
    "api_key.stale": "api_keys",
    "webhook.unauthenticated": "webhooks",
    "webhook.insecure_target": "webhooks",
    "webhook.failing": "webhooks",
    "member.unexpected": "members",
    "block_list.internal_domain_missing": "block_list",
    "account.reply_redirect": "accounts",
    "pipeline.audit_log_unavailable": "audit_logs",
}
"""The stream rules the check reports on (pass or fail), with the listing each one judges."""
PASS_MESSAGES = {
    "api_key.all_scope": "no API key holds all:all",
    "api_key.broad_scope": "no API key holds wildcard, sensitive :all, key-minting or access-granting scopes",
    "api_key.stale": "every API key is younger than the rotation period",
    "webhook.unauthenticated": "every webhook sends an authentication header",
    "webhook.insecure_target": "every webhook targets an https URL (on the allowed hosts, when listed)",
    "webhook.failing": "no webhook is disabled after delivery failures",
    "member.unexpected": "every member is on the member allowlist",
    "block_list.internal_domain_missing": "every protected domain is on the block list",
    "account.reply_redirect": "no sending account sends its replies outside its own domain (or the member domains)",
    "pipeline.audit_log_unavailable": "the audit log can be read",
}


@dataclass(frozen=True, slots=True)
class CheckMeta:
    """Identity of a check that is not a stream rule."""

    id: str
    title: str
    checklist: str
    severity: Severity
    remediation: str


OWN_CHECKS: dict[str, CheckMeta] = {
    m.id: m
    for m in (
        CheckMeta(
            "api_key.pipeline_scopes", "The pipeline's key holds more than the read scopes it needs",
            Basic.SCOPED_KEYS, "high",
            "The audit pipeline only reads. Create a key with exactly the read scopes listed in the finding,\n"
            "store it where the pipeline reads its key (or run `instantly-audit keys rotate NAME --scopes ...`),\n"
            "then delete the over-scoped key.",
        ),
        CheckMeta(
            "api_key.shared", "API key shared by several integrations", Basic.SCOPED_KEYS, "medium",
            "Give each integration its own key with only the scopes it needs, so one can be revoked or rotated\n"
            "without breaking the others and the audit log tells them apart (api_key_id).",
        ),
        CheckMeta(
            "member.admin_not_allowed", "Owner or admin member not on the allowed list", Basic.MEMBER_ROLES, "high",
            "Lower the member's role (PATCH /api/v2/workspace-members/{id} {\"role\": \"editor\"}) or remove them;\n"
            "if the privilege is intended, add the email or domain to check.allowed_admins.",
        ),
        CheckMeta(
            "member.invitation_stale", "Pending invitation older than the allowed age", Basic.MEMBER_ROLES, "low",
            "An invitation nobody accepted can still be accepted by whoever controls that mailbox later.\n"
            "Withdraw it (DELETE /api/v2/workspace-members/{id}) and invite again when the person is ready.",
        ),
    )
}  # fmt: skip
WORKSPACE_CHECK = "workspace.reachable"


def label(snap: WorkspaceSnapshot) -> str:
    """The target a workspace's results name: its source id (the config's alias)."""
    return snap.source_id


def own_result(
    meta_id: str,
    snap: WorkspaceSnapshot,
    status: Status,
    message: str,
    *,
    severity: Severity | None = None,
    resources: tuple[Resource, ...] = (),
    attributes: dict[str, Any] | None = None,
) -> CheckResult:
    """A result of one of :data:`OWN_CHECKS` (its title, checklist item, severity and remediation).

    Raises:
        KeyError: ``meta_id`` is not one of them.
    """
    m = OWN_CHECKS[meta_id]
    return CheckResult(meta_id, m.title, m.checklist, severity or m.severity, status, message, label(snap), resources,
                       remediation=m.remediation, attributes=attributes or {})  # fmt: skip
