"""``instantly-audit demo`` and ``instantly-audit simulate``: the scripted incident and the local
Instantly API v2 simulator (registered as CLI commands by entry point).

``simulate`` prints where the API is, the workspace and two fake keys (a read-only poller key
and an admin key to rehearse ``keys rotate``), and with ``--write-config PATH`` writes a config
that ``instantly-audit run -c PATH`` uses at once (the keys go to files beside it, mode 0600).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from pathlib import Path
from typing import Any

from connectors.instantly import api
from connectors.instantly.demo import run_demo
from connectors.instantly.sim.server import Rehearsal, bind, serve
from pipeline.cli.base import program_name
from pipeline.cli.exit_codes import Exit
from pipeline.errors import ConfigError, PipelineError

POLLER_KEY_FILE = "simulator-poller.key"
ADMIN_KEY_FILE = "simulator-admin.key"


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        raise ConfigError("--speed must be positive")
    code: int = asyncio.run(run_demo(speed=args.speed, workdir=Path(args.workdir) if args.workdir else None))
    return code


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


CONFIG_HEADER = "# Written by `instantly-audit simulate --write-config`"
"""The first line of every config the simulator writes: a file that starts otherwise is not ours."""


def refuse_overwrite(path: Path) -> str | None:
    """Why ``--write-config PATH`` must not write (``PATH`` exists and the simulator did not write it), or None."""
    try:
        with path.open("rb") as f:
            head = f.read(len(CONFIG_HEADER.encode()))
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"--write-config {path}: cannot read it ({err.strerror or type(err).__name__})"
    if head == CONFIG_HEADER.encode():
        return None
    return (
        f"--write-config {path}: the file exists and the simulator did not write it; "
        f"refusing to replace it and the {POLLER_KEY_FILE} / {ADMIN_KEY_FILE} beside it (--force to replace)"
    )


def config_text(r: Rehearsal) -> str:
    """A ready config for the simulator (keys read from files beside it)."""
    ws = r.world.workspace
    return f"""{CONFIG_HEADER} for the local simulator at {r.base_url}.
# Paths are relative to this file. Next:
#   instantly-audit config validate <this file>
#   instantly-audit run -c <this file> --once
#   instantly-audit replay -c <this file> --since 30d
#   instantly-audit check -c <this file>
bus: {{type: sqlite, path: data/bus.db}}
workspaces:
  acme:
    name: {ws.name}
    base_url: {r.base_url}
    api_key_file: {POLLER_KEY_FILE}       # read-only scopes (fake secret)
    poll_interval_secs: 5
rotation:
  admin_api_key_file: {ADMIN_KEY_FILE}    # to rehearse `instantly-audit keys rotate` (fake secret)
sinks:
  archive: {{type: jsonl, path: data/events.jsonl}}
service: {{port: 0}}                        # any free port for /metrics, /healthz, /readyz
"""


def write_config(path: Path, r: Rehearsal) -> None:
    """Write the config and its two key files (0600, never through a symlink).

    Raises:
        PipelineError: a file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path.parent / POLLER_KEY_FILE, r.world.poller_key.key + "\n")
        _write_private(path.parent / ADMIN_KEY_FILE, r.admin_key.key + "\n")
        _write_private(path, config_text(r))
    except OSError as err:
        raise PipelineError(f"--write-config {path}: cannot write ({err.strerror or type(err).__name__})") from None


def banner(r: Rehearsal, written: Path | None, prog: str = "instantly-audit") -> str:
    """What ``simulate`` prints once it listens (``prog``: how to type this command, in the hint)."""
    ws = r.world.workspace
    lines = [
        f"Instantly API v2 simulator listening on {r.base_url}{api.API_PREFIX}",
        f"  workspace  {ws.id}  {ws.name!r} (alias acme in the written config)",
        f"  poller key {r.world.poller_key.key}   read-only scopes — FAKE secret, simulator only",
        f"  admin key  {r.admin_key.key}   api_keys:all — FAKE secret, to rehearse `keys rotate`",
    ]
    if written is not None:
        lines.append(f"  config     {written} (keys in {POLLER_KEY_FILE}, {ADMIN_KEY_FILE} beside it)")
        lines.append(f"Next: {prog} run -c {written} --once")
    else:
        lines.append(f"Next: {prog} simulate --write-config sim/instantly-audit.yaml (a ready config)")
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


def _cmd_simulate(args: argparse.Namespace) -> int:
    scenario = Path(args.scenario) if args.scenario else None
    if scenario is not None and not scenario.exists():
        raise ConfigError(f"scenario file {scenario} does not exist")
    target = Path(args.write_config) if args.write_config else None
    if target is not None and not args.force and (why := refuse_overwrite(target)):
        print(f"simulate: {why}", file=sys.stderr)
        return int(Exit.USAGE)

    try:  # the port first: a busy one is said before any other work
        sock = bind(args.host, args.port)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise PipelineError(
                f"port {args.port} on {args.host} is already in use; pick another with --port"
            ) from None
        raise PipelineError(f"cannot serve on {args.host}:{args.port} ({err.strerror or err})") from None

    def ready(r: Rehearsal) -> None:
        if target is not None:
            write_config(target, r)
        print(banner(r, target, program_name()), flush=True)

    try:
        asyncio.run(serve(args.host, args.port, scenario, args.seed, on_ready=ready, agency=args.agency, sock=sock))
    except KeyboardInterrupt:
        return 0
    except OSError as err:
        raise PipelineError(f"cannot serve on {args.host}:{args.port} ({err.strerror or err})") from None
    finally:
        sock.close()
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
        description="Serve a faithful local Instantly API v2 (keys, members, webhooks, audit logs, rate limits). "
        "Prints the URL, the workspace and two fake keys; --write-config writes a ready config.",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8787)
    sim.add_argument("--scenario", help="YAML scenario to play (timed actions)")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument(
        "--agency",
        type=int,
        default=0,
        metavar="N",
        help="serve an agency: N sub-workspaces in the workspace's group (a --scenario adds and removes more)",
    )
    sim.add_argument("--write-config", metavar="PATH", help="write a config for this simulator (and its key files)")
    sim.add_argument(
        "--force", action="store_true", help="let --write-config replace a file the simulator did not write"
    )
    sim.set_defaults(func=_cmd_simulate)


__all__ = ["banner", "config_text", "refuse_overwrite", "register", "write_config"]
