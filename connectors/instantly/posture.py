"""The workspace half of ``instantly-audit check``: a fresh snapshot, the stream's rules, and one-shot checks.

For each configured workspace, with its own (read-only) key:

1. read ``GET /workspaces/current`` and list API keys, members, webhooks and the block list
   (plus agency links when that stream is configured), then the audit log of the last
   ``shared_key_window_days`` (who used which key);
2. turn the listings into the poller's baseline events (:func:`~connectors.instantly.snapshots.diff_snapshots`
   with no previous snapshot) and run them through the same :class:`~pipeline.rules.RulesEngine`
   and ``rules`` config the stream uses; every open alert is a failed check. The check runs the
   block-list rule without its settle delay (the whole snapshot is there at once), and
   ``--rotation-days`` overrides ``api_key.stale.key_max_age_days``;
3. add what only a one-shot check can judge (:data:`OWN_CHECKS`): the pipeline's own key holding
   more than the read scopes it needs, keys shared by several integrations, owner/admin members
   outside ``allowed_admins``, pending invitations older than ``invitation_max_age_days``, and
   protected domains missing from an *empty* block list (the stream sees no block-list event then).

Key values are used only to recognise the pipeline's own key (exact value, or the masked form's
first and last four characters) and are dropped right after; results carry fingerprints.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from connectors.instantly.blast.check import KeyUsage, blast_radius_results
from connectors.instantly.checklist import Basic
from connectors.instantly.client import InstantlyClient, SessionFactory
from connectors.instantly.config import WorkspaceConfig, workspaces
from connectors.instantly.normalize import pipeline_event
from connectors.instantly.repo_scan import RepoSettings
from connectors.instantly.snapshots import Snapshot, build_snapshot, diff_snapshots
from connectors.instantly.streams import AUDIT_LOGS_PATH, SNAPSHOT_PATHS, WORKSPACE_PATH
from pipeline.checks.report import OTHER, CheckResult, FailOn, Resource, Status
from pipeline.clock import Clock, format_time, parse_time
from pipeline.config.base import Model, validation_error_lines
from pipeline.config.model import PipelineConfig
from pipeline.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PaymentRequiredError,
    ScopeError,
    SourceError,
    UpstreamError,
)
from pipeline.observability.logs import get_logger
from pipeline.rules.config import RuleSet, parse_rules_config
from schemas.alert import Alert, Severity
from schemas.event import Event, WorkspaceRef

log = get_logger("instantly.posture")

DAY = 86_400.0
Sleep = Callable[[float], Awaitable[None]]
MAX_AUDIT_RECORDS = 50_000
"""Audit records read per workspace for the shared-key check (the newest window is enough)."""
PIPELINE_USER_AGENT = "instantly-audit"

STREAM_SCOPES: dict[str, str] = {
    "audit_logs": "audit_logs:read",
    "api_keys": "api_keys:read",
    "members": "workspace_members:read",
    "webhooks": "webhooks:read",
    "workspace": "workspaces:read",
    "group_members": "workspace_group_members:read",
    "block_list": "block_list_entries:read",
}
"""The one read scope each stream needs (API reference sections 3 to 8)."""
CHECK_STREAMS = ("audit_logs", "api_keys", "members", "webhooks", "workspace", "block_list")
"""What ``check`` itself reads (its key needs these scopes too)."""
LISTED_STREAMS = ("api_keys", "members", "webhooks", "block_list", "group_members")

STREAM_CHECKS: dict[str, str] = {
    "api_key.all_scope": "api_keys",
    "api_key.broad_scope": "api_keys",
    "api_key.stale": "api_keys",
    "webhook.unauthenticated": "webhooks",
    "webhook.insecure_target": "webhooks",
    "webhook.failing": "webhooks",
    "member.unexpected": "members",
    "block_list.internal_domain_missing": "block_list",
    "pipeline.audit_log_unavailable": "audit_logs",
}
"""The stream rules the check reports on (pass or fail), with the listing each one judges."""
PASS_MESSAGES = {
    "api_key.all_scope": "no API key holds all:all",
    "api_key.broad_scope": "no API key holds wildcard, sensitive :all or key-minting scopes",
    "api_key.stale": "every API key is younger than the rotation period",
    "webhook.unauthenticated": "every webhook sends an authentication header",
    "webhook.insecure_target": "every webhook targets an https URL (on the allowed hosts, when listed)",
    "webhook.failing": "no webhook is disabled after delivery failures",
    "member.unexpected": "every member is on the member allowlist",
    "block_list.internal_domain_missing": "every protected domain is on the block list",
    "pipeline.audit_log_unavailable": "the audit log can be read",
}


@dataclass(frozen=True, slots=True)
class CheckMeta:
    """Identity of a check that is not a stream rule."""

    id: str
    title: str
    checklist: str
    severity: Severity
    remediation: str


OWN_CHECKS: dict[str, CheckMeta] = {
    m.id: m
    for m in (
        CheckMeta(
            "api_key.pipeline_scopes", "The pipeline's key holds more than the read scopes it needs",
            Basic.SCOPED_KEYS, "high",
            "The audit pipeline only reads. Create a key with exactly the read scopes listed in the finding,\n"
            "store it where the pipeline reads its key (or run `instantly-audit keys rotate NAME --scopes ...`),\n"
            "then delete the over-scoped key.",
        ),
        CheckMeta(
            "api_key.shared", "API key shared by several integrations", Basic.SCOPED_KEYS, "medium",
            "Give each integration its own key with only the scopes it needs, so one can be revoked or rotated\n"
            "without breaking the others and the audit log tells them apart (api_key_id).",
        ),
        CheckMeta(
            "member.admin_not_allowed", "Owner or admin member not on the allowed list", Basic.MEMBER_ROLES, "high",
            "Lower the member's role (PATCH /api/v2/workspace-members/{id} {\"role\": \"editor\"}) or remove them;\n"
            "if the privilege is intended, add the email or domain to check.allowed_admins.",
        ),
        CheckMeta(
            "member.invitation_stale", "Pending invitation older than the allowed age", Basic.MEMBER_ROLES, "low",
            "An invitation nobody accepted can still be accepted by whoever controls that mailbox later.\n"
            "Withdraw it (DELETE /api/v2/workspace-members/{id}) and invite again when the person is ready.",
        ),
    )
}  # fmt: skip
WORKSPACE_CHECK = "workspace.reachable"


# -------------------------------------------------------------------------------------- settings
class PostureSettings(Model):
    """The ``check`` config section (flags override it)."""

    fail_on: FailOn = "high"
    allowed_admins: list[str] = Field(default_factory=list, description="emails or domains ('*.acme.com')")
    invitation_max_age_days: float = Field(7.0, gt=0, le=3650)
    shared_key_window_days: float = Field(30.0, gt=0, le=365)
    rotation_days: float | None = Field(None, gt=0, le=3650, description="override api_key.stale.key_max_age_days")
    pipeline_key_name: str | None = None
    repo: RepoSettings = RepoSettings()

    @field_validator("allowed_admins", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            if not isinstance(item, str) or not item.strip():
                raise ValueError("entries must be non-empty strings (emails or domains)")
            out.append(item.strip().lower().rstrip(".").lstrip("@"))
        return out


def settings_from(
    section: PostureSettings | Mapping[str, Any], args: argparse.Namespace | None = None
) -> PostureSettings:
    """Validate the ``check`` section with the command-line overrides applied.

    Raises:
        ConfigError: one line per problem, each naming ``check.<key>`` (or the flag).
    """
    data: dict[str, Any] = section.model_dump() if isinstance(section, PostureSettings) else dict(section)
    if args is not None:
        overrides = {
            "fail_on": getattr(args, "fail_on", None),
            "allowed_admins": getattr(args, "allowed_admin", None),
            "invitation_max_age_days": getattr(args, "invitation_days", None),
            "rotation_days": getattr(args, "rotation_days", None),
            "pipeline_key_name": getattr(args, "pipeline_key_name", None),
        }
        data.update({k: v for k, v in overrides.items() if v is not None})
        repo = data.get("repo")
        if getattr(args, "no_history", False) and (repo is None or isinstance(repo, Mapping)):
            data["repo"] = {**(repo or {}), "history": False}
    try:
        return PostureSettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError("\n".join(f"check.{line}" for line in validation_error_lines(err, PostureSettings))) from None


def build_ruleset(rules_section: Mapping[str, Any], settings: PostureSettings, base_dir: Path | None) -> RuleSet:
    """The stream's rules, tuned for a one-shot snapshot.

    Raises:
        ConfigError: the ``rules`` section is invalid.
    """
    section: dict[str, Any] = copy.deepcopy(dict(rules_section))

    def override(rule_id: str, **values: Any) -> None:
        block = section.get(rule_id)
        if block is None or isinstance(block, dict):
            section[rule_id] = {**(block or {}), **values}

    override("block_list.internal_domain_missing", settle_secs=0)
    # Reported by the check's own findings (member.admin_not_allowed, blast radius), not twice.
    override("member.privileged", enabled=False)
    override("api_key.unaudited_reach", enabled=False)
    if settings.rotation_days is not None:
        override("api_key.stale", key_max_age_days=settings.rotation_days)
    return parse_rules_config(section, base_dir=base_dir)


# ------------------------------------------------------------------------------------ snapshot
@dataclass
class WorkspaceSnapshot:
    """What one fresh read of a workspace saw (redacted; no key values)."""

    source_id: str
    workspace: WorkspaceRef
    observed_at: float
    streams: tuple[str, ...]
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    fatal: str | None = None
    own_key_ids: tuple[str, ...] = ()
    own_key_match: str = "none"
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    audit_refusal: SourceError | None = None
    audit_records: int = 0
    key_activity: dict[str, dict[int, int]] = field(default_factory=dict)


def _describe(err: SourceError) -> str:
    status = getattr(err, "status", None)
    return f"{type(err).__name__}{f' (HTTP {status})' if status else ''}: {err.message}"


def identify_own_key(items: Sequence[Mapping[str, Any]], secret: str, name: str | None) -> tuple[tuple[str, ...], str]:
    """Which listed keys are the pipeline's own: by exact value, configured name, or masked form (unique).

    Returns (key ids, how they matched: ``value`` / ``name`` / ``masked`` / ``none``).
    """

    def ids(pred: Callable[[Mapping[str, Any]], bool]) -> tuple[str, ...]:
        return tuple(str(r["id"]) for r in items if isinstance(r.get("id"), str) and pred(r))

    exact = ids(lambda r: r.get("key") == secret)
    if exact:
        return exact, "value"
    if name:
        named = ids(lambda r: r.get("name") == name)
        if named:
            return named, "name"

    def masked(r: Mapping[str, Any]) -> bool:
        k = r.get("key")
        return (isinstance(k, str) and "*" in k and len(k) >= 9 and "*" not in k[:4] + k[-4:]
                and secret[:4] == k[:4] and secret[-4:] == k[-4:])  # fmt: skip

    found = ids(masked)
    return (found, "masked") if len(found) == 1 else ((), "none")


def client_product(user_agent: Any) -> str | None:
    """The client named by a User-Agent: its first product token, lower-cased (``browser`` for Mozilla/...)."""
    if not isinstance(user_agent, str) or not user_agent.strip():
        return None
    name = user_agent.strip().split()[0].split("/")[0].strip().lower()
    if name in ("mozilla", "opera"):
        return "browser"
    return name or None


async def fetch_workspace(
    source_id: str,
    cfg: WorkspaceConfig,
    settings: PostureSettings,
    *,
    clock: Clock,
    session_factory: SessionFactory | None = None,
    sleep: Sleep = asyncio.sleep,
) -> WorkspaceSnapshot:
    """Read everything the checks need with the workspace's own key (GETs only)."""
    now = clock.now()
    streams = tuple(dict.fromkeys(cfg.streams))
    snap = WorkspaceSnapshot(source_id, WorkspaceRef(cfg.as_workspace or source_id, cfg.name), now, streams)
    async with InstantlyClient(cfg, session_factory=session_factory, sleep=sleep) as client:
        try:
            ws = await client.get(WORKSPACE_PATH)
        except (AuthError, PaymentRequiredError, UpstreamError) as err:
            snap.fatal = _describe(err)
            return snap
        except SourceError as err:
            snap.errors["workspace"] = _describe(err)
        else:
            if isinstance(ws.get("id"), str) and ws["id"]:
                name = ws.get("name")
                snap.workspace = WorkspaceRef(ws["id"], name if isinstance(name, str) else cfg.name)
            snap.snapshots["workspace"] = build_snapshot("workspace", [ws])[0]
        for stream in LISTED_STREAMS:
            if stream == "group_members" and stream not in streams:
                continue
            try:
                items = await client.get_all(SNAPSHOT_PATHS[stream], limit=100)
            except (AuthError, PaymentRequiredError) as err:
                snap.fatal = _describe(err)
                return snap
            except SourceError as err:
                snap.errors[stream] = _describe(err)
                continue
            if stream == "api_keys":
                secret = cfg.api_key.get_secret_value()
                snap.own_key_ids, snap.own_key_match = identify_own_key(items, secret, settings.pipeline_key_name)
            snap.snapshots[stream] = build_snapshot(stream, items)[0]
            del items  # raw records may hold key values and webhook secrets
        await _read_usage(client, snap, settings, now)
    return snap


