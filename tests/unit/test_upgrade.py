"""Upgrading from the release of 2026-11-27 (commit 2c72a02) on the embedded bus it left behind.

The fixture ``tests/fixtures/upgrade/bus-2c72a02.db.gz`` was written by that release's own code
(``make_fixture.py`` beside it says how): events, alerts, rule state, audit cursor, snapshots,
sink offsets, and dead letters in that release's shape. Each test runs this code on a copy
against the same simulated Instantly world and checks what a user expects of an upgrade: the
cursor continues (no event twice, none lost), conditions already alerted are not alerted again,
a rule that starts over says so, old dead letters stay readable, and the old release refuses the
upgraded file instead of publishing everything again. ``webhook-2c72a02.json`` is that release's
webhook dedup state after one delivery: the same delivery sent again after the upgrade is a duplicate.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.main import main
from pipeline.clock import FakeClock
from pipeline.delivery.deadletter import original_value
from pipeline.errors import BusCorruptError
from pipeline.rules.worker import RulesWorker
from pipeline.sources.webhook.receiver import WebhookReceiver
from schemas.codec import decode_deadletter, validate
from tests.fixtures.upgrade.make_fixture import HOOK_SECRET, serve_world, write_config
from tests.unit.test_webhook_support import events_of, hdrs, make_config, serve

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "upgrade" / "bus-2c72a02.db.gz"
TOPIC_IDS = {"instantly.events.v1": 1, "instantly.alerts.v1": 2, "instantly.deadletter.v1": 3}
"""Topic ids in the fixture (the order the old release created them)."""


def _unpack(tmp_path: Path) -> Path:
    bus = tmp_path / "data" / "bus.db"
    bus.parent.mkdir(parents=True)
    bus.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return bus


def _values(bus: Path, topic: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(bus)
    try:
        rows = db.execute("SELECT value FROM records WHERE id >> 50 = ? ORDER BY id", (TOPIC_IDS[topic],))
        return [orjson.loads(v) for (v,) in rows]
    finally:
        db.close()


def _meta_version(bus: Path) -> str:
    db = sqlite3.connect(bus)
    try:
        return str(db.execute("SELECT v FROM meta WHERE k='version'").fetchone()[0])
    finally:
        db.close()


async def _run_once(config: Path) -> str:
    """This checkout's ``run --once`` on ``config`` in a process of its own; its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UPGRADE_HOOK_SECRET": HOOK_SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli", "run", "-c", str(config), "--once",
        cwd=config.parent, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    log = (out + err).decode()
    assert proc.returncode == 0, log[-3000:]
    return log


async def test_run_after_upgrade_continues_without_duplicates_or_repeated_alerts(tmp_path: Path) -> None:
    bus = _unpack(tmp_path)
    old_events = _values(bus, "instantly.events.v1")
    old_alerts = _values(bus, "instantly.alerts.v1")
    assert old_events and old_alerts and _meta_version(bus) == "1"
    async with serve_world() as (sim, world, hook_url):
        config = write_config(tmp_path, sim, world, hook_url)
        log = await _run_once(config)
        events = _values(bus, "instantly.events.v1")
        after_upgrade = len(_values(bus, "instantly.alerts.v1"))
        sim.state.delete_api_key(world.legacy_key.id)  # the key the old release alerted on goes
        second = await _run_once(config)
    assert world.poller_key.key not in log + second

    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert events[: len(old_events)] == old_events
    new_streams = {e["source"]["stream"] for e in events[len(old_events) :]}
    assert new_streams <= {"accounts"}, f"the cursor or a snapshot started over: {new_streams}"

    already = {a["dedup_key"] for a in old_alerts if a.get("status") == "open"}
    new_alerts = _values(bus, "instantly.alerts.v1")[len(old_alerts) : after_upgrade]
    again = [a["dedup_key"] for a in new_alerts if a["dedup_key"] in already]
    assert not again, f"alerted again after the upgrade: {again}"

    # The rules whose version changed since 2c72a02 start over, and the log says which (rotation_incomplete
    # held the keys it watched; the others' data was empty but their format still changed).
    resets = [orjson.loads(line) for line in log.splitlines() if "Rule state reset" in line]
    by_rule = {r["rule"]: r for r in resets}
    assert {"api_key.rotation_incomplete", "api_key.all_scope", "member.unexpected"} <= by_rule.keys()
    assert by_rule["api_key.rotation_incomplete"]["stored_version"] == [1]
    assert by_rule["api_key.rotation_incomplete"]["version"] > 1
    assert "Bus file upgraded" in log
    assert _meta_version(bus) == "2"  # 2c72a02 compares this to "1" and refuses the file
    assert "Rule state reset" not in second and "Bus file upgraded" not in second  # said once

    # The alerts the old release raised on the deleted key resolve (their conditions were kept).
    resolved = {
        a["dedup_key"] for a in _values(bus, "instantly.alerts.v1")[after_upgrade:] if a["status"] == "resolved"
    }
    on_legacy_key = {a["dedup_key"] for a in old_alerts if world.legacy_key.id in a["dedup_key"]}
    assert on_legacy_key and on_legacy_key <= resolved, (on_legacy_key, resolved)


