"""Webhook rules: no authentication header, insecure or unexpected target, failing deliveries.

Snapshot events ``webhook.baseline|created|updated|deleted|status_changed|headers_changed``
carry ``target_hook_url``, ``url_scheme``, ``header_names``, ``has_auth_header``, ``status``
(1 active, -1 disabled after failures) and ``event_type``; target ``{kind: webhook, id, name}``.
Alerts name the target *host* only: webhook URLs often carry secrets in their path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connectors.instantly.checklist import Basic
from pipeline.redaction.urls import split_url
from pipeline.rules.base import (
    DAY,
    CatalogRule,
    Finding,
    RuleContext,
    RuleMeta,
    RuleParams,
    attr,
    resolved,
    target_id,
    target_name,
)
from schemas.alert import Entity
from schemas.event import Event

MAX_HOOKS = 5000
"""Webhooks whose host ``webhook.insecure_target`` remembers per workspace (least recently changed dropped)."""

_AUDIT_WEBHOOK_ERROR = 20
_AUDIT_WEBHOOK_RESUMED = 21


def host_of(event: Event) -> tuple[str | None, str | None]:
    """(scheme, host) of the webhook's target URL."""
    url = attr(event, "target_hook_url")
    scheme = attr(event, "url_scheme")
    if not isinstance(url, str):
        return (scheme if isinstance(scheme, str) else None), None
    try:
        parts = split_url(url)  # as Instantly's sender reads it: ``\\`` ends the host
        host = parts.hostname
    except ValueError:
        return None, None
    return (scheme if isinstance(scheme, str) else parts.scheme or None), host


def hook_entity(event: Event, hid: str) -> Entity:
    """The webhook as an alert entity."""
    return Entity("webhook", hid, target_name(event))


def hook_label(event: Event, hid: str) -> str:
    """``'name' → host`` or the id."""
    name = target_name(event)
    _, host = host_of(event)
    base = f"'{name}'" if name else hid
    return f"{base} → {host}" if host else base


