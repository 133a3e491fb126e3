"""Error envelopes of the simulated Instantly API: exact ``{statusCode, error, message}`` bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from connectors.instantly.sim import ApiKey, InstantlySimulator

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[InstantlySimulator]:
    async with InstantlySimulator(seed=2) as s:
        yield s


@pytest_asyncio.fixture
async def key(sim: InstantlySimulator) -> ApiKey:
    return sim.add_api_key(sim.add_workspace("Errors", alias="errors").id, ["all:all"])


async def call(
    sim: InstantlySimulator, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, sim.api_url + path, headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def envelope(status: int, error: str, message: str) -> dict[str, Any]:
    return {"statusCode": status, "error": error, "message": message}


async def test_missing_authorization_header(sim: InstantlySimulator) -> None:
    """No Authorization header answers 401 ``Missing Authorization header``."""
    assert await call(sim, "GET", "/audit-logs") == (
        401,
        envelope(401, "Unauthorized", "Missing Authorization header"),
    )


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Bearer not-a-key"])
async def test_invalid_authorization_header(sim: InstantlySimulator, key: ApiKey, value: str) -> None:
    """A malformed bearer value or an unknown key answers 401 ``Invalid authorization header``."""
    status, body = await call(sim, "GET", "/audit-logs", {"Authorization": value})
    assert (status, body) == (401, envelope(401, "Unauthorized", "Invalid authorization header"))


async def test_unknown_resource_and_route_are_404(sim: InstantlySimulator, key: ApiKey) -> None:
    """An unknown id answers ``Resource not found``; an unknown route answers Fastify's route 404."""
    status, body = await call(sim, "GET", "/webhooks/019cc043-e2f1-7def-8b07-0aab88328dad", sim.headers(key))
    assert (status, body) == (404, envelope(404, "Not Found", "Resource not found"))
    status, body = await call(sim, "GET", "/campaigns", sim.headers(key))
    assert (status, body) == (404, envelope(404, "Not Found", "Route GET:/api/v2/campaigns not found"))


async def test_other_workspace_objects_are_404(sim: InstantlySimulator, key: ApiKey) -> None:
    """A key never sees another workspace's objects: their ids answer 404."""
    other = sim.add_workspace("Other")
    hook = sim.state.create_webhook(other.id, "https://x.example/h")
    status, _ = await call(sim, "DELETE", f"/webhooks/{hook.id}", sim.headers(key))
    assert status == 404
    assert hook.id in sim.state.webhooks


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scopes": ["all:read"]}, "body must have required property 'name'"),
        ({"name": "k"}, "body must have required property 'scopes'"),
        ({"name": "k", "scopes": ["all:read"], "expires": 3}, "body must NOT have additional properties"),
        ({"name": 5, "scopes": []}, "body/name must be string"),
        ({"name": "k", "scopes": ["everything"]}, "body/scopes/0 must be equal to one of the allowed values"),
        ([1, 2], "body must be object"),
    ],
)
async def test_strict_create_body(sim: InstantlySimulator, key: ApiKey, body: Any, message: str) -> None:
    """POST bodies are validated strictly with AJV-style messages."""
    assert await call(sim, "POST", "/api-keys", sim.headers(key), json=body) == (
        400,
        envelope(400, "Bad Request", message),
    )


async def test_patch_rules(sim: InstantlySimulator, key: ApiKey) -> None:
    """PATCH needs at least one known property; webhook URLs must match ``^https?://``."""
    hook = sim.state.create_webhook(key.workspace_id, "https://x.example/h")
    path = f"/webhooks/{hook.id}"
    assert (await call(sim, "PATCH", path, sim.headers(key), json={}))[1] == envelope(
        400, "Bad Request", "body must NOT have fewer than 1 properties"
    )
    assert (await call(sim, "PATCH", path, sim.headers(key), json={"secret": "x"}))[1]["message"] == (
        "body must NOT have additional properties"
    )
    status, body = await call(sim, "PATCH", path, sim.headers(key), json={"target_hook_url": "ftp://x"})
    assert (status, body["message"]) == (400, 'body/target_hook_url must match pattern "^https?://"')
    status, body = await call(sim, "PATCH", "/workspace-members/x", sim.headers(key), json={"role": "root"})
    assert body["message"] == "body/role must be equal to one of the allowed values"


async def test_body_parsing_errors(sim: InstantlySimulator, key: ApiKey) -> None:
    """Invalid JSON, an empty JSON body and a non-JSON content type are refused like Fastify does."""
    headers = {**sim.headers(key), "Content-Type": "application/json"}
    status, body = await call(sim, "POST", "/block-lists-entries", headers, data=b"{nope")
    assert (status, body["message"]) == (400, "Body is not valid JSON")
    status, body = await call(sim, "DELETE", "/api-keys/whatever", headers)
    assert (status, body["message"]) == (400, "Body cannot be empty when content-type is set to 'application/json'")
    text = {**sim.headers(key), "Content-Type": "text/plain"}
    status, body = await call(sim, "POST", "/block-lists-entries", text, data=b"spam.example")
    assert (status, body) == (415, envelope(415, "Unsupported Media Type", "Unsupported Media Type: text/plain"))


async def test_no_paid_plan_is_402(sim: InstantlySimulator, key: ApiKey) -> None:
    """A workspace without a paid plan answers 402 on every call."""
    sim.state.set_paid_plan(key.workspace_id, False)
    assert await call(sim, "GET", "/workspaces/current", sim.headers(key)) == (
        402,
        envelope(402, "Payment Required", "Workspace does not have an active paid plan"),
    )


async def test_group_invitation_conflict_is_409(sim: InstantlySimulator, key: ApiKey) -> None:
    """Inviting a sub-workspace that already has a parent answers the documented 409."""
    sub = sim.add_workspace("Sub")
    other = sim.add_workspace("Other agency")
    sim.state.add_group_member(other.id, sub.id, status="accepted")
    status, body = await call(
        sim, "POST", "/workspace-group-members", sim.headers(key), json={"sub_workspace_id": sub.id}
    )
    assert (status, body) == (
        409,
        envelope(409, "Conflict", "The sub workspace already has an active parent or invitation"),
    )


async def test_owner_cannot_be_removed_or_demoted(sim: InstantlySimulator, key: ApiKey) -> None:
    """Deleting or re-roling the owner membership is refused with 400."""
    owner = next(m for m in sim.state.members_of(key.workspace_id) if m.role == "owner")
    status, body = await call(sim, "DELETE", f"/workspace-members/{owner.id}", sim.headers(key))
    assert (status, body["message"]) == (400, "The workspace owner cannot be removed")
    status, body = await call(sim, "PATCH", f"/workspace-members/{owner.id}", sim.headers(key), json={"role": "view"})
    assert status == 400
    assert set(body) == {"statusCode", "error", "message"}
