"""Member rules: members outside the allowlist, privileges (new or present at first sight), owner changes.

Snapshot events ``member.baseline|invited|accepted|removed|role_changed|permissions_changed``
carry ``email``, ``role``, ``accepted``, ``permissions``; role and permission changes also
``change.before`` / ``change.after``. ``workspace.owner_changed`` carries the owner's user id
in ``change.before.owner`` / ``change.after.owner``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from connectors.instantly.checklist import Basic
from pipeline.rules.base import (
    DAY,
    CatalogRule,
    Finding,
    RuleContext,
    RuleMeta,
    RuleParams,
    actor_entities,
    attr,
    resolved,
    target_id,
)
from schemas.alert import Entity, Severity
from schemas.event import Event

PRIVILEGED_PERMISSIONS = ("organization.manage", "organization.users.manage", "organization.billing",
                          "organization.integrations", "agency.manage", "workspaceGroupMembers.invite")  # fmt: skip


def member_ref(event: Event) -> tuple[str | None, str | None]:
    """(membership id, email) of the member an event is about."""
    email = attr(event, "email")
    email = email.strip().lower() if isinstance(email, str) and email.strip() else None
    return target_id(event) or email, email


def account_email(event: Event, email: str | None) -> str | None:
    """The email of the Instantly account that holds the membership (``user_email``), when it is not the
    invited address: an invitation to an allowed address can be accepted by an account elsewhere."""
    u = attr(event, "user_email")
    u = u.strip().lower() if isinstance(u, str) and u.strip() else None
    return u if u != email else None


def _side(event: Event, side: str, name: str) -> Any:
    if event.change is None:
        return None
    doc = event.change.before if side == "before" else event.change.after
    return doc.get(name) if isinstance(doc, dict) else None


MAX_USERS = 5000
"""Members' user id → email remembered per workspace by ``member.privileged`` (to name an owner change)."""


def _learn_user(ctx: RuleContext, event: Event) -> None:
    """Remember the member's email under its user id (the owner is a user id), bounded."""
    uid = attr(event, "user_id")
    email = member_ref(event)[1]
    if not isinstance(uid, str) or not uid or email is None:
        return
    known = ctx.state.data.get("users")
    if known is not None and known.get(uid) == email:
        return
    users: dict[str, Any] = ctx.data.setdefault("users", {})
    users.pop(uid, None)
    users[uid] = email
    while len(users) > MAX_USERS:
        del users[next(iter(users))]


