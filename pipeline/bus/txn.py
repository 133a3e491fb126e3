"""The buffered writes of one bus transaction, shared by the SQLite and Kafka buses.

A writer fills a :class:`BufferedTxn` inside ``async with bus.transaction(...)``; the bus
commits records, state and consumer offsets together when the block exits cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.bus.base import Header, OutRecord, TopicPartition


@dataclass
class BufferedTxn:
    """Buffered writes of one transaction."""

    records: list[OutRecord] = field(default_factory=list)
    state: dict[str, bytes | None] = field(default_factory=dict)
    offsets: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        """Buffer one record for ``topic``."""
        self.records.append(
            OutRecord(topic, value, key, headers if type(headers) is tuple else tuple(headers), timestamp_ms)
        )

    def put_state(self, key: str, value: bytes | None) -> None:
        """Buffer a state write (``None`` deletes the key)."""
        self.state[key] = value

    def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Buffer ``group``'s offsets, committed with the records."""
        for tp, off in offsets.items():
            self.offsets[(group, tp)] = off
