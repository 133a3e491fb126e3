"""The Bus contract: every implementation (embedded SQLite, Apache Kafka) must pass all of it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.base import STATE_MAX_BYTES, Bus, Record, TopicPartition, TopicSpec, iter_records
from pipeline.errors import BusError
from tests.conftest import make_bus

WORKER = Path(__file__).with_name("crash_worker.py")
ROOT = Path(__file__).resolve().parents[2]


async def _read_all(bus: Bus, topic: str) -> list[Record]:
    out: list[Record] = []
    async with bus.consumer([topic], start="earliest") as c:
        async for batch in iter_records(c):
            out.extend(batch)
    return out


async def _read_settled(bus_factory: Callable[[], Bus], topic: str, expected: int, secs: float = 20.0) -> list[str]:
    """Every value of ``topic``, read again (up to ``secs``) while fewer than ``expected`` are visible.

    Kafka writes a committed transaction's markers asynchronously: a ``read_committed`` reader can
    briefly stop at a last stable offset short of the last commit. Loss still fails (it never
    arrives); a duplicate still fails (the count only grows).
    """
    deadline = time.monotonic() + secs
    while True:
        async with bus_factory() as bus:
            out = [r.value.decode() for r in await _read_all(bus, topic)]
        if len(out) >= expected or time.monotonic() > deadline:
            return out
        await asyncio.sleep(0.5)


async def _topic(bus: Bus, name: str, partitions: int = 2) -> str:
    await bus.ensure_topics([TopicSpec(name, partitions)])
    return name


async def test_ordering_per_key_and_no_loss(bus: Bus, unique: str) -> None:
    """Records with the same key come back in publish order, and every record comes back once."""
    topic = await _topic(bus, f"t-order-{unique}")
    async with bus.transaction(f"w-{unique}") as tx:
        for i in range(300):
            tx.send(topic, f"{i}".encode(), key=f"ws{i % 5}".encode())
    recs = await _read_all(bus, topic)
    assert sorted(int(r.value) for r in recs) == list(range(300))
    for k in range(5):
        seq = [int(r.value) for r in recs if r.key == f"ws{k}".encode()]
        assert seq == sorted(seq)
        assert len({r.partition for r in recs if r.key == f"ws{k}".encode()}) == 1


async def test_key_headers_and_timestamps_round_trip(bus: Bus, unique: str) -> None:
    """Key, headers (bytes, repeated names) and a non-decreasing timestamp survive the bus."""
    topic = await _topic(bus, f"t-hdr-{unique}", 1)
    before = int(time.time() * 1000) - 5000
    async with bus.transaction(f"w-{unique}") as tx:
        tx.send(topic, b"v1", key=b"k", headers=[("event_type", b"api_key.created"), ("x", b"\x00\xff")])
        tx.send(topic, b"v2", key=None, headers=[("traceparent", b"00-abc-def-01"), ("x", b"2")])
    recs = await _read_all(bus, topic)
    assert [r.value for r in recs] == [b"v1", b"v2"]
    assert recs[0].key == b"k" and recs[1].key is None
    assert recs[0].headers == (("event_type", b"api_key.created"), ("x", b"\x00\xff"))
    assert recs[1].header("traceparent") == b"00-abc-def-01"
    assert recs[0].timestamp_ms >= before and recs[1].timestamp_ms >= recs[0].timestamp_ms


async def test_transaction_is_atomic_on_failure(bus: Bus, unique: str) -> None:
    """A transaction that raises leaves no record, no state change and no offset commit."""
    topic = await _topic(bus, f"t-atom-{unique}")
    group = f"g-{unique}"
    async with bus.transaction(f"w-{unique}") as tx:
        tx.send(topic, b"kept", key=b"a")
        tx.put_state(f"s-{unique}", b"1")
    with pytest.raises(RuntimeError):
        async with bus.transaction(f"w-{unique}") as tx:
            tx.send(topic, b"lost", key=b"a")
            tx.put_state(f"s-{unique}", b"2")
            tx.commit_offsets(group, {TopicPartition(topic, 0): 1})
            raise RuntimeError("boom")
    assert [r.value for r in await _read_all(bus, topic)] == [b"kept"]
    assert await bus.get_state(f"s-{unique}") == b"1"
    assert await bus.committed(group, topic) == {}


async def test_records_state_and_offsets_commit_together(bus: Bus, unique: str) -> None:
    """A successful transaction makes records, state and group offsets visible together."""
    src = await _topic(bus, f"t-src-{unique}", 1)
    dst = await _topic(bus, f"t-dst-{unique}", 1)
    group = f"g-{unique}"
    async with bus.transaction(f"w-{unique}") as tx:
        tx.send(src, b"a", key=b"k")
        tx.send(src, b"b", key=b"k")
    async with bus.consumer([src], group=group) as c:
        recs: list[Record] = []
        while len(recs) < 2:
            recs += await c.poll(10, timeout_s=2)
        async with bus.transaction(f"w-{unique}") as tx:
            for r in recs:
                tx.send(dst, r.value.upper(), key=r.key)
            tx.put_state(f"s-{unique}", b"done")
            tx.commit_offsets(group, c.positions())
    assert [r.value for r in await _read_all(bus, dst)] == [b"A", b"B"]
    assert await bus.get_state(f"s-{unique}") == b"done"
    committed = await bus.committed(group, src)
    assert committed[TopicPartition(src, 0)] > recs[-1].offset


async def test_state_put_get_delete_and_prefix(bus: Bus, unique: str) -> None:
    """State keys can be written, overwritten, deleted and listed by prefix."""
    p = f"cursor/{unique}/"
    async with bus.transaction(f"w-{unique}") as tx:
        tx.put_state(p + "a", b"1")
        tx.put_state(p + "b", b"2")
        tx.put_state(f"other/{unique}", b"3")
    async with bus.transaction(f"w-{unique}") as tx:
        tx.put_state(p + "a", b"10")
        tx.put_state(p + "b", None)
    assert await bus.get_state(p + "a") == b"10"
    assert await bus.get_state(p + "b") is None
    assert await bus.state_items(p) == {p + "a": b"10"}


async def test_group_offsets_resume_and_readers_do_not_move_them(bus: Bus, unique: str) -> None:
    """A group resumes from its commit; a group-less reader never changes the group's offsets."""
    topic = await _topic(bus, f"t-grp-{unique}", 1)
    group = f"g-{unique}"
    async with bus.transaction(f"w-{unique}") as tx:
        for i in range(10):
            tx.send(topic, str(i).encode(), key=b"k")
    async with bus.consumer([topic], group=group) as c:
        got: list[Record] = []
        while len(got) < 4:
            got += await c.poll(4 - len(got), timeout_s=2)
        await c.commit()
    first = [int(r.value) for r in got]
    assert first == [0, 1, 2, 3]
    assert len(await _read_all(bus, topic)) == 10  # an independent reader
    async with bus.consumer([topic], group=group) as c2:
        rest: list[Record] = []
        async for batch in iter_records(c2):
            rest += batch
    assert [int(r.value) for r in rest] == list(range(4, 10))


