"""Processes of the local test node (used by ``node.py``; standard library only).

The java command line (``jvm_command``), a detached launch (``launch``), the readiness probe
(``health``) and the /proc look-ups that tell whether a pid is the node of a state dir and how
much memory it holds.

JNA: OpenSearch refuses to run as root when JNA works, and CI runs as root. The ``jna`` jar
stays on the class path (the bootstrap links against its classes) but its native library is
not loaded (``jna.nosys``, ``jna.noclasspath``, ``jna.nounpack``), so the node skips its native
extras (root check, ``mlockall``, seccomp) with a warning, as on a platform without JNA.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Final

HOST: Final = "127.0.0.1"
MAIN_CLASS: Final = "org.opensearch.bootstrap.OpenSearch"


class NodeError(RuntimeError):
    """The node could not be started, found or stopped."""


def conf_flag(state: Path) -> str:
    """The ``-Dopensearch.path.conf`` flag of a state dir: it also tells the node's java apart in /proc."""
    return f"-Dopensearch.path.conf={state / 'config'}"


def pid_is_node(pid: int, state: Path) -> bool:
    """True if ``pid`` is alive (not a zombie) and is the java of this state dir."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") and conf_flag(state).encode() in cmdline


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free at the time of the call."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path: Path, start: int = 0, limit: int = 6000) -> str:
    """The last ``limit`` characters of ``path`` after byte ``start`` (empty if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read()[-limit:].decode(errors="replace")
    except OSError:
        return ""


def jvm_command(java: str, home: Path, state: Path) -> list[str]:
    """The java command line of a node with the given home and state dir.

    ``OPENSEARCH_NODE_HEAP`` sets the heap (default 512m); ``OPENSEARCH_NODE_JAVA_OPTS`` adds flags.
    """
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
        f"-Dopensearch.path.home={home}", conf_flag(state),
        "-Dopensearch.distribution.type=tar", "-Dopensearch.bundled_jdk=false",
        *shlex.split(os.environ.get("OPENSEARCH_NODE_JAVA_OPTS", "")),
        "-cp", str(home / "lib" / "*"), MAIN_CLASS,
    ]  # fmt: skip


def launch(cmd: list[str], state: Path, log_file: Path) -> tuple[int, int, int]:
    """Start the node detached; return (pid, pgid, log offset at launch).

    Raises:
        NodeError: the shell that starts java in the background failed.
    """
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
