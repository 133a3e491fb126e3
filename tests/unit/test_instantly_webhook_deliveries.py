"""The ``webhook_deliveries`` stream end to end: the simulator delivers webhooks to the real receiver (or
to nothing, while it is down), logs every attempt and gives up; the poller reads that log and puts
what was lost onto the embedded bus with the receiver's own event ids, exactly once."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.deliveries import SUMMARY, receiver_targets
from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import DATA_TOPICS, EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, format_time
from pipeline.observability.logs import JsonFormatter
from pipeline.sources.webhook.config import WebhookConfig
from pipeline.sources.webhook.receiver import WebhookReceiver
from schemas.validate import schema_errors
from tests.unit.test_webhook_support import SECRET_A, delivery, letters_of, make_config

START = 1_780_000_000.0
RETRY = 30.0
CANARY = "CANARYzapSecret9f3e1d77"
CUSTOMER_URL = f"https://hooks.zapier.example/hooks/catch/{CANARY}/?token={CANARY}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def no_sleep(_delay: float) -> None:
    return None


@dataclass
class World:
    sim: InstantlySimulator
    bus: SqliteBus
    clock: FakeClock
    ws: str
    key: str
    url: str
    hook: WebhookConfig
    port: int

    def poller(self, source_id: str = "acme", *, key: str | None = None, **kw: Any) -> InstantlyWorkspacePoller:
        cfg = WorkspaceConfig(
            api_key=SecretStr(key or self.key),
            base_url=self.sim.url,
            streams=kw.pop("streams", ["webhook_deliveries"]),
            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
            max_retries=0,
            **kw,
        )
        return InstantlyWorkspacePoller(
            source_id, cfg, self.bus, clock=self.clock, sleep=no_sleep, rng=random.Random(1),
            receivers=receiver_targets(self.hook),
        )  # fmt: skip

    async def give_up(self, payload: dict[str, Any]) -> list[str]:
        """Emit ``payload`` and step the clock through every retry (Instantly gives up or gets through)."""
        groups = await self.sim.deliveries.emit(self.ws, payload)
        for _ in range(self.sim.config.webhook_retries):
            self.clock.advance(RETRY)
            await self.sim.deliveries.retry_due()
        assert not self.sim.deliveries.pending
        return groups

    async def poll(self, **kw: Any) -> dict[str, int]:
        async with self.poller(**kw) as p:
            counts = await p.poll_once()
            assert p.last_failures == {}
            return counts

    def receiver(self) -> WebhookReceiver:
        return WebhookReceiver(self.hook, self.bus)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock(START)
    async with InstantlySimulator(seed=3, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
        sim.config.webhook_retries, sim.config.webhook_retry_delay_secs = 2, RETRY
        sim.config.webhook_timeout_secs = 2.0  # the customer URL does not resolve: fail fast wherever DNS is slow
        ws = sim.add_workspace("Acme").id
        key = sim.add_api_key(ws, ["webhook_events:read", "workspaces:read"]).key
        port = free_port()
        url = f"http://127.0.0.1:{port}/hooks/crm"
        hook = make_config(workspace=ws, source_extra={"public_urls": [url]}, host="127.0.0.1", port=port)
        sim.state.create_webhook(ws, url, fields={"headers": {"X-Webhook-Secret": SECRET_A}})
        yield World(sim, bus, clock, ws, key, url, hook, port)


def body(world: World, n: int, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(delivery(n, **{"workspace": world.ws, **fields}))
    return doc


async def bus_events(bus: SqliteBus) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


def of_type(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"].startswith(prefix)]


async def post(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A delivery as Instantly makes it (JSON, the secret header) straight to the receiver."""
    async with aiohttp.ClientSession() as s:
        headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET_A}
        async with s.post(url, data=orjson.dumps(doc), headers=headers) as resp:
            assert resp.status == 200
            answer: dict[str, Any] = await resp.json()
            return answer


