"""``instantly-audit webhooks check``: list each workspace's Instantly webhooks and report weak ones.

Findings per webhook (the same facts the rules read, from
:func:`connectors.instantly.normalize.webhook_attributes`):

* ``no_auth_header`` — the webhook sends no custom header, so nothing authenticates its deliveries;
* ``insecure_url`` — the target is ``http://``: the secret header and lead data cross the network in clear;
* ``in_error`` — Instantly disabled it after delivery failures (``status -1``); ``POST …/resume`` re-enables it;
* ``receiver_header_missing`` — it targets a source of this config's ``webhook:`` receiver (same
  workspace and path) but does not send that source's ``header_name``, so every delivery gets 401.

Header values are never printed (names only) and target URLs lose credentials and secret-looking
query values. Exit codes: 0 no findings, 3 findings, 2 configuration error, 1 API failure.
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
from connectors.instantly.redact import redact_url
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.cli.exit_codes import Exit
from pipeline.config.loader import load_config, resolve_under
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError, SourceError
from pipeline.observability.logs import register_secret
from pipeline.redaction.text import replace_registered

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_FAILED = Exit.OK, Exit.FINDINGS, Exit.USAGE, Exit.INCOMPLETE
"""Findings 1; a workspace whose webhooks could not be listed 3 (the shared contract, pipeline/cli/exit_codes.py)."""


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
            "Exit 0: no findings; 3: findings; 2: configuration error; 1: API failure."
        ),
    )
    chk.add_argument("--config", "-c", help=f"the pipeline's YAML config (workspaces and keys); {CONFIG_HELP}")
    chk.add_argument("--workspace", action="append", default=[], help="a configured workspace id (repeatable)")
    chk.add_argument("--format", choices=["table", "json"], default="table")
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
    reports = asyncio.run(check_workspaces(cfg, selected))
    out = sys.stdout
    # A workspace error quotes the server's message: a last pass removes every registered secret form.
    if args.format == "json":
        doc = orjson.dumps(_json(reports), option=orjson.OPT_INDENT_2).decode()
        out.write(replace_registered(doc, fingerprint=False) + "\n")
    else:
        out.write(replace_registered(_table(reports), fingerprint=False))
    if any(r.error for r in reports):
        return EXIT_FAILED
    return EXIT_FINDINGS if any(h.findings for r in reports for h in r.webhooks) else EXIT_OK


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
        async with InstantlyClient(wcfg) as client:
            hooks = await client.get_all(WEBHOOKS.path, limit=page_limit(WEBHOOKS))
    except SourceError as err:
        report.error = f"{type(err).__name__}: {err}"
        return report
    for hook in hooks:
        report.webhooks.append(judge(hook, expected or {}))
    return report


def judge(hook: dict[str, Any], expected: dict[tuple[str, str], str]) -> HookReport:
    """The findings of one Webhook object."""
    attrs = webhook_attributes(hook)
    target = attrs.get("target_hook_url")
    rep = HookReport(
        id=str(hook.get("id")),
        name=attrs.get("name"),
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


def _json(reports: list[WorkspaceReport]) -> dict[str, Any]:
    hooks = [h for r in reports for h in r.webhooks]
    return {
        "workspaces": [asdict(r) for r in reports],
        "summary": {
            "webhooks": len(hooks),
            "with_findings": sum(1 for h in hooks if h.findings),
            "failed_workspaces": [r.workspace for r in reports if r.error],
        },
    }


def _table(reports: list[WorkspaceReport]) -> str:
    lines: list[str] = []
    header = ("WORKSPACE", "WEBHOOK", "NAME", "TARGET", "AUTH HEADER", "STATUS", "FINDINGS")
    rows: list[tuple[str, ...]] = []
    for r in reports:
        if r.error:
            rows.append((r.workspace, "-", "-", "-", "-", "-", f"ERROR {r.error}"))
            continue
        if not r.webhooks:
            rows.append((r.workspace, "-", "-", "-", "-", "-", "no webhooks"))
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
                    ",".join(h.findings) or "ok",
                )
            )
    widths = [max(len(x[i]) for x in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    hooks = [h for r in reports for h in r.webhooks]
    flagged = sum(1 for h in hooks if h.findings)
    lines.append(f"\n{len(hooks)} webhook(s), {flagged} with findings")
    return "\n".join(lines) + "\n"


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
