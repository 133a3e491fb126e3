"""The ``instantly-audit`` command line.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. Expected conditions
(a bad config, an unreadable secret file, a corrupt bus file) print one line naming the
problem, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.errors import BusError, ConfigError, PipelineError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

# Modules that add commands: each has register(subparsers) and sets func=handler(args) -> int.
COMMAND_MODULES = (
    "pipeline.rules.cli",
    "pipeline.replay_cli",
    "pipeline.check_cli",
    "connectors.instantly.webhooks_cli",
    "connectors.instantly.keys_cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line on a usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.topology import validate_components

    cfg = load_config(args.file)
    problems = validate_components(cfg, Path(args.file).resolve().parent)
    if args.check_sinks:
        problems += asyncio.run(_check_sinks(cfg))
    if problems:
        for p in problems:
            print(f"config error: {p}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok — bus {cfg.bus.type}, {len(cfg.workspaces)} workspace(s), {len(cfg.sinks)} sink(s)")
    return EXIT_OK


async def _check_sinks(cfg: PipelineConfig) -> list[str]:
    from pipeline.topology import check_sinks

    problems: list[str] = await check_sinks(cfg)
    return problems


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.topology import run_pipeline

    cfg = load_config(args.config)
    code: int = asyncio.run(
        run_pipeline(cfg, once=args.once, roles=set(args.role or ["all"]), config_path=Path(args.config))
    )
    return code


def _cmd_demo(args: argparse.Namespace) -> int:
    # The demo is Instantly-specific; the CLI is the composition root that may name it.
    demo = importlib.import_module("connectors.instantly.demo")
    if args.speed <= 0:
        raise ConfigError("--speed must be positive")
    code: int = asyncio.run(demo.run_demo(speed=args.speed, workdir=Path(args.workdir) if args.workdir else None))
    return code


def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        server = importlib.import_module("connectors.instantly.sim.server")
    except ImportError as err:  # pragma: no cover - the simulator ships with the package
        raise PipelineError(f"the Instantly simulator is not installed: {err}") from err
    scenario = Path(args.scenario) if args.scenario else None
    if scenario is not None and not scenario.exists():
        raise ConfigError(f"scenario file {scenario} does not exist")
    try:
        asyncio.run(server.serve(args.host, args.port, scenario, args.seed))
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


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

    demo = sub.add_parser(
        "demo",
        help="no configuration needed: simulate a scripted incident and watch events and alerts",
        description="Starts the Instantly simulator with a scripted incident, runs the pipeline on the embedded "
        "bus, and shows events and alerts as they happen. Exits 0 within a minute.",
    )
    demo.add_argument("--speed", type=float, default=1.0, help="scenario speed factor (2 = twice as fast)")
    demo.add_argument("--workdir", help="keep the demo bus in this directory (default: a temporary one)")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser(
        "simulate",
        help="serve the Instantly API v2 simulator (for rehearsals and tests)",
        description="Serve a faithful local Instantly API v2 (keys, members, webhooks, audit logs, rate limits).",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8787)
    sim.add_argument("--scenario", help="YAML scenario to play (timed actions)")
    sim.add_argument("--seed", type=int, default=1)
    sim.set_defaults(func=_cmd_simulate)

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

    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name == mod_name:
                continue
            raise
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = mod.register
        register(sub)
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