async def test_seek_by_offset_and_by_time(bus: Bus, unique: str) -> None:
    """Seeking by offset and by timestamp starts at the right record."""
    topic = await _topic(bus, f"t-seek-{unique}", 1)
    async with bus.transaction(f"w-{unique}") as tx:
        for i in range(5):
            tx.send(topic, f"early-{i}".encode(), key=b"k")
    await asyncio.sleep(0.05)
    mark = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    async with bus.transaction(f"w-{unique}") as tx:
        for i in range(5):
            tx.send(topic, f"late-{i}".encode(), key=b"k")
    recs = await _read_all(bus, topic)
    tp = TopicPartition(topic, 0)
    async with bus.consumer([topic], start="earliest") as c:
        await c.seek(tp, recs[7].offset)
        got = await c.poll(1, timeout_s=2)
        assert got[0].value == b"late-2"
        await c.seek_to_time(mark)
        got = await c.poll(1, timeout_s=2)
        assert got[0].value == b"late-0"
        await c.seek_to_beginning()
        got = await c.poll(1, timeout_s=2)
        assert got[0].value == b"early-0"


async def test_start_latest_sees_only_new_records(bus: Bus, unique: str) -> None:
    """A consumer that starts at 'latest' sees only what is published after it started."""
    topic = await _topic(bus, f"t-latest-{unique}", 1)
    await _publish(bus, topic, [b"old"])
    async with bus.consumer([topic], start="latest") as c:
        assert await c.poll(10, timeout_s=0.2) == []
        await _publish(bus, topic, [b"new"])
        got: list[Record] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = await c.poll(10, timeout_s=1)
        assert [r.value for r in got] == [b"new"]


