"""State bytes per audit page as the overlap window fills: 10k, 100k, 1M ids (issue 19).

For each window size the cursor's ids-seen set is filled to that many ids (spread over a two-hour
window, written through the cursor's own state writes in bulk transactions: the same chunks a
long run leaves), then the cursor is loaded from the bus as a restarted poller does and pages of
1,000 new audit records are published through the poller's page path
(``connectors.instantly.streams._publish_audit_page``: normalize, the page's events and the
cursor's changed state in one transaction). Printed per size: state bytes written by each page's
transaction (must stay flat), the largest state value in the store (must stay < 1 MiB), the
number of state keys, the load time, and — for contrast — the size the single-value cursor of
format 1 would have had to be rewritten on every page.

Run: ``python -m benchmarks.bench_cursor_state [--bus kafka] [--sizes 10000,100000,1000000]``
(Kafka needs KAFKA_BOOTSTRAP).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

from connectors.instantly.audit_cursor import AuditCursor
from connectors.instantly.streams import AuditWindow, Publisher, _publish_audit_page, load_cursor
from connectors.instantly.txn_pipeline import TxnPipeline
from pipeline.bus.base import Bus, Transaction
from pipeline.clock import format_time
from schemas import WorkspaceRef

WS = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme Outreach")
SOURCE = "bench"
OVERLAP = 3600.0
NOW = 1_780_000_000.0
PAGES = 3
PAGE = 1000


class MeasuredBus:
    """A bus whose transactions record the bytes of state they write (keys + values)."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.state_bytes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)

    def transaction(self, txn_id: str) -> AbstractAsyncContextManager[Transaction]:
        return self._txn(txn_id)

    @asynccontextmanager
    async def _txn(self, txn_id: str) -> AsyncIterator[Transaction]:
        async with self.bus.transaction(txn_id) as tx:
            yield tx
            state = cast(Any, tx).state
            self.state_bytes.append(sum(len(k) + len(v or b"") for k, v in state.items()))


def record(i: int, ts: float) -> dict[str, object]:
    """An audit-log record shaped like the API's."""
    return {
        "id": f"019d{i:012x}-7def-8b07-{i:012x}",
        "timestamp": format_time(ts),
        "organization_id": WS.id,
        "activity_type": 1 + i % 12,
        "ip_address": "203.0.113.9",
        "from_api": False,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "user_id": f"019cc043-0000-7000-8000-{i % 500:012x}",
        "user_name": "Jane Doe",
        "affected_count": 1,
        "audit_metadata": {},
    }


async def fill(bus: Bus, cursor: AuditCursor, start: int, stop: int) -> None:
    """Mark ids ``start..stop`` as seen (timestamps spread over the window) and store the chunks."""
    step = 20_000
    for lo in range(start, stop, step):
        hi = min(stop, lo + step)
        cursor.mark((f"019c{i:012x}-7def-8b07-{i:012x}", NOW - 7000 + 6900 * (i / 1_000_000)) for i in range(lo, hi))
        async with bus.transaction(f"poller-{SOURCE}") as tx:
            for k, v in cursor.state_writes().items():
                tx.put_state(k, v)


async def run(bus: Bus, sizes: list[int]) -> None:
    measured = MeasuredBus(bus)
    pub = Publisher(cast(Bus, measured), f"poller-{SOURCE}", SOURCE, WS)
    await bus.fence(pub.txn_id)
    cursor = await load_cursor(bus, SOURCE)
    cursor.high_water = NOW
    filled, nxt = 0, 0
    window = AuditWindow(now=NOW, observed_at=format_time(NOW), overlap_secs=2 * OVERLAP, page_size=PAGE)
    head = ("ids in window", "bytes/page (each)", "largest value", "keys", "load s", "v1 value")
    print(f"{head[0]:>14} {head[1]:>30} {head[2]:>14} {head[3]:>6} {head[4]:>7} {head[5]:>12}")
    for size in sizes:
        await fill(bus, cursor, filled, size)
        filled = size
        t0 = time.perf_counter()
        cursor = await load_cursor(bus, SOURCE)
        load_s = time.perf_counter() - t0
        measured.state_bytes.clear()
        counts: dict[str, int] = {}
        async with TxnPipeline(cast(Bus, measured), pub.txn_id) as line:
            for _ in range(PAGES):
                page = [record(nxt + i, NOW - 1 + i / PAGE) for i in range(PAGE)]
                nxt += PAGE
                await _publish_audit_page(pub, cursor, page, window, counts, line, window.observed_at)
            await line.drain()
        assert counts["audit_logs"] == PAGES * PAGE, counts
        items = await bus.state_items(f"cursor/{SOURCE}/")
        largest = max(len(v) for v in items.values())
        v1 = len(cursor.to_bytes())
        per_page = ", ".join(f"{b:,}" for b in measured.state_bytes)
        print(f"{len(cursor.seen):>14,} {per_page:>30} {largest:>14,} {len(items):>6} {load_s:>7.2f} {v1:>12,}")
        assert largest < 1024 * 1024, "a state value passed 1 MiB"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bus", choices=["sqlite", "kafka"], default="sqlite")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# bench_cursor_state bus={args.bus} python={sys.version.split()[0]} machine={platform.machine()}")
    print(f"# {os.cpu_count()} CPUs; {PAGES} pages of {PAGE} new records per size")
    if args.bus == "kafka":
        from pipeline.bus.kafka import KafkaBus

        boot = os.environ["KAFKA_BOOTSTRAP"]
        prefix = f"bench-{uuid.uuid4().hex[:6]}."
        async with KafkaBus([boot], transactional_id_prefix=prefix, topic_prefix=prefix) as kbus:
            await run(kbus, sizes)
        return
    from pipeline.bus.sqlite import SqliteBus

    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteBus(Path(tmp) / "bus.db") as sbus:
            await run(sbus, sizes)


if __name__ == "__main__":
    asyncio.run(main())
