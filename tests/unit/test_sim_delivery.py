"""The simulator's webhook delivery: POSTs to a real endpoint, one delivery-log record per attempt, retries,
giving up; and ``GET /webhook-events`` with its documented filters."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.delivery import subscribes
from connectors.instantly.sim.models import Webhook
from pipeline.clock import FakeClock

START = 1_780_000_000.0  # 2026-05-28T20:26:40Z


@dataclass
class Endpoint:
    """A webhook target that answers ``statuses`` in turn (then 200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), orjson.loads(await request.read())))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()
    app = web.Application()
    app.router.add_post("/hook", ep.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ep.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield ep
    await runner.cleanup()


@pytest.fixture
async def sim() -> AsyncIterator[tuple[InstantlySimulator, FakeClock, str]]:
    clock = FakeClock(START)
    async with InstantlySimulator(seed=4, clock=clock.now) as s:
        s.config.webhook_retries, s.config.webhook_retry_delay_secs = 2, 60.0
        yield s, clock, s.add_workspace("Acme").id


async def listing(s: InstantlySimulator, ws: str, **params: str) -> tuple[int, Any]:
    key = s.add_api_key(ws, ["webhook_events:read"]).key
    url = f"{s.api_url}/webhook-events"
    async with aiohttp.ClientSession() as session, session.get(url, params=params, headers=s.headers(key)) as resp:
        return resp.status, await resp.json()


async def test_a_delivery_that_gets_through_on_a_retry(sim: tuple[InstantlySimulator, FakeClock, str],
                                                       endpoint: Endpoint) -> None:  # fmt: skip
    """The payload and the webhook's custom headers reach the endpoint; a 503 then a 200 are two records of one
    retry group, the first ``will_retry`` with its next time, both ``retry_successful: true`` at the end."""
    s, clock, ws = sim
    s.state.create_webhook(ws, endpoint.url, fields={"headers": {"X-Webhook-Secret": "s3cr3t-value-0123456789abcdef"}})
    endpoint.statuses = [503]
    [group] = await s.deliveries.emit(ws, {"event_type": "reply_received", "lead_email": "a@lead.example"})
    assert s.deliveries.pending and await s.deliveries.retry_due() == 0  # not due yet
    clock.advance(60)
    assert await s.deliveries.retry_due() == 1 and not s.deliveries.pending
    assert [h["X-Webhook-Secret"] for h, _ in endpoint.got] == ["s3cr3t-value-0123456789abcdef"] * 2
    assert endpoint.got[0][1] == {"event_type": "reply_received", "lead_email": "a@lead.example", "workspace": ws}
    status, page = await listing(s, ws)
    assert status == 200
    first, second = page["items"]
    assert (first["success"], first["status_code"], first["retry_count"], first["will_retry"]) == (False, 503, 0, True)
    assert first["timestamp_next_retry"] == second["timestamp_created"]
    assert (second["success"], second["retry_count"], second["will_retry"]) == (True, 1, False)
    assert {first["retry_group_id"], second["retry_group_id"]} == {group}
    assert first["retry_successful"] is second["retry_successful"] is True
    assert first["payload"] == endpoint.got[0][1] and first["lead_email"] == "a@lead.example"


async def test_a_receiver_that_is_down_makes_instantly_give_up(sim: tuple[InstantlySimulator, FakeClock, str]) -> None:
    """Connection refused on every attempt: 1 + ``webhook_retries`` records, the last ``will_retry: false``,
    all ``retry_successful: false``, no status code."""
    s, clock, ws = sim
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/crm"  # bound, never listening: refused
        s.state.create_webhook(ws, url)
        await s.deliveries.emit(ws, {"event_type": "email_bounced"})
        for _ in range(2):
            clock.advance(60)
            await s.deliveries.retry_due()
    _, page = await listing(s, ws, success="false")
    assert [(r["retry_count"], r["will_retry"], r["retry_successful"], r["status_code"]) for r in page["items"]] == [
        (0, True, False, None), (1, True, False, None), (2, False, False, None),
    ]  # fmt: skip
    assert all(r["error_message"] and url not in r["error_message"] for r in page["items"])


def test_subscriptions() -> None:
    """all_events takes everything; a typed subscription its type (a click under both names); no type means
    custom labels; a campaign restricts; a disabled webhook gets nothing."""
    hook = Webhook("h", "ws", "http://x", START)
    assert subscribes(hook, {"event_type": "lead_interested"})
    hook.event_type = "email_link_clicked"
    assert subscribes(hook, {"event_type": "link_clicked"}) and not subscribes(hook, {"event_type": "email_sent"})
    hook.event_type = None
    assert subscribes(hook, {"event_type": "Hot Lead"}) and not subscribes(hook, {"event_type": "email_sent"})
    hook.event_type, hook.campaign = "all_events", "c1"
    assert subscribes(hook, {"event_type": "x", "campaign_id": "c1"}) and not subscribes(hook, {"campaign_id": "c2"})
    hook.campaign, hook.status = None, -1
    assert not subscribes(hook, {"event_type": "email_sent"})


async def test_the_listing_filters(sim: tuple[InstantlySimulator, FakeClock, str]) -> None:
    """``success``, ``from``/``to`` (inclusive days of ``timestamp_created``), ``search`` (exact URL or lead
    email) and the newest-first order switch; a bad date is the documented 400."""
    s, clock, ws = sim
    st = s.state
    a = st.add_webhook_event(ws, "https://a.example/h", success=False, lead_email="x@lead.example")
    clock.advance(86_400)
    b = st.add_webhook_event(ws, "https://b.example/h", success=True)
    clock.advance(86_400)
    c = st.add_webhook_event(ws, "https://a.example/h", success=False)

    async def ids(**params: str) -> list[str]:
        status, page = await listing(s, ws, **params)
        assert status == 200
        return [r["id"] for r in page["items"]]

    assert await ids() == [a.id, b.id, c.id]
    assert await ids(success="false") == [a.id, c.id]
    assert await ids(**{"from": "2026-05-29"}) == [b.id, c.id]
    assert await ids(to="2026-05-29") == [a.id, b.id]
    assert await ids(search="https://a.example/h") == [a.id, c.id]
    assert await ids(search="x@lead.example") == [a.id]
    assert await ids(search="https://a.example") == []
    s.config.webhook_events_order = "desc"
    assert await ids() == [c.id, b.id, a.id]
    status, body = await listing(s, ws, **{"from": "yesterday"})
    assert status == 400 and set(body) == {"statusCode", "error", "message"}
