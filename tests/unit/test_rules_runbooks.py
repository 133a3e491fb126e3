"""The built-in rules' runbooks tell a responder what Instantly's API really does.

A runbook names API calls (``DELETE /api/v2/api-keys/{id}``) and scopes (``workspaces:delete``);
both are checked against the operation table derived from Instantly's OpenAPI spec
(``connectors/instantly/blast/scope_operations.yaml``) and the documented scope list.
"""

from __future__ import annotations

import re

import pytest

from connectors.instantly.blast import operations
from connectors.instantly.enums import SCOPES
from pipeline.rules.config import parse_rules_config

RULES = [r for r in parse_rules_config(None).rules if r.meta.runbook]
CALL = re.compile(r"\b(GET|POST|PATCH|DELETE)\s+(/api/v2/[A-Za-z0-9_{}./-]+[A-Za-z0-9_}])")
SCOPE = re.compile(r"\b([a-z_-]+):(all|create|read|update|delete)\b")


def _path_matches(named: str, documented: str) -> bool:
    """``/api/v2/api-keys/{id}`` names ``/api/v2/api-keys/{id}`` whatever the parameter is called."""
    norm = re.compile(r"\{[^}]*\}")
    return norm.sub("{}", named.split("?")[0]) == norm.sub("{}", documented)


@pytest.mark.parametrize("rule", RULES, ids=[r.meta.id for r in RULES])
def test_runbook_calls_are_documented_operations(rule: object) -> None:
    """Every API call a runbook tells the responder to make exists in Instantly's API v2."""
    text = rule.meta.runbook  # type: ignore[attr-defined]
    ops = operations()
    for method, path in CALL.findall(text):
        assert any(op.method == method and _path_matches(path, op.path) for op in ops), f"{method} {path}"


@pytest.mark.parametrize("rule", RULES, ids=[r.meta.id for r in RULES])
def test_runbook_scopes_are_documented(rule: object) -> None:
    """Every scope a runbook names is one Instantly documents (``resource:action``)."""
    text = rule.meta.runbook  # type: ignore[attr-defined]
    named = {f"{r}:{a}" for r, a in SCOPE.findall(text)} - {"all:<action>", "<resource>:all"}
    assert named <= SCOPES, sorted(named - SCOPES)


def test_removal_runbook_names_the_scopes_that_schedule_a_removal() -> None:
    """``workspace.removal_scheduled`` sends the responder after the keys that can schedule the removal
    (``POST /workspaces/current/schedule-for-removal`` needs workspaces:delete|all, all:delete or all:all),
    not after keys holding ``workspaces:update``, which cannot."""
    rule = next(r for r in RULES if r.meta.id == "workspace.removal_scheduled")
    op = next(o for o in operations() if o.method == "POST" and o.path.endswith("/schedule-for-removal"))
    named = {f"{r}:{a}" for r, a in SCOPE.findall(rule.meta.runbook)}
    assert named == set(op.scopes), (sorted(named), op.scopes)
