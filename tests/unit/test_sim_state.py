"""Unit tests of the simulator's state, ids, demo world, rate limiter and fault decisions."""

from __future__ import annotations

import base64
import random
import uuid

import pytest

from connectors.instantly import api
from connectors.instantly.posture.keys import needed_scopes
from connectors.instantly.sim import Faults, RateLimiter, Scenario, SimState, demo_world, uuid7_time
from connectors.instantly.sim.catalog import POLLER_SCOPES, SCOPES
from connectors.instantly.sim.errors import ApiError
from connectors.instantly.sim.ids import UUIDv7Factory
from connectors.instantly.sim.scenario import DEMO_INCIDENT
from pipeline.clock import FakeClock

START = 1_780_000_000.0


def test_uuid7_has_version_variant_and_clock_time() -> None:
    """Ids are RFC 9562 version 7 with the RFC variant and the clock's millisecond."""
    clock = FakeClock(START)
    new_id = UUIDv7Factory(clock.now, random.Random(1))
    parsed = uuid.UUID(new_id())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert uuid7_time(str(parsed)) == START


def test_uuid7_strictly_increasing_when_clock_stands_still() -> None:
    """Thousands of ids minted in the same millisecond still sort in creation order."""
    state = SimState(FakeClock(START).now, seed=3)
    ids = [state.new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_follows_the_clock_and_backdating() -> None:
    """A later clock gives a larger id; an id minted at a past instant sorts before both."""
    clock = FakeClock(START)
    state = SimState(clock.now)
    first = state.new_id()
    clock.advance(1.5)
    second = state.new_id()
    old = state.new_id(START - 3600)
    assert old < first < second
    assert uuid7_time(second) == START + 1.5
    assert uuid7_time(old) == START - 3600


def test_uuid7_time_rejects_other_versions() -> None:
    """uuid7_time refuses a UUIDv4."""
    with pytest.raises(ValueError, match="UUIDv7"):
        uuid7_time(str(uuid.uuid4()))


def test_same_seed_same_ids_and_secrets() -> None:
    """Two states with the same clock and seed mint the same ids and key secrets."""
    worlds = []
    for _ in range(2):
        state = SimState(FakeClock(START).now, seed=11)
        ws = state.add_workspace("W", owner_email="o@w.example")
        worlds.append(state.create_api_key(ws.id, "k", ["all:all"]))
    assert worlds[0].id == worlds[1].id
    assert worlds[0].key == worlds[1].key


def test_key_secret_is_base64_of_id_and_token() -> None:
    """A key secret decodes to ``<key id>:<12 characters>``."""
    state = SimState(FakeClock(START).now)
    ws = state.add_workspace("W", owner_email="o@w.example")
    key = state.create_api_key(ws.id, "k", ["all:read"])
    key_id, _, token = base64.b64decode(key.key).decode().partition(":")
    assert key_id == key.id
    assert len(token) == 12
    assert token.isalnum()


def test_late_arriving_audit_gets_new_id_but_old_timestamp() -> None:
    """insert_audit with a past timestamp sorts last by id; the back-dated variant sorts first."""
    clock = FakeClock(START)
    state = SimState(clock.now)
    ws = state.add_workspace("W", owner_email="o@w.example")
    state.insert_audit(ws.id, 1)
    clock.advance(10)
    late = state.insert_audit(ws.id, 34, timestamp=START - 600)
    backdated = state.insert_audit_backdated(ws.id, 2, timestamp=START - 600)
    records = state.audit_of(ws.id)
    assert records[-1] is late
    assert records[0] is backdated
    assert late.timestamp == backdated.timestamp == START - 600


def test_scope_enum_matches_the_spec() -> None:
    """The scope enum has the 178 documented values, including the hyphenated resources."""
    assert len(SCOPES) == 178
    assert {"background-jobs:read", "lead-labels:all", "email_verifications:read"} <= set(SCOPES)
    assert "email_verifications:update" not in SCOPES


def test_demo_world_has_the_documented_posture() -> None:
    """The demo world has an owner, two members, a minimal poller key and an old all:all key."""
    clock = FakeClock(START)
    state = SimState(clock.now)
    world = demo_world(state)
    members = state.members_of(world.workspace.id)
    assert world.workspace.name == "Acme Outreach"
    assert sorted(m.role for m in members) == ["editor", "owner", "view"]
    assert all(m.accepted for m in members)
    # Exactly what the default streams and check read (api.py's stream table), as README lists it:
    # `check` then passes api_key.pipeline_scopes on the simulator's own key.
    assert sorted(world.poller_key.scopes) == needed_scopes(s.name for s in api.DEFAULT_STREAMS)
    assert set(world.poller_key.scopes) < set(POLLER_SCOPES)
    assert world.legacy_key.scopes == ["all:all"]
    assert START - world.legacy_key.timestamp_created > 120 * 86_400
    assert world.webhook.headers is not None
    assert "Authorization" in world.webhook.headers
    assert len(state.block_list_of(world.workspace.id)) == 2
    history = state.audit_of(world.workspace.id)
    assert len(history) >= 5
    assert [r.timestamp for r in history] == sorted(r.timestamp for r in history)


def test_demo_incident_file_is_valid() -> None:
    """The shipped demo incident loads, covers the story, and lasts about ten seconds."""
    scenario = Scenario.load(DEMO_INCIDENT)
    actions = [s.action for s in scenario.steps]
    assert {"create_api_key", "invite_member", "update_member_role", "create_webhook", "audit"} <= set(actions)
    assert 8.0 <= scenario.duration <= 12.0


def test_state_refuses_unknown_references() -> None:
    """Looking up an unknown id raises the documented 404."""
    state = SimState(FakeClock(START).now)
    with pytest.raises(ApiError) as info:
        state.webhook("019cc043-e2f1-7def-8b07-0aab88328dad")
    assert info.value.body() == {"statusCode": 404, "error": "Not Found", "message": "Resource not found"}


def test_rate_limiter_sliding_windows() -> None:
    """Both windows refuse once full and recover as time passes; workspaces are independent."""
    clock = FakeClock(START)
    limiter = RateLimiter(per_second=3, per_minute=5, clock=clock.now)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock.advance(1.0)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    clock.advance(59.0)
    assert limiter.allow("a")


def test_fault_decisions_are_deterministic_per_seed() -> None:
    """The same seed yields the same fault sequence; another seed yields a different one."""

    def run(seed: int) -> list[tuple[int | None, str | None]]:
        faults = Faults(seed=seed, error_rate=0.3, burst_rate=0.05, burst_length=3, malformed_rate=0.2)
        return [(d.status, d.malformed) for d in (faults.decide("/api/v2/audit-logs") for _ in range(200))]

    assert run(42) == run(42)
    assert run(42) != run(43)
    statuses = {status for status, _ in run(42)}
    assert {None, 429} <= statuses
    assert statuses & {500, 502, 503}