async def _read_usage(client: InstantlyClient, snap: WorkspaceSnapshot, settings: PostureSettings, now: float) -> None:
    """Count, per API key id, the clients (User-Agent products) in the audit log's recent window."""
    start = format_time(now - settings.shared_key_window_days * DAY)[:10]
    pages = client.paginate(AUDIT_LOGS_PATH, {"start_date": start}, limit=1000)
    try:
        async with aclosing(pages):
            async for page in pages:
                for rec in page:
                    snap.audit_records += 1
                    kid = rec.get("api_key_id")
                    product = client_product(rec.get("user_agent"))
                    if isinstance(kid, str) and kid and isinstance(code := rec.get("activity_type"), int):
                        per_code = snap.key_activity.setdefault(kid, {})
                        per_code[code] = per_code.get(code, 0) + 1
                    if isinstance(kid, str) and kid and product:
                        per = snap.usage.setdefault(kid, {})
                        per[product] = per.get(product, 0) + 1
                if snap.audit_records >= MAX_AUDIT_RECORDS:
                    break
    except (PaymentRequiredError, ScopeError, NotFoundError) as err:
        snap.audit_refusal = err
    except SourceError as err:
        snap.errors["audit_logs"] = _describe(err)


# ----------------------------------------------------------------------------------- evaluation
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
    for stream in ("workspace", "api_keys", "members", "webhooks", "group_members", "block_list"):
        if stream in snap.snapshots:
            current = snap.snapshots[stream]
            events += diff_snapshots(stream, None, current, workspace=snap.workspace, observed_at=observed)
    err = snap.audit_refusal
    if err is not None:
        status = getattr(err, "status", None)
        events.append(pipeline_event(
            type="pipeline.audit_log_unavailable", workspace=snap.workspace, observed_at=observed, stream="audit_logs",
            natural_key=("pipeline.audit_log_unavailable", status, "check"),
            attributes={"stream": "audit_logs", "status": status, "error": type(err).__name__, "message": err.message},
        ))  # fmt: skip
    return events


