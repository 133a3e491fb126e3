"""The embedded bus keeps to ``bus.retention``: a running pipeline (and ``run --once``) deletes
records past ``max_age_days`` or beyond ``max_bytes_per_partition``, in bounded steps, and a changed
retention applies from the next start. Before, nothing called the retention: the file only grew."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, RECEIPTS_TOPIC, OutRecord, TopicPartition, iter_records
from pipeline.bus.factory import DAY_MS
from pipeline.bus.sqlite import RETENTION_STEP, SqliteBus
from pipeline.bus.sqlite_retention import enforce_retention
from pipeline.config.loader import parse_config
from pipeline.topology import run_pipeline

OLD, NEW = 300, 7


async def _seed(path: Path, *, old: int = OLD, new: int = NEW, retention_ms: int | None = 30 * DAY_MS) -> None:
    """``old`` records dated 40 days ago and ``new`` of now on the events topic, one alert of 40 days ago."""
    now_ms = int(time.time() * 1000)
    recs = [OutRecord(EVENTS_TOPIC, b"old-%d" % i, key=b"ws", timestamp_ms=now_ms - 40 * DAY_MS) for i in range(old)]
    recs += [OutRecord(EVENTS_TOPIC, b"new-%d" % i, key=b"ws", timestamp_ms=now_ms) for i in range(new)]
    recs.append(OutRecord(ALERTS_TOPIC, b"old-alert", key=b"ws", timestamp_ms=now_ms - 40 * DAY_MS))
    async with SqliteBus(path, retention_ms=retention_ms) as bus, bus.transaction("seed") as tx:
        for r in recs:
            tx.send(r.topic, r.value, key=r.key, timestamp_ms=r.timestamp_ms)
        tx.put_state("poller/acme/cursor", b"kept")  # state is compacted: never trimmed


def _left(path: Path) -> dict[str, Any]:
    """What the file holds now: record values per topic, each topic's first offset, the state keys."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        topics = dict(db.execute("SELECT id, name FROM topics").fetchall())
        values: dict[str, list[bytes]] = {}
        for rid, value in db.execute("SELECT id, value FROM records ORDER BY id"):
            values.setdefault(topics[rid >> 50], []).append(value)
        starts = {topics[tp >> 10]: start for tp, start in db.execute("SELECT tp, log_start FROM tp_meta")}
        state = [k for (k,) in db.execute("SELECT k FROM state")]
        return {"values": values, "starts": starts, "state": state}
    finally:
        db.close()


def _size(path: str) -> int:
    return os.stat(path).st_size


def _config(tmp_path: Path, retention: dict[str, Any]) -> Any:
    doc = {
        "bus": {"type": "sqlite", "path": str(tmp_path / "bus.db"), "retention": retention},
        "sinks": {"archive": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}},
        "service": {"enabled": False},
    }
    return parse_config(yaml.safe_dump(doc), env={}, base_dir=tmp_path)


async def test_a_running_pipeline_deletes_records_past_the_retention(tmp_path: Path) -> None:
    """``run`` (no ``--once``) on a bus holding 40-day-old records under the default 30 days: they go
    within seconds of the start, the new ones and the state stay. Before, nothing was ever deleted."""
    path = tmp_path / "bus.db"
    await _seed(path)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_pipeline(_config(tmp_path, {}), roles={"pollers"}, stop=stop, configure_logging=False)
    )
    try:
        deadline = time.monotonic() + 20
        while _left(path)["starts"][EVENTS_TOPIC] < OLD:
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, f"nothing was trimmed: {_left(path)['starts']}"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 45) == 0
    left = _left(path)
    assert left["values"][EVENTS_TOPIC] == [b"new-%d" % i for i in range(NEW)]
    assert ALERTS_TOPIC not in left["values"] and left["starts"][ALERTS_TOPIC] == 1
    assert left["state"] == ["poller/acme/cursor"]


async def test_run_once_applies_the_retention_too(tmp_path: Path) -> None:
    """``run --once`` from cron is a whole deployment's only process: it trims the bus as it ends."""
    path = tmp_path / "bus.db"
    await _seed(path)
    assert await run_pipeline(_config(tmp_path, {}), once=True, roles={"pollers"}, configure_logging=False) == 0
    assert _left(path)["values"][EVENTS_TOPIC] == [b"new-%d" % i for i in range(NEW)]


