"""``instantly-audit rules lock [--check] [--rules FILE] [--output PATH]`` (see :mod:`pipeline.rules.lock`).

Without ``--rules`` it locks the rules of every installed rule pack that names a ``lock_file``;
with ``--rules FILE`` it locks the user's rules (those not from a pack) to ``--output`` (default:
``rules.lock.json`` beside FILE). Exit codes: 0 in sync (or written), 1 a rule changed without
a version bump or (``--check``) the lock differs, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config
from pipeline.rules.lock import Locked, check, current, read_lock, unbumped, write_lock
from pipeline.rules.packs import rule_packs
from pipeline.rules.rules_file import add_rules_file_arg

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _targets(args: argparse.Namespace) -> list[tuple[Path, dict[str, Locked]]]:
    """(lock path, current entries) per lock to write or check.

    Raises:
        ConfigError: the rules config is invalid, or nothing can be locked.
    """
    if args.rules:
        section, base = args.read_rules_file(args.rules)
        ruleset = parse_rules_config(section, base_dir=base)
        out = Path(args.output) if args.output else (base or Path.cwd()) / "rules.lock.json"
        return [(out, current(r for r in ruleset.rules if r.meta.id not in ruleset.builtin))]
    targets = []
    for pack in rule_packs():
        if pack.lock_file is not None:
            ruleset = parse_rules_config({}, packs=(pack,))
            targets.append((pack.lock_file, current(ruleset.rules)))
    if not targets:
        raise ConfigError("no installed rule pack names a lock file; lock your own rules with --rules FILE")
    return targets


def _lock_command(args: argparse.Namespace) -> str:
    """The ``rules lock`` command that writes the lock ``args`` checked (same ``--rules``/``--output``)."""
    argv = ["instantly-audit", "rules", "lock"]
    if args.rules:
        argv += ["--rules", args.rules]
        if args.output:
            argv += ["--output", args.output]
    return shlex.join(argv)


def cmd_lock(args: argparse.Namespace) -> int:
    """Write (or with ``--check`` verify) the rule lock files."""
    try:
        targets = _targets(args)
        problems: list[str] = []
        for path, now in targets:
            locked = read_lock(path)
            if args.check:
                problems += [f"{path}: {line}" for line in check(now, locked, path, _lock_command(args))]
                continue
            bad = unbumped(now, locked)
            if bad:
                problems += [f"{path}: {line}" for line in bad]
                continue
            write_lock(path, now)
            print(f"rules lock: {len(now)} rules locked in {path}")
    except ConfigError as err:
        print(f"rules lock: {err}", file=sys.stderr)
        return EXIT_USAGE
    for line in problems:
        print(f"rules lock: {line}", file=sys.stderr)
    if not problems and args.check:
        print(f"rules lock: {sum(len(n) for _, n in targets)} rules match their lock")
    return EXIT_FAIL if problems else EXIT_OK


def add_lock_parser(sub: Any, read_rules_file: Callable[[str | None], tuple[dict[str, Any], Path | None]]) -> None:
    """Add ``rules lock`` to the ``rules`` subcommands; ``read_rules_file`` reads ``--rules FILE``."""
    lk = sub.add_parser(
        "lock", help="record (or --check) a content hash and version per rule",
        description="Write a content hash per rule to a lock file; --check fails when a rule changed "
        "without a version bump or the lock is out of date.",
    )  # fmt: skip
    lk.add_argument("--check", action="store_true", help="compare with the lock file, write nothing")
    add_rules_file_arg(lk, help="lock the user's rules of this rules config instead of the packs")
    lk.add_argument("--output", metavar="PATH", help="lock file for --rules (default: rules.lock.json beside FILE)")
    lk.set_defaults(func=cmd_lock, read_rules_file=read_rules_file)
