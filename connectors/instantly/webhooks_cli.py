"""``instantly-audit webhooks check``: list each workspace's Instantly webhooks and report weak ones.

Findings per webhook (the same facts the rules read, from
:func:`connectors.instantly.normalize.webhook_attributes`):

* ``no_auth_header`` (high, as ``webhook.unauthenticated``) — the webhook sends no custom header,
  so nothing authenticates its deliveries;
* ``insecure_url`` (high, as ``webhook.insecure_target`` on ``http://``) — the target is ``http://``:
  the secret header and lead data cross the network in clear;
* ``in_error`` (medium, as ``webhook.failing``) — Instantly disabled it after delivery failures
  (``status -1``); ``POST …/resume`` re-enables it;
* ``receiver_header_missing`` (medium: its deliveries are lost, as a failing webhook's) — it targets
  a source of this config's ``webhook:`` receiver (same workspace and path) but does not send that
  source's ``header_name``, so every delivery gets 401.

Header values are never printed (names only) and target URLs lose credentials and secret-looking
query values. Exit codes, as ``check``'s: 0 no finding at or above ``--fail-on`` (default
``check.fail_on`` or ``high``); 1 some finding is; 2 usage or configuration error; 3 nothing at or
above ``--fail-on`` but a workspace's webhooks could not be listed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from connectors.instantly.api import WEBHOOKS, page_limit
from connectors.instantly.client import InstantlyClient
from connectors.instantly.config import WorkspaceConfig, workspaces
from connectors.instantly.normalize import webhook_attributes
from connectors.instantly.posture.settings import PostureSettings
from connectors.instantly.redact import redact_url
from pipeline.checks.report import FAIL_ON_HELP, FailOn, at_or_above, fail_on_arg
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.cli.exit_codes import Exit
from pipeline.config.loader import load_config, resolve_under
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError, SourceError
from pipeline.observability.logs import register_secret
from pipeline.redaction.text import redact_text, replace_registered
from schemas.alert import Severity, severity_rank

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_FAILED = Exit.OK, Exit.FINDINGS, Exit.USAGE, Exit.INCOMPLETE
"""Findings 1; a workspace whose webhooks could not be listed 3 (the shared contract, pipeline/cli/exit_codes.py)."""

FINDING_SEVERITY: dict[str, Severity] = {
    "no_auth_header": "high",
    "insecure_url": "high",
    "in_error": "medium",
    "receiver_header_missing": "medium",
}
"""The severity of each finding (that of the rule that raises the same fact), for ``--fail-on``."""


@dataclass
class HookReport:
    """One webhook and what is wrong with it."""

    id: str
    name: str | None
    target: str | None
    url_scheme: str | None
    header_names: list[str]
    has_auth_header: bool
    status: Any
    event_type: str | None
    findings: list[str] = field(default_factory=list)
    severity: Severity | None = None
    """The highest severity of its findings (None without findings)."""


@dataclass
class WorkspaceReport:
    """The webhooks of one configured workspace (or the error that stopped the listing)."""

    workspace: str
    webhooks: list[HookReport] = field(default_factory=list)
    error: str | None = None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks check``."""
    p = sub.add_parser(
        "webhooks",
        help="Instantly webhook tools",
        description="Tools for the Instantly webhooks of the configured workspaces.",
    )
    wsub = p.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND", parser_class=type(p), required=True)
    chk = wsub.add_parser(
        "check",
        help="report webhooks without an auth header, with an http:// target, or disabled by errors",
        description=(
            "List each configured workspace's webhooks through the Instantly API and report those that send "
            "no auth header, target http://, are in the error state, or miss the receiver's header. "
            "Exit 0: no finding at or above --fail-on; 1: some finding is; 2: usage or configuration error; "
            "3: nothing at or above --fail-on, but a workspace's webhooks could not be listed."
        ),
    )
    chk.add_argument("--config", "-c", help=f"the pipeline's YAML config (workspaces and keys); {CONFIG_HELP}")
    chk.add_argument("--workspace", action="append", default=[], help="a configured workspace id (repeatable)")
    chk.add_argument("--format", choices=["table", "json"], default="table")
    chk.add_argument("--fail-on", type=fail_on_arg, default=None, metavar="SEVERITY",
                     help=f"exit 1 when a finding of this severity or above is reported: {FAIL_ON_HELP} "
                     "(default: check.fail_on or high; no_auth_header and insecure_url are high, "
                     "in_error and receiver_header_missing medium)")  # fmt: skip
    chk.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """The ``webhooks check`` command."""
    # the workspaces' keys (Vault through secret_managers); the receiver's sources are read for
    # their header names only, never their secrets
    cfg = load_config(config_path(args.config), resolve=resolve_under(("workspaces",), ("secret_managers",)))
    for ws in workspaces(cfg).values():
        register_secret(ws.api_key.get_secret_value())
    selected = list(args.workspace) or list(workspaces(cfg))
    unknown = [w for w in selected if w not in workspaces(cfg)]
    if unknown:
        known = ", ".join(sorted(workspaces(cfg))) or "none"
        raise ConfigError(f"--workspace {unknown[0]!r} is not in the config's workspaces (known: {known})")
    if not selected:
        raise ConfigError("the config has no workspaces to check")
    fail_on: FailOn = args.fail_on or cfg.section("check", PostureSettings).fail_on
    reports = asyncio.run(check_workspaces(cfg, selected))
    out = sys.stdout
    # A workspace error quotes the server's message: a last pass removes every registered secret form.
    if args.format == "json":
        doc = orjson.dumps(_json(reports, fail_on), option=orjson.OPT_INDENT_2).decode()
        out.write(replace_registered(doc, fingerprint=False) + "\n")
    else:
        out.write(replace_registered(_table(reports, fail_on), fingerprint=False))
    return exit_code(reports, fail_on)


