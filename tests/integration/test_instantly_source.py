"""The workspace poller against the Instantly simulator (``connectors.instantly.sim``) into a SqliteBus."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.sim import seed as sim_seed
from connectors.instantly.sim.server import InstantlySimulator
from connectors.instantly.source import InstantlyWorkspacePoller
from connectors.instantly.streams import load_cursor
from pipeline.bus.base import DATA_TOPICS, EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from schemas.validate import schema_errors

AUDIT_PATH = "/api/v2/audit-logs"


class Requests:
    """Path and query of every request the pollers send (an aiohttp client trace)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def session_factory(self) -> aiohttp.ClientSession:
        async def on_start(_s: aiohttp.ClientSession, _ctx: SimpleNamespace, params: Any) -> None:
            self.sent.append((params.url.path, dict(params.url.query)))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        return aiohttp.ClientSession(trace_configs=[trace])

    def audit(self) -> list[dict[str, str]]:
        """The queries of the audit-log requests, in order."""
        return [q for p, q in self.sent if p == AUDIT_PATH]


@dataclass
class Env:
    sim: Any
    world: Any
    bus: SqliteBus
    clock: FakeClock
    poller: InstantlyWorkspacePoller
    requests: Requests
    cfg: WorkspaceConfig

    def new_poller(self) -> InstantlyWorkspacePoller:
        """Another poller on the same bus and source (a restarted process)."""
        return make_poller(self.cfg, self.bus, self.clock, self.requests)


