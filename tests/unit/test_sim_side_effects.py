"""Writes and their side effects (audit records, key revocation, webhook status) in the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from connectors.instantly.sim import ApiKey, InstantlySimulator
from pipeline.clock import FakeClock

pytestmark = pytest.mark.asyncio

START = 1_780_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest_asyncio.fixture
async def sim(clock: FakeClock) -> AsyncIterator[InstantlySimulator]:
    async with InstantlySimulator(seed=6, clock=clock.now) as s:
        yield s


@pytest_asyncio.fixture
async def admin(sim: InstantlySimulator) -> ApiKey:
    ws = sim.state.add_workspace("Acme", owner_email="dana@acme.example", owner_name=("Dana", "W"))
    return sim.add_api_key(ws.id, ["all:all"], name="admin")


async def call(
    sim: InstantlySimulator, key: ApiKey, method: str, path: str, json: Any = None, **headers: str
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sim.api_url + path, headers={**sim.headers(key), **headers}, json=json) as resp,
    ):
        return resp.status, await resp.json()


async def audit(sim: InstantlySimulator, key: ApiKey) -> list[dict[str, Any]]:
    status, body = await call(sim, key, "GET", "/audit-logs")
    assert status == 200
    return list(body["items"])


async def test_api_key_create_and_delete_emit_37_and_38(sim: InstantlySimulator, admin: ApiKey) -> None:
    """Creating/deleting a key logs 37/38 with the caller key's id, its user, IP, UA and from_api."""
    status, created = await call(
        sim, admin, "POST", "/api-keys", {"name": "ci", "scopes": ["leads:read"]}, **{"User-Agent": "curl/8.5"}
    )
    assert status == 200
    assert created["key"] and set(created) == {
        "id", "name", "scopes", "key", "organization_id", "timestamp_created", "timestamp_updated"
    }  # fmt: skip
    status, deleted = await call(sim, admin, "DELETE", f"/api-keys/{created['id']}")
    assert (status, deleted["id"]) == (200, created["id"])
    records = await audit(sim, admin)
    assert [r["activity_type"] for r in records] == [37, 38]
    owner = sim.state.workspace(admin.workspace_id).owner
    for record in records:
        assert record["api_key_id"] == admin.id
        assert record["user_id"] == owner
        assert record["user_name"] == "Dana W"
        assert record["ip_address"] == "127.0.0.1"
        assert record["from_api"] is True
        assert record["organization_id"] == admin.workspace_id
    assert records[0]["user_agent"] == "curl/8.5"


async def test_key_value_modes(sim: InstantlySimulator, admin: ApiKey) -> None:
    """``key`` in list/delete responses is full, masked or absent per config; POST always shows it."""
    listing = (await call(sim, admin, "GET", "/api-keys"))[1]["items"][0]
    assert listing["key"] == admin.key
    sim.config.key_value_mode = "masked"
    masked = (await call(sim, admin, "GET", "/api-keys"))[1]["items"][0]["key"]
    assert masked != admin.key
    assert masked.startswith(admin.key[:4])
    assert masked.endswith(admin.key[-4:])
    sim.config.key_value_mode = "absent"
    assert "key" not in (await call(sim, admin, "GET", "/api-keys"))[1]["items"][0]
    created = (await call(sim, admin, "POST", "/api-keys", {"name": "n", "scopes": ["all:read"]}))[1]
    assert created["key"] == sim.state.api_key(created["id"]).key


async def test_webhook_lifecycle_audits_18_to_21(sim: InstantlySimulator, admin: ApiKey, clock: FakeClock) -> None:
    """Create 18, update 19, auto-disable -1 + timestamp_error + 20, resume 1 + 21; delete returns it."""
    body = {
        "target_hook_url": "https://crm.example/hook",
        "headers": {"X-Secret": "s3"},
        "event_type": "reply_received",
    }
    status, hook = await call(sim, admin, "POST", "/webhooks", body)
    assert (status, hook["status"], hook["timestamp_error"]) == (200, 1, None)
    assert hook["headers"] == {"X-Secret": "s3"}
    assert hook["organization"] == admin.workspace_id
    status, patched = await call(sim, admin, "PATCH", f"/webhooks/{hook['id']}", {"name": "CRM"})
    assert (status, patched["name"]) == (200, "CRM")
    clock.advance(5)
    sim.state.mark_webhook_error(hook["id"])
    disabled = (await call(sim, admin, "GET", f"/webhooks/{hook['id']}"))[1]
    assert (disabled["status"], disabled["timestamp_error"]) == (-1, "2026-05-28T20:26:45.000Z")
    status, resumed = await call(sim, admin, "POST", f"/webhooks/{hook['id']}/resume")
    assert (status, resumed["status"], resumed["timestamp_error"]) == (200, 1, None)
    records = await audit(sim, admin)
    assert [r["activity_type"] for r in records] == [18, 19, 20, 21]
    assert {r["webhook_id"] for r in records} == {hook["id"]}
    assert records[2]["from_api"] is False
    assert records[2]["api_key_id"] is None
    assert records[3]["api_key_id"] == admin.id
    status, deleted = await call(sim, admin, "DELETE", f"/webhooks/{hook['id']}")
    assert (status, deleted["id"]) == (200, hook["id"])
    assert (await call(sim, admin, "GET", f"/webhooks/{hook['id']}"))[0] == 404


