"""InstantlyWorkspacePoller end to end: fake Instantly API on 127.0.0.1 → poller → SqliteBus."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.client import InstantlyClient, UnreachableError
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.source import InstantlyWorkspacePoller
from connectors.instantly.streams import load_cursor
from pipeline.bus.base import DATA_TOPICS, EVENTS_TOPIC, Record, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.errors import AuthError, SourceError, UpstreamError
from pipeline.sources.base import failure_lines, status_key
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import FakeInstantly, load_fixture, serve

WS_ID = "019cc043-af79-73db-a904-19add8ce4af2"
CANARY_KEY = "CANARY-config-key-4b1d9c7e2f"
CANARY_API_KEY_SECRET = "CANARY-listed-key-secret-8e3a5f"
CANARY_HEADER = "CANARY-webhook-header-value-1c6b0d"


async def cursor_doc(bus: Any, source: str = "acme") -> dict[str, Any]:
    """The stored audit cursor (split layout) as a dict of its fields."""
    cur = await load_cursor(bus, source)
    return {
        "high_water": cur.high_water,
        "seen": cur.seen,
        "last_id": cur.last_id,
        "last_full_read": cur.last_full_read,
        "full_mark": cur.full_mark,
    }


async def no_sleep(_delay: float) -> None:
    await asyncio.sleep(0)


def seed(fake: FakeInstantly) -> None:
    fake.collections["api-keys"] = load_fixture("api_keys.list.json")["items"]
    fake.collections["workspace-members"] = load_fixture("workspace_members.list.json")["items"]
    fake.collections["webhooks"] = load_fixture("webhooks.list.json")["items"]
    fake.collections["workspace-group-members"] = load_fixture("workspace_group_members.list.json")["items"]
    fake.collections["block-lists-entries"] = load_fixture("block_list_entries.list.json")["items"]
    fake.collections["accounts"] = load_fixture("accounts.list.json")["items"]


def audit_record(rid: str, ts: float, code: int = 1) -> dict[str, Any]:
    base = load_fixture("audit_logs.list.json")["items"][0]
    return {**base, "id": rid, "timestamp": format_time(ts), "activity_type": code}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[FakeInstantly, SqliteBus]]:
    fake = FakeInstantly(api_key=CANARY_KEY)
    seed(fake)
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        yield fake, bus


def make_poller(
    fake: FakeInstantly, bus: SqliteBus, clock: FakeClock, source_id: str = "acme", **kw: Any
) -> InstantlyWorkspacePoller:
    cfg = WorkspaceConfig(
        api_key=SecretStr(fake.api_key),
        base_url=fake.url,
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
        max_retries=kw.pop("max_retries", 1),
        **kw,
    )
    return InstantlyWorkspacePoller(source_id, cfg, bus, clock=clock, sleep=no_sleep, rng=random.Random(1))


async def records(bus: SqliteBus, topics: tuple[str, ...] = (EVENTS_TOPIC,)) -> list[Record]:
    out: list[Record] = []
    async with bus.consumer(list(topics), start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(batch)
    return out


async def events(bus: SqliteBus) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await records(bus)]


def assert_once(evs: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in evs]
    assert len(ids) == len(set(ids)), "duplicate event ids on the bus"


async def test_first_poll_publishes_baselines_and_audit(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """First poll: a baseline per resource and every audit record, keyed by workspace id, with state."""
    fake, bus = env
    clock = FakeClock()
    fake.audit = [audit_record("a1", clock.now() - 300), audit_record("a2", clock.now() - 100, 37)]
    async with make_poller(fake, bus, clock) as poller:
        counts = await poller.poll_once()
    assert counts == {
        "audit_logs": 2,
        "api_keys": 1,
        "members": 1,
        "webhooks": 1,
        "workspace": 1,
        "group_members": 1,
        "block_list": 2,
        "accounts": 2,
        "pipeline": 0,
    }
    recs = await records(bus)
    assert len(recs) == 11
    for rec in recs:
        event = orjson.loads(rec.value)
        assert schema_errors("event", event) == []
        source_ms = str(int(parse_time(event["time"]) * 1000)).encode()
        assert rec.key == WS_ID.encode()
        assert rec.headers == (("event_type", event["type"].encode()), ("source_ms", source_ms))
        assert event["workspace"] == {"id": WS_ID, "name": "My Workspace"}
    assert sorted(orjson.loads(r.value)["type"] for r in recs) == sorted(
        [
            "audit.user_login",
            "audit.api_key_created",
            "api_key.baseline",
            "member.baseline",
            "webhook.baseline",
            "workspace.baseline",
            "workspace_group.member_baseline",
            "block_list.entry_baseline",
            "block_list.entry_baseline",
            "account.baseline",
            "account.baseline",
        ]
    )
    state = await bus.state_items()
    assert {
        "cursor/acme/audit_logs/head",
        "snapshot/acme/api_keys/meta",
        "snapshot/acme/members/meta",
        "snapshot/acme/webhooks/meta",
        "snapshot/acme/workspace/meta",
        "snapshot/acme/group_members/meta",
        "snapshot/acme/block_list/meta",
        "snapshot/acme/accounts/meta",
        "identity/acme",
    } <= set(state)
    assert not {"cursor/acme/audit_logs", "snapshot/acme/api_keys"} & set(state)  # no single values
    cursor = await cursor_doc(bus)
    assert cursor["high_water"] == pytest.approx(clock.now() - 100) and set(cursor["seen"]) == {"a1", "a2"}
    assert fake.calls_to("/audit-logs")[0].query["limit"] == "1000"
    assert "start_date" not in fake.calls_to("/audit-logs")[0].query


async def test_second_poll_without_changes_publishes_nothing(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """With nothing changed upstream, the next poll publishes nothing and writes no state but its status."""
    fake, bus = env
    clock = FakeClock()
    fake.audit = [audit_record("a1", clock.now() - 60)]
    async with make_poller(fake, bus, clock) as poller:
        await poller.poll_once()
        before_recs, before_state = await records(bus), await bus.state_items()
        clock.advance(60)
        counts = await poller.poll_once()
    assert set(counts.values()) == {0}
    assert len(await records(bus)) == len(before_recs)
    after = await bus.state_items()
    status = orjson.loads(after.pop(status_key("acme")))
    assert after == {k: v for k, v in before_state.items() if k != status_key("acme")}
    assert status["at"] == status["cursor_at"] == clock.now()
    assert status["failures"] == {} and set(status["published"].values()) == {0}
    assert status["requests_last_minute"] > 0


async def test_status_keeps_the_cursor_time_of_the_last_good_audit_read(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A poll whose audit log failed records its failure and keeps the previous cursor time."""
    fake, bus = env
    clock = FakeClock()
    fake.audit = [audit_record("a1", clock.now() - 60)]
    async with make_poller(fake, bus, clock) as poller:
        await poller.poll_once()
        good = clock.now()
        clock.advance(60)
        fake.fail("/api/v2/audit-logs", 403)
        await poller.poll_once()
    status = orjson.loads((await bus.state_items())[status_key("acme")])
    assert status["at"] == good + 60
    assert status["cursor_at"] == good
    assert status["failures"]["audit_logs"].startswith("refused: HTTP 403")


