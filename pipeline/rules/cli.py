"""``instantly-audit rules``: ``rules test [DIR] [--rules FILE]``, ``rules list [--rules FILE]``,
``rules lock`` (:mod:`pipeline.rules.lock_cli`); ``export``, ``import`` and ``coverage``
(:mod:`pipeline.rules.cli_interop`).

``--rules FILE`` is a YAML file holding either a whole pipeline config (its ``rules`` section
is used) or just the rules section. Custom rule ``files`` in it are relative to the file.
Exit codes: 0 all cases pass, 1 a case failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import ConfigError
from pipeline.rules.cli_interop import register_interop
from pipeline.rules.config import parse_rules_config
from pipeline.rules.lock_cli import add_lock_parser
from pipeline.rules.rules_file import EXIT_FAIL, EXIT_OK, EXIT_USAGE, add_rules_file_arg, read_rules_file

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "read_rules_file", "register"]


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
    if args.format == "json":
        doc = {
            "passed": not report.failed,
            "rules": {rid: {"passed": ok, "failed": bad} for rid, (ok, bad) in report.by_rule().items()},
            "cases": [
                {
                    "rule": r.rule,
                    "name": r.name,
                    "file": r.file,
                    "kind": r.kind,
                    "passed": r.passed,
                    "problems": r.problems,
                }
                for r in report.results
            ],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
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
    if args.format == "json":
        keys = ("id", "severity", "kind", "enabled", "attack", "basic", "status")
        docs = [dict(zip(keys, (*row[:3], row[3] == "on", row[4].split(",") if row[4] else [], *row[5:]), strict=True))
                for row in rows]  # fmt: skip
        print(orjson.dumps(docs, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    head = ("RULE", "SEVERITY", "KIND", "ENABLED", "ATT&CK", "SECURITY BASIC", "STATUS")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for row in (head, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(
            f"{parser.prog}: error: choose a subcommand: test, list, lock, export, import or coverage", file=sys.stderr
        )
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
    add_rules_file_arg(t)
    t.add_argument("--format", choices=["text", "json"], default="text")
    t.set_defaults(func=cmd_test)
    ls = sub.add_parser("list", help="list the rules, their severity and whether they run")
    add_rules_file_arg(ls)
    ls.add_argument("--format", choices=["text", "json"], default="text")
    ls.set_defaults(func=cmd_list)
    register_interop(sub)
    add_lock_parser(sub, read_rules_file)
    p.set_defaults(func=_usage(p))
