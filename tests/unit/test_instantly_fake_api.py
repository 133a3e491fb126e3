"""A small fake of the Instantly API v2 (real aiohttp server on 127.0.0.1) for the connector tests.

It serves the documented list envelope ``{items, next_starting_after}`` with the cursor = id of
the last item, the error envelope ``{statusCode, error, message}``, bearer auth, and scripted
faults. The other ``test_instantly_*`` modules import :class:`FakeInstantly` and :func:`serve`;
the tests at the bottom check the fake itself.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "instantly"
ERRORS = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
COLLECTIONS = (
    "api-keys", "workspace-members", "webhooks", "workspace-group-members", "block-lists-entries", "accounts"
)  # fmt: skip


def load_fixture(name: str) -> Any:
    """A fixture file without its ``_source`` note."""
    doc = json.loads((FIXTURES / name).read_text())
    if isinstance(doc, dict):
        doc.pop("_source", None)
    return doc


DOCUMENTED: dict[str, dict[str, Any]] = load_fixture("errors.json")


@dataclass
class Fault:
    """Answer ``status`` (or a malformed body) ``times`` times to requests whose path ends with ``path``."""

    path: str
    status: int = 500
    times: int = 1
    kind: str = "status"  # status | malformed_json | no_items | slow
    only_with_cursor: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FakeInstantly:
    """State + aiohttp app. Mutate ``collections``, ``audit`` and ``workspace`` between polls."""

    def __init__(self, api_key: str = "test-key-0123456789"):
        self.api_key = api_key
        self.revoked = False
        self.workspace: dict[str, Any] = load_fixture("workspace.current.json")
        self.collections: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
        self.audit: list[dict[str, Any]] = []
        self.admin_workspace: dict[str, Any] | None = None
        """The body of ``GET /workspace-group-members/admin`` (``None``: 404)."""
        self.audit_order = "desc"
        """``desc``: newest timestamp first; ``asc``: ascending by id (the simulator's order)."""
        self.trailing_cursor = True
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.url = ""

    # ---- scripting -------------------------------------------------------------------------
    def fail(self, path: str, status: int = 500, times: int = 1, **kw: Any) -> None:
        """Queue a fault for requests to ``path``."""
        self.faults.append(Fault(path, status, times, **kw))

    def calls_to(self, path: str) -> list[Call]:
        """The calls whose path ends with ``path``."""
        return [c for c in self.calls if c.path.endswith(path)]

    # ---- app --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_route("*", "/api/v2/{tail:.*}", self._handle)
        return app

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"statusCode": status, "error": ERRORS.get(status, "Error"), "message": message}
        return web.json_response(body, status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.calls.append(Call(request.method, request.path, dict(request.query), dict(request.headers), body))
        auth = request.headers.get("Authorization")
        if auth is None:
            return self._error(401, "Missing Authorization header")
        if self.revoked or auth != f"Bearer {self.api_key}":
            return self._error(401, "Invalid authorization header")
        for fault in self.faults:
            if fault.times > 0 and request.path.endswith(fault.path):
                if fault.only_with_cursor and "starting_after" not in request.query:
                    continue
                fault.times -= 1
                if fault.kind == "malformed_json":
                    return web.Response(text="<html>oops", content_type="application/json")
                if fault.kind == "no_items":
                    return web.json_response({"data": []})
                if fault.kind == "slow":
                    await asyncio.sleep(5)
                default = DOCUMENTED.get(str(fault.status), {}).get("message", ERRORS.get(fault.status, "Error"))
                return self._error(fault.status, fault.message or default, fault.headers)
        tail = request.path.removeprefix("/api/v2/")
        if request.method == "GET" and tail == "workspaces/current":
            return web.json_response(self.workspace)
        if request.method == "GET" and tail == "workspace-group-members/admin" and self.admin_workspace is not None:
            return web.json_response(self.admin_workspace)
        if request.method == "GET" and tail == "audit-logs":
            return self._page(self._audit_view(request.query), request.query)
        if request.method == "GET" and tail in self.collections:
            return self._page(sorted(self.collections[tail], key=_cursor), request.query)
        if request.method == "POST" and tail == "api-keys":
            doc = json.loads(body)
            return web.json_response({"id": "new", "name": doc["name"], "scopes": doc["scopes"], "key": "k"})
        if request.method == "DELETE" and tail.startswith("api-keys/"):
            return web.json_response({"id": tail.split("/", 1)[1]})
        return self._error(404, "Resource not found")

    def _audit_view(self, query: Any) -> list[dict[str, Any]]:
        records = list(self.audit)
        start = query.get("start_date")
        if start:
            records = [r for r in records if r["timestamp"][:10] >= start]
        if self.audit_order == "asc":
            return sorted(records, key=lambda r: str(r["id"]))
        return sorted(records, key=lambda r: (r["timestamp"], r["id"]), reverse=True)  # newest first

    def _page(self, records: list[dict[str, Any]], query: Any) -> web.Response:
        limit = int(query.get("limit", "10"))
        start = 0
        after = query.get("starting_after")
        if after is not None:
            ids = [_cursor(r) for r in records]
            start = ids.index(after) + 1 if after in ids else len(records)
        items = records[start : start + limit]
        out: dict[str, Any] = {"items": copy.deepcopy(items)}
        more = start + limit < len(records)
        if items and (more or self.trailing_cursor):
            out["next_starting_after"] = _cursor(items[-1])
        return web.json_response(out)


def _cursor(record: dict[str, Any]) -> str:
    """A record's cursor: its id; an account (no id) has ``timestamp_created&email`` as Instantly's does."""
    if "id" in record:
        return str(record["id"])
    return f"{record.get('timestamp_created')}&{record.get('email')}"


@asynccontextmanager
async def serve(fake: FakeInstantly) -> AsyncIterator[FakeInstantly]:
    """Run ``fake`` on 127.0.0.1 (a random port) and set ``fake.url``."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()


# ---------------------------------------------------------------------------- self-tests
async def test_fake_requires_bearer_auth() -> None:
    """The fake answers 401 with the documented envelope when the bearer header is missing."""
    async with (
        serve(FakeInstantly()) as fake,
        aiohttp.ClientSession() as s,
        s.get(f"{fake.url}/api/v2/api-keys") as resp,
    ):
        assert resp.status == 401
        assert await resp.json() == {
            "statusCode": 401,
            "error": "Unauthorized",
            "message": "Missing Authorization header",
        }


async def test_fake_pages_with_cursor_of_last_id() -> None:
    """The fake pages by the id of the last item and may send a cursor on the last page."""
    fake = FakeInstantly()
    fake.collections["api-keys"] = [{"id": f"k{i:02d}"} for i in range(5)]
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with serve(fake), aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{fake.url}/api/v2/api-keys", params={"limit": "3"}) as resp:
            page = await resp.json()
        assert [r["id"] for r in page["items"]] == ["k00", "k01", "k02"]
        assert page["next_starting_after"] == "k02"
        async with s.get(f"{fake.url}/api/v2/api-keys", params={"limit": "3", "starting_after": "k02"}) as resp:
            page = await resp.json()
        assert [r["id"] for r in page["items"]] == ["k03", "k04"]
        assert page["next_starting_after"] == "k04"