def _label(snap: WorkspaceSnapshot) -> str:
    return snap.source_id


def _own(
    meta_id: str,
    snap: WorkspaceSnapshot,
    status: Status,
    message: str,
    *,
    severity: Severity | None = None,
    resources: tuple[Resource, ...] = (),
    attributes: dict[str, Any] | None = None,
) -> CheckResult:
    m = OWN_CHECKS[meta_id]
    return CheckResult(meta_id, m.title, m.checklist, severity or m.severity, status, message, _label(snap), resources,
                       remediation=m.remediation, attributes=attributes or {})  # fmt: skip


def evaluate_workspace(snap: WorkspaceSnapshot, ruleset: RuleSet, settings: PostureSettings) -> list[CheckResult]:
    """Every check's results for one snapshot (pure: no I/O)."""
    label = _label(snap)
    if snap.fatal is not None:
        out = [CheckResult(WORKSPACE_CHECK, "Workspace can be read with the pipeline's key", Basic.AUDIT_LOGS, "high",
                           "error", f"cannot check workspace {label}: {snap.fatal}", label)]  # fmt: skip
        return out
    results = _stream_results(snap, ruleset)
    results += check_pipeline_scopes(snap)
    results += check_shared_keys(snap)
    results += check_admins(snap, ruleset, settings)
    results += check_invitations(snap, ruleset, settings)
    usage = KeyUsage(snap.audit_refusal is None and "audit_logs" not in snap.errors, settings.shared_key_window_days,
                     snap.audit_records < MAX_AUDIT_RECORDS, snap.key_activity)  # fmt: skip
    results += blast_radius_results(_label(snap), snap.snapshots.get("api_keys"), usage, snap.observed_at,
                                    snap.errors.get("api_keys"))  # fmt: skip
    return results


