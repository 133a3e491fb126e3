"""The stream table is the single source: config, snapshots, posture, the rules' test harness and the simulator agree.

Every client-side fact about a stream lives in :data:`connectors.instantly.api.STREAMS`; these
tests fail when a copy drifts from it, when a client module spells an endpoint or a read scope
itself, or when the simulated server does not serve a table path under the table's scope.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr

from connectors.instantly import api, config, snapshots
from connectors.instantly.client import InstantlyClient
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.posture.keys import needed_scopes
from connectors.instantly.posture.snapshot import CHECK_STREAMS
from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.app import API_PREFIX as SIM_PREFIX
from connectors.instantly.sim.catalog import POLLER_SCOPES
from connectors.instantly.sim.routes import ROUTES
from pipeline.errors import ScopeError
from pipeline.rules.testing import source_for
from schemas.event import WorkspaceRef

ROOT = Path(__file__).resolve().parents[2]
CONNECTOR = ROOT / "connectors" / "instantly"
NAMES = [s.name for s in api.STREAMS]


# ------------------------------------------------------------------------------- the table itself
def test_table_is_well_formed() -> None:
    """One row per name; each path under the API prefix; each scope one read scope; one audit stream."""
    assert len(set(NAMES)) == len(NAMES)
    assert len({s.path for s in api.STREAMS}) == len(NAMES)
    for s in api.STREAMS:
        assert s.path.startswith(api.API_PREFIX + "/"), s
        assert api.is_scope(s.scope) and s.scope.endswith(":read"), s
        assert s.page_size is None or 1 <= s.page_size <= 1000, s
    assert [s.name for s in api.STREAMS if s.kind == "audit"] == [api.AUDIT_LOGS.name]
    assert api.AUDIT_LOGS.page_size == 1000
    assert all(s.page_size == 100 for s in api.LISTED_STREAMS)
    assert api.WORKSPACE.page_size is None and api.WORKSPACE not in api.LISTED_STREAMS
    with pytest.raises(ValueError, match="not paginated"):
        api.page_limit(api.WORKSPACE)
    with pytest.raises(KeyError):
        api.stream("campaigns")


def test_stream_name_literal_matches_the_table() -> None:
    """The ``StreamName`` typing aid names exactly the table's streams."""
    assert set(get_args(api.StreamName)) == set(NAMES)
    assert len(get_args(api.StreamName)) == len(NAMES)


def test_config_streams_are_the_table() -> None:
    """``config.STREAMS`` is the table, in order; a workspace's default ``streams`` are the table's
    streams but the opt-in ones (``webhook_deliveries``); unknown names are refused."""
    assert list(config.STREAMS) == NAMES
    cfg = WorkspaceConfig(api_key=SecretStr("k" * 32))
    assert cfg.streams == [s.name for s in api.DEFAULT_STREAMS] == [n for n in NAMES if n != "webhook_deliveries"]
    assert WorkspaceConfig(api_key=SecretStr("k" * 32), streams=NAMES).streams == NAMES
    assert cfg.audit_page_size == api.AUDIT_LOGS.page_size
    with pytest.raises(ValueError, match="streams"):
        WorkspaceConfig(api_key=SecretStr("k" * 32), streams=["campaigns"])
    with pytest.raises(ValueError, match="audit_page_size"):
        WorkspaceConfig(api_key=SecretStr("k" * 32), audit_page_size=api.page_limit(api.AUDIT_LOGS) + 1)


# ----------------------------------------------------------------------------- derived copies
def test_snapshot_kinds_are_the_tables_snapshot_streams() -> None:
    """The snapshot diff knows exactly the table's snapshot streams, and each emits the table's event prefix."""
    assert set(snapshots.KINDS) == {s.name for s in api.SNAPSHOT_STREAMS}
    ws = WorkspaceRef("ws-1", "Acme")
    for s in api.SNAPSHOT_STREAMS:
        assert snapshots.KINDS[s.name].prefix == s.resource
        record = {"id": "r1", "name": "x", "email": "x@example.com"}  # accounts are keyed by email
        current, _ = snapshots.build_snapshot(s.name, [record])
        (event,) = snapshots.diff_snapshots(s.name, None, current, workspace=ws, observed_at="2026-12-01T00:00:00.000Z")
        assert event.type.split(".", 1)[0] == s.resource
        assert event.source.stream == s.name


def test_posture_needed_scopes_are_the_tables_scopes() -> None:
    """The pipeline key's needed scopes are the table's read scopes: all streams, or what ``check`` reads."""
    assert needed_scopes(NAMES) == sorted({s.scope for s in api.STREAMS})
    assert needed_scopes(()) == api.read_scopes(CHECK_STREAMS)
    assert set(CHECK_STREAMS) <= set(NAMES)
    assert needed_scopes(["not_a_stream"]) == needed_scopes(())


def test_rule_harness_maps_each_prefix_to_its_stream() -> None:
    """``pipeline.rules.testing`` (which may not import connectors) names the same stream for each event prefix."""
    for s in api.STREAMS:
        if s.kind == "delivery_log":  # republishes the webhook receiver's events: their source is the receiver's
            assert source_for(f"{s.resource}.anything").kind == "webhook", s
            continue
        assert source_for(f"{s.resource}.anything").stream == s.name, s