async def test_member_invite_accept_promote_remove(sim: InstantlySimulator, admin: ApiKey) -> None:
    """An invited member is ``accepted: false`` until accepted; PATCH changes role; DELETE returns it."""
    status, member = await call(sim, admin, "POST", "/workspace-members", {"email": "x@gmail.com", "role": "view"})
    assert (status, member["accepted"], member["role"]) == (200, False, "view")
    assert member["issuer_id"] == sim.state.workspace(admin.workspace_id).owner
    sim.state.accept_member(member["id"])
    status, promoted = await call(sim, admin, "PATCH", f"/workspace-members/{member['id']}", {"role": "admin"})
    assert (status, promoted["role"], promoted["accepted"]) == (200, "admin", True)
    duplicate = await call(sim, admin, "POST", "/workspace-members", {"email": "x@gmail.com", "role": "view"})
    assert duplicate[0] == 409
    status, gone = await call(sim, admin, "DELETE", f"/workspace-members/{member['id']}")
    assert (status, gone["email"]) == (200, "x@gmail.com")
    assert (await call(sim, admin, "GET", f"/workspace-members/{member['id']}"))[0] == 404
    status, body = await call(sim, admin, "POST", "/workspace-members", {"email": "y@acme.example", "role": "owner"})
    assert (status, body["message"]) == (400, "Role 'owner' cannot be assigned through the API")


async def test_workspace_owner_change_and_removal(sim: InstantlySimulator, admin: ApiKey) -> None:
    """change-owner moves ownership to an accepted member; schedule-for-removal sets a date 24 h ahead."""
    ws_id = admin.workspace_id
    sim.state.invite_member(ws_id, "eve@acme.example", "admin", accepted=True)
    status, ws = await call(
        sim, admin, "POST", "/workspaces/current/change-owner", {"email": "eve@acme.example", "sec": "t0ken"}
    )
    assert status == 200
    assert ws["owner"] == sim.state.user("eve@acme.example").id
    roles = {m.email: m.role for m in sim.state.members_of(ws_id)}
    assert roles == {"dana@acme.example": "admin", "eve@acme.example": "owner"}
    status, ws = await call(sim, admin, "POST", "/workspaces/current/schedule-for-removal")
    assert ws["scheduled_for_removal_at"] == "2026-05-29T20:26:40.000Z"
    status, ws = await call(sim, admin, "PATCH", "/workspaces/current", {"name": "Acme 2"})
    assert (status, ws["name"]) == (200, "Acme 2")


async def test_block_list_and_group_members(sim: InstantlySimulator, admin: ApiKey) -> None:
    """Block-list entries derive is_domain; group invitations start pending and can be removed."""
    status, entry = await call(sim, admin, "POST", "/block-lists-entries", {"bl_value": "rival.example"})
    assert (status, entry["is_domain"]) == (200, True)
    status, gone = await call(sim, admin, "DELETE", f"/block-lists-entries/{entry['id']}")
    assert (status, gone["bl_value"]) == (200, "rival.example")
    sub = sim.add_workspace("Client")
    status, link = await call(sim, admin, "POST", "/workspace-group-members", {"sub_workspace_id": sub.id})
    assert (status, link["status"], link["sub_workspace_name"], link["admin_workspace_name"]) == (
        200, "pending", "Client", "Acme"
    )  # fmt: skip
    listed = (await call(sim, admin, "GET", "/workspace-group-members"))[1]["items"]
    assert [g["id"] for g in listed] == [link["id"]]
    status, removed = await call(sim, admin, "DELETE", f"/workspace-group-members/{link['id']}")
    assert (status, removed["id"]) == (200, link["id"])


async def test_webhook_events_list(sim: InstantlySimulator, admin: ApiKey) -> None:
    """The delivery log is empty by default and lists recorded attempts with the success filter."""
    assert (await call(sim, admin, "GET", "/webhook-events"))[1] == {"items": []}
    sim.state.add_webhook_event(admin.workspace_id, "https://crm.example/hook", success=False, status_code=500)
    sim.state.add_webhook_event(admin.workspace_id, "https://crm.example/hook", success=True, status_code=200)
    failed = (await call(sim, admin, "GET", "/webhook-events?success=false"))[1]["items"]
    assert [(e["success"], e["status_code"]) for e in failed] == [(False, 500)]
    assert failed[0]["timestamp_created_date"] == "2026-05-28"
