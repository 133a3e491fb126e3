"""The JDK that runs the broker: the minimum version the jars need, finding one, the JVM argv.

The class-file version of ``kafka.Kafka`` decides the minimum; the first sufficient one of
``$JAVA_HOME``, ``java`` on ``PATH`` and ``/usr/lib/jvm/*`` (newest first) is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

from .defaults import DEFAULT_LIB_DIR
from .errors import BrokerStartError
from .fetch import kafka_jar


def required_java(lib_dir: str | os.PathLike[str] | None = None) -> int:
    """Minimum Java feature version, from the class-file version of ``kafka.Kafka``.

    Raises:
        BrokerStartError: no single Kafka jar in ``lib_dir``, or its ``kafka/Kafka.class`` is not a class file.
    """
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    with zipfile.ZipFile(kafka_jar(lib)) as zf:
        head = zf.read("kafka/Kafka.class")[:8]
    magic, _minor, major = struct.unpack(">IHH", head)
    if magic != 0xCAFEBABE:
        raise BrokerStartError("kafka/Kafka.class is not a class file")
    return int(major) - 44


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

    Raises:
        BrokerStartError: no JDK of at least ``minimum`` was found.
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


def jvm_base(java: str, lib: Path, state: Path, heap: str) -> list[str]:
    """The JVM argv up to the main class: heap, GC, log dir, log4j2 config, the jars on the class path."""
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