async def test_the_size_cap_bounds_each_partition(tmp_path: Path) -> None:
    """``max_bytes_per_partition``: a running pipeline keeps each partition under it (newest kept)."""
    path = tmp_path / "bus.db"
    await _seed(path, old=0, new=200)  # 200 records of 5-7 bytes + a 2-byte key each
    stop = asyncio.Event()
    cfg = _config(tmp_path, {"max_bytes_per_partition": 500})
    task = asyncio.create_task(run_pipeline(cfg, roles={"pollers"}, stop=stop, configure_logging=False))
    try:
        deadline = time.monotonic() + 20
        while len(_left(path)["values"][EVENTS_TOPIC]) > 100:
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, "the size cap was not applied"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 45) == 0
    kept = _left(path)["values"][EVENTS_TOPIC]
    assert sum(len(v) + 2 for v in kept) <= 500 and kept[-1] == b"new-199"


async def test_a_retention_changed_in_the_config_applies_to_an_existing_bus(tmp_path: Path) -> None:
    """The file was created under ``max_age_days: 60``; the config now says 30: records of 40 days
    go. (The topics kept the retention they were created with, so lowering it had no effect.)"""
    path = tmp_path / "bus.db"
    await _seed(path, retention_ms=60 * DAY_MS)
    assert await run_pipeline(_config(tmp_path, {"max_age_days": 30}), once=True, roles={"pollers"},
                              configure_logging=False) == 0  # fmt: skip
    assert _left(path)["values"][EVENTS_TOPIC] == [b"new-%d" % i for i in range(NEW)]


async def test_a_large_backlog_is_trimmed_in_bounded_steps(tmp_path: Path) -> None:
    """One step deletes at most ``limit`` records (one transaction, one turn on the store's thread),
    and :meth:`SqliteBus.enforce_retention` repeats steps until everything expired is gone."""
    path = tmp_path / "bus.db"
    old = 2 * RETENTION_STEP + 10
    await _seed(path, old=old, new=3)
    async with SqliteBus(path, retention_ms=30 * DAY_MS) as bus:
        store = bus._store  # the step itself, as the bus runs it
        assert await store.run(enforce_retention, store, 30 * DAY_MS, None, RETENTION_STEP) == RETENTION_STEP
        assert _left(path)["starts"][EVENTS_TOPIC] == RETENTION_STEP
        assert await bus.enforce_retention() == old - RETENTION_STEP + 1  # + the old alert
        assert await bus.enforce_retention() == 0
    assert _left(path)["starts"][EVENTS_TOPIC] == old


