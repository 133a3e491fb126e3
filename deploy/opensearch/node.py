#!/usr/bin/env python3
"""Local single-node OpenSearch for tests, without Docker (standard library only).

The node is the real OpenSearch (``org.opensearch:opensearch``, version pinned in ``pom.xml``
beside this file) with the ``transport-netty4``, ``lang-painless`` and ``analysis-common``
modules, run from jars that Maven copies into ``.cache`` (see ``node_home.py`` for the
OPENSEARCH_HOME it lays out). As a CLI::

    python3 deploy/opensearch/node.py fetch     # resolve jars (Maven) unless cached, lay out the home
    python3 deploy/opensearch/node.py up        # fresh state dir, start, wait until yellow
    python3 deploy/opensearch/node.py status    # exit 0 if running, 3 if not (prints RSS)
    python3 deploy/opensearch/node.py down [--purge]

and importable (``start``, ``stop``, ``load``, ``is_running``, ``NodeInfo``).

``start`` picks two free loopback ports (HTTP, transport), writes ``config/opensearch.yml``
and ``config/log4j2.properties`` into a fresh state dir (``data/``, ``logs/``, ``tmp/`` too),
launches ``org.opensearch.bootstrap.OpenSearch`` detached (own session, output appended to
``<state>/node.log``, pid in ``<state>/node.pid``) and waits until
``GET /_cluster/health?wait_for_status=yellow`` answers. It then writes ``<state>/env``
(``export OPENSEARCH_URL=http://127.0.0.1:<port>`` and more) and ``<state>/node.json``,
which records the boot time and the resident memory when ready.

The java command line and process helpers are in ``node_process.py`` (including why JNA's
native part is kept off: the node then runs as root, as CI does).

Environment: ``OPENSEARCH_NODE_CACHE`` (jar cache), ``OPENSEARCH_NODE_STATE_DIR`` (default
state dir), ``OPENSEARCH_NODE_HEAP`` (default ``512m``), ``OPENSEARCH_NODE_JAVA_OPTS`` (extra
JVM flags), ``OPENSEARCH_NODE_LOG_LEVEL`` (root level, default WARN), ``OPENSEARCH_NODE_MVN``
(Maven executable).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_home  # the sibling modules, found whether run as a script or loaded by path
import node_process
from node_process import NodeError

HOST: Final = node_process.HOST
CACHE: Final = Path(os.environ.get("OPENSEARCH_NODE_CACHE") or node_home.DEFAULT_CACHE)
DEFAULT_STATE_DIR: Final = Path(os.environ.get("OPENSEARCH_NODE_STATE_DIR") or CACHE / "run")
STATE_MARKER: Final = ".opensearch-node-state"
LOCK_NAME: Final = ".lock"
DEFAULT_START_TIMEOUT: Final = 180.0
DEFAULT_STOP_TIMEOUT: Final = 30.0


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What a client or test needs to know about one running node (``<state>/node.json``)."""

    state_dir: str
    pid: int
    pgid: int
    opensearch_version: str
    java: str
    java_version: int
    home: str
    http_port: int
    transport_port: int
    url: str
    log_file: str
    started_at: float
    ready_seconds: float = 0.0
    rss_mib_at_ready: float = 0.0

    def env(self) -> dict[str, str]:
        """The environment variables written to ``<state>/env``."""
        return {
            "OPENSEARCH_URL": self.url,
            "OPENSEARCH_VERSION": self.opensearch_version,
            "OPENSEARCH_NODE_STATE_DIR": self.state_dir,
            "OPENSEARCH_NODE_PID": str(self.pid),
            "OPENSEARCH_NODE_LOG": self.log_file,
        }


def load(state_dir: str | os.PathLike[str] | None = None) -> NodeInfo | None:
    """Read ``<state_dir>/node.json``; ``None`` if there is none."""
    state = Path(state_dir or DEFAULT_STATE_DIR).resolve()
    try:
        raw: dict[str, Any] = json.loads((state / "node.json").read_text())
        names = {f.name for f in dataclasses.fields(NodeInfo)}
        return NodeInfo(**{k: v for k, v in raw.items() if k in names})
    except (OSError, ValueError, TypeError):
        return None