async def _publish(bus: Bus, topic: str, values: list[bytes]) -> None:
    async with bus.transaction("helper") as tx:
        for v in values:
            tx.send(topic, v, key=b"k")


async def test_concurrent_tasks_lose_nothing(bus: Bus, unique: str) -> None:
    """Many asyncio tasks publishing at once lose and duplicate nothing."""
    topic = await _topic(bus, f"t-conc-{unique}")

    async def writer(w: int) -> None:
        for i in range(20):
            async with bus.transaction(f"w-{unique}-{w}") as tx:
                tx.send(topic, f"{w}-{i}".encode(), key=f"{w}".encode())

    await asyncio.gather(*(writer(w) for w in range(8)))
    values = [r.value.decode() for r in await _read_all(bus, topic)]
    assert sorted(values) == sorted(f"{w}-{i}" for w in range(8) for i in range(20))


async def test_state_survives_reopen(bus_factory: Callable[[], Bus], unique: str) -> None:
    """Records, state and offsets are still there after the bus is closed and opened again."""
    async with bus_factory() as b1:
        topic = await _topic(b1, f"t-reopen-{unique}", 1)
        async with b1.transaction(f"w-{unique}") as tx:
            tx.send(topic, b"x", key=b"k")
            tx.put_state(f"s-{unique}", b"v")
            tx.commit_offsets(f"g-{unique}", {TopicPartition(topic, 0): 1})
    async with bus_factory() as b2:
        assert [r.value for r in await _read_all(b2, topic)] == [b"x"]
        assert await b2.get_state(f"s-{unique}") == b"v"
        assert (await b2.committed(f"g-{unique}", topic))[TopicPartition(topic, 0)] == 1


async def test_large_state_values(bus_factory: Callable[[], Bus], bus_kind: str, unique: str) -> None:
    """A 3 MiB state value (a busy audit cursor) commits and reloads; Kafka refuses one over its limit whole."""
    big = os.urandom(3 * 1024 * 1024)
    over = b"\0" * (STATE_MAX_BYTES + 1)
    async with bus_factory() as b1:
        topic = await _topic(b1, f"t-bigstate-{unique}", 1)
        async with b1.transaction(f"w-{unique}") as tx:
            tx.send(topic, b"x", key=b"k")
            tx.put_state(f"big-{unique}", big)
        if bus_kind == "kafka":
            with pytest.raises(BusError, match=rf"state value of 'over-{unique}' is [\d,]+ bytes, over the Kafka"):
                async with b1.transaction(f"w-{unique}") as tx:
                    tx.send(topic, b"y", key=b"k")
                    tx.put_state(f"over-{unique}", over)
        else:  # the embedded bus has no limit
            async with b1.transaction(f"w-{unique}") as tx:
                tx.put_state(f"over-{unique}", over)
    async with bus_factory() as b2:
        assert await b2.get_state(f"big-{unique}") == big
        assert await b2.get_state(f"over-{unique}") == (None if bus_kind == "kafka" else over)
        assert [r.value for r in await _read_all(b2, topic)] == [b"x"]


