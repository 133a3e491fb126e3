"""Resolve the broker's jars with Maven into a cache stamped with the ``pom.xml`` digest.

A second ``fetch`` with an unchanged ``pom.xml`` finds the stamp and runs no Maven (no network).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_LIB_DIR, DEPENDENCY_PLUGIN, FETCH_STAMP, POM
from .errors import BrokerStartError, FetchError
from .locks import flock


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _pom_kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise FetchError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


def fetched(lib_dir: Path) -> bool:
    """Whether ``lib_dir`` holds every jar of the current ``pom.xml`` (per its stamp file)."""
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

    Raises:
        FetchError: Maven is missing, fails, or does not produce the Kafka jar.
    """
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    lib = lib.resolve()
    if not force and fetched(lib):
        return lib
    with flock(lib.parent / f".{lib.name}.fetch.lock"):
        if not force and fetched(lib):
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


def kafka_jar(lib: Path) -> Path:
    """The one ``kafka_2.13-<version>.jar`` in ``lib``.

    Raises:
        BrokerStartError: there is none, or more than one.
    """
    jars = sorted(lib.glob("kafka_2.13-*.jar"))
    jars = [j for j in jars if not j.name.endswith(("-sources.jar", "-javadoc.jar", "-test.jar"))]
    if len(jars) != 1:
        raise BrokerStartError(f"expected one kafka_2.13-*.jar in {lib}, found {jars}; run fetch")
    return jars[0]


def kafka_version(lib_dir: str | os.PathLike[str] | None = None) -> str:
    """The Kafka version of the jars in ``lib_dir``.

    Raises:
        BrokerStartError: ``lib_dir`` does not hold exactly one Kafka jar.
    """
    lib = Path(lib_dir) if lib_dir is not None else DEFAULT_LIB_DIR
    return kafka_jar(lib).name[len("kafka_2.13-") : -len(".jar")]
