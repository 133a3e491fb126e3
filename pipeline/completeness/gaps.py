"""Find the hours with gaps in the completeness receipts (``instantly.receipts.v1``).

A source publishes a Receipt v1 (:mod:`schemas.receipt`) per workspace and UTC hour each time a
transaction changes that hour's ledger; the newest one of a key (highest ``revision``, then the
latest on the topic) is the hour's current ledger. An hour has a *gap* when its ledger changed
after it first closed (``revision`` > 1: records appeared, or were published, after the source's
cursor had moved past the hour by its overlap window) or when the source did not poll during part
of it (``interrupted``). ``instantly-audit gaps`` lists them; ``replay --gaps`` / ``--hours``
re-delivers the events of exactly those hours (:func:`hour_keys`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.bus.base import RECEIPTS_TOPIC, Bus, iter_records
from pipeline.errors import BusError, ConfigError
from schemas.errors import RecordError
from schemas.receipt import HOUR_SECS, Receipt, parse_hour

HourKey = tuple[str, str, int]
"""(workspace id, source stream, hour number = epoch seconds // 3600): what replay selects by."""


@dataclass
class ReceiptScan:
    """The newest receipt of every key in range, and how many records could not be decoded."""

    receipts: list[Receipt]
    undecodable: int = 0
    topic_missing: bool = False


async def read_receipts(
    bus: Bus,
    *,
    since: float | None = None,
    until: float | None = None,
    workspaces: Sequence[str] = (),
) -> ReceiptScan:
    """The current receipt of each workspace/hour whose hour starts in ``[since, until)``.

    ``workspaces``: keep only these (a workspace id or the source's config id). A bus without the
    receipts topic (written before receipts existed) holds none.

    Raises:
        BusError: the bus could not be read.
    """
    try:
        await bus.partitions(RECEIPTS_TOPIC)
    except BusError:
        return ReceiptScan([], topic_missing=True)
    newest: dict[bytes, Receipt] = {}
    undecodable = 0
    async with bus.consumer([RECEIPTS_TOPIC], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            for rec in batch:
                try:
                    receipt = Receipt.from_json(rec.value)
                    start = receipt.hour_start
                except RecordError:
                    undecodable += 1
                    continue
                if (since is not None and start < since) or (until is not None and start >= until):
                    continue
                if workspaces and receipt.workspace.id not in workspaces and receipt.source.id not in workspaces:
                    continue
                key = receipt.key + b"\x00" + receipt.source.stream.encode()
                old = newest.get(key)
                if old is None or receipt.revision >= old.revision:
                    newest[key] = receipt
    ordered = sorted(newest.values(), key=lambda r: (r.workspace.id, r.source.stream, r.hour))
    return ReceiptScan(ordered, undecodable)


def find_gaps(receipts: Iterable[Receipt]) -> list[Receipt]:
    """The receipts whose hour has a gap (:meth:`~schemas.receipt.Receipt.gap_reasons`)."""
    return [r for r in receipts if r.gap_reasons()]


def gap_entry(receipt: Receipt) -> dict[str, Any]:
    """One gap as ``gaps --format json`` prints it (the form ``replay --hours`` reads)."""
    return {
        "workspace": {"id": receipt.workspace.id, "name": receipt.workspace.name},
        "source": {"type": receipt.source.type, "id": receipt.source.id, "stream": receipt.source.stream},
        "hour": receipt.hour,
        "reasons": receipt.gap_reasons(),
        "revision": receipt.revision,
        "seen": receipt.seen,
        "published": receipt.published,
        "dead_lettered": receipt.dead_lettered,
        "late": receipt.late,
        "id_hash": receipt.id_hash,
        "first_closed_at": receipt.first_closed_at,
        "interrupted": receipt.interrupted,
    }


def gaps_document(gaps: Sequence[Receipt], *, receipts: int) -> dict[str, Any]:
    """The whole ``gaps --format json`` document."""
    return {"receipts": receipts, "gaps": [gap_entry(g) for g in gaps]}


def hour_keys(gaps: Iterable[Receipt]) -> frozenset[HourKey]:
    """What replay selects for these gaps: (workspace id, stream, hour number)."""
    return frozenset((g.workspace.id, g.source.stream, int(g.hour_start // HOUR_SECS)) for g in gaps)


def hours_from_json(data: bytes) -> frozenset[HourKey]:
    """Read ``gaps --format json`` output (the document, or a list of its gap entries) for ``replay --hours``.

    Raises:
        ConfigError: not that document.
    """
    try:
        doc = orjson.loads(data)
        entries = doc["gaps"] if isinstance(doc, dict) else doc
        if not isinstance(entries, list):
            raise TypeError("gaps is not a list")
        out = {
            (str(e["workspace"]["id"]), str(e["source"]["stream"]), int(parse_hour(str(e["hour"])) // HOUR_SECS))
            for e in entries
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, RecordError) as err:
        raise ConfigError(f"--hours: not the JSON output of 'instantly-audit gaps' ({err})") from None
    return frozenset(out)
