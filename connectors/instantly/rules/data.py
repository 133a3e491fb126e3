"""Data rules from the audit log: large lead exports (34) and mass deletions (2 leads, 3 campaigns).

Both sum ``affected_count`` per actor over a sliding window, so an export split into many
small ones adds up like one big export.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from connectors.instantly.checklist import Basic
from pipeline.rules.base import (
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
from schemas.event import Event

LEAD_DELETED = 2
CAMPAIGN_DELETED = 3
LEAD_EXPORTED = 34
MAX_ACTORS = 1000
"""Actors remembered per workspace and rule."""
MAX_ENTRIES = 1000
"""Records remembered per actor inside one window."""


def affected(event: Event) -> int | None:
    """``attributes.affected_count`` as an int, or None when absent."""
    n = event.attributes.get("affected_count")
    if isinstance(n, bool) or not isinstance(n, int | float):
        return None
    return int(n)


def window_sum(ctx: RuleContext, bucket: str, actor: str, n: int, window: float) -> int:
    """Add ``n`` for ``actor`` at ``ctx.now`` and return the actor's total within ``window`` seconds."""
    sums: dict[str, list[list[float]]] = ctx.data.setdefault(bucket, {})
    entries = [e for e in sums.pop(actor, []) if ctx.now - e[0] < window] if window > 0 else []
    entries.append([ctx.now, n])
    forget_quiet(sums, ctx.now, window, MAX_ACTORS)
    if window > 0:
        sums[actor] = entries[-MAX_ENTRIES:]
    return int(sum(e[1] for e in entries))


class ExportParams(RuleParams):
    """Options of ``data.lead_export``."""

    threshold: int = Field(1000, ge=1, description="leads exported by one actor within the window")
    window_secs: float = Field(3600.0, ge=0, le=7 * 86_400, description="0: judge each export alone")


class LeadExportRule(CatalogRule[ExportParams]):
    """``data.lead_export``: one actor exported at least ``threshold`` leads within ``window_secs``."""

    Params = ExportParams
    meta = RuleMeta(
        id="data.lead_export", title="Large lead export", severity="medium", attack=("T1567",),
        basic=Basic.AUDIT_LOGS, event_types=("audit.*",), activity_codes=frozenset({LEAD_EXPORTED}),
        runbook=(
            "1. Confirm with the user (actor) that the export was part of their work.\n"
            "2. Exports through the API name the API key: check which integration holds it.\n"
            "3. If unexpected: revoke the key / reset the user, and treat the leads as disclosed."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Sum exported leads per actor."""
        n = affected(event)
        if n is None or n <= 0:
            return ()
        actor = actor_key(event)
        total = window_sum(ctx, "exports", actor, n, self.params.window_secs)
        if total < self.params.threshold:
            return ()
        summary = f"{actor_label(event)} exported {total} leads" + (
            f" within {self.params.window_secs / 60:g} min" if self.params.window_secs else ""
        )
        return (Finding(f"actor:{actor}", summary, actor_entities(event), event.id,
                        attributes={"leads_exported": total, "threshold": self.params.threshold}),)  # fmt: skip


class DeletionParams(RuleParams):
    """Options of ``data.mass_deletion``."""

    leads_threshold: int = Field(1000, ge=1)
    campaigns_threshold: int = Field(10, ge=1)
    window_secs: float = Field(3600.0, ge=0, le=7 * 86_400)


class MassDeletionRule(CatalogRule[DeletionParams]):
    """``data.mass_deletion``: one actor deleted many leads (2) or campaigns (3) within ``window_secs``."""

    Params = DeletionParams
    meta = RuleMeta(
        id="data.mass_deletion", title="Mass deletion of leads or campaigns", severity="high", attack=("T1485",),
        basic=Basic.AUDIT_LOGS, event_types=("audit.*",), activity_codes=frozenset({LEAD_DELETED, CAMPAIGN_DELETED}),
        runbook=(
            "1. Confirm with the actor whether the clean-up was planned.\n"
            "2. If not: revoke the API key or suspend the user at once; deletions cannot be undone by the API.\n"
            "3. Restore from your CRM / exports and review the audit log around the time for other actions."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Sum deleted items per actor and kind."""
        code = event.attributes.get("activity_code")
        what, limit = ("leads", self.params.leads_threshold) if code == LEAD_DELETED else (
            "campaigns", self.params.campaigns_threshold)  # fmt: skip
        n = affected(event)
        actor = actor_key(event)
        total = window_sum(ctx, what, actor, 1 if n is None else n, self.params.window_secs)
        if total < limit:
            return ()
        summary = f"{actor_label(event)} deleted {total} {what}" + (
            f" within {self.params.window_secs / 60:g} min" if self.params.window_secs else ""
        )
        return (Finding(f"actor:{actor}:{what}", summary, actor_entities(event), event.id,
                        attributes={"deleted": total, "kind": what, "threshold": limit}),)  # fmt: skip
