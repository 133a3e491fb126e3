"""The late-record sweep: re-read days of audit log and publish, exactly once, what was never published.

The audit cursor publishes a record once and de-duplicates within ``audit_overlap_secs``; a
record that appears later than that behind the newest (Instantly documents neither the order
nor the inclusivity of its audit log) was never published. With ``audit_sweep_interval_secs``
set, the poller keeps per-hour ledgers of the ids it publishes
(:mod:`connectors.instantly.ledger`) and, when the interval has passed, re-reads the audit log
from ``audit_sweep_days`` ago (at most ``audit_sweep_max_requests`` pages). For each hour with
records whose ids are not in the cursor's ``seen`` set, the listing's sketch minus the hour's
ledger names the ids listed but never published; those records are published — with the ledger
update, the sweep time and one ``pipeline.late_records`` event (how many, how late, which hours)
— in one transaction, so a crash re-runs the sweep without duplicates.

Limits: only hours after the ledgers started (``covered_from``) are swept; an hour whose
difference is too large to decode (more than ~20 ids apart, e.g. records that left Instantly's
retention) is reported in the event's ``undecodable_hours`` and not published from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.instantly.api import AUDIT_LOGS
from connectors.instantly.audit_cursor import DATE_SLACK_SECS, AuditCursor, record_id, record_time
from connectors.instantly.client import InstantlyClient
from connectors.instantly.cursor_state import BUCKET_SECS, bucket_label
from connectors.instantly.ledger import Sketch, id_hash
from connectors.instantly.normalize import pipeline_event
from pipeline.clock import SYSTEM_CLOCK, Clock, format_time
from pipeline.observability.logs import get_logger

log = get_logger("instantly.sweep")
LATE_RECORDS = "pipeline.late_records"


@dataclass(frozen=True)
class SweepSettings:
    """When and how far the sweep reads."""

    interval_secs: float
    days: float = 7.0
    max_requests: int = 100

    def due(self, cursor: AuditCursor, now: float) -> bool:
        """Whether a sweep runs at ``now``."""
        return cursor.last_sweep is None or now - cursor.last_sweep >= self.interval_secs


@dataclass
class SweepResult:
    """What one sweep found."""

    records: list[tuple[dict[str, Any], float]]
    undecodable: list[int]
    pages: int
    truncated: bool


async def find_late(
    client: InstantlyClient, cursor: AuditCursor, settings: SweepSettings, *, now: float, page_size: int
) -> SweepResult:
    """List the swept range and return the records never published (oldest first).

    Raises:
        SourceError: a page could not be read.
    """
    start = max(now - settings.days * 86_400, cursor.covered_from or 0.0)
    first_hour = int(start // BUCKET_SECS) + (0 if start % BUCKET_SECS == 0 else 1)
    day = datetime.fromtimestamp(max(0.0, start - DATE_SLACK_SECS), tz=UTC).date()
    by_hour: dict[int, list[tuple[dict[str, Any], float, str]]] = {}
    pages, truncated = 0, False
    async with aclosing(client.paginate(AUDIT_LOGS.path, {"start_date": day.isoformat()}, limit=page_size)) as it:
        async for page in it:
            pages += 1
            for record in page:
                rid, ts = record_id(record), record_time(record)
                if rid is not None and ts is not None and int(ts // BUCKET_SECS) >= first_hour:
                    by_hour.setdefault(int(ts // BUCKET_SECS), []).append((record, ts, rid))
            if pages >= settings.max_requests:
                truncated = True
                break
    found: dict[str, tuple[dict[str, Any], float]] = {}
    undecodable: list[int] = []
    ledgers = cursor.ledgers.hours if cursor.ledgers is not None else {}
    for hour, listed in sorted(by_hour.items()):
        if all(rid in cursor.seen for _r, _t, rid in listed):
            continue
        sketch = Sketch()
        sketch.add_ids({rid for _r, _t, rid in listed})
        diff = sketch.minus(ledgers.get(hour) or Sketch()).decode()
        if diff is None:
            undecodable.append(hour)
            continue
        for record, ts, rid in listed:
            if rid not in cursor.seen and id_hash(rid) in diff[0]:
                found.setdefault(rid, (record, ts))
    records = sorted(found.values(), key=lambda rt: rt[1])
    return SweepResult(records, undecodable, pages, truncated)


async def publish_late(
    pub: Any,
    cursor: AuditCursor,
    result: SweepResult,
    settings: SweepSettings,
    batch: Any,
    *,
    now: float,
    clock: Clock = SYSTEM_CLOCK,
    extra_records: Sequence[tuple[str, bytes, bytes | None, tuple[tuple[str, bytes], ...]]] = (),
    extra_state: Mapping[str, bytes | None] | None = None,
) -> tuple[int, int]:
    """Publish the records a sweep found (``batch``: them prepared by
    :func:`~connectors.instantly.streams.prepare_audit_batch`), the ``pipeline.late_records``
    event and the cursor in one transaction; return (records published, pipeline events published).
    ``extra_records`` / ``extra_state`` (the completeness receipts the sweep changed) join the
    same transaction.

    Raises:
        BusError: the transaction failed (nothing was written; the next poll sweeps again).
    """
    observed_at = format_time(now)
    cursor.mark((str(r["id"]), ts) for r, ts in result.records)
    cursor.last_sweep = now
    if cursor.ledgers is not None:
        cursor.ledgers.prune(now - settings.days * 86_400 - BUCKET_SECS)
    event = None
    if result.records or result.undecodable:
        event = _event(pub, result, now=clock.now(), observed_at=observed_at, high_water=cursor.high_water)
    async with pub.bus.transaction(pub.txn_id) as tx:
        for topic, value, key, headers in [*batch.records, *extra_records]:
            tx.send(topic, value, key=key, headers=headers)
        if event is not None:
            pub.send(tx, event)
        for k, v in (cursor.state_writes() | dict(extra_state or {})).items():
            tx.put_state(k, v)
    if result.records:
        log.warning(
            "The sweep found audit records that were never published; published now.",
            extra={"source": pub.source_id, "count": len(result.records), "hours": len(_hours(result.records))},
        )
    return batch.events, 1 if event is not None else 0


def _hours(records: Sequence[tuple[dict[str, Any], float]]) -> list[str]:
    return sorted({bucket_label(int(ts // BUCKET_SECS)) for _r, ts in records})


def _event(pub: Any, result: SweepResult, *, now: float, observed_at: str, high_water: float | None) -> Any:
    ages = [now - ts for _r, ts in result.records]
    behind = [high_water - ts for _r, ts in result.records] if high_water is not None else []
    return pipeline_event(
        type=LATE_RECORDS,
        workspace=pub.workspace,
        observed_at=observed_at,
        stream=AUDIT_LOGS.name,
        natural_key=(LATE_RECORDS, observed_at),
        attributes={
            "count": len(result.records),
            "max_late_secs": round(max(ages), 3) if ages else None,
            "max_behind_high_water_secs": round(max(behind), 3) if behind else None,
            "oldest": format_time(min(ts for _r, ts in result.records)) if result.records else None,
            "hours": _hours(result.records),
            "undecodable_hours": [bucket_label(h) for h in result.undecodable],
            "pages": result.pages,
            "truncated": result.truncated,
        },
    )
