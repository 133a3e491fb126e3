"""Completeness receipts end to end against the Instantly simulator: a poller stopped for two hours
of simulated time leaves those hours marked ``interrupted``; ``instantly-audit gaps`` lists exactly
them and ``replay --hours`` / ``replay --gaps`` re-deliver exactly their audit events to a JSONL sink."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.sim import seed as sim_seed
from connectors.instantly.sim.server import InstantlySimulator
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import EVENTS_TOPIC, RECEIPTS_TOPIC, Bus, iter_records
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main
from pipeline.clock import FakeClock, format_time, parse_time
from schemas.receipt import parse_hour
from schemas.validate import schema_errors
from tests.conftest import make_bus

HOUR = 3600


async def no_sleep(_delay: float) -> None:
    return None


def poller(cfg: WorkspaceConfig, bus: Bus, clock: FakeClock) -> InstantlyWorkspacePoller:
    return InstantlyWorkspacePoller(
        "acme", cfg, bus, clock=clock, budget=RequestBudget(1000, 60_000), sleep=no_sleep, rng=random.Random(5)
    )


async def read(bus_cfg: dict[str, Any], topic: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with make_bus(bus_cfg, read_only=True) as bus, bus.consumer([topic], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


async def run_interrupted_poller(bus_cfg: dict[str, Any]) -> tuple[set[int], str]:
    """Poll live for 20 minutes, stop for two hours while records keep coming, resume for 10 minutes.

    Returns the hours (epoch hour numbers) nobody polled live, and the workspace id.
    """
    clock = FakeClock()
    clock.advance(HOUR - clock.now() % HOUR + 15 * 60)  # hh:15, so the stop spans whole hours
    async with InstantlySimulator(seed=1, clock=clock.now) as sim, make_bus(bus_cfg) as bus:
        world = sim_seed.demo_world(sim.state)
        ws = world.workspace.id
        cfg = WorkspaceConfig(
            api_key=SecretStr(world.poller_key.key), base_url=sim.url, streams=["audit_logs"],
            poll_interval_secs=60, audit_overlap_secs=600, max_retries=3,
            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
        )  # fmt: skip
        async with poller(cfg, bus, clock) as live:
            for _ in range(20):
                sim.state.insert_audit(ws, 1)
                await live.poll_once()
                clock.advance(60)
        last_poll = clock.now() - 60
        for _ in range(24):  # stopped: two hours of records nobody polls
            clock.advance(300)
            sim.state.insert_audit(ws, 9)
        async with poller(cfg, bus, clock) as resumed:
            for _ in range(10):
                await resumed.poll_once()
                clock.advance(60)
                sim.state.insert_audit(ws, 1)
            await resumed.poll_once()
        resumed_at = clock.now() - 600
        return set(range(int(last_poll // HOUR), int(resumed_at // HOUR) + 1)), ws


def write_config(tmp_path: Path, bus_cfg: dict[str, Any]) -> tuple[Path, Path, Path]:
    sinks = {name: {"type": "jsonl", "path": str(tmp_path / f"{name}.jsonl")} for name in ("by_hours", "by_gaps")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"bus": bus_cfg, "sinks": sinks}))
    return path, tmp_path / "by_hours.jsonl", tmp_path / "by_gaps.jsonl"


def gaps_json(cfg: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = main(["gaps", "-c", str(cfg), "--format", "json", *extra])
    doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    assert code == (Exit.FINDINGS if doc["gaps"] else Exit.OK)
    return doc


def hour_numbers(doc: dict[str, Any]) -> set[int]:
    return {int(parse_hour(g["hour"])) // HOUR for g in doc["gaps"]}


def delivered(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines() if line.strip()]


def test_gaps_finds_a_two_hour_stop_and_replay_redelivers_only_those_hours(
    bus_cfg: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hours nobody polled are listed as interrupted (and only they); replay by the gaps JSON or by
    --gaps delivers exactly the audit events dated in them; receipts validate against receipt.v1.json."""
    interrupted, ws = asyncio.run(run_interrupted_poller(bus_cfg))
    assert len(interrupted) == 3  # hh:35 of the last poll's hour, the two hours stopped (resumed at hh:35)
    cfg, by_hours, by_gaps = write_config(tmp_path, bus_cfg)

    doc = gaps_json(cfg, capsys)
    assert hour_numbers(doc) == interrupted
    assert all(g["reasons"] == ["interrupted"] and g["workspace"]["id"] == ws for g in doc["gaps"])
    assert doc["receipts"] > len(doc["gaps"])  # the hours polled live have receipts too, without gaps

    events = [e for e in asyncio.run(read(bus_cfg, EVENTS_TOPIC)) if e["source"]["stream"] == "audit_logs"]
    receipts = asyncio.run(read(bus_cfg, RECEIPTS_TOPIC))
    assert all(schema_errors("receipt", r) == [] for r in receipts)
    expected = {e["id"] for e in events if int(parse_time(e["time"])) // HOUR in interrupted}
    assert 24 <= len(expected) < len(events)  # every record of the stop, and not the history before

    hours_file = tmp_path / "gaps.json"
    hours_file.write_bytes(orjson.dumps(doc))
    assert main(["replay", "-c", str(cfg), "--hours", str(hours_file), "--to", "by_hours", "--no-progress"]) == 0
    assert sorted(delivered(by_hours)) == sorted(expected)
    assert main(["replay", "-c", str(cfg), "--gaps", "--to", "by_gaps", "--no-progress"]) == 0
    assert sorted(delivered(by_gaps)) == sorted(expected)

    since = format_time((min(interrupted) + 1) * HOUR + 60)[:16] + "Z"  # within the second hour: from it on
    later = gaps_json(cfg, capsys, "--since", since, "--workspace", "acme")
    assert hour_numbers(later) == interrupted - {min(interrupted)}