def _stream_results(snap: WorkspaceSnapshot, ruleset: RuleSet) -> list[CheckResult]:
    from pipeline.rules.engine import RulesEngine

    label = _label(snap)
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
        elif stream == "audit_logs" or stream in snap.snapshots:
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
                        f"Protected domain {d} is not on the block list (the block list is empty)", _label(snap),
                        (Resource("domain", d, None),), remediation=rule.meta.runbook)
            for d in ruleset.lists.protected_domains]  # fmt: skip


def _grants(scopes: Iterable[str], needed: str) -> bool:
    resource, _, action = needed.partition(":")
    return not {needed, f"{resource}:all", f"all:{action}", "all:all"}.isdisjoint(scopes)


def needed_scopes(streams: Iterable[str]) -> list[str]:
    """The read scopes the pipeline (its streams and ``check``) needs, sorted."""
    return sorted({STREAM_SCOPES[s] for s in (*streams, *CHECK_STREAMS) if s in STREAM_SCOPES})


def check_pipeline_scopes(snap: WorkspaceSnapshot) -> list[CheckResult]:
    """``api_key.pipeline_scopes``: the pipeline's key should hold exactly the read scopes it uses."""
    if "api_keys" in snap.errors:
        return [_own("api_key.pipeline_scopes", snap, "error", f"cannot list API keys: {snap.errors['api_keys']}")]
    keys = snap.snapshots.get("api_keys", {})
    if not snap.own_key_ids:
        return [_own("api_key.pipeline_scopes", snap, "warn",
                     "cannot tell which key is the pipeline's (the API returned no key values); "
                     "set check.pipeline_key_name or --pipeline-key-name")]  # fmt: skip
    needed = needed_scopes(snap.streams)
    out: list[CheckResult] = []
    for kid in snap.own_key_ids:
        rec = keys.get(kid, {})
        name = rec.get("name") if isinstance(rec.get("name"), str) else None
        scopes = sorted({str(s) for s in rec.get("scopes") or []})
        res = (Resource("api_key", kid, name),)
        who = f"'{name}' ({kid})" if name else kid
        drop = [s for s in scopes if s not in needed]
        add = [s for s in needed if s not in scopes]
        attrs = {"needed_scopes": needed, "drop_scopes": drop, "add_scopes": add, "matched_by": snap.own_key_match}
        if drop:
            writes = [s for s in drop if not s.endswith(":read")]
            sev: Severity = "high" if writes else ("medium" if "all:read" in drop else "low")
            msg = f"the pipeline's key {who} holds scopes it does not need: drop {', '.join(drop)}"
            if add:
                msg += f"; add {', '.join(add)} (so far granted only through the dropped wildcards)" if all(
                    _grants(scopes, s) for s in add) else f"; it also lacks {', '.join(add)}"  # fmt: skip
            out.append(_own("api_key.pipeline_scopes", snap, "fail", msg, severity=sev, resources=res,
                            attributes=attrs))  # fmt: skip
        elif add:
            out.append(_own("api_key.pipeline_scopes", snap, "warn",
                            f"the pipeline's key {who} lacks {', '.join(add)}: those streams cannot be read",
                            severity="medium", resources=res, attributes=attrs))  # fmt: skip
        else:
            out.append(_own("api_key.pipeline_scopes", snap, "pass",
                            f"the pipeline's key {who} holds exactly the read scopes it needs",
                            resources=res))  # fmt: skip
    return out


