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

JNA: OpenSearch refuses to run as root when JNA works, and CI runs as root. The ``jna`` jar
stays on the class path (the bootstrap links against its classes) but its native library is
not loaded (``jna.nosys``, ``jna.noclasspath``, ``jna.nounpack``), so the node skips its native
extras (root check, ``mlockall``, seccomp) with a warning, as on a platform without JNA.

Environment: ``OPENSEARCH_NODE_CACHE`` (jar cache), ``OPENSEARCH_NODE_STATE_DIR`` (default
state dir), ``OPENSEARCH_NODE_HEAP`` (default ``512m``), ``OPENSEARCH_NODE_LOG_LEVEL`` (root
level, default WARN), ``OPENSEARCH_NODE_MVN`` (Maven executable).
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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_home  # the sibling module, found whether run as a script or loaded by path

HOST: Final = "127.0.0.1"
CACHE: Final = Path(os.environ.get("OPENSEARCH_NODE_CACHE") or node_home.DEFAULT_CACHE)
DEFAULT_STATE_DIR: Final = Path(os.environ.get("OPENSEARCH_NODE_STATE_DIR") or CACHE / "run")
STATE_MARKER: Final = ".opensearch-node-state"
LOCK_NAME: Final = ".lock"
MAIN_CLASS: Final = "org.opensearch.bootstrap.OpenSearch"
DEFAULT_START_TIMEOUT: Final = 180.0
DEFAULT_STOP_TIMEOUT: Final = 30.0


class NodeError(RuntimeError):
    """The node could not be started, found or stopped."""


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


# --------------------------------------------------------------------------- processes


def _conf_flag(state: Path) -> str:
    return f"-Dopensearch.path.conf={state / 'config'}"


def _pid_is_node(pid: int, state: Path) -> bool:
    """True if ``pid`` is alive (not a zombie) and is the java of this state dir."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") and _conf_flag(state).encode() in cmdline


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def is_running(info: NodeInfo) -> bool:
    """Whether the node of ``info`` is running."""
    return _pid_is_node(info.pid, Path(info.state_dir))


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(path: Path, start: int = 0, limit: int = 6000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read()[-limit:].decode(errors="replace")
    except OSError:
        return ""


def _command(java: str, home: Path, state: Path) -> list[str]:
    heap = os.environ.get("OPENSEARCH_NODE_HEAP", "512m")
    return [
        java, f"-Xms{heap}", f"-Xmx{heap}", "-Xss1m", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
        "-XX:-OmitStackTraceInFastThrow", "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
        "-Djava.locale.providers=SPI,COMPAT", f"-Djava.io.tmpdir={state / 'tmp'}",
        # as the distribution's jvm.options
        "-Dio.netty.noUnsafe=true", "-Dio.netty.noKeySetOptimization=true",
        "-Dio.netty.recycler.maxCapacityPerThread=0", "-Dlog4j.shutdownHookEnabled=false",
        "-Dlog4j2.disable.jmx=true",
        # JNA classes without its native library: see the module docstring
        "-Djna.nosys=true", "-Djna.noclasspath=true", "-Djna.nounpack=true",
        f"-Dopensearch.path.home={home}", _conf_flag(state),
        "-Dopensearch.distribution.type=tar", "-Dopensearch.bundled_jdk=false",
        "-cp", str(home / "lib" / "*"), MAIN_CLASS,
    ]  # fmt: skip


def _launch(cmd: list[str], state: Path, log_file: Path) -> tuple[int, int, int]:
    """Start the node detached; return (pid, pgid, log offset at launch)."""
    offset = log_file.stat().st_size if log_file.exists() else 0
    # sh starts java in the background inside the new session and exits at once, so java is
    # re-parented (no zombie in a long-lived caller such as pytest).
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    proc = subprocess.run(  # noqa: S603 - argv built here
        ["/bin/sh", "-c", script, "opensearch-node-launch", str(log_file), *cmd],
        cwd=state, stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise NodeError(f"could not launch the node: {proc.stdout}{proc.stderr}")
    pid = int(proc.stdout.strip())
    (state / "node.pid").write_text(f"{pid}\n")
    with contextlib.suppress(OSError):
        return pid, os.getpgid(pid), offset
    return pid, pid, offset


def health(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /_cluster/health?wait_for_status=yellow`` of the node at ``url``.

    Raises:
        OSError: the node does not answer, or answers an error or a red/timed-out status.
    """
    query = f"{url}/_cluster/health?wait_for_status=yellow&timeout={max(1, int(timeout) - 1)}s"
    with urllib.request.urlopen(query, timeout=timeout) as resp:  # noqa: S310 - loopback URL built here
        body: dict[str, Any] = json.loads(resp.read())
    if body.get("timed_out") or body.get("status") not in ("yellow", "green"):
        raise OSError(f"cluster health {body.get('status')!r}")
    return body


def _wait_ready(info: NodeInfo, offset: int, deadline: float) -> None:
    log_file = Path(info.log_file)
    last = "no attempt yet"
    while True:
        if not is_running(info):
            raise NodeError(f"node {info.pid} exited before it was ready; log tail ({log_file}):\n"
                            f"{_log_tail(log_file, offset)}")  # fmt: skip
        try:
            health(info.url)
            return
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise NodeError(f"node {info.pid} not ready in time (last probe: {last}); log tail ({log_file}):\n"
                            f"{_log_tail(log_file, offset)}")  # fmt: skip
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


# --------------------------------------------------------------------------- start / stop


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
            http_port, transport_port = _free_ports(2)
            for name, text in node_home.config_files(state, http_port, transport_port).items():
                (state / "config" / name).write_text(text)
            log_file = state / "node.log"
            launched = time.monotonic()
            pid, pgid, offset = _launch(_command(java, home, state), state, log_file)
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
                tail = _log_tail(log_file, offset, 200_000)
                if attempt < 2 and "BindException" in tail and time.monotonic() < deadline:
                    continue
                raise
            ready = round(time.monotonic() - launched, 3)
            info = dataclasses.replace(info, ready_seconds=ready, rss_mib_at_ready=rss_mib(pid))
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
                  f"RSS {rss_mib(found.pid):.0f} MiB (at ready {found.rss_mib_at_ready:.0f}), "
                  f"booted in {found.ready_seconds:.1f}s")  # fmt: skip
            return 0
        sys.stdout.write((state / "env").read_text())
        return 0
    except (NodeError, node_home.FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_cli())
