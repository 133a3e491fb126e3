"""Packaging: the license, the one version source, bounded dependencies, locks that match them, and a
wheel that carries its data files (JSON schemas, rule catalog and cases, simulator scenarios).

The wheel is built in-process with hatchling (the project's build backend, pinned in the dev group),
into a temporary directory: no network, about a second.
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hatchling.builders.wheel import WheelBuilder
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import pipeline

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "connectors", "schemas")
DATA_SUFFIXES = (".json", ".yaml", ".yml")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _version_in_init() -> str:
    """The string literal assigned to ``__version__`` in pipeline/__init__.py (exactly one)."""
    tree = ast.parse((ROOT / "pipeline" / "__init__.py").read_text(encoding="utf-8"))
    found = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]
    assert len(found) == 1, f"pipeline/__init__.py must assign __version__ once, found {found}"
    return found[0]


def _data_files_on_disk() -> set[str]:
    """Every JSON/YAML file under the three packages, as a wheel member name."""
    out: set[str] = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*"):
            rel = path.relative_to(ROOT)
            if path.suffix in DATA_SUFFIXES and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                out.add(rel.as_posix())
    return out


def _lock_pins(name: str) -> dict[str, Version]:
    """``{canonical name: pinned version}`` of a requirements/*.lock file; every pin carries hashes."""
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    pins: dict[str, Version] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\\", 1)[0].split(";", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        assert "--hash=sha256:" in block, f"{name}: {first} has no hash"
        req = Requirement(first)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {first} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    (path,) = WheelBuilder(str(ROOT)).build(directory=str(out), versions=["standard"])
    return zipfile.ZipFile(path)


def test_license_is_the_apache_2_text_and_declared_as_spdx() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_version_is_written_once_in_pipeline_init() -> None:
    data = _pyproject()
    assert "version" not in data["project"], "pyproject.toml must not repeat the version"
    assert "version" in data["project"]["dynamic"]
    assert data["tool"]["hatch"]["version"]["path"] == "pipeline/__init__.py"
    assert pipeline.__version__ == _version_in_init()
    Version(pipeline.__version__)  # a valid PEP 440 version, or this raises
    others = [
        p.relative_to(ROOT).as_posix()
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if p != ROOT / "pipeline" / "__init__.py" and re.search(r"^__version__\s*=", p.read_text("utf-8"), re.M)
    ]
    assert others == []


def test_wheel_carries_every_data_file_license_and_version(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    data = _data_files_on_disk()
    # wherever the rule catalog, its cases and the simulator scenarios live, they are found here
    assert {"schemas/event.v1.json", "schemas/alert.v1.json"} <= data
    assert any(n.endswith("/builtin.yaml") for n in data) and any("/cases/" in n for n in data)
    assert any("/scenarios/" in n for n in data)
    assert sorted(data - names) == []
    version = _version_in_init()
    dist_info = f"instantly_audit-{version}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_carries_the_compiled_gate_accelerator_and_a_platform_tag(wheel: zipfile.ZipFile) -> None:
    """hatch_build.py compiles pipeline/redaction/_fastgate.c into the wheel (a C compiler is there in CI)."""
    if os.environ.get("INSTANTLY_AUDIT_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("INSTANTLY_AUDIT_PURE_PYTHON builds the pure-Python wheel")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"pipeline/redaction/_fastgate{suffix}" in wheel.namelist()
    assert "pipeline/redaction/_fastgate.pyi" in wheel.namelist()
    (wheel_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL")]
    tags = [line for line in wheel.read(wheel_file).decode().splitlines() if line.startswith("Tag: ")]
    assert tags and not any(t.endswith("-none-any") for t in tags), tags
    assert (ROOT / "hatch_build.py").is_file()
    assert _pyproject()["tool"]["hatch"]["build"]["hooks"]["custom"] == {}


def test_without_a_compiler_the_hook_builds_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C compiler (CC names a program that is not there): the hook says why and builds no module."""
    import hatch_build  # the hook module at the repository root (imported here: only this test needs it)

    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: "no-such-cc-4f1e" if name == "CC" else None)
    module, why = hatch_build.compile_accelerator(ROOT)
    assert module is None and "no C compiler (no-such-cc-4f1e)" in why
    monkeypatch.setenv("INSTANTLY_AUDIT_PURE_PYTHON", "1")
    assert hatch_build.compile_accelerator(ROOT) == (None, "INSTANTLY_AUDIT_PURE_PYTHON is set")


def test_every_dependency_has_a_floor_and_a_ceiling() -> None:
    data = _pyproject()
    reqs = [
        *data["project"]["dependencies"],
        *(r for extra in data["project"]["optional-dependencies"].values() for r in extra),
        *data["dependency-groups"]["dev"],
        *data["build-system"]["requires"],
    ]
    unbounded = []
    for raw in reqs:
        ops = {s.operator for s in Requirement(raw).specifier}
        if not ("==" in ops or "~=" in ops or (ops & {">=", ">"} and ops & {"<", "<="})):
            unbounded.append(raw)
    assert unbounded == []


def test_dev_is_a_dependency_group_not_a_published_extra() -> None:
    data = _pyproject()
    assert set(data["project"]["optional-dependencies"]) == {"vault"}
    assert data["dependency-groups"]["dev"]


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("runtime.lock", ("dependencies", "vault")), ("dev.lock", ("dependencies", "vault", "dev"))],
)
def test_locks_pin_a_version_each_declared_range_allows(lock: str, groups: tuple[str, ...]) -> None:
    data = _pyproject()
    declared = {
        "dependencies": data["project"]["dependencies"],
        "vault": data["project"]["optional-dependencies"]["vault"],
        "dev": data["dependency-groups"]["dev"],
    }
    pins = _lock_pins(lock)
    stale = []
    for group in groups:
        for raw in declared[group]:
            req = Requirement(raw)
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None or not req.specifier.contains(pinned, prereleases=True):
                stale.append(f"{raw} (locked: {pinned})")
    assert stale == [], "run `make lock`"
    assert canonicalize_name("instantly-audit") not in pins
