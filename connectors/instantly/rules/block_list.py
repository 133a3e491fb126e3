"""Block list rules: entries (any, and protected internal / competitor domains) removed, protected domains missing.

Snapshot events ``block_list.entry_baseline|entry_added|entry_removed`` carry ``value``
(an email or a domain) and ``is_domain``. The protected domains come from
``rules.protected_domains``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from connectors.instantly.checklist import Basic
from pipeline.rules.base import CatalogRule, Finding, RuleContext, RuleMeta, RuleParams, actor_entities, attr, resolved
from schemas.alert import Entity
from schemas.event import Event

_RUNBOOK = (
    "Internal and competitor domains belong on the block list so campaigns never email them.\n"
    '1. Re-add the domain: POST /api/v2/block-lists-entries {"bl_value": "<domain>"}.\n'
    "2. Check who removed it (audit log / snapshot actor) and whether campaigns sent to it meanwhile."
)


def entry_domain(event: Event) -> str | None:
    """The domain of a block-list entry, or None for an email entry."""
    v = attr(event, "value")
    if not isinstance(v, str) or not v.strip():
        return None
    v = v.strip().lower().rstrip(".")
    if attr(event, "is_domain") is False or "@" in v.lstrip("@"):
        return None
    return v.lstrip("@")


class ProtectedDomainRemovedRule(CatalogRule[RuleParams]):
    """``block_list.protected_domain_removed``: a protected domain was taken off the block list."""

    meta = RuleMeta(
        id="block_list.protected_domain_removed", title="Protected domain removed from the block list",
        severity="medium", attack=("T1562",), basic=Basic.BLOCK_LIST, event_types=("block_list.entry_removed",),
        runbook=_RUNBOOK,
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Report the removal of a configured domain."""
        d = entry_domain(event)
        if d is None or d not in self.lists.protected_domains:
            return ()
        summary = f"Protected domain {d} was removed from the block list"
        return (Finding(f"domain:{d}", summary, (Entity("domain", d, None), *actor_entities(event)), event.id),)


class EntryRemovedParams(RuleParams):
    """Options of ``block_list.entry_removed``."""

    max_alerts_per_window: int = Field(
        10, ge=1, le=10_000, description="removals alerted one by one per window; the rest fold into one alert"
    )
    window_secs: float = Field(600.0, gt=0, le=86_400)


