"""``instantly-audit gaps``: list the hours whose completeness ledger changed after they closed, or
that were not polled live, per workspace — read from the receipts topic on the bus.

Exit 0 when no hour in range has a gap, 1 when some do (findings), 2 for a config or usage error.
``--format json`` prints the document ``replay --hours FILE`` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.cli.exit_codes import Exit
from pipeline.clock import SYSTEM_CLOCK
from pipeline.completeness.gaps import ReceiptScan, find_gaps, gaps_document, read_receipts
from pipeline.errors import ConfigError
from pipeline.replay.scan import parse_when


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gaps`` command."""
    p = sub.add_parser(
        "gaps",
        help="hours whose completeness ledger changed after they closed, or that were not polled live",
        description=(
            "Read the completeness receipts (instantly.receipts.v1) from the bus and list, per workspace, the "
            "hours whose ledger changed after the hour first closed or whose polling was interrupted. "
            "Exit 0 when there is none, 1 when some are listed. '--format json' is what 'replay --hours' reads."
        ),
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.add_argument("--since", help="first hour: 2026-11-01T00:00Z, 2026-11-01, or relative 7d/12h/30m")
    p.add_argument("--until", help="end (exclusive), same forms as --since")
    p.add_argument(
        "--workspace", action="append", default=[], metavar="ALIAS|ID", help="only this workspace (repeatable)"
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def time_range(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """``--since`` / ``--until`` as epoch seconds.

    Raises:
        ConfigError: a bad time, or ``--until`` not after ``--since``.
    """
    since = parse_when(args.since, SYSTEM_CLOCK, "--since") if args.since else None
    until = parse_when(args.until, SYSTEM_CLOCK, "--until") if args.until else None
    if since is not None and until is not None and until <= since:
        raise ConfigError("--until must be after --since")
    if since is not None:
        since = since // 3600 * 3600  # the hour that holds it
    return since, until


def run(args: argparse.Namespace) -> int:
    """Entry point of the command.

    Raises:
        ConfigError: the config or a time is invalid.
        BusError: the bus cannot be read.
    """
    from pipeline.config.loader import load_config, resolve_under

    cfg = load_config(config_path(args.config), resolve=resolve_under(("bus",)))
    since, until = time_range(args)
    scan = asyncio.run(_read(cfg, since, until, tuple(args.workspace)))
    gaps = find_gaps(scan.receipts)
    if args.format == "json":
        print(orjson.dumps(gaps_document(gaps, receipts=len(scan.receipts)), option=orjson.OPT_INDENT_2).decode())
    else:
        _table(gaps)
        note = " (the bus has no receipts topic yet)" if scan.topic_missing else ""
        print(f"{len(gaps)} hour(s) with gaps among {len(scan.receipts)} receipt(s){note}", file=sys.stderr)
    if scan.undecodable:
        print(f"gaps: {scan.undecodable} undecodable record(s) on the receipts topic skipped", file=sys.stderr)
    return Exit.FINDINGS if gaps else Exit.OK


async def _read(cfg: Any, since: float | None, until: float | None, workspaces: tuple[str, ...]) -> ReceiptScan:
    from pipeline.bus.factory import open_bus

    async with open_bus(cfg.bus, read_only=True) as bus:
        return await read_receipts(bus, since=since, until=until, workspaces=workspaces)


def _table(gaps: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(header_style="bold")
    for col in ("workspace", "hour (UTC)", "reasons", "revision", "seen", "published", "dead", "late", "closed at"):
        t.add_column(col, overflow="fold")
    for g in gaps:
        t.add_row(
            g.source.id if g.source.id == g.workspace.id else f"{g.source.id} ({g.workspace.id})",
            g.hour[:13].replace("T", " ") + ":00",
            ", ".join(g.gap_reasons()),
            str(g.revision),
            str(g.seen),
            str(g.published),
            str(g.dead_lettered),
            str(g.late),
            (g.first_closed_at or "")[:19].replace("T", " "),
        )
    Console().print(t)
