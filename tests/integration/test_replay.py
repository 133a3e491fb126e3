"""Replay: exact ranges, composed filters, timelines, rules re-run vs live, re-delivery, replay while writing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors.instantly.source import identity_key
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, TopicPartition
from pipeline.cli.main import main
from pipeline.clock import format_time
from pipeline.rules.worker import RulesWorker
from schemas import Actor, Event, Source, Target, WorkspaceRef
from tests.conftest import make_bus

T0 = 1_790_000_000.0  # 2026-09-21
WS_A = WorkspaceRef("ws-a", "Alpha")
WS_B = WorkspaceRef("ws-b", "Beta")


def _events() -> list[Event]:
    out = []
    for i in range(60):
        ws = WS_A if i % 3 else WS_B
        kind = ["audit.user_login", "api_key.created", "member.invited", "audit.lead_exported"][i % 4]
        attrs: dict[str, Any] = {}
        if kind == "api_key.created":
            attrs = {
                "scopes": ["all:all"] if i % 8 == 1 else ["leads:read"],
                "name": f"key{i}",
                "created_at": format_time(T0),
            }
        if kind == "member.invited":
            attrs = {
                "email": f"user{i}@{'gmail.com' if i % 5 == 0 else 'alpha.com'}",
                "role": "view",
                "accepted": False,
            }
        if kind == "audit.lead_exported":
            attrs = {"activity_code": 34, "activity_label": "Lead exported", "affected_count": 5000}
        if kind == "audit.user_login":
            attrs = {"activity_code": 1, "activity_label": "User login"}
        source = Source("audit_log" if kind.startswith("audit") else "snapshot", "s", f"r{i}")
        out.append(
            Event.build(
                type=kind,
                time=format_time(T0 + i * 60),
                observed_at=format_time(T0 + i * 60 + 5),
                workspace=ws,
                source=source,
                natural_key=(f"r{i}",),
                actor=Actor(user_id=f"u{i % 4}", user_name=f"User {i % 4}", ip=f"203.0.113.{i % 4}"),
                target=Target("api_key" if "api_key" in kind else "member", f"t{i}", f"name{i}"),
                attributes=attrs,
            )
        )
    return out


def _config(tmp_path: Path, bus_cfg: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"bus": bus_cfg, "rules": {"allowlists": {"member_domains": ["alpha.com"]}}}
    doc.update(extra or {})
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


async def _publish(bus_cfg: dict[str, Any], events: list[Event]) -> None:
    async with make_bus(bus_cfg) as bus, bus.transaction("replay-test") as tx:
        for e in events:
            tx.send(EVENTS_TOPIC, e.to_json(), key=e.workspace.id.encode(), headers=[("event_type", e.type.encode())])


def _replay(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> list[dict[str, Any]]:
    code = main(["replay", "--format", "jsonl", "--no-progress", *args])
    out = capsysbinary.readouterr().out
    assert code == 0, out
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def test_workspace_filter_takes_the_config_alias_or_the_id(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``--workspace alpha`` (the config alias) matches the events of the id the poller recorded for it,
    exactly as ``--workspace ws-a`` does; replay needs no Instantly key for that."""
    events = _events()
    asyncio.run(_publish(bus_cfg, events))

    async def remember_identity() -> None:
        async with make_bus(bus_cfg) as bus, bus.transaction("poller-alpha") as tx:
            tx.put_state(identity_key("alpha"), orjson.dumps({"id": "ws-a", "name": "Alpha"}))

    asyncio.run(remember_identity())
    workspaces = {"alpha": {"api_key": "${REPLAY_TEST_UNSET_KEY}"}, "beta": {"api_key": "${REPLAY_TEST_UNSET_KEY}"}}
    cfg = _config(tmp_path, bus_cfg, {"workspaces": workspaces})
    want = sorted(e.id for e in events if e.workspace.id == "ws-a")
    assert sorted(g["id"] for g in _replay(capsysbinary, "-c", str(cfg), "--workspace", "alpha")) == want
    assert sorted(g["id"] for g in _replay(capsysbinary, "-c", str(cfg), "--workspace", "ws-a")) == want
    assert _replay(capsysbinary, "-c", str(cfg), "--workspace", "beta") == []  # never polled: no id known yet


