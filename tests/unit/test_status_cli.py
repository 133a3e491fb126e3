"""``instantly-audit status`` on the embedded bus: workspaces from config and state, lag per consumer group."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.bus.base import EVENTS_TOPIC, OutRecord, TopicPartition
from pipeline.bus.sqlite import SqliteBus
from pipeline.bus.sqlite_files import acquire_writer_lock, release_writer_lock
from pipeline.cli.main import main
from pipeline.sources.base import status_key


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"bus:\n  type: sqlite\n  path: {tmp_path}/bus.db\n"
        "workspaces:\n"
        "  acme:\n    api_key: ${STATUS_TEST_KEY_NEVER_SET}\n"
        "  beta:\n    api_key: ${STATUS_TEST_KEY_NEVER_SET}\n"
        f"sinks:\n  file:\n    type: jsonl\n    path: {tmp_path}/out.jsonl\n"
    )
    return path


async def _seed(db: Path, now: float) -> None:
    doc = {
        "at": now - 30,
        "published": {"audit_logs": 4, "pipeline": 0},
        "failures": {"members": "refused: HTTP 403 (ScopeError)"},
        "cursor_at": now - 90,
        "requests_last_minute": 7,
    }
    async with SqliteBus(db, partitions=1) as bus:
        async with bus.transaction("poller-acme") as tx:
            tx.put_state(status_key("acme"), orjson.dumps(doc))
        await bus.publish([OutRecord(EVENTS_TOPIC, b"{}", key=b"ws") for _ in range(3)])
        async with bus.transaction("rules") as tx:
            tx.commit_offsets("rules", {TopicPartition(EVENTS_TOPIC, 0): 1})


def test_status_json_reads_the_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each configured workspace appears (one never polled); ages come from the poll status; lag per group."""
    cfg = write_config(tmp_path)
    now = time.time()
    asyncio.run(_seed(tmp_path / "bus.db", now))
    assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    by = {w["source_id"]: w for w in doc["workspaces"]}
    assert set(by) == {"acme", "beta"}
    acme, beta = by["acme"], by["beta"]
    assert 89 <= acme["cursor_age_secs"] <= 120 and 29 <= acme["last_poll_age_secs"] <= 60
    assert acme["last_poll"] == "failed: members refused: HTTP 403 (ScopeError)"
    assert acme["published"] == 4 and acme["requests_last_minute"] == 7
    assert acme["owner"].startswith("no process running")  # nothing holds the bus: the seeding closed it
    assert beta["last_poll"] == "never" and beta["cursor_age_secs"] is None
    lags = {g["group"]: g for g in doc["groups"]}
    assert lags["rules"]["lag"] == 2
    assert lags["sink-file"]["topics"][EVENTS_TOPIC] == 3


def test_status_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table names every workspace and group."""
    cfg = write_config(tmp_path)
    asyncio.run(_seed(tmp_path / "bus.db", time.time()))
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "WORKSPACE" in out and "acme" in out and "beta" in out and "never" in out
    assert "sink-file  3" in out
    # The group table is aligned like the workspace table (and docs/scaling.md's example): the LAG
    # column started wherever each group name ended ("GROUP  LAG" / "rules  2" / "sink-file  3").
    group_table = out[out.index("GROUP") :].splitlines()
    assert group_table[:3] == ["GROUP      LAG", "rules      2", "sink-file  3"], group_table


@pytest.mark.parametrize(("bound", "paused", "over"), [(3, True, ["sink-file"]), (4, False, []), (None, False, [])])
def test_status_shows_backpressure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bound: int | None, paused: bool, over: list[str]
) -> None:
    """With ``bus.max_consumer_lag`` status says whether polling is paused and by which group (lag >= bound)."""
    cfg = write_config(tmp_path)
    if bound is not None:
        cfg.write_text(cfg.read_text().replace("  type: sqlite\n", f"  type: sqlite\n  max_consumer_lag: {bound}\n"))
    asyncio.run(_seed(tmp_path / "bus.db", time.time()))
    assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["backpressure"] == {"max_consumer_lag": bound, "paused": paused, "groups_over": over}
    assert main(["status", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    if bound is None:
        assert "backpressure" not in text
    else:
        assert ("polling paused (sink-file at or over)" in text) is paused


def test_status_names_the_run_holding_the_embedded_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While a `run` holds the bus's writer lock, status names its pid; a crashed writer's stale pid
    (left in the lock file) reads as no process running."""
    cfg = write_config(tmp_path)
    asyncio.run(_seed(tmp_path / "bus.db", time.time()))

    key = acquire_writer_lock(tmp_path / "bus.db")  # what a running `run` holds
    try:
        assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    finally:
        release_writer_lock(key)
    held = orjson.loads(capsys.readouterr().out)["workspaces"][0]["owner"]
    assert held.startswith(f"pid {os.getpid()} "), held
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "bus.db.lock").write_text(dead.stdout)
    assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["workspaces"][0]["owner"].startswith("no process running")


def test_status_says_a_shared_failure_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Streams failing for the same reason (a refused key: every stream) share one mention of it."""
    cfg = write_config(tmp_path)
    refused = "refused: HTTP 401 (AuthError): Instantly refused the API key (workspaces.acme.api_key, …)"
    doc = {"at": time.time(), "failures": {"members": refused, "api_keys": refused, "webhooks": "failed: HTTP 502"}}

    async def seed() -> None:
        async with SqliteBus(tmp_path / "bus.db", partitions=1) as bus, bus.transaction("poller-acme") as tx:
            tx.put_state(status_key("acme"), orjson.dumps(doc))

    asyncio.run(seed())
    assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    [acme] = [w for w in orjson.loads(capsys.readouterr().out)["workspaces"] if w["source_id"] == "acme"]
    assert acme["last_poll"] == f"failed: api_keys, members {refused}; webhooks failed: HTTP 502"
