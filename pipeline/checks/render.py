"""Posture check reports: a readable table grouped by checklist item, JSON, and SARIF 2.1.0.

``groups`` is the connector's checklist, in its order; results whose item is not in it are
shown last, under "Other checks". No report ever holds a secret: results name where a secret
is and its fingerprint only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from pipeline import __version__
from pipeline.checks.report import EXIT_FAIL, EXIT_INCOMPLETE, EXIT_OK, OTHER, STATUSES, CheckResult, FailOn, summary
from pipeline.clock import format_time
from schemas.alert import severity_rank

SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "1.0"}
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _order(results: Iterable[CheckResult], groups: Sequence[str] = ()) -> list[CheckResult]:
    def key(r: CheckResult) -> tuple[int, str, int, int, str, str]:
        group = groups.index(r.checklist) if r.checklist in groups else len(groups)
        return (group, r.check_id, STATUSES.index(r.status), -severity_rank(r.severity), r.target, r.message)

    return sorted(results, key=key)


def format_table(
    results: Sequence[CheckResult], *, fail_on: FailOn, targets: Sequence[str], now: float, groups: Sequence[str] = ()
) -> str:
    """A readable report: one block per checklist item, one line per check result."""
    lines = [f"instantly-audit check — {', '.join(targets) or 'nothing'} — {format_time(now)}", ""]
    ordered = _order(results, groups)
    by_group: dict[str, list[CheckResult]] = {}
    for r in ordered:
        by_group.setdefault(r.checklist if r.checklist in groups else OTHER, []).append(r)
    for name in (*groups, OTHER):
        rows = by_group.get(name)
        if not rows:
            continue
        worst = min((STATUSES.index(r.status) for r in rows), default=STATUSES.index("pass"))
        lines.append(f"[{STATUSES[worst].upper()}] {name}")
        for r in rows:
            sev = r.severity if r.status in ("fail", "warn") else ""
            where = f" {r.location.label()}" if r.location else ""
            fp = f" {r.fingerprint}" if r.fingerprint else ""
            lines.append(f"  {r.status.upper():5} {sev:8} {r.check_id:36} [{r.target}] {r.message}{where}{fp}")
        lines.append("")
    s = summary(results, fail_on)
    c = s["counts"]
    failed = ", ".join(f"{n} {k}" for k, n in s["failed_by_severity"].items() if n)
    verdict = {EXIT_OK: "passing", EXIT_FAIL: "FAILING", EXIT_INCOMPLETE: "INCOMPLETE"}[s["exit_code"]]
    lines.append(
        f"Result: {c['fail']} failed{f' ({failed})' if failed else ''}, {c['warn']} warning(s), {c['error']} error(s), "
        f"{c['pass']} passed, {c['skip']} skipped — {verdict} (--fail-on {fail_on})"
    )
    return "\n".join(lines) + "\n"


def format_json(
    results: Sequence[CheckResult], *, fail_on: FailOn, targets: Sequence[str], now: float, groups: Sequence[str] = ()
) -> str:
    """``{"schema": "instantly.check.v1", "generated_at", "targets", "summary", "results"}``."""
    doc = {
        "schema": "instantly.check.v1",
        "tool": {"name": "instantly-audit", "version": __version__},
        "generated_at": format_time(now),
        "targets": list(targets),
        "summary": summary(results, fail_on),
        "results": [r.to_dict() for r in _order(results, groups)],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def _level(r: CheckResult) -> str:
    if r.status == "warn":
        return "warning" if severity_rank(r.severity) >= severity_rank("medium") else "note"
    return {"critical": "error", "high": "error", "medium": "warning"}.get(r.severity, "note")


def _fingerprint(r: CheckResult) -> str:
    """Stable across runs: the check, the target, the resources (or path + secret fingerprint) — not line numbers."""
    parts = [r.check_id, r.target, *(f"{x.kind}:{x.id or x.name}" for x in r.resources)]
    if r.location is not None:
        parts.append(r.location.path)
    if r.fingerprint:
        parts.append(r.fingerprint)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def format_sarif(
    results: Sequence[CheckResult],
    *,
    fail_on: FailOn,
    targets: Sequence[str],
    now: float,
    config_path: str | None,
    groups: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> str:
    """SARIF 2.1.0: one rule per check id, one result per failure or warning.

    Repository findings carry their file and line; workspace findings point at the config file
    (code-scanning dashboards need a file) and name the Instantly resource as a logical location.
    Checks that could not run become tool execution notifications.
    """
    shown = [r for r in _order(results, groups) if r.status in ("fail", "warn")]
    rule_ids: list[str] = []
    rules: list[dict[str, Any]] = []
    for r in _order(results, groups):
        if r.check_id in rule_ids:
            continue
        rule_ids.append(r.check_id)
        rules.append({
            "id": r.check_id,
            "name": "".join(p.capitalize() for p in r.check_id.replace(".", "_").split("_")),
            "shortDescription": {"text": r.title},
            "fullDescription": {"text": f"{r.title} (security checklist: {r.checklist})"},
            "help": {"text": r.remediation or r.title},
            "defaultConfiguration": {"level": _level(CheckResult(r.check_id, r.title, r.checklist, r.severity,
                                                                 "fail", "", r.target))},
            "properties": {"security-severity": SECURITY_SEVERITY[r.severity], "tags": ["security", *tags],
                           "checklist": r.checklist, "severity": r.severity},
        })  # fmt: skip
    out: list[dict[str, Any]] = []
    for r in shown:
        loc: dict[str, Any] = {}
        if r.location is not None:
            region = {"startLine": r.location.line} if r.location.line else None
            loc["physicalLocation"] = {"artifactLocation": {"uri": r.location.path, "uriBaseId": "%SRCROOT%"},
                                       **({"region": region} if region else {})}  # fmt: skip
        elif config_path:
            loc["physicalLocation"] = {"artifactLocation": {"uri": config_path, "uriBaseId": "%SRCROOT%"},
                                       "region": {"startLine": 1}}  # fmt: skip
        logical = [{"name": x.label(), "kind": "resource",
                    "fullyQualifiedName": f"{r.target}/{x.kind}/{x.id or x.name}"} for x in r.resources]  # fmt: skip
        if logical:
            loc["logicalLocations"] = logical
        props: dict[str, Any] = {"status": r.status, "severity": r.severity, "target": r.target,
                                 "checklist": r.checklist}  # fmt: skip
        if r.fingerprint:
            props["secretFingerprint"] = r.fingerprint
        if r.location is not None and r.location.commit:
            props["commit"] = r.location.commit
        out.append({
            "ruleId": r.check_id,
            "ruleIndex": rule_ids.index(r.check_id),
            "level": _level(r),
            "message": {"text": f"[{r.target}] {r.message}"},
            **({"locations": [loc]} if loc else {}),
            "partialFingerprints": {"instantlyAuditCheck/v1": _fingerprint(r)},
            "properties": props,
        })  # fmt: skip
    notes = [{"level": "error", "message": {"text": f"[{r.target}] {r.check_id}: {r.message}"},
              "descriptor": {"id": r.check_id}} for r in _order(results, groups) if r.status == "error"]  # fmt: skip
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "instantly-audit", "version": __version__, "semanticVersion": __version__,
                                "rules": rules}},
            "invocations": [{"executionSuccessful": not notes, "endTimeUtc": format_time(now),
                             **({"toolExecutionNotifications": notes} if notes else {})}],
            "results": out,
            "properties": {"targets": list(targets), "summary": summary(results, fail_on)},
        }],
    }  # fmt: skip
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