async def test_a_missing_scope_names_the_scope_and_the_fix(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A key without a stream's scope (403) was reported as ``refused: HTTP 403 (ScopeError)``, naming
    neither the scope nor what to change; ``run --once`` now says which scope and where to fix it."""
    fake, bus = env
    clock = FakeClock()
    fake.fail("/api/v2/api-keys", 403)
    fake.fail("/api/v2/audit-logs", 403)
    async with make_poller(fake, bus, clock) as poller:
        await poller.poll_once()
    lines = failure_lines(poller.last_failures)
    assert (
        "api_keys refused: HTTP 403 (ScopeError): the API key lacks api_keys:read (use a key with it in "
        "workspaces.acme.api_key, or drop api_keys from workspaces.acme.streams)"
    ) in lines, lines
    assert any(line.startswith("audit_logs refused: HTTP 403") and "lacks audit_logs:read" in line for line in lines)


async def test_a_base_url_that_is_not_the_api_root_says_so(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """``base_url: https://api.instantly.ai/api/v1`` (or any host that is not the API) got 404 on every
    path, reported as ``refused: HTTP 404 (NotFoundError)``, naming neither the setting nor the fix."""
    fake, bus = env
    cfg = WorkspaceConfig(
        api_key=SecretStr(fake.api_key),
        base_url=fake.url + "/api/v1",
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
        max_retries=0,
    )
    poller = InstantlyWorkspacePoller("acme", cfg, bus, clock=FakeClock(), sleep=no_sleep, rng=random.Random(1))
    async with poller:
        await poller.poll_once()
    host = fake.url.removeprefix("http://")
    hint = f"no Instantly API under {host}/api/v1 (workspaces.acme.base_url must be the API root"
    lines = failure_lines(poller.last_failures)
    assert all("HTTP 404 (NotFoundError)" in line and hint in line for line in lines), lines
    assert any(line.startswith("identity unknown: GET /workspaces/current") for line in lines), lines


async def test_changes_between_polls(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """Upstream changes between polls become change events, each published once."""
    fake, bus = env
    clock = FakeClock()
    async with make_poller(fake, bus, clock) as poller:
        await poller.poll_once()
        fake.collections["api-keys"].append({**fake.collections["api-keys"][0], "id": "k2", "scopes": ["all:all"]})
        fake.collections["workspace-members"] = []
        fake.collections["webhooks"][0] = {**fake.collections["webhooks"][0], "status": -1}
        fake.workspace = {**fake.workspace, "owner": "someone-else"}
        google, _microsoft = fake.collections["accounts"]
        fake.collections["accounts"] = [
            {**google, "reply_to": "collect@attacker.example", "stat_warmup_score": 12, "status_message": None}
        ]
        clock.advance(60)
        counts = await poller.poll_once()
        assert set((await poller.poll_once()).values()) == {0}
    assert counts["api_keys"] == counts["members"] == counts["webhooks"] == counts["workspace"] == 1
    assert counts["accounts"] == 2
    evs = await events(bus)
    assert_once(evs)
    new_types = {e["type"] for e in evs} - {e["type"] for e in evs if e["type"].endswith("baseline")}
    assert new_types == {"api_key.created", "member.removed", "webhook.status_changed", "workspace.owner_changed",
                         "account.reply_to_changed", "account.removed"}  # fmt: skip
    redirect = next(e for e in evs if e["type"] == "account.reply_to_changed")
    assert redirect["target"] == {"kind": "account", "id": "user@example.com", "name": "user@example.com"}
    assert redirect["change"]["after"]["reply_to"] == "collect@attacker.example"
    removed = next(e for e in evs if e["type"] == "account.removed")
    assert removed["target"]["id"] == "sales@example.com"
    assert not any("status_message" in orjson.dumps(e).decode() for e in evs)


async def test_backdated_record_behind_cursor_is_published_once(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A record inserted late with a timestamp behind the high-water mark is published exactly once."""
    fake, bus = env
    clock = FakeClock()
    t0 = clock.now()
    fake.audit = [audit_record("a1", t0 - 300), audit_record("a2", t0 - 100)]
    async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
        assert (await poller.poll_once())["audit_logs"] == 2
        clock.advance(60)
        fake.audit.append(audit_record("late", t0 - 200, 34))  # behind high_water = t0 - 100
        assert (await poller.poll_once())["audit_logs"] == 1
        assert (await poller.poll_once())["audit_logs"] == 0
        # older than the overlap window, with an id below those published (so it may have been published
        # before its id left the window's ids: left to the sweep); an id past all of them is published
        # (tests/unit/test_instantly_late_inserts.py)
        fake.audit.append(audit_record("a0-too-old", t0 - 100 - 3600 - 10))
        assert (await poller.poll_once())["audit_logs"] == 0
    evs = await events(bus)
    assert_once(evs)
    assert [e["source"]["record_id"] for e in evs] == ["a2", "a1", "late"]
    late = evs[-1]
    assert late["type"] == "audit.lead_exported" and late["time"] == format_time(t0 - 200)
    expected_start = format_time(t0 - 100 - 3600 - 86_400)[:10]
    assert fake.calls_to("/audit-logs")[-1].query["start_date"] == expected_start


async def test_failed_audit_page_keeps_committed_pages(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """When page 2 of the audit log fails, page 1 stays published and the next poll adds only the rest."""
    fake, bus = env
    clock = FakeClock()
    fake.audit = [audit_record(f"r{i}", clock.now() - 10 * i) for i in range(5)]
    fake.fail("/audit-logs", 500, times=2, only_with_cursor=True)
    async with make_poller(fake, bus, clock, streams=["audit_logs"], audit_page_size=2) as poller:
        assert (await poller.poll_once())["audit_logs"] == 2
        cursor = await cursor_doc(bus)
        assert cursor["high_water"] is None and len(cursor["seen"]) == 2
        assert (await poller.poll_once())["audit_logs"] == 3
    evs = await events(bus)
    assert_once(evs)
    assert len(evs) == 5


async def test_descending_page_falls_back_to_windowed_read(
    env: tuple[FakeInstantly, SqliteBus], caplog: pytest.LogCaptureFixture
) -> None:
    """Listed ascending, the poller continues after last_id; when a page comes back descending it
    re-reads the window for that poll (debug log), publishes the new records once and forgets last_id."""
    fake, bus = env
    clock = FakeClock()
    t0 = clock.now()
    fake.audit_order = "asc"
    fake.audit = [audit_record(f"r{i:02d}", t0 - 100 + i) for i in range(3)]
    async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
        assert (await poller.poll_once())["audit_logs"] == 3
        cursor = await cursor_doc(bus)
        assert cursor["last_id"] == "r02" and cursor["last_full_read"] == t0
        clock.advance(60)
        fake.audit.append(audit_record("r03", clock.now() - 5))
        assert (await poller.poll_once())["audit_logs"] == 1
        assert fake.calls_to("/audit-logs")[-2].query["starting_after"] == "r02"
        assert "start_date" not in fake.calls_to("/audit-logs")[-2].query
        fake.audit_order = "desc"  # the API changes its order
        clock.advance(60)
        fake.audit += [audit_record("r04", clock.now() - 2), audit_record("r05", clock.now() - 1)]
        sent = len(fake.calls_to("/audit-logs"))
        with caplog.at_level(logging.DEBUG, logger="instantly_audit.instantly.streams"):
            assert (await poller.poll_once())["audit_logs"] == 2
        queries = [c.query for c in fake.calls_to("/audit-logs")[sent:]]
        assert queries[0].get("starting_after") == "r03"  # incremental attempt: older records came back
        assert "start_date" in queries[1] and "starting_after" not in queries[1]  # the windowed read
        assert any("falling back to the windowed read" in r.getMessage() for r in caplog.records)
        cursor = await cursor_doc(bus)
        assert cursor["last_id"] is None
        clock.advance(60)
        sent = len(fake.calls_to("/audit-logs"))
        assert (await poller.poll_once())["audit_logs"] == 0
        assert all("starting_after" not in c.query for c in fake.calls_to("/audit-logs")[sent:][:1])
    evs = await events(bus)
    assert_once(evs)
    assert sorted(e["source"]["record_id"] for e in evs) == [f"r{i:02d}" for i in range(6)]


@pytest.mark.parametrize("kind", ["status", "no_items"])
async def test_failed_snapshot_page_publishes_nothing(env: tuple[FakeInstantly, SqliteBus], kind: str) -> None:
    """A failed page of a snapshot listing publishes nothing and keeps the old snapshot."""
    fake, bus = env
    clock = FakeClock()
    fake.collections["api-keys"] = [
        {**load_fixture("api_keys.list.json")["items"][0], "id": f"k{i:03d}"} for i in range(150)
    ]
    async with make_poller(fake, bus, clock, streams=["api_keys"]) as poller:
        assert (await poller.poll_once())["api_keys"] == 150
        snapshot = await bus.state_items("snapshot/acme/api_keys/")
        fake.collections["api-keys"] = fake.collections["api-keys"][:100]
        fake.fail("/api-keys", 500, times=2, only_with_cursor=True, kind=kind)
        assert (await poller.poll_once())["api_keys"] == 0
        assert await bus.state_items("snapshot/acme/api_keys/") == snapshot
        assert len(await records(bus)) == 150
        assert (await poller.poll_once())["api_keys"] == 50  # fault gone: the 50 deletions, once
    assert sum(e["type"] == "api_key.deleted" for e in await events(bus)) == 50


async def test_unauthorized_once_per_hour_and_other_workspaces_go_on(tmp_path: Path) -> None:
    """A revoked key publishes pipeline.poller_unauthorized once per hour; another workspace keeps polling."""
    clock = FakeClock()
    bad, good = FakeInstantly(api_key=CANARY_KEY), FakeInstantly(api_key="good-key-123456")
    seed(good)
    bad.revoked = True
    async with serve(bad), serve(good), SqliteBus(tmp_path / "bus.db") as bus:
        p_bad, p_good = make_poller(bad, bus, clock, "bad"), make_poller(good, bus, clock, "good")
        async with p_bad, p_good:
            c_bad, c_good = await asyncio.gather(p_bad.poll_once(), p_good.poll_once())
            assert c_bad["pipeline"] == 1 and sum(c_bad.values()) == 1
            assert c_good["api_keys"] == 1
            assert (await p_bad.poll_once())["pipeline"] == 0  # same hour: not again
            clock.advance(3600)
            assert (await p_bad.poll_once())["pipeline"] == 1
        evs = [e for e in await events(bus) if e["type"] == "pipeline.poller_unauthorized"]
    assert len(evs) == 2 and evs[0]["id"] != evs[1]["id"]
    assert evs[0]["source"]["kind"] == "pipeline" and evs[0]["attributes"]["status"] == 401
    assert evs[0]["workspace"]["id"] == "bad"  # identity never learned: falls back to the source id
    assert all(schema_errors("event", e) == [] for e in evs)


@pytest.mark.parametrize("status", [402, 403])
async def test_audit_log_unavailable(env: tuple[FakeInstantly, SqliteBus], status: int) -> None:
    """402/403 on the audit log publish pipeline.audit_log_unavailable once; other streams still publish."""
    fake, bus = env
    clock = FakeClock()
    fake.fail("/audit-logs", status, times=100)
    async with make_poller(fake, bus, clock) as poller:
        counts = await poller.poll_once()
        assert (await poller.poll_once())["pipeline"] == 0
    assert counts["pipeline"] == 1 and counts["api_keys"] == 1 and counts["audit_logs"] == 0
    [event] = [e for e in await events(bus) if e["type"].startswith("pipeline.")]
    assert event["type"] == "pipeline.audit_log_unavailable" and event["attributes"]["status"] == status
    assert event["workspace"]["id"] == WS_ID and schema_errors("event", event) == []


async def test_snapshot_stream_forbidden(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A 403 on a snapshot stream publishes pipeline.stream_unavailable and no deletions."""
    fake, bus = env
    clock = FakeClock()
    async with make_poller(fake, bus, clock, streams=["members"]) as poller:
        await poller.poll_once()
        fake.fail("/workspace-members", 403, times=100)
        counts = await poller.poll_once()
    assert counts == {"members": 0, "pipeline": 1}
    assert [e["type"] for e in await events(bus)] == ["member.baseline", "pipeline.stream_unavailable"]


def leaks(text: str | bytes) -> list[str]:
    blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    found = []
    for canary in (CANARY_KEY, CANARY_API_KEY_SECRET, CANARY_HEADER):
        forms = {canary, base64.b64encode(canary.encode()).decode(), quote(canary), quote(f"Bearer {canary}")}
        found += [f for f in forms if f in blob]
    return found


async def test_canary_secrets_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Seeded key/secret/header canaries appear in no bus record, state value, log record or exception."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    fake = FakeInstantly(api_key=CANARY_KEY)
    seed(fake)
    fake.collections["api-keys"][0] = {**fake.collections["api-keys"][0], "key": CANARY_API_KEY_SECRET}
    fake.collections["webhooks"][0] = {
        **fake.collections["webhooks"][0],
        "headers": {"X-Instantly-Secret": CANARY_HEADER},
    }
    fake.audit = [{**audit_record("a1", clock.now() - 5), "audit_metadata": {"token": CANARY_HEADER}}]
    errors: list[BaseException] = []
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock) as poller:
            await poller.poll_once()
            fake.collections["webhooks"][0]["headers"]["Authorization"] = f"Bearer {CANARY_KEY}"
            fake.fail("/api-keys", 500, times=5)  # retries + a logged stream failure
            clock.advance(60)
            await poller.poll_once()
            fake.fail("/audit-logs", 401, message=f"Invalid authorization header Bearer {CANARY_KEY}")
            clock.advance(60)
            assert (await poller.poll_once())["pipeline"] == 1
        cfg = WorkspaceConfig(api_key=SecretStr(CANARY_KEY), base_url=fake.url, max_retries=0)
        fake.fail("/workspaces/current", 401, message=f"bad key {CANARY_KEY}")
        async with InstantlyClient(cfg) as client:
            for path in ("/api/v2/workspaces/current", "/api/v2/nope"):
                try:
                    await client.get(path)
                except SourceError as err:
                    errors.append(err)
        dead = WorkspaceConfig(api_key=SecretStr(CANARY_KEY), base_url="http://127.0.0.1:9", max_retries=0)
        async with InstantlyClient(dead) as client:
            try:
                await client.get("/api/v2/workspaces/current")
            except SourceError as refused:
                errors.append(refused)
        recs = await records(bus, DATA_TOPICS)
        state = await bus.state_items()
    assert len(errors) == 3
    assert any(r["type"] == "webhook.headers_changed" for r in (orjson.loads(x.value) for x in recs))
    for rec in recs:
        assert not leaks(rec.value + (rec.key or b"") + b"".join(v for _k, v in rec.headers)), rec.value
    for key, value in state.items():
        assert not leaks(key.encode() + value), key
    for log_record in caplog.records:
        assert not leaks(log_record.getMessage() + repr(log_record.__dict__)), log_record.getMessage()
    for error in errors:
        assert not leaks(str(error) + repr(error) + "".join(traceback.format_exception(error)))


async def test_run_polls_until_stopped(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """run() polls immediately, waits between polls and returns promptly once stop is set."""
    fake, bus = env
    stop = asyncio.Event()
    poller = make_poller(fake, bus, FakeClock(), streams=["api_keys"], poll_interval_secs=30)
    task = asyncio.create_task(poller.run(stop))
    for _ in range(200):
        if fake.calls_to("/api-keys"):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert len(fake.calls_to("/workspaces/current")) == 1
    assert [e["type"] for e in await events(bus)] == ["api_key.baseline"]


def test_failure_reasons_name_the_request_but_no_response_text() -> None:
    """A failure without an HTTP status says what failed in the client's own words (``run --once``
    printed only ``failed: (UpstreamError)`` for an unreachable API); an HTTP refusal or failure
    keeps to its status and class, since its message may quote the response body."""
    from connectors.instantly.source import _reason

    down = UpstreamError("GET /api/v2/api-keys: request failed (ClientConnectorError)")
    assert _reason(down) == "failed: GET /api/v2/api-keys: request failed (ClientConnectorError)"
    assert _reason(UpstreamError("body echo s3cr3t-token-value", status=502)) == "failed: HTTP 502 (UpstreamError)"
    assert _reason(AuthError("Invalid API key abc")) == "refused: HTTP 401 (AuthError)"
    hung = UnreachableError("GET /api/v2/api-keys: request timed out (TimeoutError)", "timeout")
    assert _reason(hung) == "failed: timeout: GET /api/v2/api-keys: request timed out (TimeoutError)"


# ------------------------------------------------------------------ agency link seen from the sub side
ADMIN_LINK_ID = "019cc043-e416-7bfb-a570-dda14f46c967"
ADMIN_LINK = {"workspace_name": "Evil Agency", "has_admin_workspace": True, "workspace_group_member_id": ADMIN_LINK_ID}


async def rule_alerts(bus: SqliteBus, rule: str) -> list[dict[str, Any]]:
    from pipeline.bus.base import ALERTS_TOPIC
    from pipeline.rules.worker import RulesWorker

    await RulesWorker(bus, {}, clock=FakeClock()).run_once()
    alerts = [orjson.loads(r.value) for r in await records(bus, (ALERTS_TOPIC,))]
    return [a for a in alerts if a["rule"]["id"] == rule]


async def test_sub_workspace_sees_its_admin_link_through_the_admin_endpoint(
    env: tuple[FakeInstantly, SqliteBus],
) -> None:
    """The list endpoint shows only an admin workspace its subs; a watched workspace that joined an agency
    learns it from GET /workspace-group-members/admin: a baseline with relation admin_workspace and the
    workspace_group.change alert; the link gone later is member_removed."""
    fake, bus = env
    clock = FakeClock()
    fake.collections["workspace-group-members"] = []
    fake.admin_workspace = {**ADMIN_LINK, "new_field_2027": {"x": 1}}
    async with make_poller(fake, bus, clock, streams=["group_members"]) as poller:
        assert (await poller.poll_once())["group_members"] == 1
        [baseline] = await events(bus)
        assert baseline["type"] == "workspace_group.member_baseline" and schema_errors("event", baseline) == []
        assert baseline["workspace"]["id"] == WS_ID and baseline["target"]["id"] == ADMIN_LINK_ID
        attrs = baseline["attributes"]
        assert (attrs["admin_workspace_name"], attrs["sub_workspace_id"], attrs["status"], attrs["relation"]) == (
            "Evil Agency", WS_ID, "accepted", "admin_workspace"
        )  # fmt: skip
        [alert] = await rule_alerts(bus, "workspace_group.change")
        assert alert["rule"]["severity"] == "high" and alert["workspace"]["id"] == WS_ID
        assert "admin workspace Evil Agency" in alert["summary"]  # the name /admin gives, not a missing id
        assert schema_errors("alert", alert) == []
        assert await poller.poll_once() == {"group_members": 0, "pipeline": 0}
        fake.admin_workspace = {"workspace_name": "Undefined", "has_admin_workspace": False}
        assert (await poller.poll_once())["group_members"] == 1
    assert [e["type"] for e in await events(bus)] == [
        "workspace_group.member_baseline",
        "workspace_group.member_removed",
    ]
    assert len(fake.calls_to("/workspace-group-members/admin")) == 3


async def test_sub_polled_with_its_agency_key_reports_the_link_without_an_alert(
    env: tuple[FakeInstantly, SqliteBus],
) -> None:
    """A sub-workspace polled with its agency's own key (as_workspace, as discovered subs are) sees that
    agency through /admin: the baseline says admin_is_key_owner and raises no workspace_group.change
    (the agency's own listing reports the link); its removal still alerts."""
    fake, bus = env
    clock = FakeClock()
    fake.collections["workspace-group-members"] = []
    fake.admin_workspace = dict(ADMIN_LINK)
    async with make_poller(fake, bus, clock, streams=["group_members"], as_workspace=WS_ID) as poller:
        assert (await poller.poll_once())["group_members"] == 1
        [baseline] = await events(bus)
        assert baseline["attributes"]["admin_is_key_owner"] is True
        assert await rule_alerts(bus, "workspace_group.change") == []
        fake.admin_workspace = {"workspace_name": "Undefined", "has_admin_workspace": False}
        assert (await poller.poll_once())["group_members"] == 1
    [alert] = await rule_alerts(bus, "workspace_group.change")
    assert "member_removed" in alert["dedup_key"]


async def test_admin_link_also_listed_is_one_item_and_404_means_none(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A listing that already holds the admin link (same id) is not doubled; a 404 on /admin reads as no admin."""
    fake, bus = env
    clock = FakeClock()
    listed = load_fixture("workspace_group_members.list.json")["items"][0]
    link = {**listed, "id": ADMIN_LINK_ID, "sub_workspace_id": WS_ID}
    fake.collections["workspace-group-members"] = [link]
    fake.admin_workspace = ADMIN_LINK
    async with make_poller(fake, bus, clock, streams=["group_members"]) as poller:
        assert (await poller.poll_once())["group_members"] == 1
        fake.collections["workspace-group-members"] = []
        fake.admin_workspace = None  # 404
        assert (await poller.poll_once())["group_members"] == 1
        assert poller.last_failures == {}
    evs = await events(bus)
    assert [e["type"] for e in evs] == ["workspace_group.member_baseline", "workspace_group.member_removed"]
    assert evs[0]["attributes"]["admin_workspace_id"] == link["admin_workspace_id"]


async def test_admin_endpoint_failure_publishes_no_removal(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A 5xx on /admin fails the stream for this poll: the snapshot is kept (no member_removed)."""
    fake, bus = env
    clock = FakeClock()
    fake.collections["workspace-group-members"] = []
    fake.admin_workspace = ADMIN_LINK
    async with make_poller(fake, bus, clock, streams=["group_members"], max_retries=0) as poller:
        await poller.poll_once()
        fake.fail("/workspace-group-members/admin", 503, times=10)
        assert (await poller.poll_once())["group_members"] == 0
        assert "group_members" in poller.last_failures
    assert [e["type"] for e in await events(bus)] == ["workspace_group.member_baseline"]


# ------------------------------------------------------------- identity without workspaces:read
ORG_ID = "019cc043-af79-73db-a904-000000000001"


async def test_workspace_id_from_audit_records_when_workspaces_read_is_refused(
    env: tuple[FakeInstantly, SqliteBus],
) -> None:
    """A key without workspaces:read (403 on /workspaces/current) and streams [audit_logs]: the events carry the
    audit records' organization_id, not the config alias, and the id is kept for later polls."""
    fake, bus = env
    clock = FakeClock()
    fake.fail("/workspaces/current", 403, times=100)
    fake.audit = [{**audit_record("a1", clock.now() - 60), "organization_id": ORG_ID}]
    async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
        counts = await poller.poll_once()
        assert counts == {"audit_logs": 1, "pipeline": 0} and poller.last_failures == {}
        fake.audit.append({**audit_record("a2", clock.now() - 30), "organization_id": ORG_ID})
        clock.advance(60)
        assert (await poller.poll_once())["audit_logs"] == 1
    identity_reads = [c for c in fake.calls_to("/audit-logs") if c.query == {"limit": "1"}]
    assert len(identity_reads) == 1  # none once the id is known
    evs = await events(bus)
    assert [e["workspace"]["id"] for e in evs] == [ORG_ID, ORG_ID]
    assert all(schema_errors("event", e) == [] for e in evs)
    async with make_poller(fake, bus, clock, streams=["audit_logs"]) as later:  # a restart: the id is in state
        await later.poll_once()
        assert later.workspace.id == ORG_ID and later.last_failures == {}


async def test_unknown_identity_is_a_problem_until_an_audit_record_brings_it(
    env: tuple[FakeInstantly, SqliteBus],
) -> None:
    """403 on /workspaces/current and an empty audit log: last_failures names the unknown identity and the
    missing scope (a run --once problem line); the first audit record then fixes the id."""
    fake, bus = env
    clock = FakeClock()
    fake.fail("/workspaces/current", 403, times=100)
    async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
        await poller.poll_once()
        reason = poller.last_failures["identity"]
        assert "403" in reason and "workspaces:read" in reason and "'acme'" in reason
        fake.audit = [{**audit_record("a1", clock.now() - 10), "organization_id": ORG_ID}]
        clock.advance(60)
        assert (await poller.poll_once())["audit_logs"] == 1
        assert poller.last_failures == {}
    [ev] = await events(bus)
    assert ev["workspace"]["id"] == ORG_ID


def listed(fake: FakeInstantly, path: str) -> int:
    """Listings of ``path`` started (first pages only)."""
    return sum(1 for c in fake.calls_to(path) if "starting_after" not in c.query)


async def test_default_intervals_small_streams_every_poll_large_ones_less_often(
    env: tuple[FakeInstantly, SqliteBus],
) -> None:
    """Defaults: poll every 5 s; keys, members, webhooks, workspace and group links every poll, so a
    member invited as admin is published by the next poll; accounts every 60 s, the block list every 300 s."""
    fake, bus = env
    clock = FakeClock()
    async with make_poller(fake, bus, clock) as poller:
        assert poller.cfg.poll_interval_secs == 5.0
        await poller.poll_once()
        small = ("/api-keys", "/workspace-members", "/webhooks", "/workspace-group-members", "/workspaces/current")
        before = {p: listed(fake, p) for p in (*small, "/block-lists-entries", "/accounts")}
        fake.collections["workspace-members"].append(
            {**fake.collections["workspace-members"][0], "id": "m-new", "email": "new@evil.example", "role": "admin"}
        )
        clock.advance(5)
        counts = await poller.poll_once()
        assert counts["members"] == 1
        assert all(listed(fake, p) == before[p] + 1 for p in small)
        assert listed(fake, "/block-lists-entries") == before["/block-lists-entries"]
        assert listed(fake, "/accounts") == before["/accounts"]
        calls = len(fake.calls)
        clock.advance(5)
        await poller.poll_once()
        assert len(fake.calls) - calls == 11  # a quiet poll (docs/completeness.md "Snapshot intervals")
        clock.advance(50)
        await poller.poll_once()
        assert listed(fake, "/accounts") == before["/accounts"] + 1
        assert listed(fake, "/block-lists-entries") == before["/block-lists-entries"]
        clock.advance(240)
        await poller.poll_once()
        assert listed(fake, "/block-lists-entries") == before["/block-lists-entries"] + 1
        # readiness: a stream listed every 300 s is not stale between listings
        assert poller.stale_after("block_list") == 900 and poller.stale_after("members") == 300
    assert any(e["type"] == "member.invited" for e in await events(bus))


def test_snapshot_interval_precedence_and_validation() -> None:
    """snapshot_intervals[stream] wins over snapshot_interval_secs, which wins over the built-in defaults."""
    base = {"api_key": SecretStr("k" * 20)}
    default = WorkspaceConfig(**base)
    assert [default.snapshot_interval(s) for s in ("members", "accounts", "block_list")] == [None, 60.0, 300.0]
    cfg = WorkspaceConfig(**base, snapshot_interval_secs=300, snapshot_intervals={"members": None, "block_list": 900})
    assert cfg.snapshot_interval("members") is None  # every poll despite the global 300
    assert cfg.snapshot_interval("api_keys") == 300 and cfg.snapshot_interval("accounts") == 300
    assert cfg.snapshot_interval("block_list") == 900
    for bad in ({"audit_logs": 60}, {"block_list": 0.5}, {"nope": 60}):
        with pytest.raises(ValueError, match=r"audit_logs|at least 1|nope|literal"):
            WorkspaceConfig(**base, snapshot_intervals=bad)


async def test_audit_log_outage_is_reported_once_and_resolved(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """5xx on the audit log for 3+ polls over 60 s publishes one pipeline.stream_unavailable (transient,
    with the status as cause, no URL); the first good read publishes pipeline.stream_recovered."""
    fake, bus = env
    clock = FakeClock()
    async with make_poller(fake, bus, clock, streams=["audit_logs", "api_keys"]) as poller:
        await poller.poll_once()
        fake.fail("/audit-logs", 503, times=1000)
        published = []
        for _ in range(14):  # 5 s polls over 65 s
            clock.advance(5)
            published.append((await poller.poll_once())["pipeline"])
        assert published == [0] * 12 + [1, 0]  # the 13th failed poll is the first 60 s after the first
        fake.faults.clear()
        clock.advance(5)
        assert (await poller.poll_once())["pipeline"] == 1
        clock.advance(5)
        assert (await poller.poll_once())["pipeline"] == 0
        fake.fail("/audit-logs", 502, times=1000)  # a second outage in the same hour is reported again,
        for _ in range(16):  # once: the polls after its report publish nothing (nor the first report's id)
            clock.advance(5)
            await poller.poll_once()
    evs = [e for e in await events(bus) if e["type"].startswith("pipeline.")]
    assert [e["type"] for e in evs] == [
        "pipeline.stream_unavailable", "pipeline.stream_recovered", "pipeline.stream_unavailable"
    ]  # fmt: skip
    down, up, again = evs
    assert down["attributes"]["stream"] == "audit_logs" and down["attributes"]["transient"] is True
    assert down["attributes"]["status"] == 503 and down["attributes"]["cause"] == "HTTP 503"
    assert down["attributes"]["failed_polls"] == 13 and "127.0.0.1" not in orjson.dumps(down).decode()  # no URL
    assert up["attributes"]["stream"] == "audit_logs" and up["attributes"]["failed_polls"] == 14
    assert again["id"] != down["id"] and again["attributes"]["cause"] == "HTTP 502"
    assert all(schema_errors("event", e) == [] for e in evs)


async def test_refused_stream_recovers(env: tuple[FakeInstantly, SqliteBus]) -> None:
    """A 403'd snapshot stream that lists again publishes pipeline.stream_recovered, also after a restart."""
    fake, bus = env
    clock = FakeClock()
    async with make_poller(fake, bus, clock, streams=["members"]) as poller:
        await poller.poll_once()
        fake.fail("/workspace-members", 403, times=1)
        assert (await poller.poll_once())["pipeline"] == 1
    async with make_poller(fake, bus, clock, streams=["members"]) as poller:  # a restart in between
        assert (await poller.poll_once())["pipeline"] == 1
        assert (await poller.poll_once())["pipeline"] == 0
        fake.fail("/workspace-members", 403, times=1)  # refused again within the hour: a new event
        assert (await poller.poll_once())["pipeline"] == 1
    evs = [e for e in await events(bus) if e["type"].startswith("pipeline.")]
    assert [e["type"] for e in evs] == [
        "pipeline.stream_unavailable", "pipeline.stream_recovered", "pipeline.stream_unavailable"
    ]  # fmt: skip
    assert evs[0]["id"] != evs[2]["id"]


async def test_unreachable_workspace_fails_its_poll_after_one_requests_retries(tmp_path: Path) -> None:
    """A host that accepts connections and never answers: the poll sends one request and its retries,
    then every stream fails at once with the cause (before: every stream waited out its own retries)."""
    writers: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = WorkspaceConfig(
        api_key=SecretStr(CANARY_KEY), base_url=f"http://127.0.0.1:{port}", request_timeout_secs=0.2, max_retries=1
    )
    try:
        async with SqliteBus(tmp_path / "bus.db") as bus:
            poller = InstantlyWorkspacePoller("acme", cfg, bus, clock=FakeClock(), sleep=no_sleep)
            async with poller:
                await poller.poll_once()
                assert poller._client.requests == 2
                assert set(poller.last_failures) >= set(poller.streams)
                assert all("timeout" in poller.last_failures[s] for s in poller.streams)
                await poller.poll_once()  # the next poll tries again
                assert poller._client.requests == 4
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


# ------------------------------------------------------------- a refused key, an unreachable host: said once
async def test_a_refused_key_is_said_once_naming_its_config_key(tmp_path: Path) -> None:
    """A 401 fails every stream with the same reason, which says the key was refused and names
    ``workspaces.<alias>.api_key``: ``run --once`` prints one line, not one bare line per stream."""
    from pipeline.sources.base import failure_lines

    fake = FakeInstantly(api_key=CANARY_KEY)
    fake.revoked = True
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        poller = make_poller(fake, bus, FakeClock(), "acme")
        async with poller:
            await poller.poll_once()
            failures = dict(poller.last_failures)
    assert len(failures) == len(poller.streams) > 1
    [line] = failure_lines(failures)
    assert line == (
        f"{', '.join(sorted(poller.streams))} refused: HTTP 401 (AuthError): Instantly refused the API key "
        "(workspaces.acme.api_key, or the variable or file it names)"
    )
    assert CANARY_KEY not in line


@pytest.mark.parametrize(
    ("base_url", "says"),
    [("https://api.instantlyy.invalid", "failed: DNS: cannot resolve the host api.instantlyy.invalid"),
     ("http://127.0.0.1:9", "failed: connection refused: 127.0.0.1:9 refused the connection")],
)  # fmt: skip
async def test_an_unreachable_server_names_its_host_and_config_key(tmp_path: Path, base_url: str, says: str) -> None:
    """DNS failing on a typo'd ``base_url`` named neither the host nor the config key, and the identity
    line advised granting ``workspaces:read``, which no scope fixes: every stream and the identity now
    name the host and ``workspaces.<alias>.base_url``, without scope advice."""
    from pipeline.sources.base import failure_lines

    cfg = WorkspaceConfig(api_key=SecretStr(CANARY_KEY), base_url=base_url, max_retries=0,
                          streams=["audit_logs", "api_keys", "members"])  # fmt: skip
    async with (
        SqliteBus(tmp_path / "bus.db") as bus,
        InstantlyWorkspacePoller("acme", cfg, bus, clock=FakeClock(), sleep=no_sleep) as poller,
    ):
        await poller.poll_once()
        failures = dict(poller.last_failures)
    identity = failures.pop("identity")
    assert failure_lines(failures) == [f"api_keys, audit_logs, members {says} (workspaces.acme.base_url)"]
    assert f"{says.removeprefix('failed: ')} (workspaces.acme.base_url)" in identity
    assert "workspaces:read" not in identity


def test_a_discovered_sub_workspace_names_its_agency_config_key() -> None:
    """A sub-workspace's poller (``<alias>--<sub>``) uses the agency's key and base_url: its hints name those."""
    cfg = WorkspaceConfig(api_key=SecretStr(CANARY_KEY), as_workspace="sub-1")
    assert InstantlyClient(cfg, source_id="acme--sub-1").config_alias == "acme"
    assert InstantlyClient(cfg, source_id="acme").config_alias == "acme"
    assert InstantlyClient(cfg.model_copy(update={"as_workspace": None}), source_id="a--b").config_alias == "a--b"
