"""The client and poller against forms the public API v2 reference allows but our simulator never used.

Each test drives the real client or poller against the test fake (:mod:`tests.unit.test_instantly_fake_api`)
set up the way a server written from developer.instantly.ai may behave:

* a base URL spelled ``https://api.instantly.ai/api/v2`` (the OpenAPI server is the host; paths
  carry ``/api/v2``);
* a 429 whose wait is an HTTP-date ``Retry-After`` (RFC 9110 §10.2.3) or a rate-limit reset header;
* an audit log whose ``next_starting_after`` is a timestamp (the spec's second example) and which
  refuses any other ``starting_after`` with a 400.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from connectors.instantly.api import api_root
from connectors.instantly.budget import RequestBudget
from connectors.instantly.client import InstantlyClient
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.responses import retry_after_from
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, format_time, parse_time
from tests.unit.test_instantly_fake_api import FakeInstantly, load_fixture, serve

KEY = "conformance-key-5d2e8a"


class Sleeps:
    """Records the delays the client asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def fake() -> AsyncIterator[FakeInstantly]:
    async with serve(FakeInstantly(api_key=KEY)) as f:
        yield f


def client(url: str, sleeps: Sleeps | None = None, **kw: Any) -> InstantlyClient:
    cfg = WorkspaceConfig(api_key=SecretStr(KEY), base_url=url, **kw)
    return InstantlyClient(cfg, budget=RequestBudget(1000, 6000), rng=random.Random(1), sleep=sleeps or Sleeps())


# ------------------------------------------------------------------------------------ base URL
@pytest.mark.parametrize("suffix", ["", "/", "/api/v2", "/api/v2/"])
async def test_base_url_with_or_without_api_v2(fake: FakeInstantly, suffix: str) -> None:
    """``https://host`` and ``https://host/api/v2`` both reach ``/api/v2/<path>`` (never ``/api/v2/api/v2``)."""
    async with client(fake.url + suffix) as c:
        ws = await c.get("/api/v2/workspaces/current")
    assert ws["id"] == load_fixture("workspace.current.json")["id"]
    assert [call.path for call in fake.calls] == ["/api/v2/workspaces/current"]


def test_api_root_keeps_other_paths() -> None:
    """Only a trailing ``/api/v2`` is removed; a proxy prefix stays."""
    assert api_root("https://api.instantly.ai/api/v2/") == "https://api.instantly.ai"
    assert api_root("https://proxy.example/instantly/") == "https://proxy.example/instantly"
    assert api_root("https://proxy.example/instantly/api/v2") == "https://proxy.example/instantly"


