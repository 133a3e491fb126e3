"""Consumer lag on a real broker counts records, not offsets: transaction markers take offsets.

The rules and the sinks commit ``last record + 1`` in their transactions — the offset of the
commit marker — and the end offset lies past it: offset arithmetic showed one phantom record per
written partition per transaction, and a small ``bus.max_consumer_lag`` paused the pollers for ever.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.base import EVENTS_TOPIC, Bus, OutRecord, TopicPartition, iter_records
from pipeline.sources.backpressure import measure_lags
from tests.conftest import bus_config, make_bus

pytestmark = [pytest.mark.kafka]


def _cfg() -> dict[str, Any]:
    return bus_config("kafka", Path())  # a fresh topic prefix and transactional id prefix each call


async def _consume_and_commit(bus: Bus, group: str, txn_id: str) -> int:
    """Read everything committed so far; commit ``offset + 1`` of each partition's last record in a
    transaction (as the rules worker does); return how many records were read."""
    offsets: dict[TopicPartition, int] = {}
    read = 0
    async with bus.consumer([EVENTS_TOPIC], group=group) as consumer:
        async for batch in iter_records(consumer):
            for rec in batch:
                offsets[rec.tp] = max(offsets.get(rec.tp, 0), rec.offset + 1)
            read += len(batch)
    async with bus.transaction(txn_id) as txn:
        txn.put_state(f"test/{group}", b"x")
        txn.commit_offsets(group, offsets)
    return read


async def _lag(bus: Bus, group: str) -> int:
    [entry] = await measure_lags(bus, [(group, [EVENTS_TOPIC])])
    return int(entry["lag"])


async def _offset_distance(bus: Bus, group: str) -> int:
    async with bus.consumer([EVENTS_TOPIC], start="latest") as c:
        ends = await c.end_offsets()
    committed = await bus.committed(group, EVENTS_TOPIC)
    return sum(end - committed.get(tp, 0) for tp, end in ends.items())


async def test_lag_is_zero_after_transactions_are_consumed_and_counts_records() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    async with make_bus(_cfg()) as bus:
        await bus.publish([OutRecord(EVENTS_TOPIC, f"e{i}".encode(), key=f"ws{i}".encode()) for i in range(6)])
        await bus.publish([OutRecord(EVENTS_TOPIC, b"e6", key=b"ws0")])
        assert await _consume_and_commit(bus, group, f"w-{group}") == 7
        assert await _offset_distance(bus, group) >= 2  # a marker per written partition: not read, not lag
        assert await _lag(bus, group) == 0

        await bus.publish([OutRecord(EVENTS_TOPIC, b"e7", key=b"ws1")])
        assert await _lag(bus, group) == 1

        for i in range(3):  # three more transactions: 3 records, 3 markers
            await bus.publish([OutRecord(EVENTS_TOPIC, f"f{i}".encode(), key=b"ws2")])
        assert await _lag(bus, group) == 4
        assert await _consume_and_commit(bus, group, f"w-{group}") == 4
        assert await _lag(bus, group) == 0


async def test_lag_of_a_group_that_never_committed_counts_every_record() -> None:
    async with make_bus(_cfg()) as bus:
        for i in range(3):
            await bus.publish([OutRecord(EVENTS_TOPIC, f"e{i}".encode(), key=b"ws")])
        assert await _lag(bus, f"g-{uuid.uuid4().hex[:8]}") == 3
