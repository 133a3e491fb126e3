"""Authentication rules from the audit log: MFA attacks, MFA changes and logins from new IPs.

``auth.recovery_code_used`` is a YAML rule (``builtin.yaml``).
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
    resolved,
)
from schemas.alert import Entity
from schemas.event import Event

MFA_FAILED = 29
MFA_FAILED_TOO_MANY = 30
USER_LOGIN = 1
TOTP_ENABLED = 23
TOTP_REPLACEMENT_STARTED = 24
TOTP_REPLACED = 25
TOTP_DISABLED = 26
RECOVERY_CODES_GENERATED = 27
MFA_LOGIN_SUCCEEDED = 31
LOGIN_CODES = frozenset({USER_LOGIN, MFA_LOGIN_SUCCEEDED})
"""Audit codes that teach the MFA rules a user's IPs (a completed sign-in)."""
FACTOR_CHANGES = {
    TOTP_REPLACEMENT_STARTED: "started replacing their TOTP authenticator",
    TOTP_REPLACED: "replaced their TOTP authenticator",
    RECOVERY_CODES_GENERATED: "generated new MFA recovery codes",
}
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


class KnownIpParams(RuleParams):
    """Options of the MFA rules that judge an event by the user's known sign-in IPs."""

    min_ip_age_secs: float = Field(DAY, ge=0, le=90 * DAY)
    max_ips_per_user: int = Field(20, ge=1, le=1000)
    max_users: int = Field(10_000, ge=1, le=1_000_000)


class _KnownIpRule(CatalogRule[KnownIpParams]):
    """Learns each user's sign-in IPs (audit 1 and 31) itself: a rule cannot read another rule's state.

    An IP is *known* for a user when a sign-in from it was seen at least ``min_ip_age_secs``
    before the reference time (so an attacker's own sign-in minutes before an MFA change does
    not vouch for it), or when it is inside ``allowlists.ip_networks``. State per workspace: at
    most ``max_users`` users (least recently active dropped), each with at most
    ``max_ips_per_user`` IPs and the time each was first seen (the oldest dropped first).
    """

    Params = KnownIpParams

    def _learn(self, ctx: RuleContext, event: Event) -> None:
        a = event.actor
        if a is None or not a.ip or not (user := a.user_id or a.user_name):
            return
        known = ctx.state.cache
        if (user, a.ip) in known:
            return
        if "since" not in ctx.state.data:
            ctx.data["since"] = ctx.now
        peek = ctx.peek_sub(user)
        first = None if peek is None else (peek.get("ips") or {}).get(a.ip)
        if first is not None:  # known, just not cached (after a restart): no state change
            known[(user, a.ip)] = first
            return
        doc = ctx.sub(user)
        if doc is None:
            doc = ctx.new_sub(user)
            for name, old in ctx.trim_subs(self.params.max_users):
                for ip in old.get("ips") or ():
                    known.pop((name, ip), None)
        ips: dict[str, Any] = doc.setdefault("ips", {})
        ips.setdefault(a.ip, int(ctx.now))
        known[(user, a.ip)] = ips[a.ip]
        while len(ips) > self.params.max_ips_per_user:
            del ips[oldest := next(iter(ips))]
            known.pop((user, oldest), None)

    def _known(self, ctx: RuleContext, user: str, ip: str, before: float) -> bool:
        if self.lists.ip_networks and self.lists.ip_trusted(ip):
            return True
        doc = ctx.peek_sub(user)
        first = None if doc is None else (doc.get("ips") or {}).get(ip)
        return first is not None and first <= before - self.params.min_ip_age_secs