def make_poller(cfg: WorkspaceConfig, bus: SqliteBus, clock: FakeClock, requests: Requests) -> InstantlyWorkspacePoller:
    fast = RequestBudget(1000, 60_000)  # the budget has its own tests; keep the fault runs quick
    return InstantlyWorkspacePoller(
        "acme",
        cfg,
        bus,
        clock=clock,
        budget=fast,
        sleep=no_sleep,
        rng=random.Random(5),
        session_factory=requests.session_factory,
    )


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
    return None


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    async with InstantlySimulator(seed=1, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
        world = sim_seed.demo_world(sim.state)
        cfg = WorkspaceConfig(
            api_key=SecretStr(world.poller_key.key),
            base_url=sim.url,
            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
            max_retries=3,
        )
        requests = Requests()
        async with make_poller(cfg, bus, clock, requests) as poller:
            yield Env(sim, world, bus, clock, poller, requests, cfg)


async def bus_events(bus: SqliteBus) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


def secrets_of(env: Env) -> list[str]:
    keys = [k.key for k in env.sim.state.api_keys.values()]
    headers = [v for h in env.sim.state.webhooks.values() for v in (h.headers or {}).values()]
    return keys + headers


async def test_demo_world_first_poll_and_quiet_second_poll(env: Env) -> None:
    """The demo world yields baselines + its audit history, all valid; a second poll adds nothing."""
    counts = await env.poller.poll_once()
    assert counts["audit_logs"] == len(env.sim.state.audit_of(env.world.workspace.id)) == 10
    assert counts["api_keys"] == 2 and counts["members"] == 3 and counts["webhooks"] == 1
    assert counts["workspace"] == 1 and counts["block_list"] == 2 and counts["accounts"] == 3
    assert counts["pipeline"] == 0
    evs = await bus_events(env.bus)
    assert all(schema_errors("event", e) == [] for e in evs)
    assert {e["workspace"]["id"] for e in evs} == {env.world.workspace.id}
    legacy = next(e for e in evs if e["type"] == "api_key.baseline" and e["attributes"]["name"] == "Zapier (legacy)")
    assert legacy["attributes"]["scopes"] == ["all:all"]
    assert legacy["attributes"]["key_fingerprint"].startswith("sha256:")
    env.clock.advance(60)
    assert set((await env.poller.poll_once()).values()) == {0}


async def test_changes_reach_the_bus_once(env: Env) -> None:
    """Key created via the API, a member invited and a webhook failing show up as snapshot + audit events."""
    await env.poller.poll_once()
    state, ws = env.sim.state, env.world.workspace.id
    env.clock.advance(120)
    rogue = state.create_api_key(ws, "backdoor", ["all:all"], actor=state.actor_for_user("sam", "203.0.113.9"))
    state.invite_member(ws, "mallory@evil.example", "admin", issuer_id=state.user("sam").id)
    state.mark_webhook_error(env.world.webhook.id)
    env.clock.advance(60)
    await env.poller.poll_once()
    env.clock.advance(60)
    await env.poller.poll_once()
    evs = await bus_events(env.bus)
    assert len({e["id"] for e in evs}) == len(evs)
    types = Counter(e["type"] for e in evs if not e["type"].endswith("baseline"))
    assert types["api_key.created"] == 1 and types["member.invited"] == 1 and types["webhook.status_changed"] == 1
    assert types["audit.api_key_created"] == 2  # the demo history's one + the new one
    assert types["audit.webhook_marked_error"] == 1
    created = next(e for e in evs if e["type"] == "api_key.created")
    assert created["target"]["id"] == rogue.id and created["attributes"]["scopes"] == ["all:all"]


async def test_sending_account_changes_reach_the_bus(env: Env) -> None:
    """Accounts listed over several pages (cursor timestamp_created&email) and diffed: added, reply_to and
    tracking domain changed, a status change, and a mailbox moved away with no audit record."""
    from connectors.instantly.sim.scenario import Scenario, apply_step

    await env.poller.poll_once()
    state, ws = env.sim.state, env.world.workspace.id
    served = state.account("lee@acmeoutreach-mail.com").to_json()
    for i in range(150):
        state.add_account(ws, f"bulk{i:03d}@acmeoutreach-mail.com", created_at=env.clock.now() - 1000 + i)
    steps = Scenario.from_yaml(
        "workspace: acme\n"
        "steps:\n"
        "  - {at: 0, action: add_account, email: New.Box@acmeoutreach-mail.com, as: legacy-key}\n"
        "  - {at: 0, action: set_account_reply_to, account: sales@acmeoutreach-mail.com, reply_to: x@proton.me}\n"
        "  - {at: 0, action: set_account_tracking_domain, account: dana@acmeoutreach-mail.com,"
        " tracking_domain_name: clicks.evil.example}\n"
        "  - {at: 0, action: remove_account, account: lee@acmeoutreach-mail.com, moved: true}\n"
    ).steps
    for step in steps:
        apply_step(state, step)
    state.update_account("dana@acmeoutreach-mail.com", {"status": -1, "stat_warmup_score": 3})
    audit_before = len(state.audit_of(ws))
    env.clock.advance(60)
    counts = await env.poller.poll_once()
    assert len(state.audit_of(ws)) == audit_before  # the poll itself writes nothing
    env.clock.advance(60)
    assert (await env.poller.poll_once())["accounts"] == 0
    pages = [q for p, q in env.requests.sent if p == "/api/v2/accounts"]
    assert any("&" in q.get("starting_after", "") for q in pages) and all(q["limit"] == "100" for q in pages)
    evs = await bus_events(env.bus)
    assert all(schema_errors("event", e) == [] for e in evs)
    acc = Counter(e["type"] for e in evs if e["type"].startswith("account."))
    assert counts["accounts"] == 150 + 1 + 1 + 1 + 1 + 1
    assert acc == {
        "account.baseline": 3,
        "account.added": 151,
        "account.reply_to_changed": 1,
        "account.tracking_domain_changed": 1,
        "account.status_changed": 1,
        "account.removed": 1,
    }
    by_type = {e["type"]: e for e in evs}
    assert by_type["account.reply_to_changed"]["change"]["after"]["reply_to"] == "x@proton.me"
    assert by_type["account.reply_to_changed"]["change"]["before"]["reply_to"] == "replies@acmeoutreach-mail.com"
    assert by_type["account.removed"]["target"]["id"] == "lee@acmeoutreach-mail.com"
    new = next(e for e in evs if e["type"] == "account.added" and e["target"]["id"].startswith("new.box"))
    box = "new.box@acmeoutreach-mail.com"
    assert new["target"] == {"kind": "account", "id": box, "name": box}
    assert "status_message" in served  # served by the API, never kept
    assert not any("status_message" in str(e) or "535 5.7.3" in str(e) or "stat_warmup_score" in str(e) for e in evs)


async def test_key_without_accounts_scope_reports_the_stream(env: Env) -> None:
    """A poller key without accounts:read gets pipeline.stream_unavailable for accounts; the rest goes on."""
    state = env.sim.state
    key = state.api_keys[env.world.poller_key.id]
    key.scopes = [s for s in key.scopes if s != "accounts:read"]
    counts = await env.poller.poll_once()
    assert counts["accounts"] == 0 and counts["api_keys"] == 2 and counts["pipeline"] == 1
    evs = await bus_events(env.bus)
    gone = [e for e in evs if e["type"] == "pipeline.stream_unavailable"]
    assert len(gone) == 1 and gone[0]["target"]["id"] == "accounts"


async def test_late_audit_record_is_published_once(env: Env) -> None:
    """A record that arrives late with an old timestamp (inside the overlap) is published exactly once."""
    await env.poller.poll_once()
    env.clock.advance(600)
    late = env.sim.state.insert_audit(env.world.workspace.id, 1, timestamp=env.clock.now() - 900)
    for _ in range(3):
        await env.poller.poll_once()
        env.clock.advance(60)
    evs = [e for e in await bus_events(env.bus) if e["source"]["record_id"] == late.id]
    assert len(evs) == 1


async def test_faults_lose_nothing_and_duplicate_nothing(env: Env) -> None:
    """Under 5xx, 429 bursts and malformed pages, every audit record and key reaches the bus exactly once."""
    env.sim.config.rate_limit_per_second = env.sim.config.rate_limit_per_minute = None
    env.sim.config.trailing_cursor = True
    faults = env.sim.faults
    faults.error_rate, faults.burst_rate, faults.malformed_rate = 0.25, 0.05, 0.1
    state, ws = env.sim.state, env.world.workspace.id
    for i in range(40):
        state.insert_audit(ws, 1 + i % 3, timestamp=env.clock.now() - 30 * i)
        if i % 10 == 0:
            state.create_api_key(ws, f"k{i}", ["leads:read"])
        await env.poller.poll_once()
        env.clock.advance(30)
    faults.clear()
    await env.poller.poll_once()
    evs = await bus_events(env.bus)
    assert len({e["id"] for e in evs}) == len(evs), "duplicates on the bus"
    published = {e["source"]["record_id"] for e in evs if e["source"]["kind"] == "audit_log"}
    assert published == {r.id for r in state.audit_of(ws)}, "audit records lost"
    keys = {e["target"]["id"] for e in evs if e["type"] in ("api_key.baseline", "api_key.created")}
    assert keys == set(state.api_keys)  # every key, once
    assert env.sim.count_calls(status=500) + env.sim.count_calls(status=502) + env.sim.count_calls(status=503) > 0


async def test_revoked_poller_key_and_lost_plan(env: Env) -> None:
    """A deleted poller key yields pipeline.poller_unauthorized; nothing else is published."""
    await env.poller.poll_once()
    before = len(await bus_events(env.bus))
    env.sim.state.delete_api_key(env.world.poller_key.id)
    counts = await env.poller.poll_once()
    assert counts["pipeline"] == 1 and sum(counts.values()) == 1
    evs = (await bus_events(env.bus))[before:]
    assert [e["type"] for e in evs] == ["pipeline.poller_unauthorized"]
    assert evs[0]["workspace"]["id"] == env.world.workspace.id  # identity remembered from earlier polls


async def test_lost_paid_plan_is_reported_per_stream(env: Env) -> None:
    """402 everywhere: audit_log_unavailable for the audit log, stream_unavailable for the others, once."""
    await env.poller.poll_once()
    env.sim.state.set_paid_plan(env.world.workspace.id, False)
    env.clock.advance(301)  # block_list and accounts are listed every 300 s / 60 s by default
    counts = await env.poller.poll_once()
    assert counts["pipeline"] == len(env.poller.streams)
    assert (await env.poller.poll_once())["pipeline"] == 0
    evs = [e for e in await bus_events(env.bus) if e["type"].startswith("pipeline.")]
    assert {e["attributes"]["status"] for e in evs} == {402}
    assert sum(e["type"] == "pipeline.audit_log_unavailable" for e in evs) == 1


async def test_simulator_secrets_never_reach_the_bus(env: Env) -> None:
    """Key secrets and webhook header values served by the simulator are in no record or state value."""
    await env.poller.poll_once()
    blobs: list[bytes] = []
    async with env.bus.consumer(list(DATA_TOPICS), start="earliest") as consumer:
        async for batch in iter_records(consumer):
            blobs.extend(r.value for r in batch)
    blobs.extend((await env.bus.state_items()).values())
    secrets = secrets_of(env)
    assert secrets and all(s.encode() not in b for s in secrets for b in blobs)


# ---- incremental audit log -------------------------------------------------------------------
def audit_counts(evs: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["source"]["record_id"] for e in evs if e["source"]["kind"] == "audit_log")


async def test_steady_state_reads_only_new_pages(env: Env) -> None:
    """After the first poll, each poll continues with starting_after: <= 2 requests per 1,000 new records."""
    state, ws = env.sim.state, env.world.workspace.id
    await env.poller.poll_once()
    for _ in range(3):
        env.clock.advance(60)
        last = state.audit_of(ws)[-1].id
        for i in range(1000):
            state.insert_audit(ws, 1 + i % 3)
        before = env.sim.count_calls(path=AUDIT_PATH)
        sent = len(env.requests.audit())
        counts = await env.poller.poll_once()
        assert counts["audit_logs"] == 1000
        assert env.sim.count_calls(path=AUDIT_PATH) - before <= 2
        queries = env.requests.audit()[sent:]
        assert queries[0]["starting_after"] == last and "start_date" not in queries[0]
    env.clock.advance(60)
    before = env.sim.count_calls(path=AUDIT_PATH)
    assert (await env.poller.poll_once())["audit_logs"] == 0
    assert env.sim.count_calls(path=AUDIT_PATH) - before == 1  # nothing new: one empty page
    counts_by_id = audit_counts(await bus_events(env.bus))
    assert set(counts_by_id) == {r.id for r in state.audit_of(ws)} and set(counts_by_id.values()) == {1}
    cursor = await cursor_doc(env.bus)
    assert cursor["last_id"] == state.audit_of(ws)[-1].id and cursor["last_full_read"] is not None


async def test_backdated_records_published_once_after_full_reread(env: Env) -> None:
    """A new id with an old timestamp comes with the next poll; an id minted in the past (behind the
    cursor) comes with the next full overlap re-read; each exactly once."""
    state, ws = env.sim.state, env.world.workspace.id
    await env.poller.poll_once()
    overlap = env.cfg.audit_overlap_secs
    env.clock.advance(600)
    read = state.insert_audit(ws, 1)
    assert (await env.poller.poll_once())["audit_logs"] == 1
    env.clock.advance(600)
    late = state.insert_audit(ws, 1, timestamp=env.clock.now() - 900)
    behind = state.insert_audit_backdated(ws, 34, timestamp=env.clock.now() - 1200)
    assert behind.id < read.id  # sorts before the last record already read
    assert (await env.poller.poll_once())["audit_logs"] == 1  # incremental: only the late one
    assert "starting_after" in env.requests.audit()[-1]
    published, full_reads = 0, 0
    for _ in range(int(overlap // 300)):  # the full re-read is due `overlap` after the first poll's
        env.clock.advance(300)
        sent = len(env.requests.audit())
        published += (await env.poller.poll_once())["audit_logs"]
        full_reads += any("start_date" in q for q in env.requests.audit()[sent:])
    assert published == 1 and full_reads == 1
    for _ in range(3):
        env.clock.advance(60)
        assert (await env.poller.poll_once())["audit_logs"] == 0
    counts_by_id = audit_counts(await bus_events(env.bus))
    assert counts_by_id[late.id] == 1 and counts_by_id[behind.id] == 1
    assert set(counts_by_id.values()) == {1}


async def test_restart_rereads_window_and_continues_without_duplicates(env: Env) -> None:
    """A new poller on the same bus (a restart) re-reads the window once, then continues incrementally."""
    state, ws = env.sim.state, env.world.workspace.id
    await env.poller.poll_once()
    env.clock.advance(60)
    state.insert_audit(ws, 1)
    await env.poller.poll_once()
    await env.poller.aclose()  # "killed"
    env.clock.advance(30)
    behind = state.insert_audit_backdated(ws, 1, timestamp=env.clock.now() - 600)  # while nothing polled
    fresh = state.insert_audit(ws, 37)
    async with env.new_poller() as again:
        env.clock.advance(30)
        sent = len(env.requests.audit())
        assert (await again.poll_once())["audit_logs"] == 2
        assert "start_date" in env.requests.audit()[sent]
        env.clock.advance(60)
        state.insert_audit(ws, 9)
        sent = len(env.requests.audit())
        assert (await again.poll_once())["audit_logs"] == 1
        assert "starting_after" in env.requests.audit()[sent]
    counts_by_id = audit_counts(await bus_events(env.bus))
    assert set(counts_by_id) == {r.id for r in state.audit_of(ws)} and set(counts_by_id.values()) == {1}
    assert counts_by_id[behind.id] == counts_by_id[fresh.id] == 1


async def test_single_value_cursor_is_migrated_and_rereads(env: Env) -> None:
    """A single-value cursor of an older version (no last_id / last_full_read) loads: the next poll
    re-reads the window, publishes only the new record, writes the split layout and deletes the old key."""
    state, ws = env.sim.state, env.world.workspace.id
    await env.poller.poll_once()
    key = "cursor/acme/audit_logs"
    cur = await load_cursor(env.bus, "acme")
    old = {"v": 1, "high_water": cur.high_water, "floor": cur.floor, "seen": cur.seen}
    async with env.bus.transaction("poller-acme") as tx:
        for k in await env.bus.state_items(f"{key}/"):
            tx.put_state(k, None)
        tx.put_state(key, orjson.dumps(old))
    env.clock.advance(60)
    state.insert_audit(ws, 1)
    sent = len(env.requests.audit())
    async with env.new_poller() as restarted:
        assert (await restarted.poll_once())["audit_logs"] == 1
    assert "start_date" in env.requests.audit()[sent]
    assert await env.bus.get_state(key) is None
    doc = await cursor_doc(env.bus)
    assert doc["last_id"] == state.audit_of(ws)[-1].id and doc["last_full_read"] == env.clock.now()
    assert state.audit_of(ws)[-1].id in doc["seen"]
    counts_by_id = audit_counts(await bus_events(env.bus))
    assert set(counts_by_id.values()) == {1} and len(counts_by_id) == len(state.audit_of(ws))


async def test_audit_record_triggers_snapshot_in_the_same_poll(env: Env) -> None:
    """With snapshots listed only hourly, audit 37 (key created) lists api_keys in the poll that read it:
    api_key.created is on the bus after that one poll; a login record triggers nothing."""
    state, ws = env.sim.state, env.world.workspace.id
    cfg = env.cfg.model_copy(update={"snapshot_interval_secs": 3600.0})
    async with make_poller(cfg, env.bus, env.clock, env.requests) as poller:
        await poller.poll_once()  # baselines
        env.clock.advance(10)
        state.insert_audit(ws, 1)  # a login: no snapshot
        sent = len(env.requests.sent)
        counts = await poller.poll_once()
        assert counts["audit_logs"] == 1 and counts["api_keys"] == 0 and poller.last_triggered == set()
        assert not any(p.endswith("/api-keys") for p, _q in env.requests.sent[sent:])
        env.clock.advance(10)
        rogue = state.create_api_key(ws, "backdoor", ["all:all"], actor=state.actor_for_user("sam", "203.0.113.9"))
        counts = await poller.poll_once()
        assert counts["audit_logs"] == 1 and counts["api_keys"] == 1 and poller.last_triggered == {"api_keys"}
        assert counts["webhooks"] == 0 and counts["members"] == 0  # not triggered, not due
    evs = await bus_events(env.bus)
    created = [e for e in evs if e["type"] == "api_key.created"]
    assert [e["source"]["record_id"] for e in created] == [rogue.id]
    audit_37 = state.audit_of(ws)[-1].id
    assert [e["type"] for e in evs if e["source"]["record_id"] == audit_37] == ["audit.api_key_created"]


async def test_triggers_can_be_turned_off(env: Env) -> None:
    """audit_triggers_snapshots=false: the key shows up only when the snapshot interval comes round."""
    state, ws = env.sim.state, env.world.workspace.id
    cfg = env.cfg.model_copy(update={"snapshot_interval_secs": 3600.0, "audit_triggers_snapshots": False})
    async with make_poller(cfg, env.bus, env.clock, env.requests) as poller:
        await poller.poll_once()
        env.clock.advance(10)
        state.create_api_key(ws, "backdoor", ["all:all"], actor=state.actor_for_user("sam", "203.0.113.9"))
        assert (await poller.poll_once())["api_keys"] == 0
        env.clock.advance(3600)
        assert (await poller.poll_once())["api_keys"] == 1


async def test_adaptive_polling_quiet_poll_costs_one_request(env: Env) -> None:
    """With snapshot_interval_secs, a poll of a quiet audit log sends one request (the empty page after
    last_id); snapshots and the workspace come back when their interval has passed."""
    cfg = env.cfg.model_copy(update={"snapshot_interval_secs": 300.0})
    async with make_poller(cfg, env.bus, env.clock, env.requests) as poller:
        await poller.poll_once()  # first poll: workspace, full audit read, every snapshot
        for _ in range(3):
            env.clock.advance(5)
            sent = len(env.requests.sent)
            counts = await poller.poll_once()
            assert [p for p, _q in env.requests.sent[sent:]] == [AUDIT_PATH]
            assert sum(counts.values()) == 0
        env.clock.advance(300)
        sent = len(env.requests.sent)
        await poller.poll_once()
        paths = {p for p, _q in env.requests.sent[sent:]}
        assert {"/api/v2/workspaces/current", "/api/v2/api-keys", AUDIT_PATH} <= paths


async def test_newest_first_audit_log_is_published_once(env: Env) -> None:
    """Against a simulator that lists the audit log newest first (the order is undocumented), every
    record is published exactly once, and polls read the start_date window instead of continuing."""
    env.sim.config.audit_order = "desc"
    state, ws = env.sim.state, env.world.workspace.id
    backfill = 0
    for i in range(6):
        for j in range(3):
            state.insert_audit(ws, 1 + (i + j) % 3, timestamp=env.clock.now() - j)
        await env.poller.poll_once()
        backfill = backfill or len(env.requests.audit())
        env.clock.advance(60)
    evs = await bus_events(env.bus)
    published = [e["source"]["record_id"] for e in evs if e["source"]["kind"] == "audit_log"]
    assert sorted(published) == sorted(r.id for r in state.audit_of(ws))
    later = env.requests.audit()[backfill:]
    assert len([q for q in later if "starting_after" not in q]) == 5  # one windowed read per later poll
    assert all("start_date" in q for q in later)  # never a continuation after the last id
    assert (await cursor_doc(env.bus))["last_id"] is None
