"""``replay --to SINK``: re-deliver a range into a configured sink after an outage.

Replay sends straight to the sink (no consumer group, no offsets): deliveries carry the
original event/alert ids, so destinations that de-duplicate (Elasticsearch ``_id``,
PagerDuty ``dedup_key``, Splunk with the id field) keep exactly one copy. Failed
deliveries are retried with backoff; what still fails is reported, never silently dropped.

A sink whose destination keeps one state per key (:class:`~pipeline.delivery.base.CollapsingSink`:
PagerDuty, one alert per dedup key) gets only the last record of each key in the whole range,
in batches of its ``batch_max_records``: PagerDuty folds a trigger into an *open* alert only, so
a condition's trigger replayed a batch before its resolve would open a new incident and page
someone for a condition closed long ago. The others are counted as superseded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from pipeline.bus.base import Bus
from pipeline.delivery.base import CollapsingSink, Delivery
from pipeline.delivery.batches import mistyped
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
    delivered = duplicates = failed = filtered = superseded = 0

    async def selected() -> AsyncIterator[list[Delivery]]:
        nonlocal filtered
        async for batch in scan(bus, sel, stats, progress=progress, batch=scfg.batch_max_records):
            kept: list[Delivery] = []
            for rec, _ in batch:
                d = decode(rec)
                if isinstance(d, Delivery):
                    if subscription.keep(d):
                        kept.append(d)
                    else:
                        filtered += 1
            yield kept

    async def batches() -> AsyncIterator[list[Delivery]]:
        nonlocal superseded
        if not isinstance(sink, CollapsingSink):
            async for kept in selected():
                yield kept
            return
        everything = [d async for kept in selected() for d in kept]
        keys = [sink.collapse_key(d) for d in everything]
        last = {key: i for i, key in enumerate(keys) if key is not None}
        survivors = [
            d for i, (d, key) in enumerate(zip(everything, keys, strict=True)) if key is None or last[key] == i
        ]
        superseded = len(everything) - len(survivors)
        for start in range(0, len(survivors), scfg.batch_max_records):
            yield survivors[start : start + scfg.batch_max_records]

    async with sink:
        async for pending in batches():
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
                except Exception:
                    # A record that is not a valid Event/Alert (decode() leaves field types unchecked) can make
                    # the sink's format raise: report it and send the rest; anything else is a sink bug.
                    invalid = [(d, why) for d in pending if (why := mistyped(d)) is not None]
                    if not invalid:
                        raise
                    for d, why in invalid:
                        failed += 1
                        print(f"replay --to {sink_id}: {d.id}: {why}", file=sys.stderr)
                    dropped = {id(d) for d, _ in invalid}
                    pending = [d for d in pending if id(d) not in dropped]
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
    replaced = f", superseded by a later record of the same key {superseded}" if superseded else ""
    if getattr(sink, "deduplicates_by_id", False):  # a sink that can tell says so (Elasticsearch 409s, …)
        present = f" (of which {duplicates} already present)"
        twice = ""
    else:  # JSONL, Splunk HEC, syslog, a webhook: "0 already present" would be a guess
        present = ""
        twice = (
            f"; {scfg.type} does not de-duplicate by id: records it already had are there twice "
            "(de-duplicate on the id field when searching)"
            if delivered
            else ""
        )
    print(
        f"replay --to {sink_id}: delivered {delivered}{present}, failed {failed}, "
        f"filtered out by the sink's types/min_severity {filtered}{replaced}{twice}" + stats.deleted_note(),
        file=sys.stderr,
    )
    return 1 if failed else 0
