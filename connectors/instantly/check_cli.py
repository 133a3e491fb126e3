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
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.instantly import repo_scan
from connectors.instantly.checklist import CHECKLIST
from connectors.instantly.posture.cross_reference import cross_reference
from connectors.instantly.posture.run import check_workspaces
from connectors.instantly.posture.settings import PostureSettings, settings_from
from pipeline.checks.render import format_json, format_sarif, format_table
from pipeline.checks.report import EXIT_USAGE, FAIL_ON_HELP, CheckResult, FailOn, exit_code, fail_on_arg
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.loader import load_config, resolve_under
from pipeline.errors import ConfigError
from pipeline.redaction.text import replace_registered


def _config_label(path: str | None) -> str | None:
    """The config path as a repository-relative URI when it is under the working directory."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


CHECK_SECTIONS: tuple[tuple[str, ...], ...] = (("workspaces",), ("secret_managers",), ("check",))
"""The config sections whose secrets ``check`` reads."""


@dataclass
class CheckRun:
    """What one ``check`` produced."""

    results: list[CheckResult]
    targets: list[str]
    fail_on: FailOn


def _load(args: argparse.Namespace) -> tuple[Any, PostureSettings | None]:
    """The config (or None) and its ``check`` section."""
    if not args.config:
        return None, None
    # check reads the workspaces' keys (Vault through secret_managers) and its own section: no
    # webhook receiver secret, no sink token
    cfg = load_config(args.config, resolve=resolve_under(*CHECK_SECTIONS))
    return cfg, cfg.section("check", PostureSettings)


async def run_check(args: argparse.Namespace, *, clock: Clock = SYSTEM_CLOCK, cfg: Any = None,
                    section: PostureSettings | Mapping[str, Any] | None = None) -> CheckRun:  # fmt: skip
    """Run the halves asked for: the configured workspaces (``cfg``) and/or ``args.repo``.

    Raises:
        ConfigError: the check settings, the rules section or the repository path is invalid.
    """
    settings = settings_from(section or {}, args)
    results: list[CheckResult] = []
    targets: list[str] = []
    live: dict[str, Any] = {}
    if cfg is not None:
        base_dir = Path(os.path.abspath(args.config)).parent if args.config else None  # noqa: ASYNC240 - no I/O
        checked = await check_workspaces(cfg, settings, clock=clock, only=args.workspace, base_dir=base_dir)
        results += checked.results
        live = checked.live_keys
        targets += [f"workspace {w}" for w in checked.checked]
    if args.repo:
        repo = Path(args.repo)
        if not await asyncio.to_thread(repo.is_dir):
            raise ConfigError(f"--repo {repo}: not a directory")
        results += await asyncio.to_thread(repo_scan.check_repository, repo, settings.repo)
        targets.append(f"repo {repo}")
        results = cross_reference(results, live)
    return CheckRun(results, targets, settings.fail_on)


def render(run: CheckRun, fmt: str, *, now: float, config_path: str | None) -> str:
    """The report in ``fmt`` (table, json or sarif)."""
    kw: dict[str, Any] = {"fail_on": run.fail_on, "targets": run.targets, "now": now, "groups": CHECKLIST}
    if fmt == "json":
        return format_json(run.results, **kw)
    if fmt == "sarif":
        return format_sarif(run.results, config_path=config_path, tags=("instantly",), **kw)
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
    # Findings quote server messages: a last pass removes every registered secret form from the report.
    text = render(run, args.format, now=now, config_path=_config_label(args.config))
    text = replace_registered(text, fingerprint=False)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        if args.format != "table":
            print(replace_registered(render(run, "table", now=now, config_path=None), fingerprint=False), end="")
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
    p.add_argument(
        "--workspace",
        action="append",
        metavar="ALIAS|ID",
        help="only this workspace: its alias in the config or its Instantly id (repeatable)",
    )
    p.add_argument("--format", choices=["table", "json", "sarif"], default="table")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report here (the table still goes to stdout)")
    p.add_argument("--fail-on", type=fail_on_arg, default=None, metavar="SEVERITY",
                   help=f"exit 1 when a check of this severity or above fails: {FAIL_ON_HELP} "
                   "(default: check.fail_on or high)")  # fmt: skip
    p.add_argument("--allowed-admin", action="append", metavar="EMAIL_OR_DOMAIN",
                   help="a member allowed to be owner/admin (repeatable; '*.acme.com' for subdomains)")  # fmt: skip
    p.add_argument("--invitation-days", type=float, metavar="N", help="pending invitations older than N days fail")
    p.add_argument("--rotation-days", type=float, metavar="N", help="keys older than N days fail (api_key.stale)")
    p.add_argument("--pipeline-key-name", metavar="NAME", help="the name of the pipeline's own key in Instantly")
    p.add_argument("--no-history", action="store_true", help="scan only the working tree, not git history")
    p.set_defaults(func=handler)
