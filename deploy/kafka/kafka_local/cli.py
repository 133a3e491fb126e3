"""The ``broker.py`` command line: fetch, up, down, restart, status, env.

Exit codes: 0 done, 1 error, 2 a broker already runs (``up``), 3 not running and 4 not ready
(``status``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .defaults import DEFAULT_LIB_DIR, DEFAULT_START_TIMEOUT, DEFAULT_STATE_DIR, DEFAULT_STOP_TIMEOUT, STATE_MARKER
from .errors import BrokerAlreadyRunning, BrokerError
from .fetch import fetch, fetched, kafka_version
from .info import load
from .lifecycle import restart, start, stop
from .process import is_running
from .readiness import check_ready


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker.py", description="Local single-node Apache Kafka broker for tests.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_state(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_STATE_DIR,
            help=f"state dir (default {DEFAULT_STATE_DIR})",
        )

    p_fetch = sub.add_parser("fetch", help="resolve the jars (Maven) unless cached")
    p_fetch.add_argument("--lib-dir", type=Path, default=DEFAULT_LIB_DIR)
    p_fetch.add_argument("--force", action="store_true", help="run Maven even if cached")
    p_up = sub.add_parser("up", help="format a fresh state dir, start, wait until ready")
    add_state(p_up)
    p_up.add_argument("--lib-dir", type=Path, default=DEFAULT_LIB_DIR)
    p_up.add_argument(
        "--flush-every-message",
        action="store_true",
        help="log.flush.interval.messages=1 (no acked loss on SIGKILL)",
    )
    p_up.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    p_down = sub.add_parser("down", help="stop (SIGTERM, SIGKILL after --timeout)")
    add_state(p_down)
    p_down.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    p_down.add_argument("--kill", action="store_true", help="SIGKILL at once")
    p_down.add_argument("--purge", action="store_true", help="delete the state dir afterwards")
    p_restart = sub.add_parser("restart", help="stop and start again on the same ports/data")
    add_state(p_restart)
    p_restart.add_argument("--kill", action="store_true", help="stop with SIGKILL")
    p_restart.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    p_status = sub.add_parser("status", help="exit 0 if running (and ready), 3 if not")
    add_state(p_status)
    p_env = sub.add_parser("env", help="print <state>/env")
    add_state(p_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``broker.py`` command; return its exit code.

    Raises:
        SystemExit: the arguments are invalid (argparse).
    """
    parser = _parser()
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            t0 = time.monotonic()
            was = fetched(args.lib_dir.resolve())
            lib = fetch(args.lib_dir, force=args.force)
            how = "cached, Maven skipped" if was and not args.force else "resolved with Maven"
            print(f"{lib} ({kafka_version(lib)}; {how}; {time.monotonic() - t0:.1f}s)")
            return 0
        state: Path = args.state_dir.resolve()
        if args.command == "up":
            t0 = time.monotonic()
            info = start(state, args.flush_every_message, lib_dir=args.lib_dir, timeout=args.timeout)
            print(
                f"Kafka {info.kafka_version} (Java {info.java_version}) pid {info.pid} ready in "
                f"{time.monotonic() - t0:.1f}s; env: {state / 'env'}",
                file=sys.stderr,
            )
            print(info.bootstrap)
            return 0
        info_opt = load(state)
        running = info_opt is not None and is_running(info_opt)
        if args.command == "down":
            if info_opt is None or not running:
                print(f"no broker running with state dir {state}; nothing to do")
                if args.purge and (state / STATE_MARKER).exists():
                    shutil.rmtree(state, ignore_errors=True)
                return 0
            stop(
                info_opt,
                signal.SIGKILL if args.kill else signal.SIGTERM,
                timeout=args.timeout,
                purge=args.purge,
            )
            print(f"stopped broker pid {info_opt.pid}" + (" and purged state" if args.purge else ""))
            return 0
        if args.command == "restart":
            if info_opt is None:
                print(f"no broker state in {state}; run `up` first", file=sys.stderr)
                return 1
            info = restart(info_opt, signal.SIGKILL if args.kill else signal.SIGTERM, timeout=args.timeout)
            print(info.bootstrap)
            return 0
        if args.command == "status":
            if info_opt is None or not running:
                print(f"not running (state dir {state})")
                return 3
            try:
                check_ready(info_opt)
                ready = "ready"
            except (OSError, BrokerError, ssl.SSLError) as exc:
                ready = f"NOT ready ({exc})"
            print(
                f"running pid {info_opt.pid}, Kafka {info_opt.kafka_version}, bootstrap {info_opt.bootstrap}, {ready}"
            )
            return 0 if ready == "ready" else 4
        if args.command == "env":
            try:
                sys.stdout.write((state / "env").read_text())
            except OSError:
                print(f"no env file in {state}; run `up` first", file=sys.stderr)
                return 1
            if not running:
                print("# warning: the broker of this env file is not running", file=sys.stderr)
            return 0
    except BrokerAlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