async def test_the_receipts_topic_is_compacted_to_the_newest_record_per_key(tmp_path: Path) -> None:
    """``instantly.receipts.v1`` is compacted: a receipt is rewritten at every poll that changes its
    hour (about one a second on a busy workspace polled every 2 s), and the embedded bus kept every
    revision forever (never trimmed, never compacted). Now the newest record of each key stays, the
    older ones go, readers skip the holes, and a time seek still finds the first record at or after."""
    path = tmp_path / "bus.db"
    now_ms = int(time.time() * 1000)
    keys, revisions = 12, 250
    async with SqliteBus(path, retention_ms=30 * DAY_MS) as bus:
        for r in range(revisions):
            await bus.publish(
                [
                    OutRecord(RECEIPTS_TOPIC, b"rev-%d" % r, key=b"ws/%d" % k, timestamp_ms=now_ms + r)
                    for k in range(keys)
                ]
            )
        assert await bus.enforce_retention() == keys * (revisions - 1)
        async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as c:
            left = [(rec.key, rec.value) for batch in [x async for x in iter_records(c)] for rec in batch]
        assert sorted(left) == sorted((b"ws/%d" % k, b"rev-%d" % (revisions - 1)) for k in range(keys))
        tp = TopicPartition(RECEIPTS_TOPIC, 0)
        async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as c:
            await c.seek_to_time(now_ms + revisions - 1)
            assert c.positions()[tp] <= keys * (revisions - 1)
            assert len([rec for batch in [x async for x in iter_records(c)] for rec in batch]) == keys
        # nothing new written: the next rounds do not scan again, and a few more revisions do not either
        assert await bus.enforce_retention() == 0
    db = sqlite3.connect(path)
    (n,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
    db.close()
    assert n == keys


async def test_a_group_that_had_not_read_what_the_retention_deleted_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink down longer than the retention loses what was deleted (as on Kafka): its consumer group
    starts at the first retained record, and now logs which offsets it never read, instead of
    skipping them silently. A group-less reader (replay) says it its own way and logs nothing here."""
    path = tmp_path / "bus.db"
    await _seed(path)
    async with SqliteBus(path, retention_ms=30 * DAY_MS) as bus:
        async with bus.transaction("sink-archive") as tx:
            tx.commit_offsets("sink-archive", {TopicPartition(EVENTS_TOPIC, 0): 10})
        assert await bus.enforce_retention() == OLD + 1
        with caplog.at_level(logging.WARNING, logger="instantly_audit.bus"):
            async with bus.consumer([EVENTS_TOPIC], group="sink-archive") as c:
                assert c.positions()[TopicPartition(EVENTS_TOPIC, 0)] == OLD
            async with bus.consumer([EVENTS_TOPIC], start="earliest") as c:
                assert len(await c.poll(100, timeout_s=0)) == NEW
    lines = [r for r in caplog.records if "deleted by the bus retention" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert (lines[0].group, lines[0].first_offset, lines[0].records) == ("sink-archive", 10, OLD - 10)  # type: ignore[attr-defined]


async def test_the_wal_file_is_cut_back_after_a_long_reader(tmp_path: Path) -> None:
    """While another process holds a read snapshot (a long ``replay``), SQLite cannot restart the WAL
    and it grows by everything written; once the reader is gone the WAL restarts, and is now cut
    back to the limit (64 MiB by default; 256 KiB here). It kept its largest size until the pipeline
    stopped (measured: 28 MiB after 20 MB written beside a reader, 28 MiB still after it closed)."""
    path = tmp_path / "bus.db"
    wal = f"{path}-wal"
    limit = 256 * 1024
    async with SqliteBus(path, synchronous="normal", wal_limit_bytes=limit) as bus:
        await bus.publish([OutRecord(EVENTS_TOPIC, b"x", key=b"ws")])
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM records").fetchone()
            for i in range(20):  # 6 MB: past the 1,000-page auto-checkpoint, which cannot restart the WAL
                await bus.publish([OutRecord(EVENTS_TOPIC, b"%d" % i * 300, key=b"ws") for _ in range(1000)])
            assert _size(wal) > 6_000_000
            reader.execute("COMMIT")
        finally:
            reader.close()
        for _ in range(3):  # the next commits checkpoint, restart the WAL and cut it back
            await bus.publish([OutRecord(EVENTS_TOPIC, b"y" * 300, key=b"ws") for _ in range(1000)])
        assert _size(wal) <= 2_000_000, _size(wal)  # the limit + the commits since


@pytest.mark.parametrize("limit", [None, RETENTION_STEP, 3])
@pytest.mark.parametrize(("new", "kept"), [(10, 10), (20, 15)])
async def test_the_size_cap_counts_only_what_the_age_leaves(
    tmp_path: Path, limit: int | None, new: int, kept: int
) -> None:
    """10 records of 100 bytes dated 40 days ago, ``new`` of now; 30 days and a 1,500-byte cap: the
    old ones go, and of the new ones the newest that fit the cap stay (all 10; 15 of 20, where the
    excess, 1,500 bytes, is larger than the old ones' 1,000). The cap's excess was counted on the whole
    partition and then deleted after the age cut as well: 5 of the 10 new went, 15 of the 20."""
    path = tmp_path / "bus.db"
    now_ms = int(time.time() * 1000)
    async with SqliteBus(path, retention_ms=30 * DAY_MS) as bus, bus.transaction("seed") as tx:
        for i in range(10):
            tx.send(EVENTS_TOPIC, b"o%02d" % i + b"o" * 95, key=b"ws", timestamp_ms=now_ms - 40 * DAY_MS)
        for i in range(new):
            tx.send(EVENTS_TOPIC, b"n%02d" % i + b"n" * 95, key=b"ws", timestamp_ms=now_ms)
    async with SqliteBus(path, retention_ms=30 * DAY_MS, max_bytes_per_partition=1500) as bus:
        store = bus._store
        if limit is None:
            removed = await store.run(enforce_retention, store, 30 * DAY_MS, 1500, None)
        else:  # in steps, as the bus runs them (3: the age cut falls inside a step's reach)
            removed = 0
            while (n := await store.run(enforce_retention, store, 30 * DAY_MS, 1500, limit)) == limit:
                removed += n
            removed += n
        assert await bus.enforce_retention() == 0
    left = _left(path)
    assert [v[:3] for v in left["values"][EVENTS_TOPIC]] == [b"n%02d" % i for i in range(new - kept, new)]
    assert removed == 10 + new - kept and left["starts"][EVENTS_TOPIC] == 10 + new - kept


def _step(store: Any, limit: int) -> tuple[int, int]:
    """One retention step as the bus runs it, and the SQLite VM instructions it took (in hundreds)."""
    db = store.conn()
    ops = 0

    def tick() -> int:
        nonlocal ops
        ops += 1
        return 0

    db.set_progress_handler(tick, 100)
    try:
        return enforce_retention(store, None, None, limit), ops
    finally:
        db.set_progress_handler(None, 100)


async def _receipts(bus: SqliteBus, n: int, keys: int) -> None:
    for b in range(0, n, 10_000):
        await bus.publish(
            [OutRecord(RECEIPTS_TOPIC, b"x" * 100, key=b"ws/%d" % (i % keys)) for i in range(b, min(n, b + 10_000))]
        )


async def test_a_compaction_step_examines_a_bounded_number_of_records(tmp_path: Path) -> None:
    """Each step of a receipts compaction resumes where the previous one stopped: its work does not
    grow with the partition. Every step re-read the whole partition, so a pass was quadratic (600k
    records: 120 steps, 48 s, the last ones 1.2 s each on the store thread the acknowledgements wait
    behind). Measured in SQLite VM instructions (hundreds) of the largest step: 3,900 at 20k records and
    14,100 at 80k before, 1,401 and 1,404 now."""
    worst: dict[int, int] = {}
    for n in (20_000, 80_000):
        async with SqliteBus(tmp_path / f"{n}.db") as bus:
            await _receipts(bus, n, keys=100)
            store, removed = bus._store, 0
            steps: list[int] = []
            while removed < n - 100:
                assert len(steps) < n // 1000, "the compaction does not progress"
                k, ops = await store.run(_step, store, RETENTION_STEP)
                steps.append(ops)
                removed += k
            assert await bus.enforce_retention() == 0 and len(steps) >= (n - 100) // RETENTION_STEP
            async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as c:
                left = [rec for batch in [x async for x in iter_records(c)] for rec in batch]
            assert sorted(r.key or b"" for r in left) == sorted(b"ws/%d" % k for k in range(100))
            assert left[-1].offset == n - 1  # the newest of each key: the last 100
        worst[n] = max(steps)
    assert worst[80_000] < 1.3 * worst[20_000], worst


async def test_a_compaction_pass_spread_over_steps_keeps_the_newest_of_each_key(tmp_path: Path) -> None:
    """Between two steps of a pass, the pipeline writes newer revisions and a reader goes through the
    partition: the reader sees offsets in order (holes skipped), the pass deletes only what its own
    range supersedes, the records written meanwhile stay, and so do keyless ones."""
    path = tmp_path / "bus.db"
    keys, revisions = 12, 250
    async with SqliteBus(path) as bus:
        await bus.publish([OutRecord(RECEIPTS_TOPIC, b"keyless", key=None)])
        for r in range(revisions):
            await bus.publish([OutRecord(RECEIPTS_TOPIC, b"rev-%d" % r, key=b"ws/%d" % k) for k in range(keys)])
        store = bus._store
        assert await store.run(enforce_retention, store, None, None, 100) == 100 - keys
        assert store.compacting  # the pass stopped 100 records from the end
        await bus.publish([OutRecord(RECEIPTS_TOPIC, b"late", key=b"ws/%d" % k) for k in range(6)])
        async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as c:
            seen = [rec.offset for batch in [x async for x in iter_records(c)] for rec in batch]
        assert seen == sorted(seen) and len(seen) == 1 + keys * revisions - (100 - keys) + 6
        assert await bus.enforce_retention() == keys * (revisions - 1) - (100 - keys)
        assert not store.compacting and await bus.enforce_retention() == 0
        async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as c:
            left = [(rec.key, rec.value) for batch in [x async for x in iter_records(c)] for rec in batch]
    assert left[0] == (None, b"keyless") and left[-6:] == [(b"ws/%d" % k, b"late") for k in range(6)]
    assert sorted(left[1:-6]) == sorted((b"ws/%d" % k, b"rev-%d" % (revisions - 1)) for k in range(keys))