def test_replay_known_range_exact_and_in_order(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A time range gives exactly the events published in it, in order per workspace."""
    events = _events()
    asyncio.run(_publish(bus_cfg, events))
    cfg = _config(tmp_path, bus_cfg)
    got = _replay(
        capsysbinary, "-c", str(cfg), "--since", format_time(T0 + 10 * 60), "--until", format_time(T0 + 40 * 60)
    )
    want = [e for e in events if T0 + 600 <= T0 + events.index(e) * 60 < T0 + 2400]
    assert sorted(g["id"] for g in got) == sorted(e.id for e in want)
    for ws in ("ws-a", "ws-b"):
        assert [g["id"] for g in got if g["workspace"]["id"] == ws] == [e.id for e in want if e.workspace.id == ws]


def test_filters_compose(bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Workspace, type glob, actor and target filters combine with AND."""
    events = _events()
    asyncio.run(_publish(bus_cfg, events))
    cfg = _config(tmp_path, bus_cfg)
    got = _replay(capsysbinary, "-c", str(cfg), "--workspace", "ws-a", "--type", "audit.*", "--actor", "User 0")
    want = [
        e
        for e in events
        if e.workspace.id == "ws-a" and e.type.startswith("audit.") and e.actor and e.actor.user_name == "User 0"
    ]
    assert want and sorted(g["id"] for g in got) == sorted(e.id for e in want)
    got = _replay(capsysbinary, "-c", str(cfg), "--target", "t5")
    assert [g["target"]["id"] for g in got] == ["t5"]
    assert _replay(capsysbinary, "-c", str(cfg), "--type", "nothing.*") == []


def test_timeline_orders_by_event_time(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """--timeline lists everything that touched an entity, oldest first, even when published out of order."""
    events = _events()
    asyncio.run(_publish(bus_cfg, list(reversed(events))))
    cfg = _config(tmp_path, bus_cfg)
    got = _replay(capsysbinary, "-c", str(cfg), "--timeline", "203.0.113.2")
    want = [e for e in events if e.actor and e.actor.ip == "203.0.113.2"]
    assert [g["id"] for g in got] == [e.id for e in want]


def test_offsets_select_a_range(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """--from-offset/--to-offset select an inclusive offset range (embedded bus: offsets are contiguous there)."""
    bus_cfg: dict[str, Any] = {"type": "sqlite", "path": str(tmp_path / "bus.db")}
    events = _events()
    asyncio.run(_publish(bus_cfg, events))
    cfg = _config(tmp_path, bus_cfg)
    got = _replay(capsysbinary, "-c", str(cfg), "--from-offset", "0:10", "--to-offset", "0:19")
    assert [g["id"] for g in got] == [e.id for e in events[10:20]]


def test_rules_rerun_matches_live(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """replay --rules over a range raises exactly the alerts the live rules recorded: new 0, missing 0."""
    events = _events()
    rules_cfg = {"allowlists": {"member_domains": ["alpha.com"]}}

    async def live() -> int:
        await _publish(bus_cfg, events)
        async with make_bus(bus_cfg) as bus:
            worker = RulesWorker(bus, rules_cfg, clock=_EventTimeClock())
            await worker.run_once()
            n = 0
            async with bus.consumer([ALERTS_TOPIC], start="earliest") as c:
                ends = await c.end_offsets()
                n = sum(ends.values())
            await worker.close()
            return n

    assert asyncio.run(live()) > 0
    cfg = _config(tmp_path, bus_cfg, {"rules": rules_cfg})
    code = main(["replay", "-c", str(cfg), "--rules", "--format", "jsonl", "--no-progress"])
    out = capsysbinary.readouterr()
    assert code == 0
    rows = [orjson.loads(line) for line in out.out.splitlines() if line.strip()]
    kinds = [r["diff"] for r in rows]
    assert kinds and set(kinds) == {"same"}, out.err.decode()[-500:]
    assert b"new 0, missing 0" in out.err
    # -o FILE: the same diff goes to the file (it used to be ignored: everything went to stdout)
    dest = tmp_path / "diff.jsonl"
    assert main(["replay", "-c", str(cfg), "--rules", "-o", str(dest), "--no-progress"]) == 0
    again = capsysbinary.readouterr()
    assert again.out == b""
    assert [orjson.loads(line) for line in dest.read_bytes().splitlines()] == rows


class _EventTimeClock:
    def now(self) -> float:
        return T0 + 3600

    def monotonic(self) -> float:
        return 0.0


async def test_redelivery_to_a_sink_is_idempotent(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """replay --to SINK twice leaves each event exactly once in Elasticsearch (create with _id = event id)."""
    from pipeline.cli.main import build_parser
    from pipeline.config.loader import load_config
    from pipeline.replay.cli import _run, selection_from_args
    from tests.fakes.elasticsearch import FakeElasticsearch

    events = _events()
    await _publish(bus_cfg, events)
    fake = FakeElasticsearch()
    async with fake:
        sink = {"type": "elasticsearch", "url": fake.url, "index": "instantly-audit", "topics": ["events"]}
        cfg_path = _config(tmp_path, bus_cfg, {"sinks": {"es": sink}})
        for _ in range(2):
            args = build_parser().parse_args(["replay", "-c", str(cfg_path), "--to", "es", "--no-progress"])
            code = await _run(args, load_config(cfg_path), selection_from_args(args))
            capsysbinary.readouterr()
            assert code == 0
        assert sorted(fake.ids) == sorted(e.id for e in events)
        assert fake.conflicts == len(events)  # the second pass was recognised as already delivered


def test_replay_while_writing_reads_a_consistent_prefix(bus_cfg: dict[str, Any], tmp_path: Path) -> None:
    """A replay that starts while a writer publishes returns a duplicate-free prefix and never moves group offsets."""
    events = _events()

    async def run() -> tuple[list[str], dict[TopicPartition, int]]:
        async with make_bus(bus_cfg) as bus:
            async with bus.consumer([EVENTS_TOPIC], group="live-sink") as c:
                await c.commit({tp: 0 for tp in c.assignment()})

            async def writer() -> None:
                for e in events:
                    async with bus.transaction("writer") as tx:
                        tx.send(EVENTS_TOPIC, e.to_json(), key=e.workspace.id.encode())
                    await asyncio.sleep(0.005)

            w = asyncio.create_task(writer())
            await asyncio.sleep(0.1)
            from pipeline.replay.scan import ReplayStats, Selection, scan

            seen: list[str] = []
            async with make_bus(bus_cfg) as reader:
                async for batch in scan(reader, Selection(), ReplayStats()):
                    seen += [b["id"] for _, b in batch]
            await w
            return seen, await bus.committed("live-sink", EVENTS_TOPIC)

    seen, committed = asyncio.run(run())
    assert len(seen) == len(set(seen))
    assert set(seen) <= {e.id for e in events}
    assert all(off == 0 for off in committed.values())


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad times, unknown sinks and --deliver without --rules exit 2 with one line."""
    cfg = _config(tmp_path, {"type": "sqlite", "path": str(tmp_path / "b.db")})
    for args, needle in (
        (["--since", "yesterday"], "is not a time"),
        (["--to", "nope"], "no such sink"),
        (["--deliver"], "--deliver only applies with --rules"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "--until must be after --since"),
    ):
        code = main(["replay", "-c", str(cfg), *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_table_output_is_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table view shows time, type, actor, target and a summary."""
    bus_cfg = {"type": "sqlite", "path": str(tmp_path / "b.db")}
    asyncio.run(_publish(bus_cfg, _events()[:5]))
    cfg = _config(tmp_path, bus_cfg)
    assert main(["replay", "-c", str(cfg), "--format", "table", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "api_key.created" in out and "User 1" in out and "scopes=" in out


def test_unfiltered_jsonl_is_every_record_once(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """An unfiltered JSON Lines replay (the values-only fast path) writes every record once, per-key order kept."""
    events = _events()
    asyncio.run(_publish(bus_cfg, events))
    cfg = _config(tmp_path, bus_cfg)
    got = _replay(capsysbinary, "-c", str(cfg))
    assert sorted(g["id"] for g in got) == sorted(e.id for e in events)
    for ws in ("ws-a", "ws-b"):
        assert [g["id"] for g in got if g["workspace"]["id"] == ws] == [e.id for e in events if e.workspace.id == ws]


def test_an_offset_on_a_partition_the_topic_lacks_is_a_one_line_usage_error(
    bus_cfg: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--from-offset 5:0`` (a traceback on Kafka) or ``--to-offset 7:3`` (silently ignored) on a
    topic with fewer partitions: exit 2, one line naming the partition and the partition count."""
    asyncio.run(_publish(bus_cfg, _events()[:5]))
    cfg = _config(tmp_path, bus_cfg)
    n = bus_cfg.get("partitions", 1)
    for flag, spec, part in (("--from-offset", "5:0", 5), ("--to-offset", "7:3", 7), ("--from-offset", "0:0,5:1", 5)):
        code = main(["replay", "-c", str(cfg), "--format", "jsonl", "--no-progress", flag, spec])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"has no partition {part}" in err and f"it has {n} partition" in err, err
    assert main(["replay", "-c", str(cfg), "--from-offset", "0:-1"]) == 2
    assert "is not an offset spec" in capsys.readouterr().err


async def _delete_before(bus_cfg: dict[str, Any], cut: int) -> dict[TopicPartition, int]:
    """Delete every partition's records before ``cut`` (Kafka: deleteRecords; the embedded bus: its
    retention, which drops the ``cut`` records dated past it); return each partition's new first offset."""
    if bus_cfg["type"] == "kafka":
        from aiokafka import TopicPartition as KTP
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

        async with make_bus(bus_cfg, read_only=True) as bus, bus.consumer([EVENTS_TOPIC]) as c:
            ends = await c.end_offsets()
        admin = AIOKafkaAdminClient(bootstrap_servers=bus_cfg["bootstrap_servers"])
        await admin.start()
        try:
            todo = {tp: min(cut, end) for tp, end in ends.items() if end}
            phys = bus_cfg["topic_prefix"] + EVENTS_TOPIC
            await admin.delete_records({KTP(phys, tp.partition): RecordsToDelete(off) for tp, off in todo.items()})
        finally:
            await admin.close()
        return todo
    from pipeline.bus.sqlite import SqliteBus

    async with SqliteBus(bus_cfg["path"]) as bus:
        assert await bus.enforce_retention() == cut
    return {TopicPartition(EVENTS_TOPIC, 0): cut}


def test_a_range_starting_at_deleted_records_says_so(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Offsets before the first retained one (deleted by retention): replay starts there, and says
    so in a warning line and in its summary, instead of silently starting at the log start."""
    events = _events()
    now_ms = int(time.time() * 1000)

    async def publish() -> None:
        async with make_bus(bus_cfg) as bus, bus.transaction("replay-test") as tx:
            for i, e in enumerate(
                events
            ):  # the first 20 dated 40 days ago: the embedded bus's retention (30) drops them
                ts = now_ms - (40 * 86_400_000 if i < 20 else 0)
                tx.send(EVENTS_TOPIC, e.to_json(), key=e.workspace.id.encode(), timestamp_ms=ts)

    asyncio.run(publish())
    firsts = asyncio.run(_delete_before(bus_cfg, 20 if bus_cfg["type"] == "sqlite" else 5))
    cfg = _config(tmp_path, bus_cfg)
    code = main(["replay", "-c", str(cfg), "--format", "jsonl", "--no-progress", "--from-offset", "0"])
    out = capsysbinary.readouterr()
    assert code == 0
    err = out.err.decode()
    for tp, first in firsts.items():
        assert f"offsets before {first} on partition {tp.partition} of {EVENTS_TOPIC} no longer exist" in err, err
        assert f"partition {tp.partition} before {first}" in err.splitlines()[-1], err
    got = [orjson.loads(line)["id"] for line in out.out.splitlines() if line.strip()]
    assert len(got) == len(events) - sum(firsts.values())
    assert set(got) <= {e.id for e in events}


def test_rules_rerun_reads_rule_files_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``rules.files`` is relative to the config file (docs/rules.md), as ``run`` and ``config validate`` read
    it, for ``replay --rules`` and ``--rules-file`` too: replay run from another directory used to look for
    the rule files under the working directory (failing, or loading an unrelated ``rules/`` found there)."""
    bus_cfg: dict[str, Any] = {"type": "sqlite", "path": str(tmp_path / "bus.db")}
    asyncio.run(_publish(bus_cfg, _events()))
    conf = tmp_path / "conf"
    (conf / "rules").mkdir(parents=True)
    mine = {"id": "custom.export_seen", "title": "Export seen", "severity": "low", "types": ["audit.lead_exported"],
            "detection": {"sel": {"type": "audit.lead_exported"}}, "group_by": ["actor.user_id"]}  # fmt: skip
    (conf / "rules" / "mine.yaml").write_text(yaml.safe_dump(mine))
    cfg = conf / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"bus": bus_cfg, "rules": {"files": ["rules/"]}}))
    pinned = conf / "pinned.yaml"
    pinned.write_text(yaml.safe_dump({"files": ["rules/mine.yaml"], "defaults": {"enabled": False}}))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "rules").mkdir(parents=True)  # a decoy the working directory holds: never read
    decoy = {**mine, "id": "custom.decoy", "title": "Decoy"}
    (elsewhere / "rules" / "mine.yaml").write_text(yaml.safe_dump(decoy))
    monkeypatch.chdir(elsewhere)
    for extra in ([], ["--rules-file", str(pinned)]):
        rows = _replay(capsysbinary, "-c", str(cfg), "--rules", *extra)
        ids = {r["alert"]["rule"]["id"] for r in rows if r["diff"] == "new"}
        assert "custom.export_seen" in ids and "custom.decoy" not in ids, (extra, ids)
