"""``instantly-audit check``: a one-shot posture check of every configured workspace and, with ``--repo``, a repository.

::

    instantly-audit check --config pipeline.yaml                     # every workspace, a table
    instantly-audit check --config pipeline.yaml --format sarif -o check.sarif --fail-on medium
    instantly-audit check --repo .                                   # the local half only
    instantly-audit check --config pipeline.yaml --repo . --format json

The workspace half reads a fresh snapshot with each workspace's (read-only) key and evaluates
the stream's rules on it plus the checks only a one-shot run can make
(:mod:`connectors.instantly.posture`); the repository half scans files and git history for
committed keys and checks that secret files are ignored (:mod:`connectors.instantly.repo_scan`).

Output: a table grouped by checklist item (``--format table``, the default), ``json`` or SARIF
2.1.0 (``sarif``, for code-scanning dashboards). No output ever holds a secret: findings name
where a secret is and its fingerprint (``sha256:`` + 8 hex).

Exit codes: 0 nothing at or above ``--fail-on`` failed; 1 something did; 2 usage or configuration
error; 3 nothing failed but some checks could not run (a workspace unreachable, a listing refused).

Settings come from the config's ``check`` section when it has one, overridden by the flags::

    check:
      fail_on: high
      allowed_admins: [dana@acme.com, "*.acme.com"]   # owner/admin members allowed (emails, domains)
      invitation_max_age_days: 7
      shared_key_window_days: 30                       # audit-log window for shared-key usage
      pipeline_key_name: security-poller               # when the API does not return key values
      repo: {history: true, exclude: ["tests/fixtures/**"]}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from pipeline import __version__
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time
from pipeline.errors import ConfigError
from schemas.alert import SEVERITIES, Severity, severity_rank

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
Status = Literal["pass", "fail", "warn", "skip", "error"]
STATUSES: tuple[Status, ...] = ("fail", "error", "warn", "pass", "skip")
FailOn = Literal["info", "low", "medium", "high", "critical", "none"]

CHECKLIST: tuple[str, ...] = (
    "API keys stored in environment variables or secret manager",
    ".env files listed in .gitignore",
    "Each integration has its own scoped API key",
    "No all:all keys in production",
    "Webhook endpoints validate authentication",
    "API key rotation schedule (quarterly recommended)",
    "Audit logs reviewed periodically",
    "Workspace members have minimum necessary roles",
    "Block list entries for competitor/internal domains",
)
"""The security checklist of ``seed-security-basics.md``, in its order (results are grouped by it)."""
OTHER = "Other checks"
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "1.0"}
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True, slots=True)
class Resource:
    """Something a result is about: an API key, a member, a webhook, a domain, a file."""

    kind: str
    id: str | None = None
    name: str | None = None

    def label(self) -> str:
        """``name (id)``, the name, or the id."""
        if self.name and self.id and self.name != self.id:
            return f"{self.name} ({self.id})"
        return self.name or self.id or self.kind


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a repository: a path relative to its root, a line, and the commit for history findings."""

    path: str
    line: int | None = None
    commit: str | None = None

    def label(self) -> str:
        """``path:line`` (``@commit`` for history)."""
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}@{self.commit[:12]}" if self.commit else where


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict about one target (a workspace or a repository), or about one offending resource.

    A check that fails on several resources yields one ``fail`` result per resource; a check
    with nothing to report yields one ``pass``. ``severity`` is what a failure of this kind
    weighs (also set on passes, so a dashboard knows what was at stake).
    """

    check_id: str
    title: str
    checklist: str
    severity: Severity
    status: Status
    message: str
    target: str
    resources: tuple[Resource, ...] = ()
    location: Location | None = None
    fingerprint: str | None = None
    remediation: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        loc = self.location
        return {
            "check_id": self.check_id,
            "title": self.title,
            "checklist": self.checklist,
            "severity": self.severity,
            "status": self.status,
            "message": self.message,
            "target": self.target,
            "resources": [{"kind": r.kind, "id": r.id, "name": r.name} for r in self.resources],
            "location": None if loc is None else {"path": loc.path, "line": loc.line, "commit": loc.commit},
            "fingerprint": self.fingerprint,
            "remediation": self.remediation,
            "attributes": self.attributes,
        }


def failing(results: Iterable[CheckResult], fail_on: FailOn) -> list[CheckResult]:
    """The failed results at or above ``fail_on`` (none for ``"none"``)."""
    if fail_on == "none":
        return []
    floor = severity_rank(fail_on)
    return [r for r in results if r.status == "fail" and severity_rank(r.severity) >= floor]


def exit_code(results: Sequence[CheckResult], fail_on: FailOn) -> int:
    """0 clean, 1 a failure at or above ``fail_on``, 3 nothing failed but a check could not run."""
    if failing(results, fail_on):
        return EXIT_FAIL
    if any(r.status == "error" for r in results):
        return EXIT_INCOMPLETE
    return EXIT_OK


def _order(results: Iterable[CheckResult]) -> list[CheckResult]:
    def key(r: CheckResult) -> tuple[int, str, int, int, str, str]:
        group = CHECKLIST.index(r.checklist) if r.checklist in CHECKLIST else len(CHECKLIST)
        return (group, r.check_id, STATUSES.index(r.status), -severity_rank(r.severity), r.target, r.message)

    return sorted(results, key=key)


def summary(results: Sequence[CheckResult], fail_on: FailOn) -> dict[str, Any]:
    """Counts per status and per failed severity, the exit code and the threshold."""
    counts = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    by_sev = {s: sum(1 for r in results if r.status == "fail" and r.severity == s) for s in reversed(SEVERITIES)}
    code = exit_code(results, fail_on)
    return {"counts": counts, "failed_by_severity": by_sev, "fail_on": fail_on, "exit_code": code}


# ------------------------------------------------------------------------------------- formats
def format_table(results: Sequence[CheckResult], *, fail_on: FailOn, targets: Sequence[str], now: float) -> str:
    """A readable report: one block per checklist item, one line per check result."""
    lines = [f"instantly-audit check — {', '.join(targets) or 'nothing'} — {format_time(now)}", ""]
    ordered = _order(results)
    groups: dict[str, list[CheckResult]] = {}
    for r in ordered:
        groups.setdefault(r.checklist if r.checklist in CHECKLIST else OTHER, []).append(r)
    for name in (*CHECKLIST, OTHER):
        rows = groups.get(name)
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


def format_json(results: Sequence[CheckResult], *, fail_on: FailOn, targets: Sequence[str], now: float) -> str:
    """``{"schema": "instantly.check.v1", "generated_at", "targets", "summary", "results"}``."""
    doc = {
        "schema": "instantly.check.v1",
        "tool": {"name": "instantly-audit", "version": __version__},
        "generated_at": format_time(now),
        "targets": list(targets),
        "summary": summary(results, fail_on),
        "results": [r.to_dict() for r in _order(results)],
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
    results: Sequence[CheckResult], *, fail_on: FailOn, targets: Sequence[str], now: float, config_path: str | None
) -> str:
    """SARIF 2.1.0: one rule per check id, one result per failure or warning.

    Repository findings carry their file and line; workspace findings point at the config file
    (code-scanning dashboards need a file) and name the Instantly resource as a logical location.
    Checks that could not run become tool execution notifications.
    """
    shown = [r for r in _order(results) if r.status in ("fail", "warn")]
    rule_ids: list[str] = []
    rules: list[dict[str, Any]] = []
    for r in _order(results):
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
            "properties": {"security-severity": SECURITY_SEVERITY[r.severity], "tags": ["security", "instantly"],
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
              "descriptor": {"id": r.check_id}} for r in _order(results) if r.status == "error"]  # fmt: skip
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


# ---------------------------------------------------------------------------------------- running
def _fail_on(value: str) -> FailOn:
    if value not in (*SEVERITIES, "none"):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join((*SEVERITIES, 'none'))}")
    return value  # type: ignore[return-value]


def _config_label(path: str | None) -> str | None:
    """The config path as a repository-relative URI when it is under the working directory."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


