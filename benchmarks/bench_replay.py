"""Replay-to-JSONL throughput beside a raw read of the same records, same run (target ≥ 70%).

Embedded bus: ``pipeline.replay.scan`` (the code ``instantly-audit replay --format jsonl``
runs) writing each record's bytes as a JSON line, beside raw ``sqlite3`` reading the same
rows and writing the same lines. Kafka (when KAFKA_BOOTSTRAP is set): ``scan`` over the
Kafka bus beside a raw ``AIOKafkaConsumer.getmany`` loop writing the same lines. A filtered
replay (``--type 'audit.*'``, which decodes every record) is printed for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KTP

from benchmarks.bench_bus import make_payloads
from pipeline.bus.base import EVENTS_TOPIC, Bus
from pipeline.bus.kafka import KafkaBus
from pipeline.bus.kafka_client import FETCH_PARTITION_BYTES
from pipeline.bus.sqlite import SqliteBus
from pipeline.replay.scan import ReplayStats, Selection, scan, scan_values

KEY = b"019cc043-e2f1-7def-8b07-0aab88328dad"


async def fill(bus: Bus, payloads: list[bytes]) -> None:
    for i in range(0, len(payloads), 1000):
        async with bus.transaction("bench") as tx:
            for p in payloads[i : i + 1000]:
                tx.send(EVENTS_TOPIC, p, key=KEY, headers=[("event_type", b"audit.user_login")])


async def replay_jsonl(bus: Bus, out: IO[bytes], sel: Selection) -> tuple[float, int]:
    """What `instantly-audit replay --format jsonl` runs."""
    t0 = time.perf_counter()
    n = 0
    if sel.filters_content:
        async for batch in scan(bus, sel, ReplayStats()):
            out.write(b"".join(r.value + b"\n" for r, _ in batch))
            n += len(batch)
    else:
        async for values in scan_values(bus, sel, ReplayStats()):
            out.write(b"\n".join(values) + b"\n")
            n += len(values)
    return n / (time.perf_counter() - t0), n


def raw_sqlite(path: Path, out: IO[bytes]) -> float:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    t0 = time.perf_counter()
    cur = db.execute("SELECT value FROM records ORDER BY id")
    n = 0
    while rows := cur.fetchmany(5000):
        out.write(b"\n".join(r[0] for r in rows) + b"\n")
        n += len(rows)
    dt = time.perf_counter() - t0
    db.close()
    return n / dt


async def raw_kafka(boot: str, topic: str, out: IO[bytes], expected: int) -> float:
    c = AIOKafkaConsumer(
        bootstrap_servers=boot,
        isolation_level="read_committed",
        max_poll_records=5000,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
    )
    await c.start()
    try:
        tps = [KTP(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        n = 0
        t0 = time.perf_counter()
        while n < expected:
            got = await c.getmany(timeout_ms=1000, max_records=5000)
            for msgs in got.values():
                out.write(b"\n".join(m.value for m in msgs) + b"\n")
                n += len(msgs)
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    payloads = make_payloads(args.events)
    print(f"replay to JSON Lines, {args.events} events, median of {args.rounds} paired rounds")
    print(f"{'bus':<10}{'replay (rec/s)':>16}{'raw read (rec/s)':>18}{'ratio':>8}{'filtered (rec/s)':>18}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bus.db"
        async with SqliteBus(path) as bus:
            await fill(bus, payloads)
        rep, raw, filt = [], [], []
        for _ in range(args.rounds):
            with open(os.devnull, "wb") as null:  # noqa: ASYNC230 - /dev/null, never blocks
                raw.append(raw_sqlite(path, null))
                async with SqliteBus(path, read_only=True) as ro:
                    r, n = await replay_jsonl(ro, null, Selection())
                    assert n == args.events
                    rep.append(r)
                    f, _ = await replay_jsonl(ro, null, Selection(types=("audit.*",)))
                    filt.append(f)
        ratio = statistics.median(a / b for a, b in zip(rep, raw, strict=True))
        print(
            f"{'embedded':<10}{statistics.median(rep):>16,.0f}{statistics.median(raw):>18,.0f}"
            f"{ratio:>8.0%}{statistics.median(filt):>18,.0f}"
        )
    boot = os.environ.get("KAFKA_BOOTSTRAP")
    if not boot:
        print("kafka: skipped (KAFKA_BOOTSTRAP not set)")
        return
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    async with KafkaBus([boot], topic_prefix=prefix, partitions=2) as kbus:
        await fill(kbus, payloads)
        rep, raw, filt = [], [], []
        for _ in range(args.rounds):
            with open(os.devnull, "wb") as null:  # noqa: ASYNC230 - /dev/null, never blocks
                raw.append(await raw_kafka(boot, prefix + EVENTS_TOPIC, null, args.events))
                r, n = await replay_jsonl(kbus, null, Selection())
                assert n == args.events
                rep.append(r)
                f, _ = await replay_jsonl(kbus, null, Selection(types=("audit.*",)))
                filt.append(f)
        ratio = statistics.median(a / b for a, b in zip(rep, raw, strict=True))
        print(
            f"{'kafka':<10}{statistics.median(rep):>16,.0f}{statistics.median(raw):>18,.0f}"
            f"{ratio:>8.0%}{statistics.median(filt):>18,.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