def exit_code(reports: list[WorkspaceReport], fail_on: FailOn) -> Exit:
    """As ``check``'s: 1 a finding at or above ``fail_on``, else 3 a workspace not listed, else 0."""
    hooks = [h for r in reports for h in r.webhooks]
    if any(h.severity is not None and at_or_above(h.severity, fail_on) for h in hooks):
        return EXIT_FINDINGS
    return EXIT_FAILED if any(r.error for r in reports) else EXIT_OK


async def check_workspaces(cfg: PipelineConfig, names: list[str]) -> list[WorkspaceReport]:
    """List and judge the webhooks of each named workspace (one failing workspace does not stop the rest)."""
    expected = _receiver_sources(cfg)
    return [await check_workspace(name, workspaces(cfg)[name], expected) for name in names]


async def check_workspace(
    name: str, wcfg: WorkspaceConfig, expected: dict[tuple[str, str], str] | None = None
) -> WorkspaceReport:
    """The report of one workspace."""
    report = WorkspaceReport(name)
    try:
        async with InstantlyClient(wcfg, source_id=name) as client:
            hooks = await client.get_all(WEBHOOKS.path, limit=page_limit(WEBHOOKS))
    except SourceError as err:
        report.error = f"{type(err).__name__}: {err}" + (f" — {err.hint}" if err.hint else "")
        return report
    for hook in hooks:
        report.webhooks.append(judge(hook, expected or {}))
    return report


def judge(hook: dict[str, Any], expected: dict[tuple[str, str], str]) -> HookReport:
    """The findings of one Webhook object."""
    attrs = webhook_attributes(hook)
    target = attrs.get("target_hook_url")
    name = attrs.get("name")
    rep = HookReport(
        id=str(hook.get("id")),
        name=redact_text(name) if isinstance(name, str) else name,  # a name may quote a hook URL or a token
        target=redact_url(target) if target else None,
        url_scheme=attrs.get("url_scheme"),
        header_names=list(attrs.get("header_names") or []),
        has_auth_header=bool(attrs.get("has_auth_header")),
        status=attrs.get("status"),
        event_type=attrs.get("event_type"),
    )
    if not rep.has_auth_header:
        rep.findings.append("no_auth_header")
    if rep.url_scheme == "http":
        rep.findings.append("insecure_url")
    if rep.status == -1:
        rep.findings.append("in_error")
    path = _path(target)
    wanted = expected.get((str(hook.get("organization") or "").lower(), path or ""))
    if wanted is not None and wanted.lower() not in {h.lower() for h in rep.header_names}:
        rep.findings.append("receiver_header_missing")
    if rep.findings:
        rep.severity = sorted((FINDING_SEVERITY[f] for f in rep.findings), key=severity_rank)[-1]
    return rep


def _path(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return None


def _receiver_sources(cfg: PipelineConfig) -> dict[tuple[str, str], str]:
    """(workspace id, path) → header name of each receiver source, if the config has a valid ``webhook:``."""
    wcfg = cfg.webhook
    if wcfg is None:
        return {}
    return {(src.workspace_id.lower(), wcfg.source_path(name)): src.header_name for name, src in wcfg.sources.items()}


def _json(reports: list[WorkspaceReport], fail_on: FailOn) -> dict[str, Any]:
    hooks = [h for r in reports for h in r.webhooks]
    return {
        "workspaces": [asdict(r) for r in reports],
        "summary": {
            "webhooks": len(hooks),
            "with_findings": sum(1 for h in hooks if h.findings),
            "failed_workspaces": [r.workspace for r in reports if r.error],
            "fail_on": fail_on,
            "exit_code": int(exit_code(reports, fail_on)),
        },
    }


def _table(reports: list[WorkspaceReport], fail_on: FailOn) -> str:
    lines: list[str] = []
    header = ("WORKSPACE", "WEBHOOK", "NAME", "TARGET", "AUTH HEADER", "STATUS", "SEVERITY", "FINDINGS")
    rows: list[tuple[str, ...]] = []
    for r in reports:
        if r.error:
            rows.append((r.workspace, "-", "-", "-", "-", "-", "-", f"ERROR {r.error}"))
            continue
        if not r.webhooks:
            rows.append((r.workspace, "-", "-", "-", "-", "-", "-", "no webhooks"))
        for h in r.webhooks:
            status = {1: "active", -1: "error"}.get(h.status, str(h.status)) if h.status is not None else "-"
            rows.append(
                (
                    r.workspace,
                    h.id,
                    h.name or "-",
                    _cut(h.target or "-", 60),
                    ",".join(h.header_names) or "none",
                    status,
                    h.severity or "-",
                    ",".join(h.findings) or "ok",
                )
            )
    widths = [max(len(x[i]) for x in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    hooks = [h for r in reports for h in r.webhooks]
    flagged = sum(1 for h in hooks if h.findings)
    verdict = {EXIT_OK: "passing", EXIT_FINDINGS: "FAILING", EXIT_FAILED: "INCOMPLETE"}[exit_code(reports, fail_on)]
    lines.append(f"\n{len(hooks)} webhook(s), {flagged} with findings — {verdict} (--fail-on {fail_on})")
    return "\n".join(lines) + "\n"


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
