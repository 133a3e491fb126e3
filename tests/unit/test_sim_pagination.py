"""Cursor pagination, limit validation and list filters of the simulated Instantly API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio

from connectors.instantly.sim import ApiKey, InstantlySimulator
from pipeline.clock import FakeClock

pytestmark = pytest.mark.asyncio

START = 1_780_000_000.0  # 2026-05-28T20:26:40Z


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[InstantlySimulator]:
    async with InstantlySimulator(seed=5, clock=FakeClock(START).now) as s:
        yield s


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get(session: aiohttp.ClientSession, sim: InstantlySimulator, key: ApiKey, path: str) -> tuple[int, Any]:
    async with session.get(sim.api_url + path, headers=sim.headers(key)) as resp:
        return resp.status, await resp.json()


async def walk(
    session: aiohttp.ClientSession, sim: InstantlySimulator, key: ApiKey, path: str, limit: int
) -> list[dict[str, Any]]:
    """Follow cursors until an empty page or an absent cursor; returns the pages."""
    pages, cursor = [], None
    while True:
        query = f"?limit={limit}" + (f"&starting_after={cursor}" if cursor else "")
        status, body = await get(session, sim, key, path + query)
        assert status == 200
        pages.append(body)
        cursor = body.get("next_starting_after")
        if not body["items"] or cursor is None:
            return pages


def seed_audit(sim: InstantlySimulator, count: int) -> tuple[ApiKey, list[str]]:
    ws = sim.add_workspace("Pager")
    ids = [sim.state.insert_audit(ws.id, 1 + i % 3).id for i in range(count)]
    return sim.add_api_key(ws.id, ["audit_logs:read"]), ids


async def test_trailing_cursor_then_empty_page(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """With trailing cursors the last full page carries a cursor and an empty page follows."""
    key, ids = seed_audit(sim, 25)
    pages = await walk(session, sim, key, "/audit-logs", 10)
    assert [len(p["items"]) for p in pages] == [10, 10, 5, 0]
    assert pages[2]["next_starting_after"] == ids[-1]
    assert "next_starting_after" not in pages[3]
    assert [item["id"] for p in pages for item in p["items"]] == ids


async def test_without_trailing_cursor_last_page_has_none(
    sim: InstantlySimulator, session: aiohttp.ClientSession
) -> None:
    """With trailing_cursor off the last non-empty page has no cursor, even on an exact multiple."""
    sim.config.trailing_cursor = False
    key, ids = seed_audit(sim, 30)
    pages = await walk(session, sim, key, "/audit-logs", 10)
    assert [len(p["items"]) for p in pages] == [10, 10, 10]
    assert "next_starting_after" not in pages[-1]
    assert [item["id"] for p in pages for item in p["items"]] == ids


async def test_many_pages_of_api_keys(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """Keys page in id order with the cursor being the last id, across many small pages."""
    ws = sim.add_workspace("Keys")
    reader = sim.add_api_key(ws.id, ["api_keys:read"])
    created = [reader.id] + [sim.add_api_key(ws.id, ["leads:read"], name=f"k{i}").id for i in range(46)]
    pages = await walk(session, sim, reader, "/api-keys", 7)
    assert len(pages) == 8
    for page in pages[:-1]:
        assert page["next_starting_after"] == page["items"][-1]["id"]
    assert [item["id"] for p in pages for item in p["items"]] == sorted(created)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api-keys?limit=0", "querystring/limit must be >= 1"),
        ("/api-keys?limit=101", "querystring/limit must be <= 100"),
        ("/workspace-members?limit=-5", "querystring/limit must be >= 1"),
        ("/audit-logs?limit=1001", "querystring/limit must be <= 1000"),
        ("/webhooks?limit=abc", "querystring/limit must be integer"),
    ],
)
async def test_limit_out_of_range_is_400(
    sim: InstantlySimulator, session: aiohttp.ClientSession, path: str, message: str
) -> None:
    """A limit outside the documented range answers 400 with the three-field body."""
    ws = sim.add_workspace("Limits")
    status, body = await get(session, sim, sim.add_api_key(ws.id, ["all:read"]), path)
    assert status == 400
    assert body == {"statusCode": 400, "error": "Bad Request", "message": message}


async def test_audit_limit_up_to_1000(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """Audit logs accept limit=1000 (other lists stop at 100)."""
    key, ids = seed_audit(sim, 1200)
    status, body = await get(session, sim, key, "/audit-logs?limit=1000")
    assert status == 200
    assert len(body["items"]) == 1000
    assert body["next_starting_after"] == ids[999]


async def test_audit_filters(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """activity_type, start_date/end_date (whole UTC days or timestamps) and search filter records."""
    ws = sim.add_workspace("Filters")
    key = sim.add_api_key(ws.id, ["audit_logs:read"])
    day = 86_400.0
    owner = sim.state.actor_for_user(ws.owner, "203.0.113.9", "Firefox")
    sim.state.insert_audit(ws.id, 1, timestamp=START - 2 * day, actor=owner)
    sim.state.insert_audit(ws.id, 34, timestamp=START - day, affected_count=10)
    sim.state.insert_audit(ws.id, 1, timestamp=START)
    _, by_type = await get(session, sim, key, "/audit-logs?activity_type=1")
    assert [r["activity_type"] for r in by_type["items"]] == [1, 1]
    _, one_day = await get(session, sim, key, "/audit-logs?start_date=2026-05-27&end_date=2026-05-27")
    assert [r["activity_type"] for r in one_day["items"]] == [34]
    _, since = await get(session, sim, key, "/audit-logs?start_date=2026-05-27T20:26:40.000Z")
    assert [r["activity_type"] for r in since["items"]] == [34, 1]
    _, found = await get(session, sim, key, "/audit-logs?search=203.0.113")
    assert [r["ip_address"] for r in found["items"]] == ["203.0.113.9"]
    status, bad = await get(session, sim, key, "/audit-logs?start_date=yesterday")
    assert status == 400
    assert bad["message"] == 'querystring/start_date must match format "date"'


async def test_late_record_after_cursor_backdated_hidden(
    sim: InstantlySimulator, session: aiohttp.ClientSession
) -> None:
    """A late-arriving record shows up after the cursor; a back-dated id sorts before it and is skipped."""
    key, ids = seed_audit(sim, 3)
    ws_id = key.workspace_id
    late = sim.state.insert_audit(ws_id, 34, timestamp=START - 3600)
    sim.state.insert_audit_backdated(ws_id, 2, timestamp=START - 3600)
    _, body = await get(session, sim, key, f"/audit-logs?starting_after={ids[-1]}")
    assert [r["id"] for r in body["items"]] == [late.id]
    assert body["items"][0]["timestamp"] == "2026-05-28T19:26:40.000Z"


async def test_member_and_block_list_filters(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """accepted/search on members and domains_only/search on the block list filter before paging."""
    ws = sim.add_workspace("Filters", owner_email="boss@filters.example")
    key = sim.add_api_key(ws.id, ["all:read"])
    sim.state.invite_member(ws.id, "kim@filters.example", "view", name=("Kim", "Lee"))
    sim.state.add_block_list_entry(ws.id, "spam.example")
    sim.state.add_block_list_entry(ws.id, "who@spam.example")
    _, pending = await get(session, sim, key, "/workspace-members?accepted=false")
    assert [m["email"] for m in pending["items"]] == ["kim@filters.example"]
    _, by_name = await get(session, sim, key, "/workspace-members?search=kim")
    assert len(by_name["items"]) == 1
    _, domains = await get(session, sim, key, "/block-lists-entries?domains_only=true")
    assert [(e["bl_value"], e["is_domain"]) for e in domains["items"]] == [("spam.example", True)]
    status, bad = await get(session, sim, key, "/workspace-members?accepted=maybe")
    assert status == 400
    assert bad["message"] == "querystring/accepted must be boolean"


async def test_accounts_cursor_is_timestamp_and_email(sim: InstantlySimulator, session: aiohttp.ClientSession) -> None:
    """The accounts list pages with a ``timestamp_created&email`` cursor."""
    ws = sim.add_workspace("Mail")
    key = sim.add_api_key(ws.id, ["accounts:read"])
    for i, email in enumerate(["a@mail.example", "b@mail.example", "c@mail.example"]):
        sim.state.add_account(ws.id, email, created_at=START - 100 + i)
    _, first = await get(session, sim, key, "/accounts?limit=2")
    assert first["next_starting_after"] == "2026-05-28T20:25:01.000Z&b@mail.example"
    cursor = quote(first["next_starting_after"], safe="")
    _, rest = await get(session, sim, key, f"/accounts?limit=2&starting_after={cursor}")
    assert [a["email"] for a in rest["items"]] == ["c@mail.example"]
    _, legacy = await get(session, sim, key, "/accounts?limit=5&starting_after=2026-05-28T20:25:00.500Z")
    assert [a["email"] for a in legacy["items"]] == ["b@mail.example", "c@mail.example"]  # a bare timestamp cursor


async def test_poller_reads_every_account_page(sim: InstantlySimulator, tmp_path: Any) -> None:
    """The poller follows the accounts cursor (limit 100) through 250 mailboxes and baselines each once."""
    from pydantic import SecretStr

    from connectors.instantly.config import BudgetConfig, WorkspaceConfig
    from connectors.instantly.source import InstantlyWorkspacePoller
    from pipeline.bus.sqlite import SqliteBus

    ws = sim.add_workspace("Mail")
    key = sim.add_api_key(ws.id, ["accounts:read", "workspaces:read"])
    for i in range(250):
        sim.state.add_account(ws.id, f"box{i:03d}@mail.example", created_at=START - 1000 + i // 3)
    cfg = WorkspaceConfig(
        api_key=SecretStr(key.key), base_url=sim.url, streams=["accounts"],
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
    )  # fmt: skip
    async with (
        SqliteBus(tmp_path / "bus.db") as bus,
        InstantlyWorkspacePoller("mail", cfg, bus, clock=FakeClock(START)) as poller,
    ):
        counts = await poller.poll_once()
        assert counts["accounts"] == 250
        assert (await poller.poll_once())["accounts"] == 0


@pytest.mark.parametrize("trailing", [True, False])
async def test_audit_newest_first(sim: InstantlySimulator, session: aiohttp.ClientSession, trailing: bool) -> None:
    """``audit_order: desc`` lists the audit log newest first; the cursor continues with older records
    and the filters still apply."""
    sim.config.audit_order = "desc"
    sim.config.trailing_cursor = trailing
    key, ids = seed_audit(sim, 7)
    pages = await walk(session, sim, key, "/audit-logs", 3)
    assert [r["id"] for p in pages for r in p["items"]] == ids[::-1]
    assert [len(p["items"]) for p in pages] == ([3, 3, 1, 0] if trailing else [3, 3, 1])
    _, logins = await get(session, sim, key, f"/audit-logs?activity_type=1&limit=2&starting_after={ids[5]}")
    assert [r["id"] for r in logins["items"]] == [ids[3], ids[0]]
