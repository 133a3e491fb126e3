#!/usr/bin/env python3
"""Local single-node Apache Kafka broker (KRaft) for tests, without Docker.

The broker is the real Apache Kafka (``org.apache.kafka:kafka_2.13``, version
pinned in ``pom.xml`` beside this file), run from jars that Maven copies into a
cache directory. The module is standard-library only and works both as a CLI::

    python3 deploy/kafka/broker.py fetch      # resolve jars (Maven) unless cached
    python3 deploy/kafka/broker.py up         # fresh state dir, start, wait ready
    python3 deploy/kafka/broker.py status     # exit 0 if running, 3 if not
    python3 deploy/kafka/broker.py env        # print <state>/env (shell exports)
    python3 deploy/kafka/broker.py restart [--kill]
    python3 deploy/kafka/broker.py down [--purge]

and as an importable module (``fetch``, ``start``, ``stop``, ``restart``,
``load``, ``is_running``, ``BrokerInfo``)::

    info = broker.start(tmp_path / "kafka", flush_every_message=True)
    ...
    info = broker.restart(info, signal.SIGKILL)   # same ports, same data
    broker.stop(info)

What ``start`` does: picks free loopback ports; writes ``server.properties`` and
``log4j2.properties`` into a fresh state dir; generates a CA and a broker
certificate with the ``openssl`` CLI (SAN ``IP:127.0.0.1``, ``DNS:localhost``;
PEM key store/trust store); formats the storage with ``kafka.tools.StorageTool``
(cluster id made here, SCRAM-SHA-256/512 credentials for user ``alice`` with a
random password added at format time); launches ``kafka.Kafka`` detached (own
session and process group, output appended to ``<state>/broker.log``, pid in
``<state>/broker.pid``); and waits until every listener answers: a Kafka
protocol Metadata request on PLAINTEXT and SSL (TLS verified against the CA)
must list this broker, and ApiVersions must answer on SASL_PLAINTEXT and
SASL_SSL. It then writes ``<state>/env`` (shell ``export`` lines) and
``<state>/broker.json`` (the same facts, see ``BrokerInfo``).

Listeners (all on 127.0.0.1): PLAINTEXT (client + inter-broker), CONTROLLER,
SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512), SSL
(``ssl.client.auth=none``). No authorizer is configured.

A single node loses acknowledged records on SIGKILL unless every append is
fsynced: ``flush_every_message=True`` (``--flush-every-message``) sets
``log.flush.interval.messages=1`` for fault tests.

Java: the class-file version of ``kafka.Kafka`` decides the minimum JDK; the
first sufficient one of ``$JAVA_HOME``, ``java`` on ``PATH`` and
``/usr/lib/jvm/*`` (newest first) is used.

Environment overrides: ``KAFKA_BROKER_LIB_DIR`` (jar cache),
``KAFKA_BROKER_STATE_DIR`` (default state dir), ``KAFKA_BROKER_HEAP``
(default ``512m``), ``KAFKA_BROKER_LOG_LEVEL`` (root log level, default WARN),
``KAFKA_BROKER_MVN`` (Maven executable).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
POM: Final = HERE / "pom.xml"
DEFAULT_CACHE: Final = HERE / ".cache"
DEFAULT_LIB_DIR: Final = Path(os.environ.get("KAFKA_BROKER_LIB_DIR") or DEFAULT_CACHE / "lib")
DEFAULT_STATE_DIR: Final = Path(os.environ.get("KAFKA_BROKER_STATE_DIR") or DEFAULT_CACHE / "run")
DEPENDENCY_PLUGIN: Final = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
FETCH_STAMP: Final = ".fetch-stamp.json"
STATE_MARKER: Final = ".kafka-broker-state"
LOCK_NAME: Final = ".lock"
HOST: Final = "127.0.0.1"
NODE_ID: Final = 1
SCRAM_USER: Final = "alice"
SCRAM_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")
LISTENERS: Final = ("PLAINTEXT", "CONTROLLER", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
STARTED_LINE: Final = "Kafka Server started"
DEFAULT_START_TIMEOUT: Final = 120.0
DEFAULT_STOP_TIMEOUT: Final = 20.0


class BrokerError(RuntimeError):
    """Base class of the errors raised by this module."""


class BrokerAlreadyRunning(BrokerError):
    """A broker is already running with the requested state dir."""


class BrokerStartError(BrokerError):
    """The broker could not be formatted, launched or did not become ready."""


class FetchError(BrokerError):
    """The jars could not be resolved."""


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """Everything a client or test needs to know about one running broker.

    Written to ``<state_dir>/broker.json``; ``load`` reads it back.
    """

    state_dir: str
    pid: int
    pgid: int
    kafka_version: str
    java: str
    java_version: int
    lib_dir: str
    cluster_id: str
    node_id: int
    host: str
    ports: dict[str, int]
    bootstrap: str
    sasl_bootstrap: str
    ssl_bootstrap: str
    sasl_ssl_bootstrap: str
    controller: str
    scram_user: str
    scram_password: str
    scram_mechanisms: list[str]
    ssl_cafile: str
    log_file: str
    flush_every_message: bool
    started_at: float
    ready_seconds: float

    def to_json(self) -> str:
        """Serialise as pretty JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerInfo:
        """Parse what ``to_json`` wrote (unknown keys are ignored)."""
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def env(self) -> dict[str, str]:
        """The environment variables written to ``<state>/env``."""
        return {
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "KAFKA_SASL_BOOTSTRAP": self.sasl_bootstrap,
            "KAFKA_SSL_BOOTSTRAP": self.ssl_bootstrap,
            "KAFKA_SASL_SSL_BOOTSTRAP": self.sasl_ssl_bootstrap,
            "KAFKA_SCRAM_USER": self.scram_user,
            "KAFKA_SCRAM_PASSWORD": self.scram_password,
            "KAFKA_SCRAM_MECHANISMS": " ".join(self.scram_mechanisms),
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_CLUSTER_ID": self.cluster_id,
            "KAFKA_VERSION": self.kafka_version,
            "KAFKA_BROKER_STATE_DIR": self.state_dir,
            "KAFKA_BROKER_PID": str(self.pid),
            "KAFKA_BROKER_LOG": self.log_file,
        }