@dataclass
class CheckRun:
    """What one ``check`` produced."""

    results: list[CheckResult]
    targets: list[str]
    fail_on: FailOn


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The config (or None) and its ``check`` section."""
    if not args.config:
        return None, {}
    from pipeline.config import load_config

    cfg = load_config(args.config)
    return cfg, dict(getattr(cfg, "check", None) or {})


async def run_check(args: argparse.Namespace, *, clock: Clock = SYSTEM_CLOCK, cfg: Any = None,
                    section: dict[str, Any] | None = None) -> CheckRun:  # fmt: skip
    """Run the halves asked for: the configured workspaces (``cfg``) and/or ``args.repo``.

    Raises:
        ConfigError: the check settings, the rules section or the repository path is invalid.
    """
    from connectors.instantly import posture, repo_scan

    settings = posture.settings_from(section or {}, args)
    results: list[CheckResult] = []
    targets: list[str] = []
    live: dict[str, Any] = {}
    if cfg is not None:
        base_dir = Path(os.path.abspath(args.config)).parent if args.config else None  # noqa: ASYNC240 - no I/O
        checked = await posture.check_workspaces(cfg, settings, clock=clock, only=args.workspace, base_dir=base_dir)
        results += checked.results
        live = checked.live_keys
        targets += [f"workspace {w}" for w in cfg.workspaces if not args.workspace or w in args.workspace]
    if args.repo:
        repo = Path(args.repo)
        if not await asyncio.to_thread(repo.is_dir):
            raise ConfigError(f"--repo {repo}: not a directory")
        results += await asyncio.to_thread(repo_scan.check_repository, repo, settings.repo)
        targets.append(f"repo {repo}")
        results = posture.cross_reference(results, live)
    return CheckRun(results, targets, settings.fail_on)


def render(run: CheckRun, fmt: str, *, now: float, config_path: str | None) -> str:
    """The report in ``fmt`` (table, json or sarif)."""
    kw: dict[str, Any] = {"fail_on": run.fail_on, "targets": run.targets, "now": now}
    if fmt == "json":
        return format_json(run.results, **kw)
    if fmt == "sarif":
        return format_sarif(run.results, config_path=config_path, **kw)
    return format_table(run.results, **kw)


def handler(args: argparse.Namespace) -> int:
    """``check``: run, print or write the report, return the exit code."""
    if not args.config and not args.repo:
        print("check: give --config FILE (workspaces), --repo PATH (repository), or both", file=sys.stderr)
        return EXIT_USAGE
    clock: Clock = SYSTEM_CLOCK
    cfg, section = _load(args)
    run = asyncio.run(run_check(args, clock=clock, cfg=cfg, section=section))
    now = clock.now()
    text = render(run, args.format, now=now, config_path=_config_label(args.config))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        if args.format != "table":
            print(render(run, "table", now=now, config_path=None), end="")
    else:
        print(text, end="")
    return exit_code(run.results, run.fail_on)


def register(subparsers: Any) -> None:
    """Add ``check`` to the CLI."""
    p = subparsers.add_parser(
        "check",
        help="one-shot posture check of each workspace (and a repository) against the security checklist",
        description="Read a fresh snapshot of every configured workspace with its read-only key and evaluate the "
        "stream's rules plus one-shot checks; with --repo, scan a repository for committed keys. Exit 0 clean, "
        "1 a failure at or above --fail-on, 2 usage/config error, 3 a check could not run.",
    )
    p.add_argument("--config", "-c", help="pipeline config file (workspaces, rules, check settings)")
    p.add_argument("--repo", metavar="PATH", help="also check this repository (files and git history)")
    p.add_argument("--workspace", action="append", metavar="ID", help="only this configured workspace (repeatable)")
    p.add_argument("--format", choices=["table", "json", "sarif"], default="table")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report here (the table still goes to stdout)")
    p.add_argument("--fail-on", type=_fail_on, default=None, metavar="SEVERITY",
                   help="exit 1 when a check of this severity or above fails: info|low|medium|high|critical|none "
                   "(default: check.fail_on or high)")  # fmt: skip
    p.add_argument("--allowed-admin", action="append", metavar="EMAIL_OR_DOMAIN",
                   help="a member allowed to be owner/admin (repeatable; '*.acme.com' for subdomains)")  # fmt: skip
    p.add_argument("--invitation-days", type=float, metavar="N", help="pending invitations older than N days fail")
    p.add_argument("--rotation-days", type=float, metavar="N", help="keys older than N days fail (api_key.stale)")
    p.add_argument("--pipeline-key-name", metavar="NAME", help="the name of the pipeline's own key in Instantly")
    p.add_argument("--no-history", action="store_true", help="scan only the working tree, not git history")
    p.set_defaults(func=handler)