def _run_until_done(cfg: dict[str, Any], args: list[str], kills: int, seed: int) -> int:
    """Start the worker, SIGKILL it at random moments ``kills`` times, then let it finish."""
    rnd = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = 0
    for _ in range(kills + 50):
        proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(cfg), *args], env=env, cwd=ROOT)
        if killed < kills:
            try:
                proc.wait(timeout=rnd.uniform(0.3, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                continue
        else:
            proc.wait(timeout=120)
        if proc.returncode == 0:
            return killed
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"worker failed with exit code {proc.returncode}")
    raise AssertionError("worker never finished")


@pytest.mark.slow
async def test_killed_producer_loses_and_duplicates_nothing(
    bus_factory: Callable[[], Bus], bus_cfg: dict[str, Any], unique: str
) -> None:
    """kill -9 of a publishing process at random points, restarted each time: each record exactly once.

    The test's own bus is closed while the worker writes: the embedded bus has one writer process.
    """
    total = 400
    src, dst = f"t-crash-{unique}", f"t-crashdst-{unique}"
    async with bus_factory() as bus:
        await bus.ensure_topics([TopicSpec(src, 2), TopicSpec(dst, 2)])
    killed = await asyncio.to_thread(
        _run_until_done, bus_cfg, ["produce", str(total), src, dst, f"cursor-{unique}"], 6, 1
    )
    assert killed >= 1
    async with bus_factory() as bus:
        values = [r.value.decode() for r in await _read_all(bus, src)]
    assert len(values) == total, f"expected {total}, got {len(values)} (killed {killed} times)"
    assert sorted(values) == sorted(f"rec-{i}" for i in range(total))


@pytest.mark.slow
async def test_killed_transformer_is_exactly_once(
    bus_factory: Callable[[], Bus], bus_cfg: dict[str, Any], unique: str
) -> None:
    """kill -9 during consume-transform-produce: every input yields exactly one output."""
    total = 1000  # several seconds of work even on an idle machine, so the kills land mid-run
    src, dst = f"t-tsrc-{unique}", f"t-tdst-{unique}"
    async with bus_factory() as bus:
        await bus.ensure_topics([TopicSpec(src, 2), TopicSpec(dst, 2)])
        async with bus.transaction(f"seed-{unique}") as tx:
            for i in range(total):
                tx.send(src, f"{i}".encode(), key=f"k{i % 4}".encode())
    killed = await asyncio.to_thread(_run_until_done, bus_cfg, ["transform", "0", src, dst, unique], 6, 2)
    assert killed >= 1
    out = await _read_settled(bus_factory, dst, total)
    assert sorted(out) == sorted(f"out-{i}" for i in range(total)), f"killed {killed} times"


@pytest.mark.slow
def test_second_process_reads_while_writing(bus_cfg: dict[str, Any], unique: str, tmp_path: Path) -> None:
    """A reader in another process sees a consistent prefix while a writer process publishes."""
    src = f"t-live-{unique}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    async def create() -> None:
        async with make_bus(bus_cfg) as b:
            await b.ensure_topics([TopicSpec(src, 2), TopicSpec(src + "-x", 2)])

    asyncio.run(create())  # the reader opens read-only: it may not create the file or the topic
    writer = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(bus_cfg), "produce", "300", src, src + "-x", f"c-{unique}"],
        env=env,
        cwd=ROOT,
    )
    reader_code = (
        "import asyncio,json,sys\n"
        "from tests.conftest import make_bus\n"
        "from pipeline.bus.base import iter_records\n"
        "async def m():\n"
        "  seen=[]\n"
        "  async with make_bus(json.loads(sys.argv[1]), read_only=True) as b:\n"
        "    for _ in range(40):\n"
        "      vals=[]\n"
        f"      async with b.consumer(['{src}'],start='earliest') as c:\n"
        "        async for batch in iter_records(c): vals+= [r.value for r in batch]\n"
        "      assert len(vals)==len(set(vals)), 'duplicate'\n"
        "      seen.append(len(vals))\n"
        "      if len(vals)>=300: break\n"
        "      await asyncio.sleep(0.1)\n"
        "  print(json.dumps(seen))\n"
        "asyncio.run(m())\n"
    )
    reader = subprocess.run(
        [sys.executable, "-c", reader_code, json.dumps(bus_cfg)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert writer.wait(timeout=120) == 0
    assert reader.returncode == 0, reader.stderr[-2000:]
    seen = json.loads(reader.stdout.strip().splitlines()[-1])
    assert seen == sorted(seen) and seen[-1] <= 300