class UnexpectedMemberRule(CatalogRule[RuleParams]):
    """``member.unexpected``: a member whose email and domain are not allowed (only with an allowlist)."""

    meta = RuleMeta(
        id="member.unexpected", title="Workspace member outside the allowlist", severity="high", version=2,
        attack=("T1136.003", "T1098"), basic=Basic.MEMBER_ROLES, event_types=("member.*",), suppress_secs=DAY,
        runbook=(
            "1. Ask the workspace owner whether this person should have access (an allowed invited address\n"
            "   joined from another account: the access sits with that account, outside your offboarding).\n"
            "2. If not: DELETE /api/v2/workspace-members/{id}, then review the audit log for what they did.\n"
            "3. If yes: add the email or domain to rules.allowlists.member_emails / member_domains."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open for a member not on the allowlist; resolve on removal or once allowed."""
        if not self.lists.has_member_allowlist:
            return ()
        mid, email = member_ref(event)
        if not mid:
            return ()
        key = f"member:{mid}"
        account = account_email(event, email)
        outside = account is not None and not self.lists.member_allowed(account)
        if event.type == "member.removed" or (email is not None and self.lists.member_allowed(email) and not outside):
            if ctx.is_open(key):
                return (resolved(key, f"Member {email or mid} was removed or is now allowed", event_id=event.id),)
            return ()
        if email is None:
            return ()
        role = attr(event, "role")
        member = f"is a member of the workspace (role {role or 'unknown'})"
        if outside and self.lists.member_allowed(email):
            summary = f"{email} {member} through the account {account}, which is not on the allowlist"
        else:
            via = f" (account {account})" if account else ""
            summary = f"{email}{via} {member} but is not on the allowlist"
        return (Finding(key, summary, (Entity("member", mid, email),), event.id, resolvable=True,
                        attributes={"role": role, "accepted": attr(event, "accepted"),
                                    "user_email": account}),)  # fmt: skip


class PrivilegedParams(RuleParams):
    """Options of ``member.privileged``."""

    privileged_roles: list[str] = Field(default_factory=lambda: ["owner", "admin"], min_length=1)
    privileged_permissions: list[str] = Field(default_factory=lambda: list(PRIVILEGED_PERMISSIONS))
    unknown_is_privileged: bool = Field(
        True,
        description="a role or permission Instantly does not document (the event's attributes.unknown_values) "
        "counts as privileged: what it grants cannot be judged",
    )


def _unknown(event: Event, name: str) -> set[str]:
    """The values of ``name`` (``role``, ``permissions``) the event flags as undocumented
    (``attributes.unknown_values``)."""
    flagged = attr(event, "unknown_values")
    value = flagged.get(name) if isinstance(flagged, dict) else None
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, str) and v}


_UNKNOWN_ROLE = " (a role Instantly does not document: what it grants cannot be judged)"


class PrivilegedMemberRule(CatalogRule[PrivilegedParams]):
    """``member.privileged``: someone was invited as or made admin, gained admin permissions, or the owner changed.

    A role or permission Instantly does not document (``attributes.unknown_values``, e.g. a role added
    since) counts as privileged unless ``unknown_is_privileged`` is off: what it grants cannot be judged.

    The first snapshot counts too: a member who already holds a privileged role or permission
    (``member.baseline``) alerts once — high, or low when the member allowlist names them — and
    the owner at first sight alerts once at low (``workspace.baseline`` and the owner's own
    ``member.baseline`` share its key, so a fresh install gets one owner alert, not a high and a
    low), so the inventory of who holds power starts in the alert stream. Keys match the change alerts', so a later
    grant of the same privilege folds into the same alert within the suppression window.
    """

    Params = PrivilegedParams
    meta = RuleMeta(
        id="member.privileged", title="Workspace member gained privileges", severity="high", version=6,
        attack=("T1098.003",), basic=Basic.MEMBER_ROLES,
        event_types=("member.invited", "member.role_changed", "member.permissions_changed", "workspace.owner_changed",
                     "member.baseline", "workspace.baseline"),
        runbook=(
            "1. Confirm with the workspace owner that the change was intended (who made it: see actor).\n"
            "2. Members should hold the least role that works (view/editor); admin only for managers.\n"
            "3. An unexpected owner change is critical: contact Instantly support and rotate every API key."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Report the privilege the event grants (or, on a baseline, holds), if any."""
        if event.type.startswith("member."):
            _learn_user(ctx, event)
        if event.type.endswith(".baseline"):
            return self._baseline(event)
        if event.type == "workspace.owner_changed":
            users = ctx.state.data.get("users") or {}
            before = _side(event, "before", "owner") or attr(event, "previous_owner")
            after = _side(event, "after", "owner") or attr(event, "owner")
            ents = tuple(Entity("user", u, users.get(u)) for u in (after, before) if isinstance(u, str))
            ents += actor_entities(event)

            def named(u: Any) -> str:
                return f"{users[u]} ({u})" if isinstance(u, str) and u in users else (u or "unknown")

            summary = f"The workspace owner changed from {named(before)} to {named(after)}"
            return (Finding(f"owner:{after}", summary, ents, event.id, severity="critical",
                            attributes={"previous_owner": before, "new_owner": after}),)  # fmt: skip
        mid, email = member_ref(event)
        if not mid:
            return ()
        who = email or mid
        ents = (Entity("member", mid, email), *actor_entities(event))
        unknown = self.params.unknown_is_privileged
        roles = [*self.params.privileged_roles, *(_unknown(event, "role") if unknown else ())]
        if event.type in ("member.invited", "member.role_changed"):
            after = _side(event, "after", "role") or attr(event, "role")
            before = _side(event, "before", "role") if event.type == "member.role_changed" else None
            if after in roles and before not in roles:
                verb = "was invited as" if event.type == "member.invited" else f"was changed from {before} to"
                note = _UNKNOWN_ROLE if after not in self.params.privileged_roles else ""
                return (Finding(f"member:{mid}:role:{after}", f"{who} {verb} {after}{note}", ents, event.id,
                                attributes={"role": after, "previous_role": before}),)  # fmt: skip
            return ()
        before_p = _side(event, "before", "permissions")
        after_p = _side(event, "after", "permissions") or attr(event, "permissions")
        privileged = set(self.params.privileged_permissions) | (_unknown(event, "permissions") if unknown else set())
        gained = sorted((set(after_p or []) - set(before_p or [])) & privileged)
        if not gained:
            return ()
        summary = f"{who} gained privileged permissions: {', '.join(gained)}"
        return (
            Finding(f"member:{mid}:perm:{','.join(gained)}", summary, ents, event.id, attributes={"gained": gained}),
        )

    def _baseline(self, event: Event) -> tuple[Finding, ...]:
        if event.type == "workspace.baseline":
            owner = attr(event, "owner")
            if not isinstance(owner, str) or not owner:
                return ()
            return (Finding(f"owner:{owner}", f"The workspace owner at first sight is {owner}",
                            (Entity("user", owner, None),), event.id, severity="low",
                            attributes={"new_owner": owner, "baseline": True}),)  # fmt: skip
        mid, email = member_ref(event)
        if not mid:
            return ()
        role = attr(event, "role")
        perms = attr(event, "permissions")
        unknown = self.params.unknown_is_privileged
        privileged = set(self.params.privileged_permissions) | (_unknown(event, "permissions") if unknown else set())
        held = sorted(set(perms if isinstance(perms, list) else []) & privileged)
        unknown_role = unknown and isinstance(role, str) and role in _unknown(event, "role")
        account = account_email(event, email)
        allowed = (email is not None and self.lists.has_member_allowlist and self.lists.member_allowed(email)
                   and (account is None or self.lists.member_allowed(account)))  # fmt: skip
        sev: Severity = "low" if allowed else "high"
        ents = (Entity("member", mid, email),)
        who = email or mid
        note = " (on the member allowlist)" if allowed else ""
        attrs = {"role": role, "baseline": True, "allowlisted": allowed}
        uid = attr(event, "user_id")
        if role == "owner" and isinstance(uid, str) and uid:  # the owner at first sight: one low alert, shared
            # with workspace.baseline's (same key), naming the member (it names the user id only)
            summary = f"The workspace owner at first sight is {who}"
            return (Finding(f"owner:{uid}", summary, (Entity("user", uid, email),), event.id, severity="low",
                            attributes={"new_owner": uid, **attrs}),)  # fmt: skip
        if role in self.params.privileged_roles or unknown_role:
            what = f"the {role} role{_UNKNOWN_ROLE if role not in self.params.privileged_roles else ''}"
            return (Finding(f"member:{mid}:role:{role}", f"{who} holds {what} at first sight{note}", ents,
                            event.id, severity=sev, attributes=attrs),)  # fmt: skip
        if held:
            return (Finding(f"member:{mid}:perm:{','.join(held)}",
                            f"{who} holds privileged permissions at first sight: {', '.join(held)}{note}", ents,
                            event.id, severity=sev, attributes={**attrs, "gained": held}),)  # fmt: skip
        return ()
