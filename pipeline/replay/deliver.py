"""``replay --to SINK``: re-deliver a range into a configured sink after an outage.

Replay sends straight to the sink (no consumer group, no offsets): deliveries carry the
original event/alert ids, so destinations that de-duplicate (Elasticsearch ``_id``,
PagerDuty ``dedup_key``, Splunk with the id field) keep exactly one copy. Failed
deliveries are retried with backoff; what still fails is reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from pipeline.bus.base import Bus
from pipeline.delivery.base import Delivery
from pipeline.delivery.filters import SinkFilter
from pipeline.delivery.registry import build_sink
from pipeline.delivery.runner import decode
from pipeline.errors import PipelineError
from pipeline.replay.scan import ReplayStats, Selection, scan


async def redeliver(
    bus: Bus,
    cfg: Any,
    sel: Selection,
    stats: ReplayStats,
    sink_id: str,
    progress: Callable[[int, int], None] | None = None,
    *,
    attempts: int = 5,
) -> int:
    """Send the selected records to ``sink_id``; return the exit code (1 if anything was not delivered)."""
    scfg = cfg.sinks[sink_id]
    subscription = SinkFilter(scfg)
    if not subscription.reads(sel.topic):
        print(f"replay --to {sink_id}: the sink does not read {sel.topic} (topics: {sorted(scfg.topics)}); "
              "nothing to deliver", file=sys.stderr)  # fmt: skip
        return 0
    sink = build_sink(sink_id, scfg)
    delivered = duplicates = failed = filtered = 0
    async with sink:
        async for batch in scan(bus, sel, stats, progress=progress, batch=scfg.batch_max_records):
            pending: list[Delivery] = []
            for rec, _ in batch:
                d = decode(rec)
                if isinstance(d, Delivery):
                    if subscription.keep(d):
                        pending.append(d)
                    else:
                        filtered += 1
            for attempt in range(attempts):
                if not pending:
                    break
                try:
                    result = await sink.send(pending)
                except PipelineError as err:
                    if not err.retriable or attempt == attempts - 1:
                        failed += len(pending)
                        print(f"replay --to {sink_id}: batch failed: {err}", file=sys.stderr)
                        pending = []
                        break
                    await asyncio.sleep(min(err.retry_after or 0.5 * 2**attempt, 30))
                    continue
                duplicates += result.duplicates
                bad = {id(f.delivery) for f in result.failures}
                delivered += len(pending) - len(bad)
                retry = [f.delivery for f in result.failures if f.retriable]
                for f in result.failures:
                    if not f.retriable:
                        failed += 1
                        print(f"replay --to {sink_id}: {f.delivery.id}: {f.error}", file=sys.stderr)
                pending = retry
                if pending:
                    await asyncio.sleep(0.5 * 2**attempt)
            failed += len(pending)
    print(
        f"replay --to {sink_id}: delivered {delivered} (of which {duplicates} already present), failed {failed}, "
        f"filtered out by the sink's types/min_severity {filtered}" + stats.deleted_note(),
        file=sys.stderr,
    )
    return 1 if failed else 0
