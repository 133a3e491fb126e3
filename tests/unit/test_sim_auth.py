"""Scopes (403), revoked keys (401) and ``x-as-workspace`` in the simulated Instantly API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from connectors.instantly.sim import InstantlySimulator, demo_world

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[InstantlySimulator]:
    async with InstantlySimulator(seed=3) as s:
        yield s


async def call(sim: InstantlySimulator, method: str, path: str, headers: dict[str, str], **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sim.api_url + path, headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize("scope", ["api_keys:read", "api_keys:all", "all:read", "all:all"])
async def test_any_of_four_scopes_grants(sim: InstantlySimulator, scope: str) -> None:
    """``{resource}:{action}``, ``{resource}:all``, ``all:{action}`` and ``all:all`` each grant a read."""
    key = sim.add_api_key(sim.add_workspace("S").id, [scope])
    status, _ = await call(sim, "GET", "/api-keys", sim.headers(key))
    assert status == 200


@pytest.mark.parametrize("scopes", [["api_keys:create"], ["audit_logs:read", "all:create"], []])
async def test_missing_scope_is_403_naming_it(sim: InstantlySimulator, scopes: list[str]) -> None:
    """Without a granting scope the call answers 403 with a three-field body naming the scope."""
    key = sim.add_api_key(sim.add_workspace("S").id, scopes)
    status, body = await call(sim, "GET", "/api-keys", sim.headers(key))
    assert status == 403
    assert set(body) == {"statusCode", "error", "message"}
    assert body["statusCode"] == 403
    assert body["error"] == "Forbidden"
    assert "api_keys:read" in body["message"]


async def test_poller_key_reads_everything_but_writes_nothing(sim: InstantlySimulator) -> None:
    """The demo poller key reads every endpoint the default streams poll and is refused every write.

    It holds exactly README's minimal scopes: the delivery log (``/webhook-events``, the opt-in
    ``webhook_deliveries`` stream) needs ``webhook_events:read``, which it does not hold.
    """
    world = demo_world(sim.state)
    headers = sim.headers(world.poller_key)
    for path in ("/audit-logs", "/api-keys", "/workspace-members", "/workspaces/current", "/webhooks",
                 "/block-lists-entries", "/workspace-group-members", "/accounts",
                 "/workspace-group-members/admin"):  # fmt: skip
        assert (await call(sim, "GET", path, headers))[0] == 200, path
    status, body = await call(sim, "GET", "/webhook-events", headers)
    assert status == 403 and "webhook_events:read" in body["message"]
    status, _ = await call(sim, "POST", "/api-keys", headers, json={"name": "x", "scopes": ["all:all"]})
    assert status == 403
    status, _ = await call(sim, "DELETE", f"/webhooks/{world.webhook.id}", headers)
    assert status == 403


async def test_unlisted_scope_enforcement_is_configurable(sim: InstantlySimulator) -> None:
    """GET /webhooks needs webhooks:read by default and only a valid key when enforcement is off."""
    key = sim.add_api_key(sim.add_workspace("S").id, ["audit_logs:read"])
    assert (await call(sim, "GET", "/webhooks", sim.headers(key)))[0] == 403
    sim.config.enforce_unlisted_scopes = False
    assert (await call(sim, "GET", "/webhooks", sim.headers(key)))[0] == 200
    assert (await call(sim, "GET", "/webhooks/019cc043-e2f1-7def-8b07-0aab88328dad", sim.headers(key)))[0] == 403


async def test_deleted_key_is_401_at_once(sim: InstantlySimulator) -> None:
    """After DELETE /api-keys/{id} the deleted key answers 401 on its next call."""
    ws = sim.add_workspace("S")
    admin = sim.add_api_key(ws.id, ["all:all"])
    victim = sim.add_api_key(ws.id, ["all:read"])
    assert (await call(sim, "GET", "/audit-logs", sim.headers(victim)))[0] == 200
    status, body = await call(sim, "DELETE", f"/api-keys/{victim.id}", sim.headers(admin))
    assert (status, body["id"]) == (200, victim.id)
    status, body = await call(sim, "GET", "/audit-logs", sim.headers(victim))
    assert (status, body["message"]) == (401, "Invalid authorization header")


async def test_admin_key_acts_as_accepted_sub_workspace(sim: InstantlySimulator) -> None:
    """An admin-workspace key with x-as-workspace reads an accepted sub-workspace, same scopes needed."""
    agency = sim.add_workspace("Agency")
    client = sim.add_workspace("Client A")
    link = sim.state.add_group_member(agency.id, client.id)
    key = sim.add_api_key(agency.id, ["workspaces:read", "workspace_group_members:read"])
    status, body = await call(sim, "GET", "/workspaces/current", sim.headers(key, as_workspace=client.id))
    assert (status, body["message"]) == (403, f"API key cannot act as workspace {client.id}")
    sim.state.set_group_member_status(link.id, "accepted")
    status, body = await call(sim, "GET", "/workspaces/current", sim.headers(key, as_workspace=client.id))
    assert (status, body["name"]) == (200, "Client A")
    status, body = await call(sim, "GET", "/workspace-group-members/admin", sim.headers(key, client.id))
    assert body == {"workspace_name": "Agency", "has_admin_workspace": True, "workspace_group_member_id": link.id}
    status, _ = await call(sim, "GET", "/api-keys", sim.headers(key, as_workspace=client.id))
    assert status == 403
    assert sim.calls[-2].workspace_id == client.id


async def test_sub_or_stranger_cannot_act_as_others(sim: InstantlySimulator) -> None:
    """A sub-workspace key cannot act as its admin, and nobody can act as an unrelated workspace."""
    agency, client, stranger = (sim.add_workspace(n) for n in ("Agency", "Client", "Stranger"))
    sim.state.add_group_member(agency.id, client.id, status="accepted")
    sub_key = sim.add_api_key(client.id, ["all:all"])
    stranger_key = sim.add_api_key(stranger.id, ["all:all"])
    assert (await call(sim, "GET", "/workspaces/current", sim.headers(sub_key, agency.id)))[0] == 403
    assert (await call(sim, "GET", "/workspaces/current", sim.headers(stranger_key, client.id)))[0] == 403
    status, body = await call(sim, "GET", "/workspaces/current", sim.headers(sub_key, client.id))
    assert (status, body["id"]) == (200, client.id)
