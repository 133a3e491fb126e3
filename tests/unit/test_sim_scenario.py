"""Scenario scripts: validation, timed execution with fast and manual clocks, the demo incident."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from connectors.instantly.sim import (
    DEMO_INCIDENT,
    InstantlySimulator,
    ScaledClock,
    Scenario,
    ScenarioError,
    ScenarioRunner,
    SimState,
    demo_world,
)
from connectors.instantly.sim.scenario import _HANDLERS, ACTIONS
from pipeline.clock import FakeClock


async def get(sim: InstantlySimulator, key: Any, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(sim.api_url + path, headers=sim.headers(key)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@pytest.mark.asyncio
async def test_demo_incident_plays_fast_with_a_scaled_clock() -> None:
    """At 100x speed the ten-second incident finishes in well under a second and leaves its traces."""
    clock = ScaledClock(speed=100.0)
    async with InstantlySimulator(seed=8, clock=clock) as sim:
        world = demo_world(sim.state)
        before = len(sim.state.audit_of(world.workspace.id))
        runner = sim.start_scenario(DEMO_INCIDENT)
        started = time.monotonic()
        await asyncio.wait_for(sim.scenario_done(), timeout=5)
        assert time.monotonic() - started < 1.0
        assert runner.errors == []
        assert len(runner.applied) == len(runner.scenario.steps)
        keys = (await get(sim, world.poller_key, "/api-keys"))["items"]
        rogue = next(k for k in keys if k["name"] == "backup-sync")
        assert rogue["scopes"] == ["all:all"]
        members = (await get(sim, world.poller_key, "/workspace-members"))["items"]
        outsider = next(m for m in members if m["email"].endswith("@gmail.com"))
        assert (outsider["role"], outsider["accepted"]) == ("admin", True)
        hooks = (await get(sim, world.poller_key, "/webhooks"))["items"]
        plain = next(h for h in hooks if h["target_hook_url"].startswith("http://"))
        assert plain["headers"] is None
        records = (await get(sim, world.poller_key, "/audit-logs?limit=1000"))["items"][before:]
        assert [r["activity_type"] for r in records] == [1, 37, 18, 1, 34]
        assert records[1]["api_key_id"] == world.legacy_key.id
        assert records[1]["ip_address"] == "185.220.101.47"
        assert records[2]["api_key_id"] == rogue["id"]
        assert records[4]["affected_count"] == 5000
        assert records[4]["user_id"] == outsider["user_id"]


def test_manual_clock_applies_steps_when_due() -> None:
    """With a manual clock only steps whose time has come are applied."""
    clock = FakeClock(1_780_000_000.0)
    state = SimState(clock.now)
    demo_world(state)
    runner = ScenarioRunner(Scenario.load(DEMO_INCIDENT), state, clock.now)
    assert runner.apply_due() == []
    clock.advance(2.0)
    assert [s.action for s in runner.apply_due()] == ["login", "create_api_key"]
    assert "rogue-key" in state.aliases
    clock.advance(100)
    runner.apply_due()
    assert runner.done


def test_create_workspace_and_group_steps() -> None:
    """Scenario steps can create workspaces, link them and act through aliases."""
    clock = FakeClock(1_780_000_000.0)
    state = SimState(clock.now)
    scenario = Scenario.from_yaml(
        """
        - {at: 0, action: create_workspace, name: Agency, owner_email: a@agency.example, ref: agency}
        - {at: 0, action: create_workspace, name: Client, owner_email: c@client.example, ref: client}
        - {at: 1, action: add_group_member, workspace: agency, sub_workspace: client, ref: link}
        - {at: 2, action: add_block_list_entry, workspace: client, value: evil.example, ref: bl}
        - {at: 3, action: delete_block_list_entry, workspace: client, entry: evil.example}
        - {at: 4, action: audit, workspace: client, activity_type: 99, late_by: 3600, metadata: {x: 1}}
        - {at: 5, action: schedule_removal, workspace: client}
        """
    )
    runner = ScenarioRunner(scenario, state, clock.now)
    clock.advance(10)
    runner.apply_due()
    assert runner.errors == []
    client = state.workspace("client")
    assert state.admin_link_of(client.id) is not None
    assert state.block_list_of(client.id) == []
    record = state.audit_of(client.id)[-1]
    assert (record.activity_type, record.timestamp, record.audit_metadata) == (99, clock.now() - 3600, {"x": 1})
    assert client.scheduled_for_removal_at == clock.now() + 86_400


def test_sending_account_steps() -> None:
    """Accounts are added (audit 6), redirected, given a tracking domain, moved away (no audit record) and
    deleted (audit 7) by email, case-insensitively; the listing shows what changed."""
    clock = FakeClock(1_780_000_000.0)
    state = SimState(clock.now)
    world = demo_world(state)
    ws = world.workspace.id
    before = len(state.audit_of(ws))
    scenario = Scenario.from_yaml(
        """
        workspace: acme
        steps:
          - {at: 0, action: add_account, email: new@acmeoutreach-mail.com, provider_code: 3, as: legacy-key}
          - {at: 1, action: set_account_reply_to, account: SALES@acmeoutreach-mail.com, reply_to: x@proton.me}
          - {at: 2, action: set_account_tracking_domain, account: dana@acmeoutreach-mail.com,
             tracking_domain_name: clicks.evil.example, status: pending}
          - {at: 3, action: remove_account, account: lee@acmeoutreach-mail.com, moved: true}
          - {at: 4, action: remove_account, account: new@acmeoutreach-mail.com}
          - {at: 5, action: set_account_reply_to, account: sales@acmeoutreach-mail.com, reply_to: null}
        """
    )
    runner = ScenarioRunner(scenario, state, clock.now)
    clock.advance(1.5)
    runner.apply_due()
    sales = state.account("sales@acmeoutreach-mail.com").to_json()
    assert sales["reply_to"] == "x@proton.me" and sales["modified_by"] == state.workspace(ws).owner
    clock.advance(10)
    runner.apply_due()
    assert runner.errors == []
    listed = {a.email: a.to_json() for a in state.accounts_of(ws)}
    assert sorted(listed) == ["dana@acmeoutreach-mail.com", "sales@acmeoutreach-mail.com"]
    assert listed["dana@acmeoutreach-mail.com"]["tracking_domain_name"] == "clicks.evil.example"
    assert listed["dana@acmeoutreach-mail.com"]["tracking_domain_status"] == "pending"
    assert listed["sales@acmeoutreach-mail.com"]["reply_to"] is None
    assert [r.activity_type for r in state.audit_of(ws)[before:]] == [6, 7]  # no record for the move or the edits


def test_refused_step_is_recorded_and_run_goes_on() -> None:
    """A step the state refuses lands in ``errors`` and later steps still run."""
    clock = FakeClock(1_780_000_000.0)
    state = SimState(clock.now)
    demo_world(state)
    scenario = Scenario.from_data(
        {
            "workspace": "acme",
            "steps": [
                {"at": 0, "action": "delete_webhook", "webhook": "no-such-hook"},
                {"at": 0, "action": "mark_webhook_error", "webhook": "crm-webhook"},
            ],
        }
    )
    runner = ScenarioRunner(scenario, state, clock.now)
    runner.apply_due()
    assert [step.action for step, _ in runner.errors] == ["delete_webhook"]
    assert state.webhook("crm-webhook").status == -1
    assert runner.done


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {at: 1, action: hack_the_planet, workspace: a}", "unknown action 'hack_the_planet'"),
        ("- {at: 1, action: create_api_key, workspace: a, name: x}", "missing ['scopes']"),
        ("- {at: 1, action: login, workspace: a, colour: red}", "unknown parameters ['colour']"),
        ("- {at: -1, action: login, workspace: a}", "'at' must be a number"),
        ("- {at: 1, action: login}", "missing ['workspace']"),
        ("{steps: 3}", "expected a list of steps"),
        ("{steps: [], speed: 2}", "unknown top-level keys"),
        ("- [unclosed", "invalid YAML"),
    ],
)
def test_invalid_scenarios_are_rejected(text: str, message: str) -> None:
    """Malformed scenario files raise ScenarioError naming the problem."""
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Scenario.from_yaml(text)


@pytest.mark.asyncio
async def test_simulator_starts_scenario_given_at_construction() -> None:
    """A scenario passed to the constructor starts when the server starts."""
    clock = ScaledClock(speed=1000.0)
    text = "- {at: 1, action: create_workspace, name: Late, owner_email: l@late.example, ref: late}"
    async with InstantlySimulator(clock=clock, scenario=Scenario.from_yaml(text)) as sim:
        await asyncio.wait_for(sim.scenario_done(), timeout=5)
        assert sim.state.workspace("late").name == "Late"


def test_every_action_has_a_handler() -> None:
    """Each validated action name is wired to a state change."""
    assert set(_HANDLERS) | {"create_workspace"} == ACTIONS