# --------------------------------------------------------------------------------- 429 waits
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 30, tz=UTC), usegmt=True)}, 30.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 30, tz=UTC), usegmt=True)}, 0.0),
        ({"RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": "4"}, 4.0),
        ({"X-RateLimit-Reset": str(int(NOW + 45))}, 45.0),
        ({"Retry-After": "2", "X-RateLimit-Reset": "40"}, 2.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_wait_headers(headers: dict[str, str], wait: float | None) -> None:
    """Retry-After (seconds or HTTP-date) first, then RateLimit-Reset / X-RateLimit-Reset (delta or epoch)."""
    got = retry_after_from(headers, NOW)
    assert got == (None if wait is None else pytest.approx(wait))


async def test_http_date_retry_after_is_a_floor(fake: FakeInstantly) -> None:
    """A 429 with an HTTP-date Retry-After 20 s ahead waits at least ~20 s (the old parser ignored it)."""
    when = datetime.fromtimestamp(datetime.now(tz=UTC).timestamp() + 20, tz=UTC)
    fake.fail("/workspaces/current", 429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    sleeps = Sleeps()
    async with client(fake.url, sleeps) as c:
        await c.get("/api/v2/workspaces/current")
    assert len(sleeps.delays) == 1 and 15.0 <= sleeps.delays[0] <= 21.0


# -------------------------------------------------------------------- timestamp audit cursor
def _stamp(record: dict[str, Any]) -> str:
    return str(record["timestamp"])


def timestamp_cursor_pages(fake: FakeInstantly) -> None:
    """Make the fake's audit listing ascending by time with ``next_starting_after`` = the last timestamp,
    and answer 400 (Fastify/AJV text) to a ``starting_after`` that is not a date-time."""

    def page(records: list[dict[str, Any]], query: Any) -> web.Response:
        ordered = sorted(records, key=_stamp)
        after = query.get("starting_after")
        if after is not None:
            try:
                since = parse_time(after)
            except ValueError:
                return fake._error(400, 'querystring/starting_after must match format "date-time"')
            ordered = [r for r in ordered if parse_time(_stamp(r)) > since]
        limit = int(query.get("limit", "10"))
        items = ordered[:limit]
        out: dict[str, Any] = {"items": items}
        if len(ordered) > limit:
            out["next_starting_after"] = _stamp(items[-1])
        return web.json_response(out)

    fake._page = page  # type: ignore[method-assign]


def audit(rid: str, ts: float) -> dict[str, Any]:
    base = load_fixture("audit_logs.list.json")["items"][0]
    return {**base, "id": rid, "timestamp": format_time(ts), "activity_type": 1}


async def test_audit_log_with_a_timestamp_cursor_is_not_wedged(fake: FakeInstantly, tmp_path: Path) -> None:
    """An API that refuses the record id as ``starting_after`` (400) gets the windowed read instead:
    every record is published once and no poll fails (the old poller failed every incremental poll)."""
    timestamp_cursor_pages(fake)
    clock = FakeClock()
    t0 = clock.now()
    # UUIDv7-like ids ascending with time, so the first full read confirms an ascending order.
    fake.audit = [audit(f"019f0000-0000-7000-8000-{i:012d}", t0 - 100 + i) for i in range(3)]
    cfg = WorkspaceConfig(
        api_key=SecretStr(KEY), base_url=fake.url, streams=["audit_logs"], max_retries=0,
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
    )  # fmt: skip
    async with SqliteBus(tmp_path / "bus.db") as bus:
        async with InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, rng=random.Random(1)) as poller:
            assert (await poller.poll_once())["audit_logs"] == 3
            for i in range(3, 6):
                clock.advance(60)
                fake.audit.append(audit(f"019f0000-0000-7000-8000-{i:012d}", clock.now() - 5))
                assert (await poller.poll_once())["audit_logs"] == 1
                assert poller.last_failures == {}
        refused = [c for c in fake.calls_to("/audit-logs") if c.query.get("starting_after", "").startswith("019")]
        assert len(refused) == 1, "the refused continuation is tried once per process, not on every poll"


# ------------------------------------------------------------------------------ list envelope
@pytest.mark.parametrize(
    "pages",
    [
        # ``next_starting_after`` is optional and typed string; a server may still send null.
        [
            {"items": [{"id": "a"}, {"id": "b"}], "next_starting_after": "b"},
            {"items": [{"id": "c"}], "next_starting_after": None},
        ],
        # A short page with a cursor is followed; the empty page after it ends the listing.
        [
            {"items": [{"id": "a"}], "next_starting_after": "a"},
            {"items": [{"id": "b"}], "next_starting_after": "b"},
            {"items": []},
        ],
        # An empty cursor string ends it too.
        [{"items": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "next_starting_after": ""}],
    ],
)
async def test_listing_ends_on_a_null_empty_or_absent_cursor(fake: FakeInstantly, pages: list[dict[str, Any]]) -> None:
    """Every documented way a listing ends yields each item once and no request after the end."""
    served = iter(pages)

    def page(records: list[dict[str, Any]], query: Any) -> web.Response:
        return web.json_response(next(served))

    fake._page = page  # type: ignore[method-assign]
    async with client(fake.url) as c:
        items = await c.get_all("/api/v2/api-keys", limit=2)
    assert [i["id"] for i in items] == [i["id"] for p in pages for i in p["items"]]
    assert len(fake.calls) == len(pages)
    assert [call.query.get("starting_after") for call in fake.calls] == [
        None,
        *[p.get("next_starting_after") for p in pages[:-1]],
    ]
