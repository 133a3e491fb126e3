"""``instantly-audit demo`` and ``instantly-audit simulate``: the scripted incident and the local
Instantly API v2 simulator (registered as CLI commands by entry point)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from connectors.instantly.demo import run_demo
from connectors.instantly.sim.server import serve
from pipeline.errors import ConfigError


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        raise ConfigError("--speed must be positive")
    code: int = asyncio.run(run_demo(speed=args.speed, workdir=Path(args.workdir) if args.workdir else None))
    return code


def _cmd_simulate(args: argparse.Namespace) -> int:
    scenario = Path(args.scenario) if args.scenario else None
    if scenario is not None and not scenario.exists():
        raise ConfigError(f"scenario file {scenario} does not exist")
    try:
        asyncio.run(serve(args.host, args.port, scenario, args.seed))
    except KeyboardInterrupt:
        return 0
    return 0


def register(sub: Any) -> None:
    """Add ``demo`` and ``simulate``."""
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