@asynccontextmanager
async def running(receiver: WebhookReceiver) -> AsyncIterator[WebhookReceiver]:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


# ------------------------------------------------------------------------------------- recovery
async def test_a_delivery_lost_while_the_receiver_was_down_is_recovered_with_the_receivers_id(world: World) -> None:
    """Receiver down → Instantly (sim) retries twice and gives up → the poller publishes the payload as the
    receiver would have (same type, source stream, record id and event id), marked as recovered; a resend the
    receiver gets afterwards carries that same id: one event id on the bus."""
    doc = body(world, 1, event_type="reply_received")
    [group] = await world.give_up(doc)
    log = [e for e in world.sim.state.webhook_events.values() if e.retry_group_id == group]
    assert [(e.retry_count, e.will_retry, e.success) for e in log] == [(0, True, False), (1, True, False),
                                                                       (2, False, False)]  # fmt: skip
    counts = await world.poll()
    assert counts == {"webhook_deliveries": 1, "pipeline": 1}
    events = await bus_events(world.bus)
    [recovered] = of_type(events, "webhook_delivery.")
    assert schema_errors("event", recovered) == []
    assert recovered["type"] == "webhook_delivery.reply_received"
    assert recovered["source"] == {
        "kind": "webhook",
        "stream": "webhook_crm",
        "record_id": recovered["source"]["record_id"],
    }
    provenance = recovered["attributes"]["recovered"]
    assert provenance == {
        "from": "instantly_delivery_log", "delivery_id": log[-1].id, "retry_group_id": group, "retry_count": 2,
        "attempts_seen": 3, "last_status_code": None, "last_attempt_at": format_time(log[-1].timestamp_created),
    }  # fmt: skip
    assert "email_text" not in recovered["raw"]  # the source's field policy applied, as in the receiver
    [summary] = of_type(events, SUMMARY)
    assert schema_errors("event", summary) == []
    assert {k: summary["attributes"][k] for k in ("lost", "recovered", "already_received", "by_source")} == {
        "lost": 1, "recovered": 1, "already_received": 0, "by_source": {"crm": 1},
    }  # fmt: skip

    async with running(world.receiver()):
        answer = await post(world.url, doc)
    assert answer["id"] == recovered["id"]
    ids = {e["id"] for e in of_type(await bus_events(world.bus), "webhook_delivery.")}
    assert ids == {recovered["id"]}


async def test_a_retry_that_got_through_is_not_lost(world: World) -> None:
    """Receiver down for the first attempt, up for the retry: the retry group succeeded, so nothing is recovered
    and the bus holds the receiver's one event."""
    await world.sim.deliveries.emit(world.ws, body(world, 2))
    async with running(world.receiver()):
        world.clock.advance(RETRY)
        assert await world.sim.deliveries.retry_due() == 1
    assert all(e.retry_successful is True for e in world.sim.state.webhook_events.values())
    assert await world.poll() == {"webhook_deliveries": 0, "pipeline": 0}
    assert len(of_type(await bus_events(world.bus), "webhook_delivery.")) == 1


async def test_a_delivery_the_receiver_committed_but_instantly_logged_as_failed_is_not_published_again(
    world: World,
) -> None:
    """The receiver commits every attempt but its answers never reach Instantly (a proxy answers 502): Instantly
    gives up on a delivery the bus already holds. The poller finds its body hash in the receiver's duplicate
    window and publishes no second record; the summary counts it as already received."""
    inner_port = free_port()
    inner = WebhookReceiver(world.hook.model_copy(update={"port": inner_port}), world.bus)

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        target = f"http://127.0.0.1:{inner_port}{request.path}"
        async with aiohttp.ClientSession() as s, s.post(target, data=await request.read(), headers=headers) as r:
            assert r.status == 200
        return web.Response(status=502)

    proxy = web.Application()
    proxy.router.add_post("/hooks/crm", forward)
    runner = web.AppRunner(proxy)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", world.port).start()
    try:
        async with running(inner):
            await world.give_up(body(world, 3))
        assert (inner.accepted, inner.duplicates) == (1, 2)
    finally:
        await runner.cleanup()
    assert await world.poll() == {"webhook_deliveries": 0, "pipeline": 1}
    events = await bus_events(world.bus)
    assert len(of_type(events, "webhook_delivery.")) == 1
    [summary] = of_type(events, SUMMARY)
    assert (summary["attributes"]["lost"], summary["attributes"]["already_received"]) == (1, 1)


