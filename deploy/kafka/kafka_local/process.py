"""The broker as an OS process: pid file, ``/proc`` checks, detached launch, signals, tools.

The broker runs in its own session and process group (``sh`` backgrounds ``java`` and exits, so
``java`` is re-parented and never a zombie of a long-lived caller); its output is appended to
``<state>/broker.log`` and its pid is in ``<state>/broker.pid``. A pid counts as the broker only
if it is alive and its command line names this state dir's ``server.properties``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import BrokerStartError
from .info import BrokerInfo
from .java import jvm_base


def run_tool(cmd: Sequence[str], cwd: Path, what: str) -> None:
    """Run a short-lived tool (openssl, StorageTool) in ``cwd`` and wait for it.

    Raises:
        BrokerStartError: it exits non-zero (the message has its output's tail).
    """
    proc = subprocess.run(  # noqa: S603 - argv built here
        list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BrokerStartError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def pid_is_broker(pid: int, state_dir: Path) -> bool:
    """True if ``pid`` is alive (not a zombie) and is the java of this state dir."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(state_dir / "server.properties").encode() in cmdline


def read_pid(state_dir: Path) -> int | None:
    """The pid in ``<state_dir>/broker.pid``; ``None`` if there is no readable one."""
    try:
        text = (state_dir / "broker.pid").read_text().split()
        return int(text[0])
    except (OSError, ValueError, IndexError):
        return None


def is_running(info_or_state_dir: BrokerInfo | str | os.PathLike[str]) -> bool:
    """Whether the broker of ``info`` (or of a state dir) is running."""
    if isinstance(info_or_state_dir, BrokerInfo):
        return pid_is_broker(info_or_state_dir.pid, Path(info_or_state_dir.state_dir))
    state_dir = Path(info_or_state_dir).resolve()
    pid = read_pid(state_dir)
    return pid is not None and pid_is_broker(pid, state_dir)


def log_tail(path: Path, start: int = 0, limit: int = 6000) -> str:
    """The last ``limit`` characters of ``path`` written after byte ``start`` ("" if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


def launch(info: BrokerInfo) -> tuple[int, int, int]:
    """Start kafka.Kafka detached; return (pid, pgid, log offset at launch).

    ``KAFKA_BROKER_HEAP`` sets the heap (default ``512m``).

    Raises:
        BrokerStartError: the launching shell did not report a pid.
    """
    state = Path(info.state_dir)
    log_file = Path(info.log_file)
    offset = log_file.stat().st_size if log_file.exists() else 0
    heap = os.environ.get("KAFKA_BROKER_HEAP", "512m")
    cmd = jvm_base(info.java, Path(info.lib_dir), state, heap)
    cmd += ["kafka.Kafka", str(state / "server.properties")]
    # sh starts java in the background inside the new session/process group and
    # exits at once, so java is re-parented (no zombie in a long-lived caller).
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    with open(log_file, "ab") as fh:
        fh.write(f"\n===== broker.py launch {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n".encode())
    proc = subprocess.run(  # noqa: S603 - argv built here
        ["/bin/sh", "-c", script, "kafka-broker-launch", str(log_file), *cmd],
        cwd=state,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise BrokerStartError(f"could not launch the broker: {proc.stdout}{proc.stderr}")
    pid = int(proc.stdout.strip())
    pgid = os.getpgid(pid) if _proc_state(pid) is not None else pid
    (state / "broker.pid").write_text(f"{pid}\n")
    return pid, pgid, offset


def signal_and_wait(info: BrokerInfo, sig: int, timeout: float) -> bool:
    """Send ``sig`` to the broker's process group; True if it exited in time."""
    state = Path(info.state_dir)
    if not pid_is_broker(info.pid, state):
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if info.pgid > 0 and info.pgid != os.getpgrp():
            os.killpg(info.pgid, sig)
        else:
            os.kill(info.pid, sig)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_is_broker(info.pid, state):
            return True
        time.sleep(0.05)
    return not pid_is_broker(info.pid, state)