class EntryRemovedRule(CatalogRule[EntryRemovedParams]):
    """``block_list.entry_removed``: any other entry taken off the block list (low).

    A protected domain's removal is ``block_list.protected_domain_removed`` (medium); this one covers
    every other entry, so a removal is seen even when ``rules.protected_domains`` is not configured:
    the block list keeps campaigns away from competitors, customers' legal contacts and opt-outs.

    Instantly empties the whole list in one call (``DELETE /api/v2/block-lists-entries``), which the
    next snapshot turns into one event per entry. The first ``max_alerts_per_window`` removals of a
    workspace within ``window_secs`` alert one by one; the rest fold into one ``bulk`` alert (its count
    grows) beside ``corr.block_list_emptied``, instead of one notification per entry.
    """

    Params = EntryRemovedParams
    meta = RuleMeta(
        id="block_list.entry_removed", title="Entry removed from the block list", severity="low", version=2,
        attack=("T1562",), basic=Basic.BLOCK_LIST, event_types=("block_list.entry_removed",),
        runbook=(
            "Campaigns can now email this address or domain again.\n"
            "1. Check who removed it and why (audit log around the time; the team's change log).\n"
            '2. If it was not intended, re-add it: POST /api/v2/block-lists-entries {"bl_value": "<value>"}\n'
            '   (many at once: POST /api/v2/block-lists-entries/bulk-create {"bl_values": [...]}; the removed\n'
            "   values are the block_list.entry_removed events: replay --type block_list.entry_removed).\n"
            "3. Add the domains that must never be emailed to rules.protected_domains (medium alerts)."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Report the removal of an entry that is not a protected domain (those have their own rule)."""
        v = attr(event, "value")
        if not isinstance(v, str) or not v.strip():
            return ()
        d = entry_domain(event)
        if d is not None and d in self.lists.protected_domains:
            return ()
        value = v.strip().lower()
        kind = "domain" if d is not None else "email"
        p = self.params
        recent = [t for t in ctx.state.data.get("recent", ()) if ctx.now - t < p.window_secs]
        recent.append(ctx.now)
        ctx.data["recent"] = recent[-(p.max_alerts_per_window + 1) :]
        if len(recent) > p.max_alerts_per_window:
            ws = event.workspace
            summary = (
                f"More than {p.max_alerts_per_window} block-list entries were removed from workspace "
                f"{ws.name or ws.id} within {p.window_secs / 60:g} min (from {value} on, removals are counted here, "
                "not alerted one by one; the block_list.entry_removed events list them)"
            )
            ents = (Entity("workspace", ws.id, ws.name), *actor_entities(event))
            return (Finding("bulk", summary, ents, event.id, attributes={"first_folded": value}),)
        summary = f"Block list entry {value} was removed"
        return (Finding(f"{kind}:{value}", summary, (Entity(kind, value, None), *actor_entities(event)), event.id),)


class MissingParams(RuleParams):
    """Options of ``block_list.internal_domain_missing``."""

    settle_secs: float = Field(3600.0, ge=0, le=7 * 86_400, description="wait after the first block-list event")


class InternalDomainMissingRule(CatalogRule[MissingParams]):
    """``block_list.internal_domain_missing``: a protected domain is absent from the block list.

    Judged once ``settle_secs`` have passed since the first block-list event of the workspace, so
    the whole baseline has arrived: on ticks from then on, and on block-list events strictly later
    than that (never in the middle of the baseline burst, even with ``settle_secs: 0``; a one-shot
    caller evaluates the baseline, then calls ``tick`` at the same time). A workspace with an empty
    block list emits no block-list events and is not judged.
    """

    Params = MissingParams
    meta = RuleMeta(
        id="block_list.internal_domain_missing", title="Protected domain missing from the block list",
        severity="low", attack=("T1562",), basic=Basic.BLOCK_LIST, event_types=("block_list.*",), ticks=True,
        suppress_secs=7 * 86_400, runbook=_RUNBOOK,
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Track which protected domains are present; then judge."""
        data = ctx.data
        data.setdefault("seen", ctx.now)
        present: list[str] = data.setdefault("present", [])
        d = entry_domain(event)
        if d is not None and d in self.lists.protected_domains:
            if event.type == "block_list.entry_removed":
                if d in present:
                    present.remove(d)
            elif d not in present:
                present.append(d)
        if ctx.now - data["seen"] <= self.params.settle_secs:
            return ()
        return self._judge(ctx, data, event.id)

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Judge at tick time."""
        data = ctx.state.data
        if "seen" not in data or ctx.now - data["seen"] < self.params.settle_secs:
            return ()
        return self._judge(ctx, data, None)

    def _judge(self, ctx: RuleContext, data: dict[str, Any], eid: str | None) -> list[Finding]:
        out = []
        present = set(data.get("present", []))
        for d in self.lists.protected_domains:
            key = f"domain:{d}"
            if d not in present:
                if not ctx.due(key):
                    continue
                summary = f"Protected domain {d} is not on the block list"
                out.append(Finding(key, summary, (Entity("domain", d, None),), eid, resolvable=True, count=0))
            elif ctx.is_open(key):
                out.append(resolved(key, f"Protected domain {d} is on the block list again", event_id=eid))
        for key in ctx.open_keys():  # domains no longer configured
            if key.removeprefix("domain:") not in self.lists.protected_domains:
                out.append(resolved(key, f"{key.removeprefix('domain:')} is no longer a protected domain"))
        return out
