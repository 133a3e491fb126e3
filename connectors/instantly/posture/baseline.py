"""The stream's rules on a fresh snapshot: the poller's baseline events through the rules engine.

The events are those the poller would publish on its first poll of the workspace; every open
alert is a failed check. The stream rules the check reports on (:data:`.catalog.STREAM_CHECKS`)
pass when no alert is open, unless they are disabled or lack their lists (skipped) or their
listing could not be read (error). A protected domain missing from an *empty* block list fails
here too: the stream emits no block-list event for an empty list, so no rule sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.instantly import api
from connectors.instantly.normalize import pipeline_event
from connectors.instantly.posture.catalog import PASS_MESSAGES, STREAM_CHECKS
from connectors.instantly.posture.catalog import label as snap_label
from connectors.instantly.posture.snapshot import WorkspaceSnapshot
from connectors.instantly.snapshots import diff_snapshots
from pipeline.checks.report import OTHER, CheckResult, Resource
from pipeline.clock import format_time
from pipeline.rules.config import RuleSet
from pipeline.rules.engine import RulesEngine
from schemas.alert import Alert
from schemas.event import Event

AUDIT = api.AUDIT_LOGS.name
BASELINE_ORDER: tuple[str, ...] = (
    api.WORKSPACE.name,
    *(s.name for s in api.SNAPSHOT_STREAMS if s is not api.WORKSPACE),
)
"""The snapshot streams in the order the poller reads them: the workspace first, then the listings."""


class _FixedClock:
    """The engine's clock during a check: the snapshot's time."""

    def __init__(self, t: float):
        self._t = t

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return 0.0


def baseline_events(snap: WorkspaceSnapshot) -> list[Event]:
    """The events the poller would publish for this snapshot on its first poll."""
    observed = format_time(snap.observed_at)
    events: list[Event] = []
    for stream in BASELINE_ORDER:
        if stream in snap.snapshots:
            current = snap.snapshots[stream]
            events += diff_snapshots(stream, None, current, workspace=snap.workspace, observed_at=observed)
    err = snap.audit_refusal
    if err is not None:
        status = getattr(err, "status", None)
        events.append(pipeline_event(
            type="pipeline.audit_log_unavailable", workspace=snap.workspace, observed_at=observed, stream=AUDIT,
            natural_key=("pipeline.audit_log_unavailable", status, "check"),
            attributes={"stream": AUDIT, "status": status, "error": type(err).__name__, "message": err.message},
        ))  # fmt: skip
    return events


def stream_results(snap: WorkspaceSnapshot, ruleset: RuleSet) -> list[CheckResult]:
    """The stream rules' verdicts on the snapshot (see the module docstring)."""
    label = snap_label(snap)
    engine = RulesEngine(ruleset, clock=_FixedClock(snap.observed_at))
    # The baseline first, then a tick at the same instant: rules that judge a whole inventory
    # (protected domains on the block list) do so once every baseline event has arrived.
    first = engine.evaluate(baseline_events(snap))
    second = engine.tick(snap.observed_at)
    latest: dict[str, Alert] = {}
    for a in (*first.alerts, *second.alerts):
        latest[a.dedup_key] = a
    out: list[CheckResult] = []
    for a in latest.values():
        if a.status != "open":
            continue
        out.append(CheckResult(a.rule.id, a.rule.title, a.rule.basic or OTHER, a.rule.severity, "fail", a.summary,
                               label,
                               tuple(Resource(e.kind, e.id, e.name) for e in a.entities), remediation=a.rule.runbook,
                               attributes=dict(a.attributes)))  # fmt: skip
    for f in (*first.failures, *second.failures):
        rule = ruleset.get(f.rule_id) if f.rule_id else None
        out.append(CheckResult(f.rule_id or "rules.engine", rule.meta.title if rule else "Rules engine",
                               (rule.meta.basic if rule else "") or OTHER, rule.meta.severity if rule else "info",
                               "error", f"the rule failed on the snapshot: {f.error}", label))  # fmt: skip
    out += _empty_block_list(snap, ruleset, out)
    failed = {r.check_id for r in out}
    for rid, stream in STREAM_CHECKS.items():
        rule = ruleset.get(rid)
        if rule is None or rid in failed:
            continue
        sev = rule.params.severity or rule.meta.severity
        row = (rid, rule.meta.title, rule.meta.basic or OTHER, sev)
        reason = None
        if not rule.params.enabled:
            reason = "disabled in the rules config"
        elif rid == "member.unexpected" and not ruleset.lists.has_member_allowlist:
            reason = "no rules.allowlists.member_emails / member_domains configured"
        elif rid == "block_list.internal_domain_missing" and not ruleset.lists.protected_domains:
            reason = "no rules.protected_domains configured"
        if reason is not None:
            out.append(CheckResult(*row, "skip", reason, label, remediation=rule.meta.runbook))
        elif stream in snap.errors:
            out.append(CheckResult(*row, "error", f"cannot list {stream}: {snap.errors[stream]}", label))
        elif stream == AUDIT or stream in snap.snapshots:
            out.append(CheckResult(*row, "pass", PASS_MESSAGES[rid], label, remediation=rule.meta.runbook))
    return out


def _empty_block_list(snap: WorkspaceSnapshot, ruleset: RuleSet, so_far: Sequence[CheckResult]) -> list[CheckResult]:
    """Protected domains missing from an empty block list (the stream emits no block-list event for it)."""
    rid = "block_list.internal_domain_missing"
    rule = ruleset.get(rid)
    entries = snap.snapshots.get("block_list")
    if rule is None or not rule.params.enabled or entries is None or entries or any(r.check_id == rid for r in so_far):
        return []
    sev = rule.params.severity or rule.meta.severity
    return [CheckResult(rid, rule.meta.title, rule.meta.basic or OTHER, sev, "fail",
                        f"Protected domain {d} is not on the block list (the block list is empty)", snap_label(snap),
                        (Resource("domain", d, None),), remediation=rule.meta.runbook)
            for d in ruleset.lists.protected_domains]  # fmt: skip
