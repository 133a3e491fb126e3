"""The one-shot checks of members: owners and admins outside ``allowed_admins``, and stale invitations.

``member.admin_not_allowed`` compares every member (and pending invitation) holding a
privileged role — the roles the ``member.privileged`` rule treats as privileged, else owner and
admin — with ``check.allowed_admins`` (emails, domains, ``*.domain``).
``member.invitation_stale`` fails invitations pending for ``invitation_max_age_days`` or more.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.instantly.posture.catalog import own_result
from connectors.instantly.posture.settings import PostureSettings
from connectors.instantly.posture.snapshot import DAY, WorkspaceSnapshot
from pipeline.checks.report import CheckResult, Resource
from pipeline.clock import parse_time
from pipeline.rules.config import RuleSet
from schemas.alert import Severity


def _allowed(email: str | None, patterns: Sequence[str]) -> bool:
    if not email:
        return False
    e = email.strip().lower()
    if e in patterns:
        return True
    domain = e.rpartition("@")[2]
    for p in patterns:
        if "@" in p:
            continue
        if (p.startswith("*.") and domain.endswith(p[1:])) or domain == p:
            return True
    return False


def _privileged_roles(ruleset: RuleSet) -> list[str]:
    rule = ruleset.get("member.privileged")
    roles = getattr(rule.params, "privileged_roles", None) if rule is not None else None
    return [str(r) for r in roles] if isinstance(roles, list) and roles else ["owner", "admin"]


def check_admins(snap: WorkspaceSnapshot, ruleset: RuleSet, settings: PostureSettings) -> list[CheckResult]:
    """``member.admin_not_allowed``: owner/admin members (and invitations) outside ``allowed_admins``."""
    if "members" in snap.errors:
        return [own_result("member.admin_not_allowed", snap, "error", f"cannot list members: {snap.errors['members']}")]
    roles = _privileged_roles(ruleset)
    members = snap.snapshots.get("members", {})
    privileged = [(mid, m) for mid, m in sorted(members.items()) if m.get("role") in roles]
    allowed = settings.allowed_admins
    if not allowed:
        who = ", ".join(f"{m.get('email')} ({m.get('role')})" for _, m in privileged) or "none"
        res = tuple(Resource("member", mid, m.get("email")) for mid, m in privileged)
        return [own_result("member.admin_not_allowed", snap, "warn",
                     f"no check.allowed_admins configured; {len(privileged)} privileged member(s): {who}",
                     resources=res)]  # fmt: skip
    out: list[CheckResult] = []
    for mid, m in privileged:
        email = m.get("email") if isinstance(m.get("email"), str) else None
        if _allowed(email, allowed) or _allowed(m.get("user_email"), allowed):
            continue
        pending = "" if m.get("accepted") is True else " (invitation pending)"
        out.append(own_result("member.admin_not_allowed", snap, "fail",
                        f"{email or mid} is {m.get('role')}{pending} but not on check.allowed_admins",
                        resources=(Resource("member", mid, email),), attributes={"role": m.get("role")}))  # fmt: skip
    if not out:
        out.append(own_result("member.admin_not_allowed", snap, "pass",
                        f"all {len(privileged)} owner/admin member(s) are on the allowed list"))  # fmt: skip
    return out


def check_invitations(snap: WorkspaceSnapshot, ruleset: RuleSet, settings: PostureSettings) -> list[CheckResult]:
    """``member.invitation_stale``: invitations not accepted after ``invitation_max_age_days``."""
    if "members" in snap.errors:
        return [own_result("member.invitation_stale", snap, "error", f"cannot list members: {snap.errors['members']}")]
    limit = settings.invitation_max_age_days
    roles = _privileged_roles(ruleset)
    out: list[CheckResult] = []
    pending = 0
    for mid, m in sorted(snap.snapshots.get("members", {}).items()):
        if m.get("accepted") is not False:
            continue
        pending += 1
        try:
            created = parse_time(str(m.get("timestamp_created")))
        except ValueError:
            continue
        age = (snap.observed_at - created) / DAY
        if age < limit:
            continue
        email = m.get("email") if isinstance(m.get("email"), str) else None
        sev: Severity = "medium" if m.get("role") in roles else "low"
        out.append(own_result("member.invitation_stale", snap, "fail",
                        f"the invitation of {email or mid} (role {m.get('role')}) has been pending for {age:.0f} days "
                        f"(limit {limit:g})", severity=sev, resources=(Resource("member", mid, email),),
                        attributes={"age_days": int(age), "role": m.get("role")}))  # fmt: skip
    if not out:
        out.append(own_result("member.invitation_stale", snap, "pass",
                        f"no invitation pending for {limit:g} days or more ({pending} pending)"))  # fmt: skip
    return out