class UnauthenticatedWebhookRule(CatalogRule[RuleParams]):
    """``webhook.unauthenticated``: deliveries carry no secret header, so the receiver cannot tell forgeries."""

    meta = RuleMeta(
        id="webhook.unauthenticated", title="Webhook without an authentication header", severity="high",
        attack=("T1565.002",), basic=Basic.WEBHOOK_AUTH, event_types=("webhook.*",), suppress_secs=DAY,
        runbook=(
            "Instantly does not sign webhooks; a secret custom header is the only protection.\n"
            "1. Generate a random secret, store it in the receiver's secret manager.\n"
            "2. PATCH /api/v2/webhooks/{id} with headers {\"X-Webhook-Secret\": ...} (or Authorization).\n"
            "3. Make the receiver reject requests without it (constant-time compare)."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open when ``has_auth_header`` is false; resolve when true or deleted."""
        hid = target_id(event)
        if not hid:
            return ()
        key = f"hook:{hid}"
        has = attr(event, "has_auth_header")
        if event.type == "webhook.deleted" or has is True:
            if ctx.is_open(key):
                return (resolved(key, f"Webhook {hook_label(event, hid)} is authenticated or gone", event_id=event.id),)
            return ()
        if has is False:
            names = attr(event, "header_names")
            summary = f"Webhook {hook_label(event, hid)} sends no authentication header"
            return (Finding(key, summary, (hook_entity(event, hid),), event.id, resolvable=True,
                            attributes={"header_names": names if isinstance(names, list) else []}),)  # fmt: skip
        return ()


class InsecureWebhookTargetRule(CatalogRule[RuleParams]):
    """``webhook.insecure_target``: plain ``http://`` (high) or a host not on ``allowlists.webhook_hosts`` (medium)."""

    meta = RuleMeta(
        id="webhook.insecure_target", title="Webhook sends lead data to an insecure or unknown target",
        severity="medium", attack=("T1020", "T1567"), basic=Basic.WEBHOOK_AUTH, event_types=("webhook.*",),
        suppress_secs=DAY, version=4,
        runbook=(
            "1. http:// sends lead data and the secret header in clear text: switch the target to https://.\n"
            "2. An unknown host may be exfiltration: check who created or changed the webhook, then either\n"
            "   add the host to rules.allowlists.webhook_hosts or delete the webhook."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open on http or an unexpected host; resolve when fixed or deleted. A webhook moved to another
        host alerts high (unless the new host is allowlisted), allowlist or not: lead data now goes there."""
        hid = target_id(event)
        if not hid:
            return ()
        key = f"hook:{hid}"
        scheme, host = host_of(event)
        if event.type == "webhook.deleted":
            ctx.drop_sub(hid)
            return (resolved(key, f"Webhook {hid} was deleted", event_id=event.id),) if ctx.is_open(key) else ()
        if scheme is None and host is None:
            return ()
        fresh = self._new_host(ctx, event, hid, host)
        moved = self._moved(ctx, event, hid, host)
        problems = []
        if scheme == "http":
            problems.append("uses plain http://")
        if self.lists.webhook_hosts and host is not None and not self.lists.host_allowed(host):
            problems.append(f"targets {host}, which is not in allowlists.webhook_hosts")
        if not problems:
            moved = (*fresh, *moved)
        if problems:
            summary = f"Webhook {hook_label(event, hid)} {' and '.join(problems)}"
            ents = (hook_entity(event, hid), Entity("host", host, None))
            return (*moved, Finding(key, summary, ents, event.id, severity="high" if scheme == "http" else "medium",
                                    resolvable=True, attributes={"url_scheme": scheme, "host": host}))  # fmt: skip
        if ctx.is_open(key):
            return (
                *moved,
                resolved(
                    key, f"Webhook {hook_label(event, hid)} now targets an expected https host", event_id=event.id
                ),
            )
        return moved

    def _new_host(self, ctx: RuleContext, event: Event, hid: str, host: str | None) -> tuple[Finding, ...]:
        """Remember every host the workspace's webhooks targeted (bounded); a webhook *created* (not first
        seen in a baseline) for a host never seen before is a finding, like a move, when no allowlist is
        configured (with one, an unlisted host is reported by the main finding)."""
        if host is None:
            return ()
        seen = ctx.state.data.get("hosts")
        if seen is not None and host in seen:
            return ()
        hosts: dict[str, Any] = ctx.data.setdefault("hosts", {})
        hosts[host] = int(ctx.now)
        while len(hosts) > MAX_HOOKS:
            del hosts[next(iter(hosts))]
        if event.type != "webhook.created" or self.lists.webhook_hosts:
            return ()
        label = hook_label(event, hid)
        summary = f"New webhook {label}: {host} is a host no webhook of this workspace targeted before"
        return (Finding(f"new:{hid}:{host}", summary, (hook_entity(event, hid), Entity("host", host, None)), event.id,
                        severity="medium", attributes={"host": host}),)  # fmt: skip

    def _moved(self, ctx: RuleContext, event: Event, hid: str, host: str | None) -> tuple[Finding, ...]:
        """Remember each webhook's host (a small document per webhook, bounded); a change of host is a finding."""
        if host is None:
            return ()
        doc = ctx.peek_sub(hid)
        before = doc.get("host") if doc is not None else None
        if before == host:
            return ()
        d = ctx.sub(hid) if doc is not None else None
        if d is None:
            d = ctx.new_sub(hid)
        d["host"] = host
        ctx.trim_subs(MAX_HOOKS)
        if before is None or (self.lists.webhook_hosts and self.lists.host_allowed(host)):
            return ()  # first sight (baseline, creation: judged above), or moved to an allowed host
        summary = f"Webhook {hook_label(event, hid)} was repointed from {before} to {host}"
        ents = (hook_entity(event, hid), Entity("host", host, None), Entity("host", before, None))
        return (Finding(f"moved:{hid}:{host}", summary, ents, event.id, severity="high",
                        attributes={"host": host, "previous_host": before}),)  # fmt: skip


class FailingWebhookRule(CatalogRule[RuleParams]):
    """``webhook.failing``: Instantly disabled the webhook after delivery errors (status -1 or audit 20)."""

    meta = RuleMeta(
        id="webhook.failing", title="Webhook disabled after delivery failures", severity="medium", version=2,
        attack=("T1562",), basic=Basic.WEBHOOK_AUTH, event_types=("webhook.*", "audit.*"),
        activity_codes=frozenset({_AUDIT_WEBHOOK_ERROR, _AUDIT_WEBHOOK_RESUMED}), suppress_secs=DAY,
        runbook=(
            "Events to this target are not delivered while the webhook is in error.\n"
            "1. Check the receiver (GET /api/v2/webhook-events?success=false shows status codes and errors).\n"
            "2. A receiver answering 401 may hold an outdated secret.\n"
            "3. Fix it, then POST /api/v2/webhooks/{id}/resume."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open on status -1 / audit 20; resolve on status 1 / audit 21 / deletion."""
        hid: str | None
        if event.source.kind == "audit_log":
            hid = self._audit_hook(event) or "unknown"
            failing = event.attributes.get("activity_code") == _AUDIT_WEBHOOK_ERROR
        else:
            hid = target_id(event)
            if hid:
                self._learn(ctx, event, hid)
            status = attr(event, "status")
            failing = status in (-1, "-1") and event.type != "webhook.deleted"
            if event.type != "webhook.deleted" and not failing and status not in (1, "1"):
                return ()
        if not hid:
            return ()
        key = f"hook:{hid}"
        if failing:
            known = (ctx.state.data.get("labels") or {}).get(hid)
            label, name = known if known and event.source.kind == "audit_log" else (hook_label(event, hid),
                                                                                      target_name(event))  # fmt: skip
            summary = f"Webhook {label} was disabled by Instantly after delivery failures"
            return (Finding(key, summary, (Entity("webhook", hid, name),), event.id, resolvable=True),)
        if ctx.is_open(key):
            return (resolved(key, f"Webhook {hid} is delivering again (or was deleted)", event_id=event.id),)
        return ()

    @staticmethod
    def _learn(ctx: RuleContext, event: Event, hid: str) -> None:
        """Remember each webhook's label from the snapshots (the audit record names only its id), bounded."""
        known = ctx.state.data.get("labels")
        if event.type == "webhook.deleted":
            if known and hid in known:
                del ctx.data["labels"][hid]
            return
        label = [hook_label(event, hid), target_name(event)]
        if label[0] == hid or (known is not None and known.get(hid) == label):
            return
        labels: dict[str, Any] = ctx.data.setdefault("labels", {})
        labels.pop(hid, None)
        labels[hid] = label
        while len(labels) > MAX_HOOKS:
            del labels[next(iter(labels))]

    @staticmethod
    def _audit_hook(event: Event) -> str | None:
        if event.target is not None and event.target.kind == "webhook" and event.target.id:
            return event.target.id
        for src in (event.attributes, event.raw or {}):
            v = src.get("webhook_id")
            if isinstance(v, str) and v:
                return v
        return None