class MfaDisabledRule(_KnownIpRule):
    """``auth.mfa_disabled``: TOTP disabled (audit 26); re-enabling it (23) resolves only from a known IP.

    An attacker who turns MFA off and enrols their own authenticator would otherwise clear the
    alert themselves: the re-enable resolves only when its IP was known for the user (signed in
    from at least ``min_ip_age_secs`` before the disable) or is allowlisted; otherwise the alert
    stays open for a person to close. (Was a YAML rule that any audit 23 resolved.)
    """

    meta = RuleMeta(
        id="auth.mfa_disabled", title="MFA (TOTP) disabled", severity="high", attack=("T1556.006",), version=3,
        basic=Basic.AUDIT_LOGS, event_types=("audit.*",), status="stable",
        activity_codes=frozenset({TOTP_DISABLED, TOTP_ENABLED, *LOGIN_CODES}),
        runbook=(
            "1. Ask the user whether they turned MFA off; an attacker with the password does this first.\n"
            "2. If not them: reset the password, re-enrol TOTP, and review the audit log since the change.\n"
            "3. Re-enabling TOTP (audit 23) resolves this alert only from an IP the user signed in from\n"
            "   before the disable (or an allowlisted network); a re-enrolment from elsewhere keeps it open."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Learn sign-in IPs; open on 26; resolve on 23 from a known IP."""
        code = event.attributes.get("activity_code")
        if code in LOGIN_CODES:
            self._learn(ctx, event)
            return ()
        a = event.actor
        key = actor_key(event)  # the user, else the acting API key: records without a user are not one condition
        ip = a.ip if a is not None else None
        if code == TOTP_DISABLED:
            kid = a.api_key_id if a is not None else None
            who = actor_label(event)
            via = f" through API key {kid}" if kid and not who.startswith("API key") else ""
            summary = f"MFA (TOTP) was disabled for {who}{via} from {ip}"
            attrs = {"actor.ip": ip, "actor.user_agent": a.user_agent if a else None,
                     "actor.via_api": a.via_api if a else None, "actor.api_key_id": kid}  # fmt: skip
            ents = actor_entities(event) or (Entity("ip", ip, None),)
            return (Finding(key, summary, ents, event.id, resolvable=True, attributes=attrs),)
        if code != TOTP_ENABLED or not ctx.is_open(key):
            return ()
        since = ctx.open_since(key)
        if ip and self._known(ctx, key, ip, ctx.now if since is None else since):
            return (resolved(key, f"Cleared: MFA (TOTP) re-enabled for {actor_label(event)} from known IP {ip}",
                             event_id=event.id),)  # fmt: skip
        return ()


class MfaFactorChangedRule(_KnownIpRule):
    """``auth.mfa_factor_changed``: TOTP replaced (24, 25) or recovery codes generated (27) from an unknown IP.

    Someone holding a session who swaps the authenticator or mints recovery codes keeps access
    past a password reset. Reported when the event's IP is not known for the user (see
    :class:`_KnownIpRule`); during the first ``min_ip_age_secs`` of a workspace's history
    nothing is known yet, so nothing is reported then.
    """

    meta = RuleMeta(
        id="auth.mfa_factor_changed", title="MFA factor changed from an unknown IP", severity="medium",
        attack=("T1556.006",), basic=Basic.AUDIT_LOGS, event_types=("audit.*",),
        activity_codes=frozenset({*FACTOR_CHANGES, *LOGIN_CODES}),
        runbook=(
            "1. Ask the user whether they replaced their authenticator or generated recovery codes from this IP.\n"
            "2. If not them: reset the password, re-enrol TOTP, regenerate recovery codes, end sessions.\n"
            "3. Add office or VPN ranges to rules.allowlists.ip_networks to silence expected sources."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Learn sign-in IPs; report a factor change from an IP not known for the user."""
        code = event.attributes.get("activity_code")
        if code in LOGIN_CODES:
            self._learn(ctx, event)
            return ()
        a = event.actor
        if not isinstance(code, int) or code not in FACTOR_CHANGES or a is None or not a.ip:
            return ()
        user = a.user_id or a.user_name
        since = ctx.state.data.get("since")
        if not user or since is None or ctx.now - since < self.params.min_ip_age_secs:
            if "since" not in ctx.state.data:
                ctx.data["since"] = ctx.now
            return ()
        if self._known(ctx, user, a.ip, ctx.now):
            return ()
        summary = f"{actor_label(event)} {FACTOR_CHANGES[code]} from {a.ip}, an IP not seen for them"
        ents = (Entity("user", a.user_id, a.user_name), Entity("ip", a.ip, None))
        attrs = {"ip": a.ip, "user_agent": a.user_agent, "activity_code": code}
        return (Finding(f"user:{user}:ip:{a.ip}", summary, ents, event.id, attributes=attrs),)
