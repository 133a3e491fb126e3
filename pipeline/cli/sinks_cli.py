"""``instantly-audit sinks``: sink tools that do not run the pipeline.

``sinks setup NAME`` installs what a configured sink needs at its destination (index
templates, lifecycle policies...), idempotently, through the sink's ``setup()`` method
(:class:`~pipeline.delivery.base.SettingUpSink`); ``sinks list`` prints each configured sink
with its type and the record format it sends.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.delivery.base import SettingUpSink
from pipeline.delivery.registry import build_sink
from pipeline.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sinks`` command."""
    p = sub.add_parser("sinks", help="sink tools: install destination setup, list sinks",
                       description="Sink tools that do not run the pipeline.")  # fmt: skip
    sinks_sub = p.add_subparsers(dest="sinks_command", metavar="SUBCOMMAND", required=True)
    setup = sinks_sub.add_parser(
        "setup",
        help="install what a sink needs at its destination (e.g. Elasticsearch templates); idempotent",
        description="Install the destination setup of the sink NAME (index templates, lifecycle policies). "
        "Running it again changes nothing. Exit 0 when done, 2 for a config error, 1 when the destination refused.",
    )
    setup.add_argument("name", help="the sink's name under sinks: in the config")
    setup.add_argument("--config", "-c", help=CONFIG_HELP)
    setup.set_defaults(func=_cmd_setup)
    lst = sinks_sub.add_parser("list", help="list the configured sinks with their type and format")
    lst.add_argument("--config", "-c", help=CONFIG_HELP)
    lst.set_defaults(func=_cmd_list)


def _cmd_setup(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config, resolve_under

    cfg = load_config(config_path(args.config), resolve=resolve_under(("sinks", args.name)))
    if args.name not in cfg.sinks:
        known = ", ".join(sorted(cfg.sinks)) or "none configured"
        raise ConfigError(f"sinks setup {args.name}: no such sink (known: {known})")
    sink: Any = build_sink(args.name, cfg.sinks[args.name])
    if not isinstance(sink, SettingUpSink):
        print(f"{args.name}: sink type {cfg.sinks[args.name].type!r} needs no setup")
        return 0
    for line in asyncio.run(_setup(sink)):
        print(f"{args.name}: {line}")
    return 0


async def _setup(sink: Any) -> list[str]:
    async with sink:
        lines: list[str] = await sink.setup()
    return lines


def _cmd_list(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config, resolve_nothing

    cfg = load_config(config_path(args.config), resolve=resolve_nothing)
    for sid, scfg in sorted(cfg.sinks.items()):
        print(f"{sid}\t{scfg.type}\tformat={scfg.record_format}")
    return 0