async def test_nothing_is_published_twice_by_a_later_poll_or_after_a_restart(world: World) -> None:
    """The recovered keys live in the stream's state, committed with the events: the next poll and a new
    poller process (same bus) publish nothing again, even with the log unchanged."""
    await world.give_up(body(world, 4))
    await world.give_up(body(world, 5))
    async with world.poller() as p:
        assert await p.poll_once() == {"webhook_deliveries": 2, "pipeline": 1}
        world.clock.advance(301)  # the stream's interval
        assert await p.poll_once() == {"webhook_deliveries": 0, "pipeline": 0}
    world.clock.advance(301)
    assert await world.poll() == {"webhook_deliveries": 0, "pipeline": 0}
    await world.give_up(body(world, 6))  # a new loss after the restart is still found
    world.clock.advance(301)
    assert await world.poll() == {"webhook_deliveries": 1, "pipeline": 1}
    events = of_type(await bus_events(world.bus), "webhook_delivery.")
    assert len(events) == len({e["id"] for e in events}) == 3
    state = await world.bus.state_items("cursor/acme/webhook_deliveries/")
    assert any(k.endswith("/head") for k in state) and any("/receiver/seen/" in k for k in state)


# ------------------------------------------------------------------------------------ give-up rules
async def test_the_give_up_rules(world: World) -> None:
    """``will_retry: true`` is not lost yet; ``retry_successful: true`` is not lost; an attempt saying
    ``will_retry: false`` in a group without success is — once, whatever the order and however many attempts."""
    st, ws, url = world.sim.state, world.ws, world.url
    st.add_webhook_event(ws, url, success=False, payload=body(world, 10), retry_group_id="g-pending",
                         retry_count=0, will_retry=True)  # fmt: skip
    st.add_webhook_event(ws, url, success=False, payload=body(world, 11), retry_group_id="g-ok", retry_count=0,
                         will_retry=True, retry_successful=True)  # fmt: skip
    st.add_webhook_event(ws, url, success=False, payload=body(world, 11), retry_group_id="g-ok", retry_count=1,
                         will_retry=False, retry_successful=True)  # fmt: skip
    assert await world.poll() == {"webhook_deliveries": 0, "pipeline": 0}
    world.sim.config.webhook_events_order = "desc"
    for n in (1, 0):  # the give-up attempt first in the listing
        st.add_webhook_event(ws, url, success=False, payload=body(world, 10), retry_group_id="g-pending",
                             retry_count=n, will_retry=n == 0)  # fmt: skip
    world.clock.advance(301)
    async with world.poller() as p:
        assert await p.poll_once() == {"webhook_deliveries": 1, "pipeline": 1}
        [summary] = of_type(await bus_events(world.bus), SUMMARY)
        assert summary["attributes"]["pending_retry"] == 0
    [event] = of_type(await bus_events(world.bus), "webhook_delivery.")
    assert event["raw"]["email_id"].endswith("-000000000010")
    assert event["attributes"]["recovered"]["retry_count"] == 1


async def test_pending_retries_are_counted_not_published(world: World) -> None:
    """A failure Instantly will retry is only ``pending_retry`` in the summary of a read that found a loss."""
    await world.give_up(body(world, 20))
    await world.sim.deliveries.emit(world.ws, body(world, 21))  # first attempt failed; retries left
    assert await world.poll() == {"webhook_deliveries": 1, "pipeline": 1}
    [summary] = of_type(await bus_events(world.bus), SUMMARY)
    assert summary["attributes"]["pending_retry"] == 1