def test_the_simulators_poller_key_holds_every_table_scope() -> None:
    """The simulator's seeded poller key can read every stream the table lists."""
    assert {s.scope for s in api.STREAMS} <= set(POLLER_SCOPES)


# ---------------------------------------------------------------------------- the simulator
def test_simulator_routes_serve_each_table_path_with_its_scope() -> None:
    """The simulator's route table (the server's model) has a GET route for each table path, under the table's scope."""
    assert SIM_PREFIX == api.API_PREFIX
    gets = {r.path: r.scope for r in ROUTES if r.method == "GET"}
    for s in api.STREAMS:
        path = s.path.removeprefix(api.API_PREFIX)
        assert path in gets, s
        assert ":".join(gets[path]) == s.scope, s
    admin = api.GROUP_ADMIN_PATH.removeprefix(api.API_PREFIX)  # read by group_members, under its scope
    assert ":".join(gets[admin]) == api.GROUP_MEMBERS.scope


async def _read(cfg: WorkspaceConfig, s: api.Stream) -> None:
    async with InstantlyClient(cfg) as client:
        if s.page_size is None:
            await client.get(s.path)
        else:
            await client.get_all(s.path, limit=s.page_size)


async def test_exactly_the_table_scopes_read_every_stream() -> None:
    """Through the real client: a key with the table's scopes reads each stream at its page size; without a
    stream's scope that stream is refused (403)."""
    async with InstantlySimulator(seed=11) as sim:
        ws = sim.add_workspace("Acme").id
        scopes = api.read_scopes(NAMES)
        budget = BudgetConfig(requests_per_second=100, requests_per_minute=6000)

        def cfg(key: str) -> WorkspaceConfig:
            return WorkspaceConfig(api_key=SecretStr(key), base_url=sim.url, max_retries=0, budget=budget)

        full = cfg(sim.add_api_key(ws, scopes).key)
        for s in api.STREAMS:
            await _read(full, s)
            short = cfg(sim.add_api_key(ws, [x for x in scopes if x != s.scope]).key)
            with pytest.raises(ScopeError):
                await _read(short, s)


def test_the_connector_doc_shows_the_table() -> None:
    """``docs/instantly-connector.md`` has one row per stream with the table's path and scope."""
    doc = (ROOT / "docs" / "instantly-connector.md").read_text(encoding="utf-8")
    for s in api.STREAMS:
        row = f"| `{s.name}` | `{s.path}` | `{s.scope}` |"
        assert row in doc, row
    listed = re.findall(r"\b[a-z_]+:read\b", doc.split("```")[1])  # the pipeline key's scopes, in a code block
    assert sorted(listed) == api.read_scopes(s.name for s in api.DEFAULT_STREAMS)  # opt-in streams' are not listed


# ------------------------------------------------------------------------- no copies elsewhere
def _client_modules() -> list[Path]:
    # The simulator models the server; blast/ tables the spec's other operations (not streams).
    return [
        p
        for p in sorted(CONNECTOR.rglob("*.py"))
        if p.name != "api.py" and not {"sim", "blast"} & set(p.relative_to(CONNECTOR).parts)
    ]


_READ_SCOPE = re.compile(r"^(?!all:)[a-z_]+:read$")
"""A resource's read scope (the wildcard ``all:read`` is scope logic, not a stream's)."""


@pytest.mark.parametrize("path", _client_modules(), ids=lambda p: str(p.relative_to(CONNECTOR)))
def test_no_client_module_spells_an_endpoint_or_a_read_scope(path: Path) -> None:
    """Outside ``api.py`` (and the simulator, which models the server) no string is an endpoint or a read scope.

    Runbook prose may mention endpoints inside a sentence; a string that *is* a path or a scope is a copy.
    """
    copies = [
        node.value
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value.startswith(api.API_PREFIX) or _READ_SCOPE.match(node.value))
    ]
    assert copies == [], f"{path.relative_to(ROOT)} copies the stream table: {copies}"


@pytest.mark.parametrize("page", ["README.md", "docs/security.md", "deploy/config/example.yaml"])
def test_every_page_that_lists_the_pipeline_keys_scopes_lists_the_tables(page: str) -> None:
    """README, security.md and example.yaml each spell out the key's scopes for a newcomer to create it
    with; only instantly-connector.md's list was checked, so a stream added to the defaults (as
    ``accounts`` was) could leave the others asking for a key that cannot read it."""
    text = (ROOT / page).read_text(encoding="utf-8")
    span = re.search(r"`([^`]*audit_logs:read[^`]*)`", text)  # the list as one code span
    comment = re.search(r"(?:^#.*\n)*^#.*audit_logs:read.*\n(?:^#.*\n)*", text, re.M)  # a YAML comment block
    para = span.group(1) if span else comment.group(0) if comment else ""
    listed = re.findall(r"\b[a-z_]+:read\b", para)
    assert sorted(listed) == api.read_scopes(s.name for s in api.DEFAULT_STREAMS), page
