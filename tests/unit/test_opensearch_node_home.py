"""``deploy/opensearch/node_home.py`` lays out an OPENSEARCH_HOME from the jars Maven copies.

Maven is replaced by a script that writes the jar names the real POM resolves to (empty
files), so the layout, the stamp and the cache are checked without network or JDK.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
JARS = (
    "opensearch-2.19.6.jar", "opensearch-core-2.19.6.jar", "opensearch-plugin-classloader-2.19.6.jar",
    "lucene-core-9.12.3.jar", "log4j-api-2.25.4.jar", "log4j-core-2.25.4.jar", "jna-5.13.0.jar",
    "transport-netty4-client-2.19.6.jar", "netty-buffer-4.1.135.Final.jar", "netty-codec-http-4.1.135.Final.jar",
    "lang-painless-2.19.6.jar", "opensearch-scripting-painless-spi-2.19.6.jar", "antlr4-runtime-4.13.1.jar",
    "asm-9.7.jar", "asm-commons-9.7.jar", "analysis-common-2.19.6.jar",
)  # fmt: skip


def node_home() -> ModuleType:
    spec = importlib.util.spec_from_file_location("instantly_audit_node_home", REPO / "deploy/opensearch/node_home.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for mvn that writes ``JARS`` into -DoutputDirectory; each call appends to ``calls``."""
    script = tmp_path / "mvn"
    calls = tmp_path / "calls"
    jars = " ".join(JARS)
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'for a in "$@"; do case $a in -DoutputDirectory=*) out=${a#-DoutputDirectory=};; esac; done\n'
        f'mkdir -p "$out"; for j in {jars}; do echo "$j" > "$out/$j"; done\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("OPENSEARCH_NODE_MVN", str(script))
    return calls


def test_jars_are_sorted_into_lib_and_modules(tmp_path: Path, fake_mvn: Path) -> None:
    """Module jars go to modules/<name>/ with a descriptor (and policy); everything else to lib/."""
    mod = node_home()
    home = mod.fetch(tmp_path / "cache")
    netty = sorted(p.name for p in (home / "modules/transport-netty4").iterdir())
    assert netty == ["netty-buffer-4.1.135.Final.jar", "netty-codec-http-4.1.135.Final.jar",
                     "plugin-descriptor.properties", "plugin-security.policy",
                     "transport-netty4-client-2.19.6.jar"]  # fmt: skip
    painless = {p.name for p in (home / "modules/lang-painless").iterdir()}
    assert {"opensearch-scripting-painless-spi-2.19.6.jar", "antlr4-runtime-4.13.1.jar", "asm-9.7.jar"} <= painless
    lib = {p.name for p in (home / "lib").iterdir()}
    assert {"opensearch-2.19.6.jar", "jna-5.13.0.jar", "log4j-core-2.25.4.jar"} <= lib
    assert not any(n.startswith(("netty-", "asm-", "lang-painless", "analysis-common")) for n in lib)
    assert (home / "lib/opensearch-2.19.6.jar").samefile(tmp_path / "cache/lib/opensearch-2.19.6.jar")

    props = dict(
        line.split("=", 1)
        for line in (home / "modules/analysis-common/plugin-descriptor.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["classname"] == "org.opensearch.analysis.common.CommonAnalysisPlugin"
    assert (props["name"], props["opensearch.version"], props["extended.plugins"]) == (
        "analysis-common", "2.19.6", "lang-painless",
    )  # fmt: skip
    policy = (home / "modules/lang-painless/plugin-security.policy").read_text()
    assert 'permission java.lang.RuntimePermission "createClassLoader";' in policy
    assert mod.installed_version(home) == "2.19.6"


def test_second_fetch_uses_the_cache(tmp_path: Path, fake_mvn: Path) -> None:
    """Maven runs once; a later fetch finds the stamped home; force runs it again."""
    mod = node_home()
    mod.fetch(tmp_path / "cache")
    assert mod.is_fetched(tmp_path / "cache")
    mod.fetch(tmp_path / "cache")
    assert len(fake_mvn.read_text().splitlines()) == 1
    mod.fetch(tmp_path / "cache", force=True)
    assert len(fake_mvn.read_text().splitlines()) == 2


def test_missing_module_jar_is_an_error(tmp_path: Path, fake_mvn: Path) -> None:
    """Without a module's own jar the home is not laid out (and not stamped)."""
    script = Path(str(fake_mvn.parent / "mvn"))
    script.write_text(script.read_text().replace(" analysis-common-2.19.6.jar", ""))
    mod = node_home()
    with pytest.raises(mod.FetchError, match=r"analysis-common-2\.19\.6\.jar is missing"):
        mod.fetch(tmp_path / "cache")
    assert not mod.is_fetched(tmp_path / "cache")
