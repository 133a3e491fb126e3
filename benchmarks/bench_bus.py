"""Embedded bus throughput against raw sqlite3 in the same run.

Publish: events/s through ``SqliteBus`` transactions of 500 records (same synchronous
setting and WAL mode as the baseline) vs raw ``executemany`` inserts of the same bytes
(key, value and the encoded headers) in transactions of the same size. Replay read: records/s
through a group-less consumer vs a raw ``SELECT`` of the same rows.
Targets: publish ≥ 70% of raw; replay ≥ 100k records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.bus.base import EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.bus.sqlite_format import encode_headers
from schemas import Actor, Event, Source, Target, WorkspaceRef


def make_payloads(n: int) -> list[bytes]:
    """Realistic event bytes (~700 B each)."""
    ws = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme Outreach")
    out = []
    for i in range(n):
        e = Event.build(
            type="audit.user_login",
            time="2026-03-05T23:09:47.337Z",
            observed_at="2026-03-05T23:10:00.000Z",
            workspace=ws,
            source=Source("audit_log", "audit_logs", f"r{i}"),
            natural_key=(f"r{i}",),
            actor=Actor(
                user_id=f"u{i % 100}", user_name="Jane Doe", ip="203.0.113.9", user_agent="Mozilla/5.0", via_api=False
            ),
            target=Target("user", f"u{i % 100}", None),
            attributes={"activity_code": 1, "activity_label": "User login", "affected_count": 1},
            raw={"id": f"r{i}", "activity_type": 1, "ip_address": "203.0.113.9", "audit_metadata": {}},
        )
        out.append(e.to_json())
    return out


def raw_publish(path: Path, payloads: list[bytes], batch: int, sync: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, key BLOB, value BLOB NOT NULL, headers BLOB)")
    key = b"019cc043-e2f1-7def-8b07-0aab88328dad"
    hdr = encode_headers([("event_type", b"audit.user_login")])  # the same bytes the bus stores
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO raw (key, value, headers) VALUES (?, ?, ?)", [(key, p, hdr) for p in payloads[i : i + batch]]
        )
        db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.close()
    return len(payloads) / dt


def raw_read(path: Path) -> float:
    db = sqlite3.connect(path)
    t0 = time.perf_counter()
    n = 0
    cur = db.execute("SELECT id, key, value, headers FROM raw ORDER BY id")
    while rows := cur.fetchmany(1000):
        n += len(rows)
    dt = time.perf_counter() - t0
    db.close()
    return n / dt


async def bus_publish(path: Path, payloads: list[bytes], batch: int, sync: str) -> float:
    key = b"019cc043-e2f1-7def-8b07-0aab88328dad"
    async with SqliteBus(path, synchronous=sync) as bus:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for i in range(0, len(payloads), batch):
            async with bus.transaction("bench") as tx:
                for p in payloads[i : i + batch]:
                    tx.send(EVENTS_TOPIC, p, key=key, headers=[("event_type", b"audit.user_login")])
        return len(payloads) / (time.perf_counter() - t0)


async def bus_read(path: Path) -> tuple[float, int]:
    async with SqliteBus(path) as bus:
        t0 = time.perf_counter()
        n = 0
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as c:
            async for recs in iter_records(c, batch=5000):
                n += len(recs)
        return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--sync", choices=["full", "normal"], default="full")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    payloads = make_payloads(args.events)
    # Interleave rounds and keep medians: fsync time on a shared machine swings a lot.
    pubs, raws, reads, raw_reads = [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            raws.append(raw_publish(Path(d) / "raw.db", payloads, args.batch, args.sync))
            pubs.append(asyncio.run(bus_publish(Path(d) / "bus.db", payloads, args.batch, args.sync)))
            raw_reads.append(raw_read(Path(d) / "raw.db"))
            r, n = asyncio.run(bus_read(Path(d) / "bus.db"))
            reads.append(r)
            assert n == args.events
    ratios = sorted(p / r for p, r in zip(pubs, raws, strict=True))
    raw_rate, bus_rate = statistics.median(raws), statistics.median(pubs)
    raw_r, read_rate = statistics.median(raw_reads), statistics.median(reads)
    size = sum(map(len, payloads)) / len(payloads)
    print(f"embedded bus, {args.events} events of ~{size:.0f} B, transactions of {args.batch}, synchronous={args.sync}")
    print(f"{'measure':<22}{'bus':>14}{'raw sqlite3':>14}{'ratio':>8}")
    print(
        f"{'publish (events/s)':<22}{bus_rate:>14,.0f}{raw_rate:>14,.0f}{statistics.median(ratios):>8.0%}"
        f"   target >= 70% (median of {args.rounds} paired rounds)"
    )
    print(
        f"{'replay read (rec/s)':<22}{read_rate:>14,.0f}{raw_r:>14,.0f}{read_rate / raw_r:>8.0%}   target >= 100,000/s"
    )


if __name__ == "__main__":
    main()
