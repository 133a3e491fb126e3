"""Writer state on Kafka: the compacted ``instantly.state.v1`` topic, read into memory once.

At first use the topic is read from the beginning (``read_committed``), tombstones deleting
keys, up to the high watermark seen when the read began — not only to the last stable offset:
a transaction another process holds open would otherwise hide every commit after its start.
Afterwards the bus applies each of its own committed state writes, so reads are served from
memory. :meth:`KafkaState.refresh` reads the topic again: whoever claims a writer id another
process may have used since this one read the state (a poller replica assigned workspaces, a
rules worker or poller restarted after it was fenced) fences it first, then refreshes, so it sees
everything the other committed (see :func:`pipeline.bus.base.claim_writer`). One read runs at a
time; while a refresh reads, the state read before is served, and this process's own commits
made meanwhile are kept over what the read found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KTP
from aiokafka.errors import KafkaError

from pipeline.bus.base import STATE_TOPIC
from pipeline.bus.kafka_client import KafkaConnection, wrap_error
from pipeline.errors import BusError

OPEN_TXN_WAIT_SECS = 90.0
"""How long a state read waits for transactions open when it began (aiokafka's transaction timeout is 60 s)."""
SLOW_READ_SECS = 5.0
"""After this long behind an open transaction, a state read says so in the log (once)."""

log = logging.getLogger("instantly_audit.bus.kafka")


class KafkaState:
    """The state map, loaded from the compacted state topic and kept current by own commits."""

    def __init__(self, conn: KafkaConnection):
        self.conn = conn
        self._state: dict[str, bytes] = {}
        self._loaded = False
        self._lock = asyncio.Lock()
        self._pending: dict[str, bytes | None] | None = None
        """Own commits applied while a read runs (newer than what it reads)."""

    async def _load(self, max_wait_secs: float = OPEN_TXN_WAIT_SECS) -> None:
        if self._loaded:
            return
        async with self._lock:
            if not self._loaded:
                await self._read(max_wait_secs)

    async def _read(self, max_wait_secs: float) -> None:
        """Read the topic (holding the lock) and replace the map, own commits made meanwhile on top."""
        self._pending = {}
        try:
            state = await self._read_topic(max_wait_secs)
        finally:
            pending, self._pending = self._pending, None
        for k, v in pending.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        self._state = state
        self._loaded = True

    async def _read_topic(self, max_wait_secs: float) -> dict[str, bytes]:
        c = AIOKafkaConsumer(
            bootstrap_servers=self.conn.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            request_timeout_ms=self.conn.request_timeout_ms,
            **self.conn.client_args,
        )
        tp = KTP(self.conn.phys(STATE_TOPIC), 0)
        try:
            await c.start()
            c.assign([tp])
            await c.seek_to_beginning(tp)
            end = await self._high_watermark(tp)
            state: dict[str, bytes] = {}
            began = asyncio.get_running_loop().time()
            said = False
            while await c.position(tp) < end:
                waited = asyncio.get_running_loop().time() - began
                if waited > max_wait_secs:
                    raise BusError("the state topic stayed behind an open transaction", retriable=True)
                if waited > SLOW_READ_SECS and not said:
                    said = True
                    log.warning(
                        "State read is waiting behind an open transaction (a writer stopped mid-transaction "
                        "and was not fenced yet; Kafka aborts it within its transaction timeout)",
                        extra={"waited_secs": round(waited, 1)},
                    )
                batch = await c.getmany(tp, timeout_ms=1000, max_records=5000)
                for rec in batch.get(tp, []):
                    if rec.key is None:
                        continue
                    if rec.value is None:
                        state.pop(rec.key.decode(), None)
                    else:
                        state[rec.key.decode()] = rec.value
        except KafkaError as err:
            raise wrap_error(err, "loading state") from None
        finally:
            with contextlib.suppress(Exception):
                await c.stop()
        return state

    async def _high_watermark(self, tp: KTP) -> int:
        """The end of the state partition including open transactions (read_uncommitted)."""
        c = AIOKafkaConsumer(
            bootstrap_servers=self.conn.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_uncommitted",
            request_timeout_ms=self.conn.request_timeout_ms,
            **self.conn.client_args,
        )
        try:
            await c.start()
            return int((await c.end_offsets([tp]))[tp])
        finally:
            with contextlib.suppress(Exception):
                await c.stop()

    async def refresh(self, max_wait_secs: float = OPEN_TXN_WAIT_SECS) -> None:
        """Read the whole state topic again (others wrote since), committed records up to its end.

        Meanwhile reads get the state read before; own commits made during the read are kept
        over what it found. ``max_wait_secs`` bounds the wait behind transactions open when the
        read began (then :class:`BusError`, retriable, and the state read before stays).

        Raises:
            BusError: the state topic cannot be read.
        """
        async with self._lock:
            await self._read(max_wait_secs)

    async def get(self, key: str) -> bytes | None:
        """Current value of a state key.

        Raises:
            BusError: the state topic cannot be read.
        """
        await self._load()
        return self._state.get(key)

    async def items(self, prefix: str = "") -> dict[str, bytes]:
        """State entries whose key starts with ``prefix``.

        Raises:
            BusError: the state topic cannot be read.
        """
        await self._load()
        return {k: v for k, v in self._state.items() if k.startswith(prefix)}

    def apply(self, changes: Mapping[str, bytes | None]) -> None:
        """Record state writes that were just committed (``None`` deletes)."""
        for k, v in changes.items():
            if v is None:
                self._state.pop(k, None)
            else:
                self._state[k] = v
        if self._pending is not None:
            self._pending.update(changes)
