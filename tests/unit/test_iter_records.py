"""``iter_records`` stops at the end offsets without losing what was read past them."""

from __future__ import annotations

from pathlib import Path

from pipeline.bus.base import EVENTS_TOPIC, TopicPartition, iter_records
from pipeline.bus.sqlite import SqliteBus

TP = TopicPartition(EVENTS_TOPIC, 0)


async def publish(bus: SqliteBus, values: range) -> None:
    async with bus.transaction("w") as tx:
        for i in values:
            tx.send(EVENTS_TOPIC, str(i).encode(), key=b"k")


async def test_records_past_the_stop_are_read_next_time(tmp_path: Path) -> None:
    """A poll that returns records beyond ``until`` leaves them for the consumer's next read
    (a live consumer — the rules worker — must not skip events committed while it catches up)."""
    async with SqliteBus(tmp_path / "bus.db") as bus:
        await publish(bus, range(10))
        async with bus.consumer([EVENTS_TOPIC], group="g", start="earliest") as consumer:
            first = [r.value async for batch in iter_records(consumer, until={TP: 5}) for r in batch]
            assert first == [str(i).encode() for i in range(5)]
            assert consumer.positions()[TP] == 5
            rest = [r.value async for batch in iter_records(consumer) for r in batch]
            assert rest == [str(i).encode() for i in range(5, 10)]
