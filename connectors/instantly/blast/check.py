"""The blast-radius findings of ``instantly-audit check``: unaudited reach and scopes never used.

* ``api_key.unaudited_reach`` — a key whose scopes (other than plain ``x:read``) reach a
  high-impact operation Instantly writes no audit record for (fail, medium). Reach through a
  read scope only (``leads:read`` → the bulk ``POST /leads/list``) is named in the pass message.
  Keys with ``all:all`` are ``api_key.all_scope``'s finding.
* ``api_key.unused_scopes`` — least privilege: a key older than the usage window whose write
  scopes never appear behind its audit records (``api_key_id``) in that window (warn, low).
  Read scopes are never judged (reads are not audited); the activity → scope mapping
  (:data:`connectors.instantly.blast.ACTIVITY_SCOPES`) is rough, so this is a prompt to ask,
  not proof.

The caller (the posture check) hands in what it read; this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.instantly.blast import is_read_only, unaudited_reach, used_scopes
from connectors.instantly.checklist import Basic
from pipeline.checks.report import CheckResult, Resource, Status
from pipeline.clock import parse_time
from schemas.alert import Severity

DAY = 86_400.0
REACH = "api_key.unaudited_reach"
UNUSED = "api_key.unused_scopes"
TITLES = {
    REACH: "API key can call operations that leave no audit record",
    UNUSED: "API key holds write scopes its audit records never show in use",
}
SEVERITIES: dict[str, Severity] = {REACH: "medium", UNUSED: "low"}
REMEDIATION = {
    REACH: "Replace the key with one whose scopes stop short of the listed operations (most integrations need\n"
    "none of them), deploy it, then delete this key. Misuse of these operations leaves no audit record.",
    UNUSED: "Ask the integration's owner whether the listed scopes are needed; if not, create a key without them,\n"
    "deploy it and delete this one. (Activity maps to scopes only roughly: confirm before narrowing.)",
}
BLAST_CHECKS = (REACH, UNUSED)
"""The check ids this module reports."""


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """What the check's audit-log read saw, per key: ``activity[key id][activity_type] = records``."""

    visible: bool
    window_days: float
    complete: bool = True
    activity: Mapping[str, Mapping[int, int]] = field(default_factory=dict)


def _result(check_id: str, status: Status, message: str, target: str, res: tuple[Resource, ...] = (),
            attrs: dict[str, Any] | None = None) -> CheckResult:  # fmt: skip
    return CheckResult(check_id, TITLES[check_id], Basic.SCOPED_KEYS, SEVERITIES[check_id], status, message, target,
                       res, remediation=REMEDIATION[check_id], attributes=attrs or {})  # fmt: skip


def _keys(keys: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str | None, list[str], Mapping[str, Any]]]:
    out = []
    for kid in sorted(keys):
        rec = keys[kid]
        name = rec.get("name") if isinstance(rec.get("name"), str) else None
        scopes = [s for s in rec.get("scopes") or [] if isinstance(s, str)]
        out.append((kid, name, scopes, rec))
    return out


def check_unaudited_reach(target: str, keys: Mapping[str, Mapping[str, Any]]) -> list[CheckResult]:
    """``api_key.unaudited_reach`` for every listed key (one fail per key, else one pass)."""
    out: list[CheckResult] = []
    reads: list[str] = []
    for kid, name, scopes, _rec in _keys(keys):
        if "all:all" in scopes:
            continue
        reach = unaudited_reach(scopes)
        writes = {op: kept for op, via in reach.items() if (kept := [s for s in via if not is_read_only(s)])}
        who = f"'{name}' ({kid})" if name else kid
        if writes:
            via = sorted({s for v in writes.values() for s in v})
            attrs = {"operations": sorted(writes), "scopes": via}
            out.append(_result(REACH, "fail", f"API key {who} can call {', '.join(sorted(writes))} through "
                               f"{', '.join(via)}; Instantly writes no audit record for them", target,
                               (Resource("api_key", kid, name),), attrs))  # fmt: skip
        elif reach:
            reads.append(f"{who} ({', '.join(sorted(reach))})")
    if not out:
        extra = f"; read-only reach to unaudited bulk reads: {'; '.join(reads)}" if reads else ""
        out.append(_result(REACH, "pass", f"no API key reaches an unaudited high-impact write{extra}", target))
    return out


def check_unused_scopes(
    target: str, keys: Mapping[str, Mapping[str, Any]], usage: KeyUsage, now: float
) -> list[CheckResult]:
    """``api_key.unused_scopes``: write scopes without audited use in the window (keys older than it)."""
    days = f"{usage.window_days:g}"
    if not usage.visible:
        return [_result(UNUSED, "skip", "the audit log is not readable, so key usage is unknown", target)]
    out: list[CheckResult] = []
    for kid, name, scopes, rec in _keys(keys):
        created = rec.get("timestamp_created")
        try:
            age = (now - parse_time(created)) / DAY if isinstance(created, str) else None
        except ValueError:
            age = None
        if age is None or age < usage.window_days or "all:all" in scopes:
            continue  # too young to judge (or all:all, api_key.all_scope's finding)
        writes = [s for s in scopes if not is_read_only(s)]
        unused = sorted(set(writes) - used_scopes(writes, usage.activity.get(kid, {})))
        if unused:
            who = f"'{name}' ({kid})" if name else kid
            out.append(_result(UNUSED, "warn", f"API key {who} holds {', '.join(unused)} but none of its audit records "
                               f"in {days} days needed them", target, (Resource("api_key", kid, name),),
                               {"unused_scopes": unused, "window_days": usage.window_days}))  # fmt: skip
    if not out:
        caveat = "" if usage.complete else " (the audit window was truncated)"
        out.append(_result(UNUSED, "pass", f"every key older than {days} days used its write scopes{caveat}", target))
    return out


def blast_radius_results(
    target: str, keys: Mapping[str, Mapping[str, Any]] | None, usage: KeyUsage, now: float, listing_error: str | None
) -> list[CheckResult]:
    """Both findings for one workspace (an ``error`` for each when the key listing failed)."""
    if listing_error is not None or keys is None:
        why = listing_error or "not listed"
        return [_result(c, "error", f"cannot list API keys: {why}", target) for c in BLAST_CHECKS]
    return [*check_unaudited_reach(target, keys), *check_unused_scopes(target, keys, usage, now)]
