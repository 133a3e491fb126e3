"""Turn the audit cursor's pending hour ledgers into a transaction's receipts, state writes and metrics.

:mod:`connectors.instantly.receipts` keeps the per-hour counts; here they become Receipt v1 records
for ``instantly.receipts.v1`` (key ``<workspace id>/<hour>``), handed to the transaction that
writes the state they belong to, and a callback that counts them once that transaction committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.instantly.api import AUDIT_LOGS
from connectors.instantly.cursor_state import BUCKET_SECS
from connectors.instantly.receipts import HourLedger, HourReceipts
from pipeline.bus.base import RECEIPTS_TOPIC, Header
from pipeline.clock import format_time
from schemas.receipt import CHANGED_AFTER_CLOSE, INTERRUPTED, Receipt, ReceiptSource, hour_label

BusRecord = tuple[str, bytes, bytes | None, tuple[Header, ...]]


def receipt(pub: Any, bucket: int, ledger: HourLedger, *, now: float) -> Receipt:
    """The Receipt v1 of one hour's ledger (``pub``: the stream's :class:`~connectors.instantly.streams.Publisher`)."""
    return Receipt(
        workspace=pub.workspace,
        source=ReceiptSource("instantly", pub.source_id, AUDIT_LOGS.name),
        hour=hour_label(bucket * BUCKET_SECS),
        seen=ledger.seen,
        published=ledger.published,
        dead_lettered=ledger.dead_lettered,
        late=ledger.late,
        id_hash=f"{ledger.id_hash:016x}",
        closed=ledger.closed_at is not None,
        first_closed_at=format_time(ledger.closed_at) if ledger.closed_at is not None else None,
        revision=ledger.revision,
        interrupted=ledger.interrupted,
        updated_at=format_time(now),
    )


@dataclass
class ReceiptWrites:
    """What a transaction adds for the receipts: records, state writes, and what to count after commit."""

    records: list[BusRecord] = field(default_factory=list)
    state: dict[str, bytes | None] = field(default_factory=dict)
    committed: Callable[[], None] = lambda: None


def receipt_writes(pub: Any, receipts: HourReceipts | None, *, now: float) -> ReceiptWrites:
    """The pending receipts of ``receipts`` (none when ``None``), handed out once."""
    if receipts is None:
        return ReceiptWrites()
    flushed = receipts.flush()
    out: list[BusRecord] = []
    for bucket, ledger in flushed.hours:
        r = receipt(pub, bucket, ledger, now=now)
        out.append((RECEIPTS_TOPIC, r.to_json(), r.key, ()))
    if not out and not flushed.state:
        return ReceiptWrites()
    tel = pub.telemetry
    wid = pub.workspace.id if pub.metric_workspace_id is None else pub.metric_workspace_id

    def committed() -> None:
        if out:
            tel.receipts_published(pub.source_id, wid, len(out), workspace=pub.source_id)
        # Every reason is shown from the first receipt on, at 0 until a gap: a series born at 1 has
        # no earlier sample, and `increase(…[24h]) > 0` would never see a workspace's first gap.
        for reason in {CHANGED_AFTER_CLOSE: 0, INTERRUPTED: 0, **flushed.gaps}:
            tel.gap_hours(pub.source_id, wid, reason, flushed.gaps.get(reason, 0), workspace=pub.source_id)

    return ReceiptWrites(out, flushed.state, committed)
