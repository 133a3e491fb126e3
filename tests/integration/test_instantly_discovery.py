"""Sub-workspace discovery against the simulator: an agency key finds, polls and drops its sub-workspaces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.discovery import AgencyPoller, child_id
from connectors.instantly.sim import seed as sim_seed
from connectors.instantly.sim.agency import agency_world
from connectors.instantly.sim.models import Actor
from connectors.instantly.sim.scenario import Scenario, ScenarioRunner
from connectors.instantly.sim.server import InstantlySimulator
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from pipeline.rules.worker import RulesWorker

ACTOR = Actor("019a7d3e-0000-7000-8000-000000000001", "Sam Ortiz", None, "203.0.113.9", "Mozilla/5.0", False)


async def events(bus: SqliteBus, topic: str = EVENTS_TOPIC) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with bus.consumer([topic], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


def agency_config(key: str, url: str) -> WorkspaceConfig:
    """The admin workspace's config: audit log and group members, sub-workspaces discovered every minute."""
    return WorkspaceConfig(
        api_key=SecretStr(key),
        base_url=url,
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
        streams=["audit_logs", "group_members"],
        discover_subworkspaces=True,
        discovery_interval_secs=60,
        max_retries=1,
    )


@pytest.fixture
async def agency(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, SqliteBus, FakeClock, AgencyPoller]]:
    clock = FakeClock()
    async with InstantlySimulator(seed=2, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
        world = sim_seed.demo_world(sim.state)
        cfg = agency_config(world.poller_key.key, sim.url)
        async with AgencyPoller("agency", cfg, bus, clock=clock) as poller:
            yield sim, world, bus, clock, poller


def sub_workspace(sim: Any, admin: str, name: str, *, status: str = "accepted") -> tuple[str, str]:
    """A workspace with one audit record, linked into ``admin``'s group; (workspace id, link id)."""
    ws = sim.state.add_workspace(name, owner_email=f"owner@{name.lower().replace(' ', '-')}.example.org")
    sim.state.insert_audit(ws.id, 1, actor=ACTOR)
    link = sim.state.add_group_member(admin, ws.id, status=status)
    return ws.id, link.id


async def test_subworkspaces_found_polled_and_dropped(
    agency: tuple[Any, Any, SqliteBus, FakeClock, AgencyPoller],
) -> None:
    """Accepted subs are polled as themselves within one discovery interval; a pending one is not;
    one that leaves is dropped and its departure published; nothing is configured by hand."""
    sim, world, bus, clock, poller = agency
    admin = world.workspace.id
    first, first_link = sub_workspace(sim, admin, "Client One")
    pending, _ = sub_workspace(sim, admin, "Client Pending", status="pending")
    counts = await poller.poll_once()
    assert set(poller.children) == {first}
    assert counts[child_id("agency", first)]["audit_logs"] == 1

    second, _ = sub_workspace(sim, admin, "Client Two")
    clock.advance(30)  # within the discovery interval: not listed yet
    await poller.poll_once()
    assert set(poller.children) == {first}
    clock.advance(31)
    counts = await poller.poll_once()
    assert set(poller.children) == {first, second}
    assert counts[child_id("agency", second)]["audit_logs"] == 1

    sim.state.delete_group_member(first_link)
    clock.advance(61)
    await poller.poll_once()
    assert set(poller.children) == {second}

    evs = await events(bus)
    audit_ws = {e["workspace"]["id"] for e in evs if (e.get("source") or {}).get("kind") == "audit_log"}
    assert {admin, first, second} <= audit_ws and pending not in audit_ws
    types = [e["type"] for e in evs]
    assert "workspace_group.member_removed" in types
    assert types.count("workspace_group.member_added") >= 1
    await RulesWorker(bus, {}, clock=clock).run_once()
    alerts = await events(bus, ALERTS_TOPIC)
    removed = [
        a
        for a in alerts
        if a.get("rule", {}).get("id") == "workspace_group.change" and first in orjson.dumps(a).decode()
    ]
    assert removed, [a.get("rule") for a in alerts]
    print(orjson.dumps(removed[-1]).decode()[:1500])


AGENCY_SCRIPT = """
workspace: acme
steps:
  - {at: 90, action: create_workspace, name: Sub New, owner_email: owner@sub-new.example.org, ref: sub-new}
  - {at: 90, action: audit, workspace: sub-new, activity_type: 1}
  - {at: 90, action: add_group_member, sub_workspace: sub-new}
  - {at: 200, action: remove_group_member, sub_workspace: sub-02}
"""


async def _poll_until(poller: AgencyPoller, clock: FakeClock, done: Callable[[], bool], step: float) -> float:
    """Poll every ``step`` simulated seconds until ``done``; the simulated seconds it took."""
    waited = 0.0
    while not done():
        assert waited <= 600, "never happened"
        clock.advance(step)
        waited += step
        await poller.poll_once()
    return waited


async def test_agency_script_join_and_leave(tmp_path: Path) -> None:
    """The simulator's agency (3 subs under one admin key) changes on a script: a sub that joins is
    polled within one discovery interval, one that leaves is dropped and raises its alert."""
    clock = FakeClock()
    async with InstantlySimulator(seed=3, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
        world = sim_seed.demo_world(sim.state)
        subs = agency_world(sim.state, world.workspace.id, 3)
        script = ScenarioRunner(Scenario.from_yaml(AGENCY_SCRIPT, "agency"), sim.state, clock.now)
        cfg = agency_config(world.poller_key.key, sim.url)
        async with AgencyPoller("agency", cfg, bus, clock=clock) as poller:
            await poller.poll_once()
            assert set(poller.children) == {ws.id for ws in subs}

            clock.advance(90)
            assert [s.action for s in script.apply_due()] == ["create_workspace", "audit", "add_group_member"]
            new = sim.state.workspace("sub-new").id
            took = await _poll_until(poller, clock, lambda: new in poller.children, step=10)
            assert took <= cfg.discovery_interval_secs

            clock.advance(110)  # t = 200: sub-02 leaves
            assert [s.action for s in script.apply_due()] == ["remove_group_member"]
            gone = sim.state.workspace("sub-02").id
            took = await _poll_until(poller, clock, lambda: gone not in poller.children, step=10)
            assert took <= cfg.discovery_interval_secs
            assert script.done and not script.errors

        evs = await events(bus)
        audit_ws = {e["workspace"]["id"] for e in evs if (e.get("source") or {}).get("kind") == "audit_log"}
        assert new in audit_ws
        await RulesWorker(bus, {}, clock=clock).run_once()
        alerts = await events(bus, ALERTS_TOPIC)
        removed = [
            a
            for a in alerts
            if a.get("rule", {}).get("id") == "workspace_group.change" and gone in orjson.dumps(a).decode()
        ]
        assert removed, [a.get("rule") for a in alerts]


async def test_a_dropped_subworkspace_leaves_no_cursor_age_series(tmp_path: Path) -> None:
    """A sub-workspace that left the group is no longer polled: its ``pipeline_source_cursor_age_seconds``
    series goes with its poller. It stayed, growing at every scrape, so ``InstantlyAuditCursorStale``
    fired 15 min later for a workspace nobody polls any more (the same on a Kafka poller replica whose
    workspace moved to another replica), and an agency's churn grew the series without bound."""
    from pipeline.observability.telemetry import Telemetry
    from pipeline.observability.telemetry_config import TelemetryConfig

    clock = FakeClock()
    tel = Telemetry(TelemetryConfig(), clock=clock)

    def ages() -> dict[str, float]:
        text = tel.render_prometheus()[0].decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("pipeline_source_cursor_age_seconds{") and 'stream="audit_logs"' in line:
                ws = line.split('workspace_id="', 1)[1].split('"', 1)[0]
                out[ws] = float(line.rsplit(" ", 1)[1])
        return out

    try:
        async with InstantlySimulator(seed=2, clock=clock.now) as sim, SqliteBus(tmp_path / "bus.db") as bus:
            world = sim_seed.demo_world(sim.state)
            cfg = agency_config(world.poller_key.key, sim.url)
            async with AgencyPoller("agency", cfg, bus, clock=clock, telemetry=tel) as poller:
                admin = world.workspace.id
                first, first_link = sub_workspace(sim, admin, "Client One")
                second, _ = sub_workspace(sim, admin, "Client Two")
                await poller.poll_once()
                assert {admin, first, second} <= set(ages())
                sim.state.delete_group_member(first_link)
                clock.advance(61)
                await poller.poll_once()
                assert set(poller.children) == {second}
                clock.advance(3600)
                left = ages()
                assert first not in left, f"a dropped sub-workspace still reports a cursor age of {left.get(first)} s"
                assert {admin, second} <= set(left)
    finally:
        tel.shutdown()