def _write_facts(info: NodeInfo) -> None:
    state = Path(info.state_dir)
    (state / "node.json.tmp").write_text(json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True) + "\n")
    (state / "node.json.tmp").replace(state / "node.json")
    lines = [f"# OpenSearch test node (deploy/opensearch/node.py), pid {info.pid}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in info.env().items()]
    (state / "env.tmp").write_text("\n".join(lines) + "\n")
    (state / "env.tmp").replace(state / "env")


# --------------------------------------------------------------------------- start / stop


def is_running(info: NodeInfo) -> bool:
    """Whether the node of ``info`` is running."""
    return node_process.pid_is_node(info.pid, Path(info.state_dir))


def _wait_ready(info: NodeInfo, offset: int, deadline: float) -> None:
    log_file = Path(info.log_file)
    last = "no attempt yet"
    while True:
        if not is_running(info):
            raise NodeError(f"node {info.pid} exited before it was ready; log tail ({log_file}):\n"
                            f"{node_process.log_tail(log_file, offset)}")  # fmt: skip
        try:
            node_process.health(info.url)
            return
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise NodeError(f"node {info.pid} not ready in time (last probe: {last}); log tail ({log_file}):\n"
                            f"{node_process.log_tail(log_file, offset)}")  # fmt: skip
        time.sleep(0.25)


def _prepare(state: Path) -> None:
    entries = [p for p in state.iterdir() if p.name != LOCK_NAME] if state.exists() else []
    if entries and not (state / STATE_MARKER).exists():
        raise NodeError(f"refusing to use {state}: it is not empty and was not created by node.py")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for sub in ("config", "data", "logs", "tmp"):
        (state / sub).mkdir(parents=True)
    (state / STATE_MARKER).write_text("state dir of deploy/opensearch/node.py; wiped on `up`\n")


def start(state_dir: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_START_TIMEOUT) -> NodeInfo:
    """Wipe ``state_dir``, start a node in it and return once the cluster is yellow.

    A port taken between picking and binding is retried with new ports.

    Raises:
        NodeError: a node already runs there, the dir is foreign, or the node did not start in time.
        node_home.FetchError: no jars or no suitable JDK.
    """
    state = Path(state_dir or DEFAULT_STATE_DIR).resolve()
    home = node_home.fetch(CACHE)
    java, java_version = node_home.find_java()
    state.mkdir(parents=True, exist_ok=True)
    with node_home.flock(state / LOCK_NAME):
        running = load(state)
        if running is not None and is_running(running):
            raise NodeError(f"a node already runs with state dir {state} (pid {running.pid}, {running.url})")
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            _prepare(state)
            http_port, transport_port = node_process.free_ports(2)
            for name, text in node_home.config_files(state, http_port, transport_port).items():
                (state / "config" / name).write_text(text)
            log_file = state / "node.log"
            launched = time.monotonic()
            pid, pgid, offset = node_process.launch(node_process.jvm_command(java, home, state), state, log_file)
            info = NodeInfo(
                state_dir=str(state), pid=pid, pgid=pgid, opensearch_version=node_home.installed_version(home),
                java=java, java_version=java_version, home=str(home), http_port=http_port,
                transport_port=transport_port, url=f"http://{HOST}:{http_port}", log_file=str(log_file),
                started_at=time.time(),
            )  # fmt: skip
            _write_facts(info)
            try:
                _wait_ready(info, offset, deadline)
            except NodeError:
                stop(info, signal.SIGKILL)
                tail = node_process.log_tail(log_file, offset, 200_000)
                if attempt < 2 and "BindException" in tail and time.monotonic() < deadline:
                    continue
                raise
            ready = round(time.monotonic() - launched, 3)
            info = dataclasses.replace(info, ready_seconds=ready, rss_mib_at_ready=node_process.rss_mib(pid))
            _write_facts(info)
            return info
    raise NodeError("unreachable")  # pragma: no cover


def stop(
    info: NodeInfo, sig: int = signal.SIGTERM, *, timeout: float = DEFAULT_STOP_TIMEOUT, purge: bool = False
) -> bool:
    """Stop the node: ``sig`` to its process group, SIGKILL after ``timeout`` s; False if it was not running.

    With ``purge`` the state dir is deleted afterwards.

    Raises:
        NodeError: the node survived SIGKILL.
    """
    state = Path(info.state_dir)
    was_running = is_running(info)
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 10.0)):
        if not is_running(info):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if info.pgid > 0 and info.pgid != os.getpgrp():
                os.killpg(info.pgid, signum)
            else:
                os.kill(info.pid, signum)
        end = time.monotonic() + wait
        while is_running(info) and time.monotonic() < end:
            time.sleep(0.05)
    if is_running(info):
        raise NodeError(f"node pid {info.pid} survived SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        (state / "node.pid").unlink()
    if purge and (state / STATE_MARKER).exists():
        shutil.rmtree(state, ignore_errors=True)
    return was_running


# --------------------------------------------------------------------------- CLI


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="node.py", description="Local single-node OpenSearch for tests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve the jars (Maven) unless cached; lay out the home")
    p_fetch.add_argument("--force", action="store_true", help="run Maven even if cached")
    for name, text in (("up", "wipe the state dir, start, wait until yellow"), ("down", "stop (SIGTERM, then SIGKILL)"),
                       ("status", "exit 0 if running, 3 if not"), ("env", "print <state>/env")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
        if name == "up":
            p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
        if name == "down":
            p.add_argument("--purge", action="store_true", help="delete the state dir afterwards")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            t0, was = time.monotonic(), node_home.is_fetched(CACHE)
            home = node_home.fetch(CACHE, force=args.force)
            how = "cached, Maven skipped" if was and not args.force else "resolved with Maven"
            print(f"{home} (OpenSearch {node_home.installed_version(home)}; {how}; {time.monotonic() - t0:.1f}s)")
            return 0
        state: Path = args.state_dir.resolve()
        if args.command == "up":
            info = start(state, timeout=args.timeout)
            print(f"OpenSearch {info.opensearch_version} (Java {info.java_version}) pid {info.pid} ready in "
                  f"{info.ready_seconds:.1f}s, RSS {info.rss_mib_at_ready:.0f} MiB; env: {state / 'env'}",
                  file=sys.stderr)  # fmt: skip
            print(info.url)
            return 0
        found = load(state)
        running = found is not None and is_running(found)
        if args.command == "down":
            if found is not None and running:
                stop(found, purge=args.purge)
                print(f"stopped node pid {found.pid}" + (" and purged state" if args.purge else ""))
            else:
                print(f"no node running with state dir {state}; nothing to do")
                if args.purge and (state / STATE_MARKER).exists():
                    shutil.rmtree(state, ignore_errors=True)
            return 0
        if args.command == "status":
            if found is None or not running:
                print(f"not running (state dir {state})")
                return 3
            print(f"running pid {found.pid}, OpenSearch {found.opensearch_version}, {found.url}, "
                  f"RSS {node_process.rss_mib(found.pid):.0f} MiB (at ready {found.rss_mib_at_ready:.0f}), "
                  f"booted in {found.ready_seconds:.1f}s")  # fmt: skip
            return 0
        sys.stdout.write((state / "env").read_text())
        return 0
    except (NodeError, node_home.FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_cli())
