"""The ``instantly-audit`` command line.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. Expected conditions
(a bad config, an unreadable secret file, a corrupt bus file) print one line naming the
problem, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.cli import sinks_cli
from pipeline.cli.base import command_plugins, describe_section
from pipeline.config.model import PipelineConfig
from pipeline.errors import BusError, ConfigError, PipelineError
from pipeline.replay import cli as replay_cli
from pipeline.rules import cli as rules_cli

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

# The runtime's own command modules; connectors add theirs through the ``instantly_audit.commands``
# registry. Each has register(subparsers) and sets func=handler(args) -> int.
RUNTIME_COMMANDS = (rules_cli, replay_cli, sinks_cli)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line on a usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config
    from pipeline.topology import validate_components

    cfg = load_config(args.file)
    problems = validate_components(cfg, Path(args.file).resolve().parent)
    if args.check_sinks:
        problems += asyncio.run(_check_sinks(cfg))
    if problems:
        for p in problems:
            print(f"config error: {p}", file=sys.stderr)
        return EXIT_USAGE
    parts = [f"bus {cfg.bus.type}", *(describe_section(k, v) for k, v in sorted(cfg.sections.items()))]
    print(f"{args.file}: ok — {', '.join(p for p in parts if p)}, {len(cfg.sinks)} sink(s)")
    return EXIT_OK


async def _check_sinks(cfg: PipelineConfig) -> list[str]:
    from pipeline.topology import check_sinks

    problems: list[str] = await check_sinks(cfg)
    return problems


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config
    from pipeline.topology import run_pipeline

    cfg = load_config(args.config)
    code: int = asyncio.run(
        run_pipeline(cfg, once=args.once, roles=set(args.role or ["all"]), config_path=Path(args.config))
    )
    return code


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the commands of every installed module."""
    p = _Parser(
        prog="instantly-audit",
        description=(
            "Security audit pipeline for Instantly.ai workspaces: polls audit logs, API keys, members, "
            "webhooks and groups; normalizes changes into events on a bus; raises alerts; delivers to SIEMs; "
            "replays any range."
        ),
    )
    p.add_argument("--version", action="version", version=f"instantly-audit {__version__}")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = p.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )

    run = sub.add_parser(
        "run",
        help="run the pipeline (pollers, rules, sinks, webhook receiver) from a config file",
        description="Run the pipeline until SIGTERM/SIGINT (then flush and stop), or once with --once.",
    )
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--once", action="store_true", help="poll every stream once, process and deliver, then exit 0")
    run.add_argument(
        "--role",
        action="append",
        choices=["all", "pollers", "rules", "sinks", "webhook"],
        help="run only these roles (repeatable); separate processes can share one Kafka cluster",
    )
    run.set_defaults(func=_cmd_run)

    cfg = sub.add_parser("config", help="configuration tools", description="Configuration tools.")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser, required=True)
    val = cfg_sub.add_parser(
        "validate",
        help="validate a config file (and optionally reach each sink)",
        description="Validate a config file: YAML, types, unknown keys, secrets (env/file) and each sink's "
        "options. Exit 0 when valid, 2 otherwise.",
    )
    val.add_argument("file")
    val.add_argument("--check-sinks", action="store_true", help="also run each sink's health check")
    val.set_defaults(func=_cmd_config_validate)

    for mod in (*RUNTIME_COMMANDS, *command_plugins().values()):
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        return code
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as err:
        print(f"bus error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
