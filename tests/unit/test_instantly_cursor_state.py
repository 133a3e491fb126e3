"""The split audit-cursor and snapshot state: bounded keys, small page writes, migration, exactly once."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.instantly import cursor_state
from connectors.instantly.audit_cursor import AuditCursor
from connectors.instantly.cursor_state import BUCKET_SECS, CHUNK_IDS, SeenChunks
from connectors.instantly.snapshot_state import SHARD_TARGET_BYTES, StoredSnapshot, shard_of
from connectors.instantly.snapshots import encode_snapshot
from connectors.instantly.streams import load_cursor, load_snapshot
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_source import audit_record, events, make_poller, seed

PREFIX = "cursor/acme/audit_logs/"
T0 = 1_780_000_000.0


def test_chunks_bounded_and_page_writes_follow_the_page() -> None:
    """10k ids: every chunk ≤ CHUNK_IDS ids; a page of 1,000 writes one chunk however full the window."""
    chunks = SeenChunks(PREFIX)
    sizes = []
    for page in range(10):
        chunks.add((f"id-{page}-{i}", T0 + page + i / 1000) for i in range(1000))
        writes = chunks.writes()
        sizes.append(sum(len(v or b"") for v in writes.values()))
        assert len(writes) == 1
    assert all(len(ids) <= CHUNK_IDS for ids in chunks.chunks.values())
    assert max(sizes) - min(sizes) < 0.05 * max(sizes)  # flat
    chunks.add([("late", T0 + 5)])
    assert list(chunks.writes()) == [chunks.key((int(T0 // BUCKET_SECS), 10))]  # only the open chunk


def test_prune_deletes_whole_buckets_only() -> None:
    """A bucket is deleted once its last second is below the threshold; a straddling one is kept."""
    chunks = SeenChunks(PREFIX)
    base = (T0 // BUCKET_SECS) * BUCKET_SECS
    chunks.add([("a", base - 10), ("b", base + 10), ("c", base + BUCKET_SECS + 1)])
    chunks.writes()
    chunks.prune(base + 20)
    writes = chunks.writes()
    assert writes == {chunks.key((int(base // BUCKET_SECS) - 1, 0)): None}
    loaded = SeenChunks(PREFIX)
    assert set(loaded.load({chunks.key(c): cursor_state.encode_chunk(ids) for c, ids in chunks.chunks.items()})) == {
        "b",
        "c",
    }


def test_migration_from_single_value() -> None:
    """A format-1 cursor loads into the split layout; the first writes hold head + chunks and delete the old key."""
    old = AuditCursor(high_water=T0, seen={"x": T0 - 5, "y": T0 - 4000}, last_id="y", last_full_read=T0, full_mark=T0)
    cur = AuditCursor.load_state(PREFIX, {}, legacy=old.to_bytes())
    assert cur.seen == old.seen and cur.last_id == "y" and cur.high_water == T0
    writes = cur.state_writes()
    assert writes["cursor/acme/audit_logs"] is None and f"{PREFIX}head" in writes
    assert sum(k.startswith(f"{PREFIX}seen/") for k in writes) == 2  # two hour buckets
    assert cur.state_writes() == {}  # nothing left to write
    again = AuditCursor.load_state(PREFIX, {k: v for k, v in writes.items() if v is not None})
    assert again.seen == old.seen and again.state_writes() == {}


def test_snapshot_shards_write_only_what_changed() -> None:
    """A large snapshot is split below the target size; one change rewrites one shard; empty shards go."""
    prefix = "snapshot/acme/block_list/"
    # (words, not "x" * 200: loading passes the publish gate, and another test in the same process may
    # have registered a secret made of x's, which would then be fingerprinted inside the padding)
    pad = ("lorem ipsum dolor sit amet " * 8)[:200]
    big = {f"e{i:05d}": {"id": f"e{i:05d}", "bl_value": f"host{i}.example.com", "pad": pad} for i in range(3000)}
    first = StoredSnapshot.load(prefix, {}, legacy=encode_snapshot({"e00000": big["e00000"]}))
    writes = first.writes(big)
    assert writes[prefix.rstrip("/")] is None  # migrated
    stored = {k: v for k, v in writes.items() if v is not None}
    assert all(len(v) <= SHARD_TARGET_BYTES for v in stored.values()) and len(stored) > 2
    loaded = StoredSnapshot.load(prefix, stored, None)
    assert loaded.snapshot == big and loaded.writes(big) == {}
    changed = {**big, "e00001": {**big["e00001"], "pad": "y"}}
    delta = loaded.writes(changed)
    assert set(delta) == {f"{prefix}shard/{shard_of('e00001', loaded.shards):04d}"}
    empty = loaded.writes({})
    meta = empty[f"{prefix}meta"]
    assert all(v is None for k, v in empty.items() if "/shard/" in k) and meta is not None
    assert StoredSnapshot.load(prefix, {f"{prefix}meta": meta}, None).snapshot == {}


Step = tuple[str, int]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.sampled_from(["asc", "desc"]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["arrive", "backdate", "late_new", "poll", "restart", "fail"]), st.integers(0, 1_000_000)
        ),
        min_size=3,
        max_size=14,
    ),
)
def test_any_arrival_order_and_restarts_lose_and_duplicate_nothing(order: str, steps: list[Step]) -> None:
    """Records arriving in any order (new ids, ids minted behind the cursor, up to 30 min late; on
    an ascending listing also new ids up to 6 h late), polls that fail mid-read and poller restarts
    in between: every record is published exactly once."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp), order, steps))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.sampled_from(["asc", "desc"]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["arrive", "backdate", "very_late", "poll", "restart", "fail"]), st.integers(0, 1_000_000)
        ),
        min_size=3,
        max_size=14,
    ),
)
def test_with_the_sweep_even_very_late_records_arrive_once(order: str, steps: list[Step]) -> None:
    """The same with the late-record sweep on and records up to 6 h behind (the window is 1 h):
    after the last sweep every record is on the bus exactly once."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp), order, steps, sweep=True))


async def _scenario(tmp: Path, order: str, steps: list[Step], *, sweep: bool = False) -> None:
    fake = FakeInstantly(api_key="k" * 24)
    seed(fake)
    fake.audit_order = order
    clock = FakeClock(T0 - 600)  # a bucket boundary falls inside the run
    mp = pytest.MonkeyPatch()
    mp.setattr(cursor_state, "CHUNK_IDS", 3)  # chunks roll over within a page
    seq = 1000
    below_window: set[str] = set()
    opts: dict[str, Any] = {"streams": ["audit_logs"], "audit_page_size": 2}
    if sweep:
        opts |= {"audit_sweep_interval_secs": 60.0, "audit_sweep_max_requests": 1000}
    try:
        async with serve(fake), SqliteBus(tmp / "bus.db") as bus:
            poller: Any = make_poller(fake, bus, clock, **opts)
            await poller.__aenter__()
            for what, arg in steps:
                rng = random.Random(arg)
                if what in ("arrive", "backdate", "very_late", "late_new"):
                    for _ in range(rng.randint(1, 4)):
                        seq += 1
                        rid = f"{seq:06d}" if what != "backdate" else f"{rng.randint(0, 999):06d}-{seq}"
                        hours_late = what == "very_late" or (what == "late_new" and order == "asc")
                        behind = rng.uniform(7200, 21600) if hours_late else rng.uniform(0, 1800)
                        if hours_late:
                            below_window.add(rid)
                        fake.audit.append(audit_record(rid, clock.now() - behind))
                elif what == "poll":
                    await poller.poll_once()
                elif what == "fail":
                    fake.fail("/audit-logs", 500, times=2, only_with_cursor=True)
                    await poller.poll_once()
                    fake.faults.clear()
                else:
                    await poller.aclose()
                    poller = make_poller(fake, bus, clock, **opts)
                    await poller.__aenter__()
                clock.advance(40)
            await poller.aclose()
            async with make_poller(fake, bus, clock, **opts) as last:
                await last.poll_once()  # a restart re-reads the window: what is behind the cursor comes now
                clock.advance(61)
                await last.poll_once()  # (and sweeps, when on)
            published = [e["source"]["record_id"] for e in await events(bus) if e["type"].startswith("audit.")]
            assert sorted(published) == sorted(r["id"] for r in fake.audit), "lost or duplicated"
            cursor = await load_cursor(bus, "acme")
            assert sweep or {r["id"] for r in fake.audit} - below_window <= set(cursor.seen)
            for value in (await bus.state_items("cursor/acme/audit_logs/seen/")).values():
                assert len(orjson.loads(value)["ids"]) <= 3
            assert await bus.get_state("cursor/acme/audit_logs") is None
            assert (await load_snapshot(bus, "acme", "api_keys")).snapshot is None
    finally:
        mp.undo()