_GENERIC_NAME = re.compile(
    r"(?i)(?<![a-z])(shared|common|generic|general|default|master|global|universal|everything|multi[ _-]?purpose"
    r"|all[ _-]?(in[ _-]?one|integrations|tools|apps|purpose))(?![a-z])"
)
INTEGRATION_NAMES = ("zapier", "make", "integromat", "n8n", "hubspot", "salesforce", "pipedrive", "clay", "slack",
                     "airtable", "sheets", "retool", "pabbly", "workato", "tray", "close", "highlevel", "gohighlevel",
                     "apollo", "lemlist", "smartlead", "notion", "zoho", "monday", "attio", "dashboard", "reporting",
                     "analytics", "crm")  # fmt: skip


def name_evidence(name: str | None) -> str | None:
    """Why a key's name suggests several integrations use it, or None."""
    if not name:
        return None
    m = _GENERIC_NAME.search(name)
    if m:
        return f"its name '{name}' sounds shared ({m.group(0).lower()})"
    words = set(re.findall(r"[a-z0-9]+", name.lower()))
    hits = sorted(w for w in INTEGRATION_NAMES if w in words)
    if len(hits) >= 2:
        return f"its name '{name}' names several integrations ({', '.join(hits)})"
    return None


def check_shared_keys(snap: WorkspaceSnapshot) -> list[CheckResult]:
    """``api_key.shared``: one key used by several clients (audit log) or named for several integrations."""
    if "api_keys" in snap.errors:
        return [_own("api_key.shared", snap, "error", f"cannot list API keys: {snap.errors['api_keys']}")]
    keys = snap.snapshots.get("api_keys", {})
    usage_visible = snap.audit_refusal is None and "audit_logs" not in snap.errors
    out: list[CheckResult] = []
    for kid in sorted(keys):
        rec = keys[kid]
        name = rec.get("name") if isinstance(rec.get("name"), str) else None
        res = (Resource("api_key", kid, name),)
        who = f"'{name}' ({kid})" if name else kid
        clients = sorted(snap.usage.get(kid, {}))
        attrs = {"clients": clients}
        if kid in snap.own_key_ids:
            others = [c for c in clients if c != PIPELINE_USER_AGENT]
            if others:
                out.append(_own("api_key.shared", snap, "fail",
                                f"the pipeline's key {who} is also used by {', '.join(others)} (audit log)",
                                severity="high", resources=res, attributes=attrs))  # fmt: skip
            continue
        if len(clients) >= 2:
            out.append(_own("api_key.shared", snap, "fail",
                            f"API key {who} is used by {len(clients)} clients: {', '.join(clients)} (audit log)",
                            resources=res, attributes=attrs))  # fmt: skip
            continue
        why = name_evidence(name)
        if why:
            out.append(_own("api_key.shared", snap, "warn", f"API key {who} may be shared: {why}", resources=res))
    if not out:
        how = "audit-log usage and names" if usage_visible else "names only (the audit log is not readable)"
        out.append(_own("api_key.shared", snap, "pass", f"no API key appears shared (judged by {how})"))
    return out


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
        return [_own("member.admin_not_allowed", snap, "error", f"cannot list members: {snap.errors['members']}")]
    roles = _privileged_roles(ruleset)
    members = snap.snapshots.get("members", {})
    privileged = [(mid, m) for mid, m in sorted(members.items()) if m.get("role") in roles]
    allowed = settings.allowed_admins
    if not allowed:
        who = ", ".join(f"{m.get('email')} ({m.get('role')})" for _, m in privileged) or "none"
        res = tuple(Resource("member", mid, m.get("email")) for mid, m in privileged)
        return [_own("member.admin_not_allowed", snap, "warn",
                     f"no check.allowed_admins configured; {len(privileged)} privileged member(s): {who}",
                     resources=res)]  # fmt: skip
    out: list[CheckResult] = []
    for mid, m in privileged:
        email = m.get("email") if isinstance(m.get("email"), str) else None
        if _allowed(email, allowed) or _allowed(m.get("user_email"), allowed):
            continue
        pending = "" if m.get("accepted") is True else " (invitation pending)"
        out.append(_own("member.admin_not_allowed", snap, "fail",
                        f"{email or mid} is {m.get('role')}{pending} but not on check.allowed_admins",
                        resources=(Resource("member", mid, email),), attributes={"role": m.get("role")}))  # fmt: skip
    if not out:
        out.append(_own("member.admin_not_allowed", snap, "pass",
                        f"all {len(privileged)} owner/admin member(s) are on the allowed list"))  # fmt: skip
    return out


