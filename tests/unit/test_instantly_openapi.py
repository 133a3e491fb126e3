"""The simulator's answers and the poller's requests, checked against Instantly's own OpenAPI document.

``tests/fixtures/instantly/openapi.v2.get-operations.json`` is cut from Instantly's OpenAPI 3.1
document (the copy in ``api-evangelist/instantly-ai``, harvested 2026-08; its ``_source`` names the
commit): the ``GET`` operations the poller reads, their query parameters, their response schemas
(``additionalProperties: false`` on every object) and the error envelopes. So

* every body the simulator answers (lists, the workspace, 401/402/404/429 errors) must validate
  against the documented schema — an extra, missing or mistyped field fails here;
* the test fixtures the fake serves validate too;
* every request a poll sends to the simulator must name a documented path and only documented
  query parameters, with values the parameter schemas accept (``limit`` 1-100, 1-1000 for the
  audit log).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import jsonschema
import pytest
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.sim import catalog
from connectors.instantly.sim import seed as sim_seed
from connectors.instantly.sim.agency import agency_world
from connectors.instantly.sim.server import InstantlySimulator
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from tests.unit.test_instantly_fake_api import FIXTURES, load_fixture

SPEC: dict[str, Any] = json.loads((FIXTURES / "openapi.v2.get-operations.json").read_text())
ADMIN = "/api/v2/workspace-group-members/admin"
LISTS = [p for p in SPEC["paths"] if p not in ("/api/v2/workspaces/current", ADMIN)]


def validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A 2020-12 validator for ``schema`` whose ``$ref`` s resolve into the cut spec, formats checked."""
    return jsonschema.Draft202012Validator(
        {**schema, "components": SPEC["components"]}, format_checker=jsonschema.FormatChecker()
    )


def problems(path: str, status: int, body: Any) -> list[str]:
    """Where ``body`` differs from the documented response ``status`` of ``GET path``."""
    schema = SPEC["paths"][path]["responses"][str(status)]
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(body)]


async def _get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.json()


def test_the_cut_spec_names_its_source() -> None:
    """The fixture says where it was cut from, and covers every stream path and the delivery log."""
    src = SPEC["_source"]
    assert src["repository"] == "api-evangelist/instantly-ai" and len(src["commit"]) == 40
    assert set(SPEC["paths"]) >= {"/api/v2/audit-logs", "/api/v2/api-keys", "/api/v2/workspaces/current"}


