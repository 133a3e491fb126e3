"""Credential blast radius: what an Instantly API key's scopes let it do, and what of that leaves no trace.

``scope_operations.yaml`` is derived from Instantly's public OpenAPI v2 spec by
:mod:`connectors.instantly.blast.derive` (its header names the source commit). Each operation
lists the scopes that allow it ("any of"); a handful are flagged ``high_impact`` with
``audit_record: false`` — Instantly's audit log has no activity type for them, so only scope
analysis can see that a key could do them. Operations the spec names no scope for are treated
as reachable with ``all:all`` only (an assumption, stated in the table).

:data:`ACTIVITY_SCOPES` maps audit ``activity_type`` codes to the scope an API call behind them
most likely needed. It is rough on purpose: reads are never audited, several endpoints share
one activity type, and a UI action carries no ``api_key_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

TABLE_PATH = Path(__file__).resolve().parent / "scope_operations.yaml"

ACTIVITY_SCOPES: dict[int, str] = {
    2: "leads:delete", 3: "campaigns:delete", 4: "campaigns:update", 5: "campaigns:update",
    6: "accounts:create", 7: "accounts:delete", 8: "leads:update", 9: "leads:create", 10: "leads:update",
    11: "campaigns:update", 12: "subsequences:update", 18: "webhooks:create", 19: "webhooks:update",
    21: "webhooks:update", 32: "leads:create", 33: "leads:create", 34: "leads:read",
    35: "supersearch_enrichments:create", 36: "accounts:update", 37: "api_keys:create", 38: "api_keys:delete",
}  # fmt: skip
"""Audit activity type → the scope its API call most likely used (login, MFA and system codes: none)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One API operation of the table."""

    method: str
    path: str
    operation_id: str
    scopes: tuple[str, ...]
    scopes_documented: bool
    high_impact: bool = False
    audit_record: bool = True
    impact: str = ""

    @property
    def label(self) -> str:
        """``POST /api/v2/emails/forward``."""
        return f"{self.method} {self.path}"


def _load_table() -> Any:
    """The shipped table, parsed with libyaml when PyYAML has it (~15 ms instead of ~150 ms in Python)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(TABLE_PATH.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader


@cache
def operations() -> tuple[Operation, ...]:
    """Every operation of the shipped table.

    Raises:
        ValueError: the shipped table is malformed.
    """
    data = _load_table()
    rows = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{TABLE_PATH.name}: no operations list")
    out = []
    for r in rows:
        out.append(Operation(str(r["method"]), str(r["path"]), str(r.get("operation_id", "")),
                             tuple(r.get("scopes") or ()), bool(r.get("scopes_documented", True)),
                             bool(r.get("high_impact", False)), bool(r.get("audit_record", True)),
                             str(r.get("impact", ""))))  # fmt: skip
    return tuple(out)


def table_source() -> Mapping[str, Any]:
    """Where the table came from (repository, path, commit, API version)."""
    data = _load_table()
    src = data.get("source") if isinstance(data, dict) else None
    return src if isinstance(src, dict) else {}


def grants(held: str, needed: str) -> bool:
    """Whether scope ``held`` allows what ``needed`` names (``leads:all`` and ``all:read`` are wildcards)."""
    if held == needed or held == "all:all":
        return True
    hr, _, ha = held.partition(":")
    nr, _, na = needed.partition(":")
    return (hr == nr and ha == "all") or (hr == "all" and ha == na)


def reaches(scopes: Iterable[str], op: Operation) -> list[str]:
    """The key's scopes that allow ``op`` (undocumented operations: ``all:all`` only)."""
    held = list(scopes)
    if not op.scopes_documented:
        return ["all:all"] if "all:all" in held else []
    return [s for s in held if s in op.scopes]


def unaudited_reach(scopes: Iterable[str]) -> dict[str, list[str]]:
    """High-impact operations without an audit record that ``scopes`` reach → the scopes that reach each."""
    held = list(scopes)
    out: dict[str, list[str]] = {}
    for op in operations():
        if op.high_impact and not op.audit_record:
            via = reaches(held, op)
            if via:
                out[op.label] = via
    return out


def used_scopes(scopes: Iterable[str], activity_codes: Iterable[int]) -> set[str]:
    """The held scopes that the audited activity (``activity_type`` codes) shows in use."""
    needed = {ACTIVITY_SCOPES[c] for c in activity_codes if c in ACTIVITY_SCOPES}
    return {s for s in scopes if any(grants(s, n) for n in needed)}


def is_read_only(scope: str) -> bool:
    """``x:read`` — never provable as used from the audit log (reads are not audited, lead exports aside)."""
    return scope.endswith(":read")
