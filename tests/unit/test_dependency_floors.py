"""Dependency floors sit above the versions with published advisories, and the locks pin above them.

``FIXED_IN`` names, per package, the first version that fixes every advisory we know of (with
the advisory ids). A direct dependency's floor in ``pyproject.toml`` must be at least that, so
no resolver can pick a vulnerable release; every lock file must pin at least that, transitive
dependencies included. Raise an entry when a new advisory is published.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FIXED_IN: dict[str, tuple[str, str]] = {
    "aiohttp": ("3.14.3", "CVE-2024-52304, CVE-2025-53643, CVE-2025-69223..69230, GHSA-cq5v-8q36-5273"),
    "orjson": ("3.11.6", "CVE-2024-27454, CVE-2025-67221"),
    "pydantic": ("2.4.0", "CVE-2024-3772"),
    "pyyaml": ("5.4", "CVE-2020-1747, CVE-2020-14343"),
    "requests": ("2.32.4", "CVE-2024-35195, CVE-2024-47081"),
    "urllib3": ("2.5.0", "CVE-2024-37891, CVE-2025-50181, CVE-2025-50182"),
    "idna": ("3.7", "CVE-2024-3651"),
    "certifi": ("2024.7.4", "CVE-2024-39689"),
    "protobuf": ("6.31.1", "CVE-2025-4565"),
    "pygments": ("2.15.0", "CVE-2022-40896"),
}
"""Package → (first version fixing every known advisory, the advisories)."""
LOCKS = sorted((ROOT / "requirements").glob("*.lock"))


def _floors() -> dict[str, Version]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [
        *data["project"]["dependencies"],
        *(r for e in data["project"]["optional-dependencies"].values() for r in e),
    ]
    out: dict[str, Version] = {}
    for raw in reqs:
        req = Requirement(raw)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==")]
        if lows:
            out[canonicalize_name(req.name)] = max(lows)
    return out


def _pins(lock: Path) -> dict[str, Version]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", lock.read_text(), flags=re.M)
    return {canonicalize_name(name): Version(v) for name, v in found}


DIRECT = ("aiohttp", "orjson", "pydantic", "pyyaml")
"""The table's direct dependencies (the others are transitive: their lock pins are checked)."""


@pytest.mark.parametrize("name", DIRECT)
def test_direct_floor_is_above_every_advisory(name: str) -> None:
    """A direct dependency's floor is at least the version that fixes its advisories."""
    floors = _floors()
    assert name in floors, f"{name} is no longer a direct dependency: update DIRECT"
    fixed, advisories = FIXED_IN[name]
    assert floors[name] >= Version(fixed), f"{name} floor {floors[name]} is below {fixed} ({advisories})"


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_locks_pin_above_every_advisory(lock: Path) -> None:
    """Every pinned package with a known advisory is pinned at or above its fixed version."""
    pins = _pins(lock)
    assert pins, f"{lock.name} pins nothing"
    low = {n: (str(v), FIXED_IN[n][0]) for n, v in pins.items() if n in FIXED_IN and v < Version(FIXED_IN[n][0])}
    assert low == {}


def test_the_advisory_table_covers_the_http_and_json_stack() -> None:
    """The packages that parse untrusted input (HTTP, JSON, YAML) are all in the table and direct."""
    floors = _floors()
    assert set(DIRECT) <= set(FIXED_IN) & set(floors)