# --------------------------------------------------------------------------------- other URLs
async def test_other_urls_are_counted_by_host_and_their_secrets_never_leak(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed deliveries to a customer's own endpoint are never published nor alerted on: the summary counts
    them by scheme and host only. The canary secret in that URL's path and query, and in its payload, appears
    in no event, dead letter, state value or log line."""
    caplog.set_level(logging.DEBUG)
    world.sim.state.create_webhook(world.ws, CUSTOMER_URL, fields={"headers": {"Authorization": f"Bearer {CANARY}"}})
    await world.give_up(body(world, 30, custom_note=CANARY))  # fails to both: ours is down, the customer's is fake
    assert await world.poll() == {"webhook_deliveries": 1, "pipeline": 1}
    events = await bus_events(world.bus)
    [summary] = of_type(events, SUMMARY)
    assert summary["attributes"]["other_failed"] == 1
    assert summary["attributes"]["other_hosts"] == {"https://hooks.zapier.example": 1}
    assert len(of_type(events, "webhook_delivery.")) == 1  # ours only
    stored: list[bytes] = list((await world.bus.state_items()).values())
    async with world.bus.consumer(list(DATA_TOPICS), start="earliest") as consumer:
        async for batch in iter_records(consumer):
            stored.extend(r.value for r in batch)
    assert stored and not [v for v in stored if CANARY.encode() in v]
    fmt = JsonFormatter()
    logged = [f"{r.getMessage()} {r.__dict__} {fmt.format(r)}" for r in caplog.records]
    assert logged and not [t for t in logged if CANARY in t]


async def test_only_other_urls_failing_publish_a_summary_but_no_alertable_loss(world: World) -> None:
    """A customer URL failing alone gives a summary with ``lost: 0`` (rule pipeline.webhook_deliveries_lost
    does not fire) — once: the next read does not count it again."""
    world.sim.state.create_webhook(world.ws, CUSTOMER_URL)
    st = world.sim.state
    st.add_webhook_event(world.ws, CUSTOMER_URL, success=False, payload=body(world, 40), retry_group_id="c1",
                         will_retry=False, retry_count=3)  # fmt: skip
    async with world.poller() as p:
        assert await p.poll_once() == {"webhook_deliveries": 0, "pipeline": 1}
        world.clock.advance(301)
        assert await p.poll_once() == {"webhook_deliveries": 0, "pipeline": 0}
    [summary] = of_type(await bus_events(world.bus), SUMMARY)
    assert (summary["attributes"]["lost"], summary["attributes"]["other_failed"]) == (0, 1)


# ---------------------------------------------------------------------------------------- scope
async def test_a_key_without_webhook_events_read_gets_stream_unavailable(world: World) -> None:
    """403 on the delivery log: ``pipeline.stream_unavailable`` for ``webhook_deliveries`` naming the missing
    scope, once an hour; the other streams go on."""
    key = world.sim.add_api_key(world.ws, ["workspaces:read", "webhooks:read"]).key
    await world.give_up(body(world, 50))
    async with world.poller(key=key, streams=["webhooks", "webhook_deliveries"]) as p:
        counts = await p.poll_once()
        assert counts["webhooks"] == 1 and counts["webhook_deliveries"] == 0 and counts["pipeline"] == 1
        assert "HTTP 403" in p.last_failures["webhook_deliveries"]
        [event] = of_type(await bus_events(world.bus), "pipeline.stream_unavailable")
        assert event["attributes"]["stream"] == "webhook_deliveries" and event["attributes"]["status"] == 403
        assert event["attributes"]["scope"] == "webhook_events:read"
        world.clock.advance(301)
        assert (await p.poll_once())["pipeline"] == 0


# ----------------------------------------------------------------------------------- pagination
async def test_many_losses_over_several_pages_newest_first(world: World) -> None:
    """250 lost deliveries (750 attempts) listed newest first, 100 a page: all 250 recovered, once."""
    world.sim.config.webhook_events_order = "desc"
    st = world.sim.state
    for n in range(250):
        for attempt in range(3):
            st.add_webhook_event(world.ws, world.url, success=False, payload=body(world, 100 + n),
                                 retry_group_id=f"g{n:03d}", retry_count=attempt, will_retry=attempt < 2)  # fmt: skip
    assert await world.poll() == {"webhook_deliveries": 250, "pipeline": 1}
    assert world.sim.count_calls(path="/api/v2/webhook-events", status=200) >= 8
    events = of_type(await bus_events(world.bus), "webhook_delivery.")
    assert len({e["id"] for e in events}) == len(events) == 250


# ------------------------------------------------------------------------------------------- off
async def test_without_public_urls_the_stream_is_off_and_says_so_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """No source names its public_urls: one warning at start, no request to the delivery log, no events."""
    caplog.set_level(logging.WARNING)
    world.hook = make_config(workspace=world.ws)
    await world.give_up(body(world, 60))
    async with world.poller() as p:
        for _ in range(3):
            await p.poll_once()
            world.clock.advance(301)
    assert len([r for r in caplog.records if "webhook_deliveries is off" in r.getMessage()]) == 1
    assert world.sim.count_calls(path="/api/v2/webhook-events") == 0
    assert of_type(await bus_events(world.bus), "webhook_delivery.") == []


async def test_a_lost_payload_the_receiver_would_refuse_becomes_its_dead_letter(world: World) -> None:
    """A logged payload for another workspace is what the receiver dead-letters (workspace_mismatch): so does
    the recovery, once, and the summary counts it."""
    st = world.sim.state
    st.add_webhook_event(world.ws, world.url, success=False, payload=body(world, 70, workspace="someone-else"),
                         retry_group_id="d1", will_retry=False)  # fmt: skip
    async with world.poller() as p:
        assert await p.poll_once() == {"webhook_deliveries": 0, "pipeline": 1}
        world.clock.advance(301)
        assert await p.poll_once() == {"webhook_deliveries": 0, "pipeline": 0}
    letters = await letters_of(world.bus)
    assert [(d["reason"], d["component"], d["component_type"]) for d in letters] == [
        ("workspace_mismatch", "crm", "instantly_webhook")
    ]
    [summary] = of_type(await bus_events(world.bus), SUMMARY)
    assert (summary["attributes"]["lost"], summary["attributes"]["dead_lettered"]) == (1, 1)


def test_a_discovered_sub_workspace_poller_learns_the_receivers_public_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared pollers build a discovered sub-workspace's poller from the control topic: it gets the
    receiver's ``public_urls`` like the agency's own poller (it got none and dropped webhook_deliveries)."""
    from connectors.instantly.plugin import SOURCE
    from pipeline.clock import FakeClock
    from pipeline.config.loader import parse_config

    monkeypatch.setenv("DISC_K", "a" * 40)
    monkeypatch.setenv("DISC_S", "s" * 40)
    cfg = parse_config(
        "workspaces:\n  agency:\n    api_key: ${DISC_K}\n    discover_subworkspaces: true\n"
        "    streams: [audit_logs, webhook_deliveries]\n"
        "webhook:\n  sources:\n    crm:\n      workspace_id: sub-1\n      secrets: ['${DISC_S}']\n"
        "      public_urls: [https://hooks.example.com/hooks/crm]\n"
    )
    record: dict[str, object] = {
        "plugin": "instantly",
        "parent": "agency",
        "spec": {"as_workspace": "sub-1", "name": "Sub"},
    }
    sub: Any = SOURCE.build_discovered(cfg, cast(Any, None), FakeClock(), record)
    assert sub is not None and sub.receivers is not None and "crm" in sub.receivers.sources
    assert "webhook_deliveries" in sub.streams
