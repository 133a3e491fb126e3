"""The demo: no configuration, the scripted incident raises the alerts it is meant to show."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from connectors.instantly.demo import run_demo
from pipeline.bus.base import EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import parse_time


async def test_demo_shows_the_incident_and_exits_zero() -> None:
    """`instantly-audit demo` plays the incident at 3x speed, prints events and the expected alerts, exits 0."""
    buf = io.StringIO()
    code = await run_demo(speed=3.0, console=Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert code == 0
    for rule in (
        "api_key.all_scope",
        "member.unexpected",
        "member.privileged",
        "webhook.unauthenticated",
        "webhook.insecure_target",
        "data.lead_export",
    ):
        assert rule in out, f"{rule} missing from demo output"
    assert "api_key.created backup-sync" in out
    m = re.search(r"(\d+) alerts from (\d+) events", out)
    assert m and int(m.group(1)) >= 6


async def test_demo_at_speed_never_observes_an_event_before_it_happened(tmp_path: Path) -> None:
    """`demo --speed 4`: every event's ``time`` is at or before its ``observed_at`` (the poller and the
    simulator share the scaled clock)."""
    code = await run_demo(speed=4.0, workdir=tmp_path, console=Console(file=io.StringIO(), width=200))
    assert code == 0
    async with SqliteBus(tmp_path / "bus.db") as bus, bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        events = [orjson.loads(r.value) for batch in [b async for b in iter_records(consumer)] for r in batch]
    timed = [e for e in events if e.get("time")]
    assert len(timed) > 5
    late = [
        (e["type"], e["time"], e["observed_at"]) for e in timed if parse_time(e["time"]) > parse_time(e["observed_at"])
    ]
    assert late == []


def test_a_kept_demo_bus_can_be_replayed_with_the_config_written_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``demo --workdir DIR`` kept ``DIR/bus.db`` but no config, and every reader (``replay``, ``status``)
    needs one: the closing line offered a bus nobody could open without writing YAML first. It writes
    ``DIR/instantly-audit.yaml`` (the bus only) and names a ``replay`` that works as printed."""
    from pipeline.cli.main import main

    out = io.StringIO()
    assert asyncio.run(run_demo(speed=4.0, workdir=tmp_path, console=Console(file=out, width=400))) == 0
    cfg = tmp_path / "instantly-audit.yaml"
    assert f"replay -c {cfg} --topic alerts" in out.getvalue()
    capsys.readouterr()
    assert main(["replay", "-c", str(cfg), "--topic", "alerts", "--format", "jsonl", "--no-progress"]) == 0
    alerts = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert {a["rule"]["id"] for a in alerts} >= {"api_key.all_scope", "member.unexpected"}
    # A second run keeps its own file; a file the demo did not write is never replaced.
    assert asyncio.run(run_demo(speed=4.0, workdir=tmp_path, console=Console(file=io.StringIO(), width=400))) == 0
    mine = tmp_path / "other"
    mine.mkdir()
    (mine / "instantly-audit.yaml").write_text("bus: {path: elsewhere.db}\n")
    note = io.StringIO()
    assert asyncio.run(run_demo(speed=4.0, workdir=mine, console=Console(file=note, width=400))) == 0
    assert (mine / "instantly-audit.yaml").read_text() == "bus: {path: elsewhere.db}\n"
    assert "replay -c" not in note.getvalue()
