"""The jars and the OPENSEARCH_HOME of the local test node (used by ``node.py``; standard library only).

``fetch`` copies the runtime jars of ``pom.xml`` into ``<cache>/lib`` with Maven and then lays
out ``<cache>/home`` the way the tar distribution does, from hard links to those jars (a copy
where linking fails; not symlinks: the security manager grants a module's policy to the jar's
own path, and a symlinked jar resolves outside the module dir):

* ``home/lib/`` the server class path, all jars except the modules' (``jna`` included: see
  ``node.py`` for why its native part is switched off);
* ``home/modules/<name>/`` each module's jars plus the ``plugin-descriptor.properties`` (and
  ``plugin-security.policy``) that the distribution build generates and Maven does not ship:
  ``transport-netty4`` (HTTP and transport), ``lang-painless`` (scripts) and
  ``analysis-common`` (analyzers; extends ``lang-painless``);
* ``home/plugins/`` empty.

The node's config (``opensearch.yml``, ``log4j2.properties``) lives in its state dir, written by
``config_files``; the home is shared read-only by every node started from this cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
POM: Final = HERE / "pom.xml"
DEFAULT_CACHE: Final = HERE / ".cache"
DEPENDENCY_PLUGIN: Final = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
STAMP: Final = ".stamp.json"
LAYOUT_VERSION: Final = 1  # bump when the home layout below changes: the cached home is rebuilt
# OpenSearch 2.x installs a SecurityManager, which Java 24 removed; 2.19 is built for Java 11+.
JAVA_RANGE: Final = (11, 23)


class FetchError(RuntimeError):
    """The jars could not be resolved or laid out."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One module of the distribution: which jars are its own and how it is described."""

    name: str
    classname: str
    jar_prefixes: tuple[str, ...]  # the first one names the module's own jar
    extended: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()


MODULES: Final = (
    Module(
        "transport-netty4",
        "org.opensearch.transport.Netty4Plugin",
        ("transport-netty4-client-", "netty-"),
        permissions=(
            'java.io.FilePermission "/proc/sys/net/core/somaxconn", "read"',  # listen backlog
            'java.net.SocketPermission "*", "accept,connect"',
            'java.lang.RuntimePermission "*", "setContextClassLoader"',  # netty's own threads
            'java.lang.RuntimePermission "getClassLoader"',
            'java.util.PropertyPermission "sun.nio.ch.bugLevel", "write"',  # NIO selector work-around
        ),
    ),
    Module(
        "lang-painless",
        "org.opensearch.painless.PainlessPlugin",
        ("lang-painless-", "opensearch-scripting-painless-spi-", "antlr4-runtime-", "asm-"),
        permissions=(
            'java.lang.RuntimePermission "createClassLoader"',  # compiled scripts are classes
            'java.lang.RuntimePermission "getClassLoader"',
        ),
    ),
    Module(
        "analysis-common",
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        ("analysis-common-",),
        extended=("lang-painless",),
    ),
)


def pom_version() -> str:
    """The OpenSearch version pinned in ``pom.xml``.

    Raises:
        FetchError: the POM has no ``<opensearch.version>`` property.
    """
    match = re.search(r"<opensearch\.version>([^<]+)</opensearch\.version>", POM.read_text())
    if not match:
        raise FetchError(f"no <opensearch.version> property in {POM}")
    return match.group(1).strip()


def _digest() -> str:
    return hashlib.sha256(POM.read_bytes() + f"layout {LAYOUT_VERSION}".encode()).hexdigest()


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _stamped(home: Path) -> bool:
    try:
        data: dict[str, Any] = json.loads((home / STAMP).read_text())
    except (OSError, ValueError):
        return False
    files: list[str] = data.get("files", [])
    return data.get("digest") == _digest() and bool(files) and all((home / f).is_file() for f in files)


def is_fetched(cache: Path = DEFAULT_CACHE) -> bool:
    """Whether ``cache`` holds a home laid out from the current ``pom.xml``."""
    return _stamped(cache.resolve() / "home")


