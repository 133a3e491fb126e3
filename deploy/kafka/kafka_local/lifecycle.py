"""Start, stop and restart a broker.

``start`` picks free loopback ports, writes the config and TLS files into a fresh state dir,
formats it, launches ``kafka.Kafka`` and waits until every listener answers. ``restart`` keeps
ports, config and data (no re-format). A port taken between picking and binding is retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

from .defaults import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_STATE_DIR,
    DEFAULT_STOP_TIMEOUT,
    HOST,
    LISTENERS,
    LOCK_NAME,
    NODE_ID,
    SCRAM_MECHANISMS,
    SCRAM_USER,
    STATE_MARKER,
)
from .errors import BrokerAlreadyRunning, BrokerError, BrokerStartError
from .fetch import fetch, kafka_version
from .info import BrokerInfo, load, write_facts
from .java import find_java, required_java
from .locks import flock
from .process import launch, log_tail, pid_is_broker, read_pid, signal_and_wait
from .properties import log4j2_properties, server_properties
from .readiness import wait_ready
from .storage import foreign_state_dir, format_storage, new_cluster_id, prepare_state_dir
from .tls import make_tls


def _free_ports(count: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _bind_failed(info: BrokerInfo, offset: int) -> bool:
    tail = log_tail(Path(info.log_file), offset, 200_000)
    return "BindException" in tail or "Address already in use" in tail


def start(
    state_dir: str | os.PathLike[str] | None = None,
    flush_every_message: bool = False,
    *,
    lib_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> BrokerInfo:
    """Format a fresh state dir and start a broker; return when it serves metadata.

    A port taken between picking and binding is retried with new ports.

    Raises:
        BrokerAlreadyRunning: a broker already runs with ``state_dir``.
        BrokerStartError: no Java, openssl or jars, or not ready within ``timeout`` seconds.
        FetchError: the jars are not cached and Maven cannot resolve them.
        BrokerError: ``state_dir`` is not empty and was not created by broker.py.
    """
    state = (Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR).resolve()
    if foreign_state_dir(state):
        raise BrokerError(f"refusing to use {state}: it is not empty and was not created by broker.py")
    lib = fetch(lib_dir)
    state.mkdir(parents=True, exist_ok=True)
    with flock(state / LOCK_NAME):
        pid = read_pid(state)
        if pid is not None and pid_is_broker(pid, state):
            running = load(state)
            where = f", bootstrap {running.bootstrap}" if running else ""
            raise BrokerAlreadyRunning(
                f"a broker is already running with state dir {state} (pid {pid}{where}); "
                f"stop it first (broker.py down --state-dir {state})"
            )
        java, java_version = find_java(required_java(lib))
        version = kafka_version(lib)
        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in range(3):
            prepare_state_dir(state)
            (state / "logs").mkdir()
            (state / "data").mkdir()
            ports = dict(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
            cafile = make_tls(state / "tls")
            cluster_id = new_cluster_id()
            password = secrets.token_hex(16)
            (state / "server.properties").write_text(server_properties(state, ports, flush_every_message))
            (state / "log4j2.properties").write_text(log4j2_properties())
            format_storage(java, lib, state, cluster_id, password)
            info = BrokerInfo(
                state_dir=str(state),
                pid=0,
                pgid=0,
                kafka_version=version,
                java=java,
                java_version=java_version,
                lib_dir=str(lib),
                cluster_id=cluster_id,
                node_id=NODE_ID,
                host=HOST,
                ports=ports,
                bootstrap=f"{HOST}:{ports['PLAINTEXT']}",
                sasl_bootstrap=f"{HOST}:{ports['SASL_PLAINTEXT']}",
                ssl_bootstrap=f"{HOST}:{ports['SSL']}",
                sasl_ssl_bootstrap=f"{HOST}:{ports['SASL_SSL']}",
                controller=f"{HOST}:{ports['CONTROLLER']}",
                scram_user=SCRAM_USER,
                scram_password=password,
                scram_mechanisms=list(SCRAM_MECHANISMS),
                ssl_cafile=str(cafile),
                log_file=str(state / "broker.log"),
                flush_every_message=flush_every_message,
                started_at=time.time(),
                ready_seconds=0.0,
            )
            launched = time.monotonic()
            pid, pgid, offset = launch(info)
            info = dataclasses.replace(info, pid=pid, pgid=pgid)
            write_facts(info)
            try:
                wait_ready(info, offset, deadline)
            except BrokerStartError:
                if pid_is_broker(pid, state):
                    signal_and_wait(info, signal.SIGKILL, 10.0)
                if attempt < 2 and _bind_failed(info, offset) and time.monotonic() < deadline:
                    continue
                raise
            info = dataclasses.replace(info, ready_seconds=round(time.monotonic() - launched, 3))
            write_facts(info)
            return info
    raise BrokerStartError("unreachable")  # pragma: no cover


def stop(
    info: BrokerInfo,
    sig: int = signal.SIGTERM,
    *,
    timeout: float = DEFAULT_STOP_TIMEOUT,
    purge: bool = False,
) -> bool:
    """Stop the broker: send ``sig`` (SIGTERM = controlled shutdown) to its
    process group, wait up to ``timeout`` s, then SIGKILL. With ``purge`` the
    state dir is deleted afterwards. Returns False if nothing was running.

    Raises:
        BrokerError: the broker survived SIGKILL.
    """
    state = Path(info.state_dir)
    was_running = pid_is_broker(info.pid, state)
    grace = timeout if sig != signal.SIGKILL else 10.0
    if was_running and not signal_and_wait(info, sig, grace) and not signal_and_wait(info, signal.SIGKILL, 10.0):
        raise BrokerError(f"broker pid {info.pid} survived SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        (state / "broker.pid").unlink()
    if purge and (state / STATE_MARKER).exists():
        shutil.rmtree(state, ignore_errors=True)
    return was_running


def restart(
    info: BrokerInfo,
    sig: int = signal.SIGTERM,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> BrokerInfo:
    """Stop the broker with ``sig`` (SIGTERM or SIGKILL) and start it again on
    the same ports, config and data (no re-format); return the new info.

    Raises:
        BrokerError: the old broker survived SIGKILL.
        BrokerStartError: the new one was not ready within ``timeout`` seconds.
    """
    state = Path(info.state_dir)
    stop(info, sig, timeout=stop_timeout)
    deadline = time.monotonic() + timeout
    while True:
        launched = time.monotonic()
        pid, pgid, offset = launch(info)
        new = dataclasses.replace(info, pid=pid, pgid=pgid, started_at=time.time())
        write_facts(new)
        try:
            wait_ready(new, offset, deadline)
        except BrokerStartError:
            if pid_is_broker(pid, state):
                signal_and_wait(new, signal.SIGKILL, 10.0)
            # the old ports may still be held briefly: same ports are mandatory, retry
            if _bind_failed(new, offset) and time.monotonic() + 1.0 < deadline:
                time.sleep(1.0)
                continue
            raise
        new = dataclasses.replace(new, ready_seconds=round(time.monotonic() - launched, 3))
        write_facts(new)
        return new