async def test_simulator_bodies_match_the_documented_schemas() -> None:
    """Every list (agency links and a failed delivery included), the workspace and the error bodies."""
    async with InstantlySimulator(seed=3) as sim:
        world = sim_seed.demo_world(sim.state)
        ws = world.workspace.id
        agency_world(sim.state, ws, 2)
        sim.state.add_webhook_event(ws, "https://hooks.example.org/in", success=False, status_code=502)
        # every read scope, the opt-in delivery log's webhook_events:read included (the demo
        # world's poller key holds only what the default streams read)
        reader = sim.state.create_api_key(ws, "schema-reader", list(catalog.POLLER_SCOPES))
        headers = {"Authorization": f"Bearer {reader.key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            for path in LISTS:
                status, body = await _get(session, sim.url + path, params={"limit": "7"})
                assert status == 200, (path, body)
                assert body["items"], f"{path}: the demo world lists nothing, so nothing was checked"
                assert problems(path, 200, body) == [], path
            status, body = await _get(session, sim.url + "/api/v2/workspaces/current")
            assert status == 200 and problems("/api/v2/workspaces/current", 200, body) == []
            status, body = await _get(session, sim.url + ADMIN)
            assert (status, body["has_admin_workspace"], problems(ADMIN, 200, body)) == (200, False, [])
            sub = {"x-as-workspace": sim.state.workspace("sub-01").id}
            status, body = await _get(session, sim.url + ADMIN, headers=sub)
            assert (status, body["has_admin_workspace"], problems(ADMIN, 200, body)) == (200, True, [])
            status, body = await _get(session, sim.url + "/api/v2/api-keys", headers={"Authorization": "Bearer nope"})
            assert status == 401 and problems("/api/v2/api-keys", 401, body) == []
            status, body = await _get(session, sim.url + "/api/v2/webhooks/019f0000-0000-7000-8000-000000000000")
            assert status == 404 and problems("/api/v2/webhooks", 404, body) == []
            sim.limiter.per_second = 0
            status, body = await _get(session, sim.url + "/api/v2/audit-logs")
            assert status == 429 and problems("/api/v2/audit-logs", 429, body) == []
            sim.limiter.per_second = None
            sim.state.set_paid_plan(ws, False)
            status, body = await _get(session, sim.url + "/api/v2/audit-logs")
            assert status == 402 and problems("/api/v2/audit-logs", 402, body) == []


@pytest.mark.parametrize(
    ("fixture", "path"),
    [
        ("audit_logs.list.json", "/api/v2/audit-logs"),
        ("audit_logs.list.aug2026.json", "/api/v2/audit-logs"),
        ("api_keys.list.json", "/api/v2/api-keys"),
        ("workspace_members.list.json", "/api/v2/workspace-members"),
        ("webhooks.list.json", "/api/v2/webhooks"),
        ("workspace_group_members.list.json", "/api/v2/workspace-group-members"),
        ("block_list_entries.list.json", "/api/v2/block-lists-entries"),
        ("accounts.list.json", "/api/v2/accounts"),
        ("workspace.current.json", "/api/v2/workspaces/current"),
    ],
)
def test_fixtures_match_the_documented_schemas(fixture: str, path: str) -> None:
    """The documentation examples the fake serves are valid documented bodies."""
    assert problems(path, 200, load_fixture(fixture)) == []


# ------------------------------------------------------------------------------- requests
def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A query string value as the type its parameter schema names (as Fastify/AJV coerces it)."""
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


def request_problems(path: str, query: Mapping[str, str]) -> list[str]:
    """Why ``GET path?query`` is not a documented request (unknown path or parameter, bad value)."""
    op = SPEC["paths"].get(path)
    if op is None:
        return [f"{path} is not a documented GET path"]
    params = {p["name"]: p["schema"] for p in op["parameters"] if p["in"] == "query"}
    out = []
    for name, value in query.items():
        if name not in params:
            out.append(f"{path}: undocumented query parameter {name!r}")
            continue
        out += [
            f"{path} {name}={value!r}: {e.message}"
            for e in validator(params[name]).iter_errors(_coerce(value, params[name]))
        ]
    return out


def test_request_check_can_fail() -> None:
    """The request check refuses what the spec does not allow (so the poll test below can fail)."""
    assert request_problems("/api/v2/api-keys", {"limit": "1000"})
    assert request_problems("/api/v2/audit-logs", {"since": "2026-01-01"})
    assert request_problems("/api/v2/audit-log", {})
    assert request_problems("/api/v2/audit-logs", {"limit": "1000", "start_date": "2026-01-01"}) == []


async def test_every_poll_request_is_documented(tmp_path: Path) -> None:
    """Full reads, incremental reads, the late-record sweep and snapshot listings send only documented
    paths and parameters, with the bearer key and no request body."""
    sent: list[tuple[str, str, dict[str, str], Mapping[str, str]]] = []

    def session() -> aiohttp.ClientSession:
        async def on_start(_s: aiohttp.ClientSession, _c: SimpleNamespace, p: Any) -> None:
            sent.append((p.method, p.url.path, dict(p.url.query), p.headers))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        return aiohttp.ClientSession(trace_configs=[trace])

    clock = FakeClock()

    async def no_sleep(_d: float) -> None:
        return None

    async with InstantlySimulator(seed=1, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
        world = sim_seed.demo_world(sim.state)
        cfg = WorkspaceConfig(
            api_key=SecretStr(world.poller_key.key), base_url=sim.url, max_retries=1,
            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000), audit_sweep_interval_secs=60,
        )  # fmt: skip
        poller = InstantlyWorkspacePoller(
            "acme", cfg, bus, clock=clock, budget=RequestBudget(1000, 60_000), sleep=no_sleep,
            rng=random.Random(2), session_factory=session,
        )  # fmt: skip
        async with poller:
            for _ in range(3):
                await poller.poll_once()
                sim.state.insert_audit(world.workspace.id, 37)
                clock.advance(4000)  # past the overlap: the next poll re-reads the start_date window
                await poller.poll_once()
                clock.advance(60)
    audit = [q for _m, p, q, _h in sent if p == "/api/v2/audit-logs"]
    assert any("starting_after" in q for q in audit) and any("start_date" in q for q in audit)
    week_ago = datetime.fromtimestamp(clock.now() - 6 * 86_400, tz=UTC).date().isoformat()
    assert any(q.get("start_date", "9") < week_ago for q in audit), "the late-record sweep did not run"
    assert {p for _m, p, _q, _h in sent} == set(SPEC["paths"]) - {"/api/v2/webhook-events"}
    for method, path, query, headers in sent:
        assert method == "GET"
        assert request_problems(path, query) == []
        assert headers["Authorization"] == f"Bearer {world.poller_key.key}"
        assert "Content-Type" not in headers