def fetch(cache: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Resolve the jars with Maven (unless cached) and lay out the home; return the home dir.

    Raises:
        FetchError: Maven is missing or failed, or the jars do not make a complete home.
    """
    root = Path(cache).resolve() if cache is not None else DEFAULT_CACHE
    home = root / "home"
    if not force and _stamped(home):
        return home
    with flock(root / ".fetch.lock"):
        if not force and _stamped(home):
            return home
        mvn = os.environ.get("OPENSEARCH_NODE_MVN") or shutil.which("mvn")
        if not mvn:
            raise FetchError("Maven (mvn) is not on PATH; install it (apt-get install maven)")
        lib = root / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        cmd = [mvn, "-B", "-q", "-f", str(POM), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={lib}"]  # fmt: skip
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise FetchError(
                f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
            )
        tmp = Path(tempfile.mkdtemp(prefix=".home.tmp-", dir=root))
        try:
            _lay_out(lib, tmp, pom_version())
            if home.exists():
                shutil.rmtree(home)
            tmp.rename(home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home


def _place(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _lay_out(lib: Path, home: Path, version: str) -> None:
    jars = sorted(p.name for p in lib.glob("*.jar"))
    if f"opensearch-{version}.jar" not in jars:
        raise FetchError(f"Maven did not produce opensearch-{version}.jar in {lib}")
    files: list[str] = []
    (home / "lib").mkdir()
    (home / "plugins").mkdir()
    owned: dict[str, str] = {}
    for module in MODULES:
        mine = [j for j in jars if j.startswith(module.jar_prefixes)]
        main = f"{module.jar_prefixes[0]}{version}.jar"
        if main not in mine:
            raise FetchError(f"module {module.name}: {main} is missing from {lib}")
        owned.update(dict.fromkeys(mine, module.name))
        mdir = home / "modules" / module.name
        mdir.mkdir(parents=True)
        (mdir / "plugin-descriptor.properties").write_text(_descriptor(module, version))
        files.append(f"modules/{module.name}/plugin-descriptor.properties")
        if module.permissions:
            grants = "".join(f"  permission {p};\n" for p in module.permissions)
            (mdir / "plugin-security.policy").write_text(f"grant {{\n{grants}}};\n")
    for jar in jars:
        where = f"modules/{owned[jar]}" if jar in owned else "lib"
        _place(lib / jar, home / where / jar)
        files.append(f"{where}/{jar}")
    stamp = {"digest": _digest(), "opensearch_version": version, "files": files}
    (home / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def _descriptor(module: Module, version: str) -> str:
    return "\n".join([
        f"# {module.name}: written by deploy/opensearch/node_home.py (the distribution build generates it)",
        f"description={module.name} module of OpenSearch {version}",
        f"version={version}",
        f"name={module.name}",
        f"classname={module.classname}",
        f"java.version={JAVA_RANGE[0]}",
        f"opensearch.version={version}",
        f"extended.plugins={','.join(module.extended)}",
        "has.native.controller=false",
        "",
    ])  # fmt: skip


def installed_version(home: Path) -> str:
    """The OpenSearch version of the home (from its stamp).

    Raises:
        FetchError: the home has no stamp; run ``fetch``.
    """
    try:
        data: dict[str, Any] = json.loads((home / STAMP).read_text())
        return str(data["opensearch_version"])
    except (OSError, ValueError, KeyError) as exc:
        raise FetchError(f"{home} is not laid out; run `node.py fetch`") from exc


# --------------------------------------------------------------------------- java


def _feature_version(java: str) -> int | None:
    release = Path(java).resolve().parent.parent / "release"
    text = ""
    with contextlib.suppress(OSError):
        text = release.read_text()
    match = re.search(r'^JAVA_VERSION="(\d+)', text, re.M)
    if not match:
        try:
            proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r'version "(?:1\.)?(\d+)', proc.stderr)
    return int(match.group(1)) if match else None


def find_java() -> tuple[str, int]:
    """``(java executable, feature version)`` of the first JDK in ``JAVA_RANGE``.

    Order: ``$JAVA_HOME``, ``java`` on ``PATH``, then ``/usr/lib/jvm/*`` newest first.

    Raises:
        FetchError: no suitable JDK was found.
    """
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append(shutil.which("java") or "")
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += [str(home / "bin" / "java") for home in sorted(jvm.iterdir(), reverse=True)]
    seen: list[str] = []
    for java in candidates:
        if not java or not os.access(java, os.X_OK) or java in seen:
            continue
        seen.append(java)
        version = _feature_version(java)
        if version is not None and JAVA_RANGE[0] <= version <= JAVA_RANGE[1]:
            return java, version
    raise FetchError(f"OpenSearch 2.x needs a Java {JAVA_RANGE[0]}..{JAVA_RANGE[1]} JDK; looked at {seen}")


# --------------------------------------------------------------------------- node config


def config_files(state: Path, http_port: int, transport_port: int) -> dict[str, str]:
    """``opensearch.yml`` and ``log4j2.properties`` of a test node whose files live under ``state``."""
    yml = [
        "# written by deploy/opensearch/node.py: a single-node test cluster on loopback",
        "cluster.name: instantly-audit-test",
        "node.name: node-1",
        "discovery.type: single-node",
        "network.host: 127.0.0.1",
        f"http.port: {http_port}",
        f"transport.port: {transport_port}",
        f"path.data: {state / 'data'}",
        f"path.logs: {state / 'logs'}",
        "bootstrap.system_call_filter: false",
        "# a busy developer disk must not turn the test indices read-only",
        "cluster.routing.allocation.disk.threshold_enabled: false",
        "",
    ]
    level = os.environ.get("OPENSEARCH_NODE_LOG_LEVEL", "WARN")
    log4j2 = [
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
        f"rootLogger.level = {level}",
        "rootLogger.appenderRef.console.ref = console",
        "# keeps the started / stopped milestones and the bound addresses",
        "logger.node.name = org.opensearch.node.Node",
        "logger.node.level = INFO",
        "logger.http.name = org.opensearch.http.AbstractHttpServerTransport",
        "logger.http.level = INFO",
        "",
    ]
    return {"opensearch.yml": "\n".join(yml), "log4j2.properties": "\n".join(log4j2)}