def check_invitations(snap: WorkspaceSnapshot, ruleset: RuleSet, settings: PostureSettings) -> list[CheckResult]:
    """``member.invitation_stale``: invitations not accepted after ``invitation_max_age_days``."""
    if "members" in snap.errors:
        return [_own("member.invitation_stale", snap, "error", f"cannot list members: {snap.errors['members']}")]
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
        out.append(_own("member.invitation_stale", snap, "fail",
                        f"the invitation of {email or mid} (role {m.get('role')}) has been pending for {age:.0f} days "
                        f"(limit {limit:g})", severity=sev, resources=(Resource("member", mid, email),),
                        attributes={"age_days": int(age), "role": m.get("role")}))  # fmt: skip
    if not out:
        out.append(_own("member.invitation_stale", snap, "pass",
                        f"no invitation pending for {limit:g} days or more ({pending} pending)"))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------- running
@dataclass
class WorkspaceCheck:
    """Results of every workspace plus the fingerprints of the live keys (to match committed ones)."""

    results: list[CheckResult]
    live_keys: dict[str, tuple[str, Resource]]


async def check_workspaces(
    cfg: PipelineConfig,
    settings: PostureSettings,
    *,
    clock: Clock,
    only: Sequence[str] | None = None,
    base_dir: Path | None = None,
    session_factory: SessionFactory | None = None,
    sleep: Sleep = asyncio.sleep,
) -> WorkspaceCheck:
    """Check every configured workspace (or ``only`` these ids).

    Raises:
        ConfigError: the rules section is invalid or ``only`` names an unknown workspace.
    """
    configured = workspaces(cfg)
    unknown = [w for w in only or () if w not in configured]
    if unknown:
        raise ConfigError(f"--workspace {', '.join(unknown)}: not in the config (known: {', '.join(configured)})")
    ruleset = build_ruleset(cfg.rules, settings, base_dir)
    out = WorkspaceCheck([], {})
    for source_id, wcfg in configured.items():
        if only and source_id not in only:
            continue
        snap = await fetch_workspace(source_id, wcfg, settings, clock=clock, session_factory=session_factory,
                                     sleep=sleep)  # fmt: skip
        out.results += evaluate_workspace(snap, ruleset, settings)
        for kid, rec in snap.snapshots.get("api_keys", {}).items():
            fp = rec.get("key")
            if isinstance(fp, str) and fp.startswith("sha256:"):
                out.live_keys[fp] = (source_id, Resource("api_key", kid, rec.get("name")))
        log.info("Workspace checked.", extra={"source": source_id, "workspace": snap.workspace.id,
                                              "results": len(out.results)})  # fmt: skip
    return out


def cross_reference(results: Sequence[CheckResult], live_keys: Mapping[str, tuple[str, Resource]]) -> list[CheckResult]:
    """Mark committed keys whose fingerprint matches a live key (the key must be rotated now)."""
    out: list[CheckResult] = []
    for r in results:
        hit = live_keys.get(r.fingerprint or "")
        if r.check_id.startswith("repo.") and r.status == "fail" and hit is not None:
            ws, res = hit
            r = CheckResult(r.check_id, r.title, r.checklist, "critical", r.status,
                            f"{r.message} — it is the LIVE key {res.label()} of workspace {ws}: rotate it now",
                            r.target, (*r.resources, res), r.location, r.fingerprint, r.remediation,
                            {**r.attributes, "live_key_id": res.id, "live_key_workspace": ws})  # fmt: skip
        out.append(r)
    return out
