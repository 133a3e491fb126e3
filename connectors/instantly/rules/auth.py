"""Authentication rules from the audit log: MFA attacks and logins from new IPs.

``auth.mfa_disabled`` and ``auth.recovery_code_used`` are YAML rules (``catalog/builtin.yaml``).
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
    actor_key,
    actor_label,
    forget_quiet,
)
from schemas.alert import Entity
from schemas.event import Event

MFA_FAILED = 29
MFA_FAILED_TOO_MANY = 30
USER_LOGIN = 1
MAX_TRACKED_USERS = 1000
"""Users with recent MFA failures remembered per workspace."""
REFRESH_SECS = 7 * DAY
"""How stale a known IP's stored last-seen time may get. That time only orders eviction (the
least recently seen IPs of a user, and users, go first), so it is refreshed at most weekly: a
login from an IP seen within the week changes no state, and the state topic gets one write per
user and IP per week instead of one per login."""


class MfaAttackParams(RuleParams):
    """Options of ``auth.mfa_attack``."""

    failures_threshold: int = Field(5, ge=1, le=1000)
    window_secs: float = Field(600.0, gt=0, le=DAY)


class MfaAttackRule(CatalogRule[MfaAttackParams]):
    """``auth.mfa_attack``: ``failures_threshold`` failed MFA challenges (29) within ``window_secs``, or code 30."""

    Params = MfaAttackParams
    meta = RuleMeta(
        id="auth.mfa_attack", title="Repeated MFA challenge failures", severity="high", attack=("T1110", "T1621"),
        basic=Basic.AUDIT_LOGS, event_types=("audit.*",), activity_codes=frozenset({MFA_FAILED, MFA_FAILED_TOO_MANY}),
        runbook=(
            "Someone holds the user's password and is guessing the second factor.\n"
            "1. Contact the user out of band; if it was not them, reset the password at once.\n"
            "2. Check the source IPs (entities) and recent logins (audit code 1) from them.\n"
            "3. Review recovery-code use (audit 28) and MFA changes (26) for the user."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Count failures per user in a sliding window."""
        user = actor_key(event)
        key = f"user:{user}"
        ents = actor_entities(event)
        if event.attributes.get("activity_code") == MFA_FAILED_TOO_MANY:
            summary = f"Instantly reports too many failed MFA challenges for {actor_label(event)}"
            return (Finding(key, summary, ents, event.id, attributes={"activity_code": MFA_FAILED_TOO_MANY}),)
        p = self.params
        fails: dict[str, list[float]] = ctx.data.setdefault("fails", {})
        recent = [t for t in fails.pop(user, []) if ctx.now - t < p.window_secs]
        recent.append(ctx.now)
        forget_quiet(fails, ctx.now, p.window_secs, MAX_TRACKED_USERS)
        fails[user] = recent[-p.failures_threshold :]
        if len(recent) < p.failures_threshold:
            return ()
        summary = f"{len(recent)} failed MFA challenges for {actor_label(event)} within {p.window_secs / 60:g} min"
        return (
            Finding(key, summary, ents, event.id, attributes={"failures": len(recent), "window_secs": p.window_secs}),
        )


class LoginNewIpParams(RuleParams):
    """Options of ``auth.login_new_ip``."""

    learning_days: float = Field(7.0, ge=0, le=365)
    max_ips_per_user: int = Field(20, ge=1, le=1000)
    max_users: int = Field(10_000, ge=1, le=1_000_000)
    alert_on_new_user: bool = False


class LoginNewIpRule(CatalogRule[LoginNewIpParams]):
    """``auth.login_new_ip``: a user logs in from an IP not seen for them, after a learning period.

    Each user's IPs are learned silently during the ``learning_days`` after the user is first
    seen (so users joining later are not reported for their usual second or third IP). With
    ``alert_on_new_user``, a user never seen before is reported once the workspace itself is
    past its learning period. State is bounded: each user keeps at most ``max_ips_per_user`` IPs (least recently seen
    dropped first), each workspace at most ``max_users`` users (least recently active dropped);
    a dropped user is learned again silently. ``allowlists.ip_networks`` are never reported.
    """

    Params = LoginNewIpParams
    meta = RuleMeta(
        id="auth.login_new_ip", title="Login from a new IP address", severity="low", attack=("T1078.004",),
        basic=Basic.AUDIT_LOGS, event_types=("audit.*",), activity_codes=frozenset({USER_LOGIN}), suppress_secs=DAY,
        runbook=(
            "1. Ask the user whether the login (time, IP, user agent) was theirs.\n"
            "2. If not: reset the password, check MFA status, and review what the session did in the audit log.\n"
            "3. Add office or VPN ranges to rules.allowlists.ip_networks to silence expected sources."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Learn the user's IPs; report an unseen one after the learning period."""
        a = event.actor
        if a is None or not a.ip:
            return ()
        ip = a.ip
        user = a.user_id or a.user_name
        lists = self.lists
        if not user or (lists.ip_networks and lists.ip_trusted(ip)):
            return ()
        now = ctx.now
        # Fast path: ``cache`` mirrors the stored last-seen time of every (user, IP) it holds.
        known = ctx.state.cache
        pair = (user, ip)
        last = known.get(pair)
        if last is not None and now - last < REFRESH_SECS:
            return ()
        sub = ctx.peek_sub(user)
        ips: dict[str, Any]
        if sub is not None:
            ips = sub.get("ips") or sub.setdefault("ips", {})  # no new {} per login
            last = ips.get(ip)
            if last is not None:  # a known IP
                if now - last >= REFRESH_SECS:
                    ctx.sub(user)  # mark the user used (LRU order) and its document changed
                    del ips[ip]
                    last = ips[ip] = int(now)
                known[pair] = last
                return ()
            ctx.sub(user)
        p = self.params
        learning_secs = p.learning_days * DAY
        ip_time = int(now)
        if sub is None:
            ctx.new_sub(user).update(since=ip_time, ips={ip: ip_time})
            known[pair] = ip_time
            for name, doc in ctx.trim_subs(p.max_users):
                for old in doc.get("ips") or ():
                    known.pop((name, old), None)
            if not p.alert_on_new_user:
                return ()
            ws_since = ctx.state.data.get("since")
            if ws_since is None:
                ws_since = ctx.data["since"] = now
            if now - ws_since < learning_secs:
                return ()
            return (self._finding(event, user, ip, 0, new_user=True),)
        ips[ip] = ip_time
        known[pair] = ip_time
        while len(ips) > p.max_ips_per_user:
            oldest = next(iter(ips))
            del ips[oldest]
            known.pop((user, oldest), None)
        if now - sub.get("since", 0) < learning_secs:  # this user's IPs are still being learned
            return ()
        return (self._finding(event, user, ip, len(ips) - 1, new_user=False),)

    def _finding(self, event: Event, user: str, ip: str, known: int, *, new_user: bool) -> Finding:
        a = event.actor
        ua = a.user_agent if a is not None else None
        what = "first login seen for this user" if new_user else f"{known} known IPs"
        summary = f"{actor_label(event)} logged in from a new IP {ip} ({what})"
        ents = (Entity("user", user if a is None else a.user_id, a.user_name if a else None), Entity("ip", ip, None))
        return Finding(f"user:{user}:ip:{ip}", summary, ents, event.id,
                       attributes={"ip": ip, "user_agent": ua, "known_ips": known})  # fmt: skip
