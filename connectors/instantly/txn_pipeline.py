"""One bus transaction in flight while the caller prepares the next: the audit log's publish pipeline.

Publishing a page of audit records is CPU work (normalize, serialise) followed by a transaction
whose commit mostly waits on the broker (partitions added, batches acknowledged, the commit
marker). :class:`TxnPipeline` overlaps the two: :meth:`TxnPipeline.submit` waits for the
previous transaction to commit, then starts this one in the background and returns, so the
next page can be fetched and normalized while it commits. Long CPU loops call
:meth:`TxnPipeline.pause` now and then so the committing transaction's I/O keeps moving.

Guarantees (the same as committing each page in turn):

* **Order** — transaction N+1 starts only after transaction N committed; the writes of one
  transaction are exactly those submitted with it (the caller snapshots its state — e.g. the
  audit cursor's bytes — when it builds the write, so the state of transaction N covers only
  records of transactions ≤ N).
* **Stop at the first failure** — a failed transaction's error is raised by the next
  :meth:`~TxnPipeline.submit` or :meth:`~TxnPipeline.drain` (or on leaving the ``async with``),
  before anything later starts: no transaction after a failed one is ever committed.
* **Nothing left behind** — leaving the ``async with`` waits for the transaction in flight
  (and raises its error, which takes precedence over the caller's own); on cancellation it is
  cancelled too. ``on_commit`` runs only after its transaction committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from pipeline.bus.base import Bus, Header

YIELD_EVERY = 50
"""Records a CPU loop handles between two :meth:`TxnPipeline.pause` calls (about 0.4 ms of work)."""


@dataclass
class TxnWrite:
    """What one transaction writes: records ``(topic, value, key, headers)`` and state, then ``on_commit``."""

    records: Sequence[tuple[str, bytes, bytes | None, tuple[Header, ...]]] = ()
    state: dict[str, bytes | None] = field(default_factory=dict)
    on_commit: Callable[[], None] | None = None


class TxnPipeline:
    """Commits :class:`TxnWrite` s of one writer in order, one in flight at a time (see module docstring)."""

    def __init__(self, bus: Bus, txn_id: str):
        self.bus = bus
        self.txn_id = txn_id
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Whether a transaction is still committing."""
        return self._task is not None and not self._task.done()

    async def pause(self) -> None:
        """Let the transaction in flight make progress (one event-loop pass); no-op when idle."""
        if self.busy:
            await asyncio.sleep(0)

    async def submit(self, write: TxnWrite) -> None:
        """Wait for the previous transaction, then start committing ``write`` in the background.

        Raises:
            BusError: the previous transaction failed (``write`` is not started).
        """
        await self.drain()
        self._task = asyncio.create_task(self._commit(write), name=f"txn-pipeline-{self.txn_id}")

    async def drain(self) -> None:
        """Wait until the transaction in flight has committed.

        Raises:
            BusError: it failed.
        """
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _commit(self, write: TxnWrite) -> None:
        async with self.bus.transaction(self.txn_id) as tx:
            for topic, value, key, headers in write.records:
                tx.send(topic, value, key=key, headers=headers)
            for k, v in write.state.items():
                tx.put_state(k, v)
        if write.on_commit is not None:
            write.on_commit()

    async def __aenter__(self) -> TxnPipeline:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if exc_type is not None and not issubclass(exc_type, Exception):  # cancelled, interrupted
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the caller's own exception is what propagates
            return
        await task
