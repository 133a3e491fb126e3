"""Pipeline health as security signals: a silent audit log, and key changes the audit log never recorded.

``pipeline.poller_unauthorized`` and ``pipeline.audit_log_unavailable`` are YAML rules
(``catalog/builtin.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from connectors.instantly.checklist import Basic
from connectors.instantly.rules.api_keys import created_at, key_entity, key_label
from pipeline.clock import format_time
from pipeline.rules.base import (
    CatalogRule,
    Finding,
    RuleContext,
    RuleMeta,
    RuleParams,
    resolved,
    target_id,
    target_name,
)
from schemas.alert import Entity
from schemas.event import Event

API_KEY_CREATED = 37
API_KEY_DELETED = 38
MAX_PENDING = 500
"""Unmatched key changes / audit records remembered per workspace."""
_EWMA = 0.1


class SilentParams(RuleParams):
    """Options of ``pipeline.source_silent``."""

    multiplier: float = Field(10.0, ge=1, le=1000, description="silence = multiplier x the usual gap")
    min_silence_secs: float = Field(4 * 3600.0, ge=60, le=30 * 86_400)
    min_samples: int = Field(20, ge=1, description="gaps to observe before judging")


class SourceSilentRule(CatalogRule[SilentParams]):
    """``pipeline.source_silent``: no audit record for ``multiplier`` x the usual interval (judged on ticks).

    The usual interval is an exponentially weighted mean of the gaps between audit records'
    times; the silence must also exceed ``min_silence_secs``. A new audit record resolves it.
    """

    Params = SilentParams
    meta = RuleMeta(
        id="pipeline.source_silent", title="Audit log silent for longer than usual", severity="medium",
        attack=("T1562.008",), basic=Basic.AUDIT_LOGS, event_types=("audit.*",), ticks=True, suppress_secs=86_400,
        runbook=(
            "1. Check the pipeline's own health (poller errors, pipeline.* alerts, consumer lag).\n"
            "2. Check in the Instantly UI whether activity really stopped (holiday?) or the log is not recorded.\n"
            "3. A plan downgrade removes audit logs; a revoked key stops polling (see pipeline.poller_unauthorized)."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Update the last record time and the usual gap; resolve an open silence."""
        st = ctx.state  # (ctx.data, unrolled: this runs for every audit record)
        d = st.data
        t = ctx.now
        last = d.get("last")
        if last is None:
            d.update(last=t, n=0, gap=0.0)
            st.data_touched = True
        elif t > last:
            gap = t - last
            n = d["n"]
            d["gap"] = gap if n == 0 else (1 - _EWMA) * d["gap"] + _EWMA * gap
            d["n"] = n + 1
            d["last"] = t
            st.data_touched = True
        if "audit_log" in st.tracks:  # ctx.is_open("audit_log")
            return (resolved("audit_log", "Audit records are arriving again", event_id=event.id),)
        return ()

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Report a silence longer than expected."""
        d = ctx.state.data
        p = self.params
        if d.get("n", 0) < p.min_samples:
            return ()
        limit = max(p.multiplier * d["gap"], p.min_silence_secs)
        silent = ctx.now - d["last"]
        if silent <= limit or not ctx.due("audit_log"):
            return ()
        summary = (f"No audit record for {silent / 3600:.1f} h in workspace {ctx.workspace.name or ctx.workspace.id} "
                   f"(usually one every {d['gap'] / 60:.0f} min)")  # fmt: skip
        attrs = {"silent_secs": int(silent), "usual_gap_secs": int(d["gap"]), "last_record": format_time(d["last"])}
        ent = (Entity("workspace", ctx.workspace.id, ctx.workspace.name),)
        return (Finding("audit_log", summary, ent, resolvable=True, count=0, attributes=attrs),)


class UntrackedParams(RuleParams):
    """Options of ``pipeline.untracked_change``."""

    window_secs: float = Field(3600.0, gt=0, le=7 * 86_400, description="how far apart snapshot and audit may be")


class UntrackedChangeRule(CatalogRule[UntrackedParams]):
    """``pipeline.untracked_change``: an API key appeared or vanished with no audit record 37/38 near it.

    The audit log names the acting key, not the created one, so records match by kind and time:
    a snapshot change matches an unused audit record of its kind within ``window_secs``. A change
    is judged once the audit log has moved ``window_secs`` past it (or, on a tick, 2 x window).
    Nothing is judged while the audit log is unavailable, or before any audit record was seen
    in the workspace (the audit stream may not be polled at all).
    """

    Params = UntrackedParams
    meta = RuleMeta(
        id="pipeline.untracked_change", title="API key change missing from the audit log", severity="medium",
        attack=("T1562.008", "T1098.001"), basic=Basic.AUDIT_LOGS,
        event_types=("audit.*", "api_key.created", "api_key.deleted", "pipeline.audit_log_unavailable"), ticks=True,
        runbook=(
            "The key list changed but the audit log has no matching 'API key created/deleted' record.\n"
            "1. Check the audit log in the Instantly UI around the time; the record may be late.\n"
            "2. If it is missing, treat the change as unexplained: who holds api_keys:create? rotate that key.\n"
            "3. Delete an unknown new key after confirming no integration uses it."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Pair snapshot key changes with audit records; judge the old unpaired ones."""
        st = ctx.state  # (ctx.data, unrolled: this runs for every audit record)
        d = st.data
        code = None
        if event.source.kind == "audit_log":
            code = event.attributes.get("activity_code")
            now = ctx.now
            if now > d.get("wm", 0.0):
                d["wm"] = now
                st.data_touched = True
            if d.get("off"):
                d["off"] = False
                st.data_touched = True
            if code != API_KEY_CREATED and code != API_KEY_DELETED:  # most audit records: only the watermark moved
                return self._judge(ctx, d, tick=False) if d.get("pending") else ()
        st.data_touched = True
        w = self.params.window_secs
        audit: dict[str, list[float]] = d.setdefault("audit", {"created": [], "deleted": []})
        pending: list[list[Any]] = d.setdefault("pending", [])
        if code is not None:  # an audit record of a key change: pair it with a pending snapshot change
            kind = "created" if code == API_KEY_CREATED else "deleted"
            hit = next((p for p in pending if p[1] == kind and abs(p[2] - ctx.now) <= w), None)
            if hit is not None:
                pending.remove(hit)
            else:
                audit[kind] = [*[t for t in audit[kind] if ctx.now - t <= 2 * w][-MAX_PENDING + 1 :], ctx.now]
        elif event.type == "pipeline.audit_log_unavailable":
            d["off"] = True
            pending.clear()
        elif not d.get("off"):
            kid = target_id(event)
            if kid:
                kind = "created" if event.type == "api_key.created" else "deleted"
                ref = (created_at(event) if kind == "created" else None) or ctx.now
                hit_t = next((t for t in audit[kind] if abs(t - ref) <= w), None)
                if hit_t is not None:
                    audit[kind].remove(hit_t)
                else:
                    pending.append([kid, kind, ref, event.id, target_name(event)])
                    del pending[:-MAX_PENDING]
        return self._judge(ctx, d, tick=False)

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Judge changes whose window passed long ago even if the audit log is quiet."""
        d = ctx.state.data
        return self._judge(ctx, d, tick=True) if d.get("pending") and not d.get("off") else ()

    def _judge(self, ctx: RuleContext, d: dict[str, Any], *, tick: bool) -> list[Finding]:
        pending = d.get("pending")
        if not pending or "wm" not in d:  # no audit record seen yet: the audit log is not being read
            return []
        w = self.params.window_secs
        wm = d.get("wm", 0.0)
        out, keep = [], []
        for p in pending:
            kid, kind, ref, eid, name = p
            if wm >= ref + w or (tick and ctx.now >= ref + 2 * w):
                summary = (f"API key {key_label(kid, name)} was {kind} (seen in the key list) but the audit log "
                           f"has no 'API key {kind}' record within {w / 60:g} min")  # fmt: skip
                out.append(Finding(f"key:{kid}:{kind}", summary, (key_entity(kid, name),), eid,
                                   attributes={"change": kind, "changed_at": format_time(ref)}))  # fmt: skip
            else:
                keep.append(p)
        if out:
            ctx.data["pending"] = keep
        return out