# --------------------------------------------------------------------------- fetch


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _pom_kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise FetchError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fetched(lib_dir: Path) -> bool:
    stamp = lib_dir / FETCH_STAMP
    try:
        data: dict[str, Any] = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if data.get("pom_sha256") != _pom_digest():
        return False
    jars: list[str] = data.get("jars", [])
    return bool(jars) and all((lib_dir / j).is_file() for j in jars)


def fetch(lib_dir: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Copy the broker's runtime jars into ``lib_dir`` and return it.

    Maven is not run at all when a stamp file in ``lib_dir`` shows that the
    jars of the current ``pom.xml`` are already there (so a second start needs
    no network). Otherwise ``mvn copy-dependencies`` fills a temporary
    directory that then replaces ``lib_dir``.
    """
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    lib = lib.resolve()
    if not force and _fetched(lib):
        return lib
    with _flock(lib.parent / f".{lib.name}.fetch.lock"):
        if not force and _fetched(lib):
            return lib
        mvn = os.environ.get("KAFKA_BROKER_MVN") or shutil.which("mvn")
        if not mvn:
            raise FetchError("Maven (mvn) is not on PATH; install it (apt-get install maven)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{lib.name}.tmp-", dir=lib.parent))
        try:
            cmd = [
                mvn,
                "-B",
                "-q",
                "-f",
                str(POM),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ]
            proc = subprocess.run(  # noqa: S603 - argv built here
                cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise FetchError(
                    f"{shlex.join(cmd)} failed with exit code {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
                )
            jars = sorted(p.name for p in tmp.glob("*.jar"))
            version = _pom_kafka_version()
            if f"kafka_2.13-{version}.jar" not in jars:
                raise FetchError(f"Maven did not produce kafka_2.13-{version}.jar in {tmp}")
            stamp = {"pom_sha256": _pom_digest(), "kafka_version": version, "jars": jars}
            (tmp / FETCH_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if lib.exists():
                shutil.rmtree(lib)
            tmp.rename(lib)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return lib


def _kafka_jar(lib: Path) -> Path:
    jars = sorted(lib.glob("kafka_2.13-*.jar"))
    jars = [j for j in jars if not j.name.endswith(("-sources.jar", "-javadoc.jar", "-test.jar"))]
    if len(jars) != 1:
        raise BrokerStartError(f"expected one kafka_2.13-*.jar in {lib}, found {jars}; run fetch")
    return jars[0]


def kafka_version(lib_dir: str | os.PathLike[str] | None = None) -> str:
    """The Kafka version of the jars in ``lib_dir``."""
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    return _kafka_jar(lib).name[len("kafka_2.13-") : -len(".jar")]


def required_java(lib_dir: str | os.PathLike[str] | None = None) -> int:
    """Minimum Java feature version, from the class-file version of ``kafka.Kafka``."""
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    with zipfile.ZipFile(_kafka_jar(lib)) as zf:
        head = zf.read("kafka/Kafka.class")[:8]
    magic, _minor, major = struct.unpack(">IHH", head)
    if magic != 0xCAFEBABE:
        raise BrokerStartError("kafka/Kafka.class is not a class file")
    return int(major) - 44


# --------------------------------------------------------------------------- java


def _java_feature_version(java: str) -> int | None:
    release = Path(java).resolve().parent.parent / "release"
    with contextlib.suppress(OSError):
        match = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(), re.M)
        if match:
            return _parse_java_version(match.group(1))
    try:
        proc = subprocess.run(  # noqa: S603 - argv built here
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "([^"]+)"', proc.stderr)
    return _parse_java_version(match.group(1)) if match else None


def _parse_java_version(text: str) -> int | None:
    parts = re.findall(r"\d+", text)
    if not parts:
        return None
    first = int(parts[0])
    if first == 1 and len(parts) > 1:
        return int(parts[1])
    return first


def find_java(minimum: int) -> tuple[str, int]:
    """Return ``(java executable, feature version)`` of the first JDK >= ``minimum``.

    Order: ``$JAVA_HOME``, ``java`` on ``PATH``, then ``/usr/lib/jvm/*`` newest first.
    """
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    jvm_root = Path("/usr/lib/jvm")
    found: list[tuple[int, str]] = []
    if jvm_root.is_dir():
        for home in sorted(jvm_root.iterdir()):
            home_java = home / "bin" / "java"
            if home_java.is_file() and os.access(home_java, os.X_OK):
                version = _java_feature_version(str(home_java))
                if version is not None:
                    found.append((version, str(home_java)))
    candidates += [exe for _v, exe in sorted(found, reverse=True)]
    seen: set[str] = set()
    rejected: list[str] = []
    for exe in candidates:
        real = os.path.realpath(exe)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        version = _java_feature_version(real)
        if version is not None and version >= minimum:
            return real, version
        rejected.append(f"{real} ({version})")
    raise BrokerStartError(
        f"no Java >= {minimum} found (tried {', '.join(rejected) or 'nothing'}); set JAVA_HOME to a newer JDK"
    )


# --------------------------------------------------------------------------- wire probe


def _kstr(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise BrokerError("truncated Kafka response")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def int8(self) -> int:
        return int(self.take(">b")[0])

    def int16(self) -> int:
        return int(self.take(">h")[0])

    def int32(self) -> int:
        return int(self.take(">i")[0])

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> _Reader:
    header = struct.pack(">hhi", api_key, version, corr) + _kstr("broker.py-probe")
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    reader = _Reader(_recv_exact(sock, size))
    if reader.int32() != corr:
        raise BrokerError("correlation id mismatch in Kafka response")
    return reader


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What a protocol probe saw: supported API ranges and (if asked) metadata."""

    api_versions: dict[int, tuple[int, int]]
    brokers: list[tuple[int, str, int]]
    cluster_id: str | None
    controller_id: int | None


def probe(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    metadata: bool = True,
) -> ProbeResult:
    """Speak the Kafka protocol to one listener (no SASL authentication).

    Sends ApiVersions v0 and, with ``metadata``, a Metadata request (highest
    of v1..v8 that the broker supports, no topics) and returns the broker list.
    Raises ``OSError``/``BrokerError`` when the listener does not answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
        try:
            sock.settimeout(timeout)
            reader = _request(sock, 18, 0, 1, b"")
            error = reader.int16()
            apis: dict[int, tuple[int, int]] = {}
            for _ in range(reader.int32()):
                key, low, high = reader.take(">hhh")
                apis[int(key)] = (int(low), int(high))
            if error != 0:
                raise BrokerError(f"ApiVersions error code {error}")
            brokers: list[tuple[int, str, int]] = []
            cluster_id: str | None = None
            controller_id: int | None = None
            if metadata:
                low, high = apis.get(3, (0, -1))
                usable = [v for v in range(1, 9) if low <= v <= high]
                if not usable:
                    raise BrokerError(f"broker supports Metadata v{low}..v{high}, probe needs 1..8")
                version = max(usable)
                body = struct.pack(">i", 0)  # empty topic list: brokers only
                if version >= 4:
                    body += struct.pack(">b", 0)
                if version >= 8:
                    body += struct.pack(">bb", 0, 0)
                reader = _request(sock, 3, version, 2, body)
                if version >= 3:
                    reader.int32()  # throttle_time_ms
                for _ in range(reader.int32()):
                    node = reader.int32()
                    bhost = reader.string() or ""
                    bport = reader.int32()
                    reader.string()  # rack
                    brokers.append((node, bhost, bport))
                if version >= 2:
                    cluster_id = reader.string()
                controller_id = reader.int32()
            return ProbeResult(apis, brokers, cluster_id, controller_id)
        finally:
            if sock is not raw:
                sock.close()


def _client_ssl_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


def check_ready(info: BrokerInfo, timeout: float = 5.0) -> None:
    """Raise unless every client listener of ``info`` answers the Kafka protocol.

    PLAINTEXT and SSL must return Metadata listing this node (and the expected
    cluster id); SASL_PLAINTEXT and SASL_SSL must answer ApiVersions.
    """
    ctx = _client_ssl_context(info.ssl_cafile)
    for name, use_ssl, with_meta in (
        ("PLAINTEXT", False, True),
        ("SSL", True, True),
        ("SASL_PLAINTEXT", False, False),
        ("SASL_SSL", True, False),
    ):
        port = info.ports[name]
        result = probe(
            info.host,
            port,
            timeout=timeout,
            ssl_context=ctx if use_ssl else None,
            metadata=with_meta,
        )
        if with_meta:
            if not any(node == info.node_id and bport == port for node, _h, bport in result.brokers):
                raise BrokerError(f"{name}: metadata does not list this broker yet: {result.brokers}")
            if result.cluster_id != info.cluster_id:
                raise BrokerError(f"{name}: cluster id {result.cluster_id} != {info.cluster_id}")


# --------------------------------------------------------------------------- process helpers


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_is_broker(pid: int, state_dir: Path) -> bool:
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


def is_running(info_or_state_dir: BrokerInfo | str | os.PathLike[str]) -> bool:
    """Whether the broker of ``info`` (or of a state dir) is running."""
    if isinstance(info_or_state_dir, BrokerInfo):
        return _pid_is_broker(info_or_state_dir.pid, Path(info_or_state_dir.state_dir))
    state_dir = Path(info_or_state_dir).resolve()
    pid = _read_pid(state_dir)
    return pid is not None and _pid_is_broker(pid, state_dir)


def _read_pid(state_dir: Path) -> int | None:
    try:
        text = (state_dir / "broker.pid").read_text().split()
        return int(text[0])
    except (OSError, ValueError, IndexError):
        return None


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


def _log_tail(path: Path, start: int = 0, limit: int = 6000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


# --------------------------------------------------------------------------- config files


def _server_properties(state: Path, ports: dict[str, int], flush_every_message: bool) -> str:
    p = ports
    jaas_scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    lines = [
        "# written by deploy/kafka/broker.py; single-node KRaft test broker",
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        f"controller.quorum.voters={NODE_ID}@{HOST}:{p['CONTROLLER']}",
        "listeners=" + ",".join(f"{name}://{HOST}:{p[name]}" for name in LISTENERS),
        "advertised.listeners=" + ",".join(f"{name}://{HOST}:{p[name]}" for name in LISTENERS if name != "CONTROLLER"),
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        f"log.dirs={state / 'data'}",
        "num.partitions=2",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        "num.recovery.threads.per.data.dir=1",
        "log.cleaner.dedupe.buffer.size=33554432",
        "log.cleaner.threads=1",
        # after a SIGKILL the restarted broker waits until the controller expires the
        # old registration's session (default 9 s); 4 s keeps restarts quick
        "broker.session.timeout.ms=4000",
        "broker.heartbeat.interval.ms=500",
        # SASL (SCRAM credentials are stored in the metadata log at format time)
        "sasl.enabled.mechanisms=" + ",".join(SCRAM_MECHANISMS),
    ]
    for listener in ("sasl_plaintext", "sasl_ssl"):
        for mech in SCRAM_MECHANISMS:
            lines.append(f"listener.name.{listener}.{mech.lower()}.sasl.jaas.config={jaas_scram}")
    lines += [
        # TLS, PEM stores (no store passwords allowed with PEM; key is unencrypted PKCS#8)
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={state / 'tls' / 'broker.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={state / 'tls' / 'ca.pem'}",
        "ssl.client.auth=none",
    ]
    if flush_every_message:
        lines += [
            "# fsync every append: a SIGKILL then loses no acknowledged record",
            "log.flush.interval.messages=1",
        ]
    return "\n".join(lines) + "\n"


def _log4j2_properties() -> str:
    level = os.environ.get("KAFKA_BROKER_LOG_LEVEL", "WARN")
    return "\n".join(
        [
            "status = warn",
            "appender.out.type = Console",
            "appender.out.name = OUT",
            "appender.out.layout.type = PatternLayout",
            "appender.out.layout.pattern = [%d] %p %m (%c)%n",
            f"rootLogger.level = {level}",
            "rootLogger.appenderRef.out.ref = OUT",
            # keeps the "Kafka Server started" line and start/stop milestones
            "logger.raft.name = kafka.server.KafkaRaftServer",
            "logger.raft.level = INFO",
            "logger.kafka.name = kafka.Kafka",
            "logger.kafka.level = INFO",
            "logger.broker.name = kafka.server.BrokerServer",
            "logger.broker.level = INFO",
            "",
        ]
    )


def _run(cmd: Sequence[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(  # noqa: S603 - argv built here
        list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BrokerStartError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )


def _make_tls(tls: Path) -> Path:
    """Create CA + broker certificate with the openssl CLI; return the CA file."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise BrokerStartError("openssl CLI not found (apt-get install openssl)")
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
    )
    (tls / "broker.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{HOST},DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _run(
        [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ca.key"],
        tls,
        "openssl genpkey (CA)",
    )
    _run(
        [openssl, "req", "-new", "-key", "ca.key", "-subj", "/CN=instantly-audit test CA", "-out", "ca.csr"],
        tls,
        "openssl req (CA)",
    )
    _run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-signkey",
            "ca.key",
            "-days",
            "30",
            "-set_serial",
            str(secrets.randbits(63)),
            "-extfile",
            "ca.ext",
            "-out",
            "ca.pem",
        ],
        tls,
        "openssl x509 (CA)",
    )
    _run(
        [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "broker.key"],
        tls,
        "openssl genpkey (broker)",
    )
    _run(
        [openssl, "req", "-new", "-key", "broker.key", "-subj", "/CN=localhost", "-out", "broker.csr"],
        tls,
        "openssl req (broker)",
    )
    _run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "30",
            "-set_serial",
            str(secrets.randbits(63)),
            "-extfile",
            "broker.ext",
            "-out",
            "broker.crt",
        ],
        tls,
        "openssl x509 (broker)",
    )
    key = (tls / "broker.key").read_text()
    if "BEGIN PRIVATE KEY" not in key:
        raise BrokerStartError("openssl did not write a PKCS#8 key (BEGIN PRIVATE KEY)")
    # PEM key store: PKCS#8 key followed by the certificate chain
    (tls / "broker.pem").write_text(key + (tls / "broker.crt").read_text() + (tls / "ca.pem").read_text())
    for name in ("ca.key", "broker.key", "broker.pem"):
        (tls / name).chmod(0o600)
    return tls / "ca.pem"


def _jvm_base(java: str, lib: Path, state: Path, heap: str) -> list[str]:
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={state / 'logs'}",
        f"-Dlog4j2.configurationFile={state / 'log4j2.properties'}",
        "-cp",
        str(lib / "*"),
    ]


def _write_facts(info: BrokerInfo) -> None:
    state = Path(info.state_dir)
    tmp = state / "broker.json.tmp"
    tmp.write_text(info.to_json())
    tmp.chmod(0o600)
    tmp.replace(state / "broker.json")
    env_lines = [f"# Kafka test broker (deploy/kafka/broker.py), pid {info.pid}"]
    env_lines += [f"export {k}={shlex.quote(v)}" for k, v in info.env().items()]
    tmp = state / "env.tmp"
    tmp.write_text("\n".join(env_lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(state / "env")


def load(state_dir: str | os.PathLike[str] | None = None) -> BrokerInfo | None:
    """Read ``<state_dir>/broker.json``; ``None`` if there is none."""
    state = (Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR).resolve()
    try:
        return BrokerInfo.from_json((state / "broker.json").read_text())
    except (OSError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- start / stop


def _launch(info: BrokerInfo) -> tuple[int, int, int]:
    """Start kafka.Kafka detached; return (pid, pgid, log offset at launch)."""
    state = Path(info.state_dir)
    log_file = Path(info.log_file)
    offset = log_file.stat().st_size if log_file.exists() else 0
    heap = os.environ.get("KAFKA_BROKER_HEAP", "512m")
    cmd = _jvm_base(info.java, Path(info.lib_dir), state, heap)
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


def _wait_ready(info: BrokerInfo, log_offset: int, deadline: float) -> None:
    log_file = Path(info.log_file)
    last_error = "no attempt yet"
    while True:
        if not _pid_is_broker(info.pid, Path(info.state_dir)):
            raise BrokerStartError(
                f"broker process {info.pid} exited before it was ready; log tail "
                f"({log_file}):\n{_log_tail(log_file, log_offset)}"
            )
        try:
            check_ready(info, timeout=5.0)
            return
        except (OSError, BrokerError, ssl.SSLError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise BrokerStartError(
                f"broker {info.pid} not ready within the deadline (last probe: {last_error}); "
                f"log tail ({log_file}):\n{_log_tail(log_file, log_offset)}"
            )
        time.sleep(0.25)


def _bind_failed(info: BrokerInfo, offset: int) -> bool:
    tail = _log_tail(Path(info.log_file), offset, 200_000)
    return "BindException" in tail or "Address already in use" in tail


def _prepare_state_dir(state: Path) -> None:
    if state.exists():
        entries = [p for p in state.iterdir() if p.name != LOCK_NAME]
        if entries and not (state / STATE_MARKER).exists():
            raise BrokerError(f"refusing to use {state}: it is not empty and was not created by broker.py")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    state.mkdir(parents=True, exist_ok=True)
    (state / STATE_MARKER).write_text("state dir of deploy/kafka/broker.py; wiped on `up`\n")


def start(
    state_dir: str | os.PathLike[str] | None = None,
    flush_every_message: bool = False,
    *,
    lib_dir: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> BrokerInfo:
    """Format a fresh state dir and start a broker; return when it serves metadata.

    Raises ``BrokerAlreadyRunning`` if a broker already runs with ``state_dir``
    and ``BrokerStartError`` when it cannot start within ``timeout`` seconds.
    A port taken between picking and binding is retried with new ports.
    """
    state = (Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR).resolve()
    foreign = (
        state.is_dir() and not (state / STATE_MARKER).exists() and any(p.name != LOCK_NAME for p in state.iterdir())
    )
    if foreign:
        raise BrokerError(f"refusing to use {state}: it is not empty and was not created by broker.py")
    lib = fetch(lib_dir)
    state.mkdir(parents=True, exist_ok=True)
    with _flock(state / LOCK_NAME):
        pid = _read_pid(state)
        if pid is not None and _pid_is_broker(pid, state):
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
            _prepare_state_dir(state)
            (state / "logs").mkdir()
            (state / "data").mkdir()
            ports = dict(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
            cafile = _make_tls(state / "tls")
            cluster_id = "-"
            while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: "-..." reads as an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            password = secrets.token_hex(16)
            (state / "server.properties").write_text(_server_properties(state, ports, flush_every_message))
            (state / "log4j2.properties").write_text(_log4j2_properties())
            fmt = _jvm_base(java, lib, state, "256m")
            fmt.insert(1, "-XX:TieredStopAtLevel=1")
            fmt += [
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(state / "server.properties"),
            ]
            for mech in SCRAM_MECHANISMS:
                fmt += ["--add-scram", f"{mech}=[name={SCRAM_USER},password={password}]"]
            _run(fmt, state, "kafka.tools.StorageTool format")
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
            pid, pgid, offset = _launch(info)
            info = dataclasses.replace(info, pid=pid, pgid=pgid)
            _write_facts(info)
            try:
                _wait_ready(info, offset, deadline)
            except BrokerStartError:
                if _pid_is_broker(pid, state):
                    _signal_and_wait(info, signal.SIGKILL, 10.0)
                if attempt < 2 and _bind_failed(info, offset) and time.monotonic() < deadline:
                    continue
                raise
            info = dataclasses.replace(info, ready_seconds=round(time.monotonic() - launched, 3))
            _write_facts(info)
            return info
    raise BrokerStartError("unreachable")  # pragma: no cover


def _signal_and_wait(info: BrokerInfo, sig: int, timeout: float) -> bool:
    """Send ``sig`` to the broker's process group; True if it exited in time."""
    state = Path(info.state_dir)
    if not _pid_is_broker(info.pid, state):
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if info.pgid > 0 and info.pgid != os.getpgrp():
            os.killpg(info.pgid, sig)
        else:
            os.kill(info.pid, sig)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _pid_is_broker(info.pid, state):
            return True
        time.sleep(0.05)
    return not _pid_is_broker(info.pid, state)


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
    """
    state = Path(info.state_dir)
    was_running = _pid_is_broker(info.pid, state)
    grace = timeout if sig != signal.SIGKILL else 10.0
    if was_running and not _signal_and_wait(info, sig, grace) and not _signal_and_wait(info, signal.SIGKILL, 10.0):
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
    """
    state = Path(info.state_dir)
    stop(info, sig, timeout=stop_timeout)
    deadline = time.monotonic() + timeout
    while True:
        launched = time.monotonic()
        pid, pgid, offset = _launch(info)
        new = dataclasses.replace(info, pid=pid, pgid=pgid, started_at=time.time())
        _write_facts(new)
        try:
            _wait_ready(new, offset, deadline)
        except BrokerStartError:
            if _pid_is_broker(pid, state):
                _signal_and_wait(new, signal.SIGKILL, 10.0)
            # the old ports may still be held briefly: same ports are mandatory, retry
            if _bind_failed(new, offset) and time.monotonic() + 1.0 < deadline:
                time.sleep(1.0)
                continue
            raise
        new = dataclasses.replace(new, ready_seconds=round(time.monotonic() - launched, 3))
        _write_facts(new)
        return new


# --------------------------------------------------------------------------- CLI


def _cli(argv: Sequence[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            t0 = time.monotonic()
            was = _fetched(args.lib_dir.resolve())
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


if __name__ == "__main__":
    sys.exit(_cli())