async def test_a_rule_state_of_any_other_version_is_reset_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker logs takes any stored ``rv`` (even one that is not a number) without failing."""
    async with SqliteBus(tmp_path / "bus.db") as bus:
        async with bus.transaction("old") as tx:
            tx.put_state("rules/api_key.all_scope/ws-1", b'{"v":1,"rv":[1],"wn":"Acme","d":{"k":1}}')
            tx.put_state("rules/api_key.all_scope/ws-2", b'{"v":1,"rv":1,"wn":"Beta","d":{}}')
            tx.put_state("rules/api_key.all_scope/ws-2/s/key-9", b'{"t":0,"d":{"x":1}}')
        worker = RulesWorker(bus, {}, clock=FakeClock(1_796_702_400.0), idle_secs=0.01)
        await worker.run_once()
        await worker.close()
    lines = [r for r in caplog.records if r.getMessage().startswith("Rule state reset")]
    assert len(lines) == 1
    fields = lines[0].__dict__
    assert fields["rule"] == "api_key.all_scope" and fields["workspaces"] == 2
    assert fields["stored_version"] == [1, [1]] and fields["entities_dropped"] == 1
    assert fields["version"] > 1


async def test_the_upgraded_file_is_refused_by_a_release_that_reads_only_version_1(tmp_path: Path) -> None:
    """A writable open stamps version 2; a read-only one (replay, status) leaves the file as it is."""
    bus = _unpack(tmp_path)
    async with SqliteBus(bus, read_only=True) as b:
        assert await b.get_state("identity/acme") is not None
    assert _meta_version(bus) == "1"
    async with SqliteBus(bus):
        pass
    assert _meta_version(bus) == "2"


async def test_a_newer_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    bus = _unpack(tmp_path)
    db = sqlite3.connect(bus)
    db.execute("UPDATE meta SET v='3' WHERE k='version'")
    db.commit()
    db.close()
    with pytest.raises(BusCorruptError, match=r"format version 3, this build reads 1, 2: .*newer.*Upgrading"):
        async with SqliteBus(bus):
            pass
    assert _meta_version(bus) == "3"


def test_dead_letters_of_the_old_release_decode_as_deadletter_v1(tmp_path: Path) -> None:
    bus = _unpack(tmp_path)
    db = sqlite3.connect(bus)
    letters = [v for (v,) in db.execute("SELECT value FROM records WHERE id >> 50 = 3 ORDER BY id")]
    db.close()
    by_topic = {t: _values(bus, t) for t in ("instantly.events.v1", "instantly.alerts.v1")}
    assert len(letters) == len(by_topic["instantly.events.v1"]) + len(by_topic["instantly.alerts.v1"])
    for raw in letters:
        old = orjson.loads(raw)
        assert "stage" not in old and old["sink"] == "hook"  # the shape of 2c72a02
        letter = decode_deadletter(raw)
        assert (letter.stage, letter.component, letter.component_type, letter.reason) == (
            "sink", "hook", "webhook", "rejected",
        )  # fmt: skip
        assert letter.failed_at == old["failed_at"] and "HTTP 400" in letter.error
        failed = by_topic[old["topic"]][old["offset"]]
        assert letter.record_id == failed["id"]
        assert orjson.loads(original_value(raw)) == failed
        assert validate(letter.to_dict()) == []


def test_an_undecodable_record_dead_lettered_by_the_old_release_keeps_its_bytes() -> None:
    """The old shape's ``record_value_b64`` (made by 2c72a02's ``deadletter_record`` for the bytes
    ``b"\\xff not json"``) becomes ``original`` in base64, reason ``undecodable``."""
    raw = (ROOT / "tests" / "fixtures" / "upgrade" / "deadletter-undecodable-2c72a02.json").read_bytes().strip()
    letter = decode_deadletter(raw)
    assert (letter.stage, letter.component, letter.component_type, letter.reason) == (
        "sink", "siem", "elasticsearch", "undecodable",
    )  # fmt: skip
    assert (letter.original.topic, letter.original.offset, letter.original.encoding) == (
        "instantly.events.v1", 7, "base64",
    )  # fmt: skip
    assert original_value(raw) == b"\xff not json" and letter.record_id is None
    assert validate(letter.to_dict()) == []


def test_replay_reads_and_filters_the_old_dead_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bus = _unpack(tmp_path)
    config = tmp_path / "replay.yaml"
    config.write_text(f"bus: {{type: sqlite, path: {bus}}}\n")
    base = ["replay", "-c", str(config), "--topic", "deadletter", "--format", "jsonl"]
    assert main([*base, "--type", "rejected", "--where", "component=hook", "--since", "3650d"]) == 0
    filtered = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(base) == 0  # no filter: the values-only path
    plain = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(filtered) == len(plain) == 23
    assert filtered == plain
    assert all(validate(d) == [] and d["reason"] == "rejected" for d in plain)
    assert _meta_version(bus) == "1"


WEBHOOK = orjson.loads((ROOT / "tests" / "fixtures" / "upgrade" / "webhook-2c72a02.json").read_bytes())


async def test_a_webhook_delivery_the_old_release_published_is_a_duplicate_after_the_upgrade(tmp_path: Path) -> None:
    """The old receiver committed the delivery while stopping; Instantly, which saw no 200, sends it
    again to the new one. The old window keyed it by the raw body's SHA-256, this release by the
    canonical JSON's: it was a second event with another id, which no sink can de-duplicate."""
    stored = {k: bytes.fromhex(v) for k, v in WEBHOOK["state"].items()}
    (value,) = stored.values()
    committed_at = int.from_bytes(value[-4:], "big")  # the old entry's epoch seconds
    clock = FakeClock(committed_at + 60)
    body = WEBHOOK["body"].encode()
    async with SqliteBus(tmp_path / "bus.db") as bus:
        async with bus.transaction("old-receiver") as tx:
            for k, v in stored.items():
                tx.put_state(k, v)
        receiver = WebhookReceiver(make_config(workspace=WEBHOOK["workspace_id"]), bus, clock=clock)
        path = "/hooks/" + WEBHOOK["source"]
        async with serve(receiver) as client:
            again = await client.post(path, data=body, headers=hdrs())
            assert again.status == 200 and (await again.json())["status"] == "duplicate"
            other = body.replace(b"Sounds good", b"Call me")  # a new delivery is still published, once
            assert (await (await client.post(path, data=other, headers=hdrs())).json())["status"] == "accepted"
            assert (await (await client.post(path, data=other, headers=hdrs())).json())["status"] == "duplicate"
        events = await events_of(bus, WEBHOOK["workspace_id"])
    assert len(events) == 1, [e.value for e in events]
    assert receiver.duplicates == 2 and receiver.accepted == 1
