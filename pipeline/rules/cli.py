"""``instantly-audit rules``: ``rules test [DIR] [--rules FILE]``, ``rules list [--rules FILE]`` and
``rules lock`` (:mod:`pipeline.rules.lock_cli`).

``--rules FILE`` is a YAML file holding either a whole pipeline config (its ``rules`` section
is used) or just the rules section. Custom rule ``files`` in it are relative to the file.
Exit codes: 0 all cases pass, 1 a case failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config
from pipeline.rules.lock_cli import add_lock_parser

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def read_rules_file(path: str | None) -> tuple[dict[str, Any], Path | None]:
    """The rules section from ``--rules FILE`` and the directory to resolve its paths against.

    Raises:
        ConfigError: the file is unreadable, not YAML, or not a mapping.
    """
    if path is None:
        return {}, None
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--rules {p}: cannot read ({err.strerror or type(err).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--rules {p}: not valid YAML ({type(err).__name__})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--rules {p}: must be a mapping (a config file or its rules section)")
    # A rules section never has a "rules" key (its keys are settings and dotted rule ids).
    section = (data["rules"] or {}) if "rules" in data else data
    if not isinstance(section, dict):
        raise ConfigError(f"--rules {p}: the rules section must be a mapping")
    return section, p.resolve().parent


def cmd_test(args: argparse.Namespace) -> int:
    """Run the YAML cases under ``args.dir`` and print a report per rule."""
    from pipeline.rules.suite import run_suite

    try:
        section, base = read_rules_file(args.rules)
        ruleset = parse_rules_config(section, base_dir=base)  # fail fast, with exit 2, on a bad config
        report = run_suite(ruleset, section, base, Path(args.dir) if args.dir else None)
    except ConfigError as err:
        print(f"rules test: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not report.results:
        print(f"rules test: no case files under {args.dir or 'the installed rule packs'}", file=sys.stderr)
        return EXIT_USAGE
    print(report.format())
    return EXIT_FAIL if report.failed else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    """Print every rule with its severity, kind, state and the basic it enforces."""
    try:
        section, base = read_rules_file(args.rules)
        ruleset = parse_rules_config(section, base_dir=base)
    except ConfigError as err:
        print(f"rules list: {err}", file=sys.stderr)
        return EXIT_USAGE
    rows = [
        (r.meta.id, r.params.severity or r.meta.severity, r.meta.kind, "on" if r.params.enabled else "off",
         ",".join(r.meta.attack), r.meta.basic, r.meta.status)
        for r in ruleset.rules
    ]  # fmt: skip
    head = ("RULE", "SEVERITY", "KIND", "ENABLED", "ATT&CK", "SECURITY BASIC", "STATUS")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for row in (head, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a subcommand: test, list or lock", file=sys.stderr)
        return EXIT_USAGE

    return show


def register(subparsers: Any) -> None:
    """Add the ``rules`` command (``test``, ``list`` and ``lock``) to the CLI's subparsers."""
    p = subparsers.add_parser(
        "rules", help="test and list detection rules",
        description="Run rule test cases (YAML: events in, expected alerts out) or list the rules.",
    )  # fmt: skip
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    t = sub.add_parser(
        "test", help="run YAML test cases and report per rule",
        description="Run every case file under DIR (default: the cases every installed rule pack ships).",
    )  # fmt: skip
    t.add_argument("dir", metavar="DIR", nargs="?", help="a case file or a directory of case files")
    t.add_argument("--rules", metavar="FILE", help="rules config (a config file or its rules section)")
    t.set_defaults(func=cmd_test)
    ls = sub.add_parser("list", help="list the rules, their severity and whether they run")
    ls.add_argument("--rules", metavar="FILE", help="rules config (a config file or its rules section)")
    ls.set_defaults(func=cmd_list)
    add_lock_parser(sub, read_rules_file)
    p.set_defaults(func=_usage(p))
