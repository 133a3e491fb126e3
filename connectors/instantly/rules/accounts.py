"""Sending-account rules: replies redirected outside the domain, mailboxes leaving, tracking domains changed.

Snapshot events ``account.baseline|added|removed|reply_to_changed|tracking_domain_changed|status_changed|updated``
carry ``email`` (lower-cased; also the target id), ``domain``, ``reply_to``, ``reply_to_domain``,
``tracking_domain_name`` and, on changes, ``previous_*``. None of these changes has an Instantly audit
record: a custom ``reply_to``, the tracking domain and ``POST /accounts/move`` are seen only by the
``accounts`` snapshot stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.rules.base import DAY, CatalogRule, Finding, RuleContext, RuleMeta, RuleParams, attr, resolved, target_id
from pipeline.rules.lists import host_match
from schemas.alert import Entity
from schemas.event import Event


def _lower(value: Any) -> str | None:
    return value.strip().lower() or None if isinstance(value, str) else None


def account_email(event: Event) -> str | None:
    """The lower-cased email of the account an event is about (attribute ``email``, else the target id)."""
    return _lower(attr(event, "email")) or _lower(target_id(event))


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].rstrip(".") or None


def account_entity(email: str) -> Entity:
    """The sending account as an alert entity."""
    return Entity("account", email, email)


class ReplyRedirectRule(CatalogRule[RuleParams]):
    """``account.reply_redirect``: a mailbox's replies go to an address outside its own domain.

    Judged on every account event (the baseline too, so a redirect that already exists alerts once):
    the ``reply_to`` domain must be the account's own email domain or one of
    ``rules.allowlists.member_domains`` (``*.example.com`` for subdomains). The alert resolves when
    ``reply_to`` is cleared or brought back in-domain, or the account leaves the workspace; a redirect
    to yet another outside address opens a new alert (the key names the address).
    """

    meta = RuleMeta(
        id="account.reply_redirect", title="Sending account replies redirected outside the domain",
        severity="high", attack=("T1114.003",), event_types=("account.*",),
        references=("https://developer.instantly.ai/api-reference/schemas/account",),
        falsepositives=("an agency or shared inbox on another domain that collects replies on purpose "
                        "(add its domain to rules.allowlists.member_domains)",),
        runbook=(
            "Leads' replies to this mailbox now go to the reply_to address, not to the mailbox: whoever holds\n"
            "that address reads every answer to the campaigns (email forwarding, ATT&CK T1114.003).\n"
            '1. If not intended: PATCH /api/v2/accounts/{email} {"reply_to": null} (or the in-domain address).\n'
            "2. Find who changed it (modified_by, the web app's team log) and rotate that user's password and\n"
            "   the API keys with accounts:update / accounts:all.\n"
            "3. If the address is a legitimate shared inbox, add its domain to rules.allowlists.member_domains."
        ),
    )  # fmt: skip

    def _outside(self, email: str, reply_to: str | None) -> str | None:
        """The reply_to domain when it is neither the account's own domain nor allowed, else None."""
        domain = _domain(reply_to)
        if domain is None or reply_to == email:
            return None
        if domain == _domain(email) or host_match(domain, self.lists.member_domains):
            return None
        return domain

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open for an outside reply_to; resolve the account's other open redirects."""
        email = account_email(event)
        if email is None:
            return ()
        prefix = f"account:{email}:reply_to:"
        reply_to = None if event.type == "account.removed" else _lower(attr(event, "reply_to"))
        outside = self._outside(email, reply_to)
        key = f"{prefix}{reply_to}" if outside is not None else None
        out: list[Finding] = []
        for open_key in ctx.open_keys():
            if open_key.startswith(prefix) and open_key != key:
                why = "left the workspace" if event.type == "account.removed" else "no longer redirects there"
                address = open_key.removeprefix(prefix)
                out.append(resolved(open_key, f"Sending account {email} {why} ({address})", event_id=event.id,
                                    entities=(account_entity(email),)))  # fmt: skip
        if key is None or ctx.is_open(key):
            return out
        previous = _lower(attr(event, "previous_reply_to"))
        where = "already sends" if event.type == "account.baseline" else "now sends"
        summary = f"Sending account {email} {where} replies to {reply_to}, outside {_domain(email)}"
        ents = (account_entity(email), Entity("email", reply_to, None), Entity("domain", outside, None))
        attrs = {"reply_to": reply_to, "reply_to_domain": outside, "previous_reply_to": previous}
        out.append(Finding(key, summary, ents, event.id, resolvable=True, attributes=attrs))
        return out


class AccountRemovedRule(CatalogRule[RuleParams]):
    """``account.removed``: a sending mailbox left the workspace: deleted, or moved to another workspace.

    ``POST /api/v2/accounts/move`` (an agency admin key) moves mailboxes between sub-workspaces and
    leaves no audit record; a deletion has audit code 7 but names no account. One alert per account,
    suppressed for a day.
    """

    meta = RuleMeta(
        id="account.removed", title="Sending account left the workspace", severity="medium",
        event_types=("account.removed",), suppress_secs=DAY,
        references=("https://developer.instantly.ai/api-reference/groups/account.md",),
        falsepositives=("mailboxes retired or moved between the agency's sub-workspaces on purpose",),
        runbook=(
            "The mailbox no longer belongs to this workspace: deleted, or moved to another workspace with\n"
            "POST /api/v2/accounts/move, which Instantly records in no audit log.\n"
            "1. Ask the workspace owner (and the agency admin) whether it was retired or moved on purpose.\n"
            "2. If moved: find the workspace that holds it now; campaigns and replies go with the mailbox.\n"
            "3. If nobody did it on purpose, review the admin API keys of the agency (accounts:*, all:*)."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Report the account that left."""
        email = account_email(event)
        if email is None:
            return ()
        summary = (
            f"Sending account {email} left the workspace: deleted, or moved to another workspace "
            "(a move leaves no Instantly audit record)"
        )
        return (Finding(f"account:{email}", summary, (account_entity(email),), event.id),)


class TrackingDomainChangedRule(CatalogRule[RuleParams]):
    """``account.tracking_domain_changed``: an existing mailbox's tracking domain changed (never at baseline).

    The tracking domain is the host every tracked link and open pixel of the mailbox's emails
    points at; pointed elsewhere, it leads recipients to another server.
    """

    meta = RuleMeta(
        id="account.tracking_domain_changed", title="Sending account tracking domain changed", severity="medium",
        event_types=("account.tracking_domain_changed",),
        references=("https://developer.instantly.ai/api-reference/schemas/account",),
        falsepositives=("a planned move to a new custom tracking domain",),
        runbook=(
            "Links and open pixels in this mailbox's emails now go through the new tracking domain.\n"
            "1. Confirm the new domain is the team's own (its CNAME should point at Instantly's tracking host).\n"
            '2. If not: PATCH /api/v2/accounts/{email} {"tracking_domain_name": "<the team\'s domain>"}.\n'
            "3. Find who changed it (modified_by) and review that user's and keys' other changes."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Report the change (old → new)."""
        email = account_email(event)
        if email is None:
            return ()
        new = _lower(attr(event, "tracking_domain_name"))
        old = _lower(attr(event, "previous_tracking_domain_name"))
        if new == old:
            return ()
        summary = f"Tracking domain of sending account {email} changed from {old or 'none'} to {new or 'none'}"
        ents = (account_entity(email), *((Entity("domain", new, None),) if new else ()))
        attrs = {"tracking_domain_name": new, "previous_tracking_domain_name": old}
        return (Finding(f"account:{email}:tracking:{new}", summary, ents, event.id, attributes=attrs),)
