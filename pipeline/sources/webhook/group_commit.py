"""Group commit: concurrent deliveries batched into one bus transaction each, de-duplicated by
body hash against the source's :class:`~pipeline.sources.webhook.dedup.SeenWindow`; each
delivery is answered only after the transaction holding it committed.

Adaptive linger: a transaction costs about the same whether it holds 1 delivery or 50 (three
round trips to Kafka, plus the broker's marker writes), so under concurrency the committer waits
a moment for the senders it just answered to come back instead of committing whoever arrived
first. The wait is bounded three ways: it ends as soon as as many deliveries are queued as were
in flight during the previous cycle (a lone sequential sender never waits), it never exceeds the
duration of the previous commit, and never ``max_linger_secs``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.bus.base import EVENTS_TOPIC, Bus
from pipeline.clock import Clock
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger
from pipeline.observability.metrics import KIND
from pipeline.observability.telemetry import Telemetry, get_telemetry
from pipeline.sources.webhook.dedup import HEARTBEAT_PREFIX, SEEN_PREFIX, SeenWindow, stale_keys

log = get_logger("webhook")

MAX_BATCH_BYTES = 4 * 1024 * 1024


# -------------------------------------------------------------------------------- group commit
@dataclass(eq=False)
class _Pending:
    source: str
    digest: bytes
    value: bytes
    key: bytes
    headers: tuple[tuple[str, bytes], ...]
    future: asyncio.Future[bool] = field(repr=False)
    topic: str = EVENTS_TOPIC


class GroupCommitter:
    """Batches concurrent deliveries into one bus transaction each, de-duplicating by body hash.

    ``submit`` returns a future that resolves to True (published), False (duplicate: already
    published, or identical to another delivery of the same batch) or raises :class:`BusError`.
    Batches run one at a time, so the dedup window is always current when a batch is formed.
    ``telemetry`` defaults to the process's current one, read once here.
    """

    def __init__(
        self,
        bus: Bus,
        writer_id: str,
        windows: Mapping[str, SeenWindow],
        *,
        clock: Clock,
        max_batch: int,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_linger_secs: float = 0.0,
        component_types: Mapping[str, str] | None = None,
        telemetry: Telemetry | None = None,
    ):
        self.bus = bus
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.component_types = dict(component_types or {})
        self.writer_id = writer_id
        self.windows = windows
        self.clock = clock
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_linger_secs = max_linger_secs
        self._inflight = 0  # deliveries of the transaction being committed
        self._peak = 0  # most deliveries queued or in flight at once since the last batch was formed
        self._want = 0  # queue length that ends the current linger (0: not lingering)
        self._enough = asyncio.Event()
        self._last_commit_secs = 0.0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.transactions = 0
        """Committed bus transactions."""
        self.largest_batch = 0
        self.lingers = 0
        """Batches that waited for more deliveries before committing."""
        self.last_success: float | None = None
        """Monotonic time of the last committed transaction."""
        self.last_failure: float | None = None

    @property
    def pending(self) -> int:
        """Deliveries queued for the next transactions."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether the commit loop is alive."""
        return self._task is not None and not self._task.done()

    async def load_windows(self) -> None:
        """Load each source's window from bus state (every writer's keys), then delete the keys of
        writers gone for longer than the window (:func:`~pipeline.sources.webhook.dedup.stale_keys`;
        a failure to delete is logged, the next start tries again).

        Raises:
            BusError: the state cannot be read.
        """
        state = await self.bus.state_items(SEEN_PREFIX)
        for name, window in self.windows.items():
            window.load({k: v for k, v in state.items() if k.startswith(window.prefix)})
            log.info("Webhook dedup window loaded", extra={"source": name, "entries": len(window)})
        state.update(await self.bus.state_items(HEARTBEAT_PREFIX))
        span = max((w.window_secs for w in self.windows.values()), default=0.0)
        stale = stale_keys(state, writer=self.writer_id, window_secs=span, now=self.clock.now())
        if not stale:
            return
        try:
            async with self.bus.transaction(self.writer_id) as tx:
                for key in stale:
                    tx.put_state(key, None)
        except BusError as err:
            log.warning("Dedup keys of gone webhook writers not deleted", extra={"error": err.message})
            return
        log.info(
            "Deleted the dedup keys of webhook writers gone for longer than the window", extra={"keys": len(stale)}
        )

    def start(self) -> None:
        """Start the commit loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook-commit:{self.writer_id}")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        self._enough.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        err = BusError("the webhook receiver is shutting down", retriable=True)
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(err)

    def submit(
        self,
        source: str,
        digest: bytes,
        value: bytes,
        key: bytes,
        headers: tuple[tuple[str, bytes], ...],
        topic: str = EVENTS_TOPIC,
    ) -> asyncio.Future[bool]:
        """Queue one delivery (its event, or on ``DEADLETTER_TOPIC`` the dead letter of a body that
        authenticated but is no valid delivery; the duplicate window covers both)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        if self._closing or not self.running:
            fut.set_exception(BusError("the webhook receiver is not accepting deliveries", retriable=True))
            return fut
        self._queue.append(_Pending(source, digest, value, key, headers, fut, topic))
        self._wake.set()
        waiting = len(self._queue)
        self._peak = max(self._peak, waiting + self._inflight)
        if self._want and waiting >= self._want:
            self._enough.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._linger()
            self._peak = len(self._queue)
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < self.max_batch:
                nxt = self._queue[0]
                if batch and size + len(nxt.value) > self.max_batch_bytes:
                    break
                batch.append(self._queue.popleft())
                size += len(nxt.value)
            loop = asyncio.get_running_loop()
            started = loop.time()
            self._inflight = len(batch)
            try:
                await self._commit(batch)
            finally:
                self._inflight = 0
            self._last_commit_secs = loop.time() - started

    async def _linger(self) -> None:
        """Wait until as many deliveries are queued as were in flight during the last cycle, at
        most as long as the last commit took and ``max_linger_secs`` (see the module docstring)."""
        want = min(self._peak, self.max_batch)
        wait = min(self.max_linger_secs, self._last_commit_secs)
        if self._closing or wait <= 0 or len(self._queue) >= want:
            return
        self._want = want
        self.lingers += 1
        self._enough.clear()
        try:
            async with asyncio.timeout(wait):
                await self._enough.wait()
        except TimeoutError:
            pass
        finally:
            self._want = 0

    async def _commit(self, batch: list[_Pending]) -> None:
        now = int(self.clock.now())
        publish: list[_Pending] = []
        followers: list[_Pending] = []
        first: set[tuple[str, bytes]] = set()
        for p in batch:
            k = (p.source, p.digest)
            if k in first:
                followers.append(p)
            elif self.windows[p.source].contains(p.digest, now):
                _resolve(p.future, False)
            else:
                first.add(k)
                publish.append(p)
        if not publish:
            return
        tel = self.telemetry
        links = tel.links(p.headers for p in publish)
        added: dict[tuple[str, int], list[bytes]] = collections.defaultdict(list)
        for p in publish:
            added[(p.source, SeenWindow.slot_of(p.digest))].append(p.digest)
        staged = {k: self.windows[k[0]].staged(k[1], hs, now) for k, hs in added.items()}
        try:
            with tel.span("bus.publish", {KIND: "webhook", "batch.size": len(publish)}, links=links):
                async with self.bus.transaction(self.writer_id) as tx:
                    for p in publish:
                        tx.send(p.topic, p.value, key=p.key, headers=p.headers)
                    for (src, slot), content in staged.items():
                        tx.put_state(self.windows[src].key(slot), SeenWindow.encode(content))
        except asyncio.CancelledError:
            err = BusError("the webhook receiver stopped during a commit", retriable=True)
            for p in (*publish, *followers):
                _fail(p.future, err)
            raise
        except Exception as exc:  # noqa: BLE001 - any bus failure must become a 503, never a lost 200
            err = exc if isinstance(exc, BusError) else BusError(f"commit failed: {type(exc).__name__}", retriable=True)
            tel.bus_errors("publish", type(exc).__name__)
            self.last_failure = self.clock.monotonic()
            log.error(
                "Webhook batch not committed; answering 503",
                extra={"deliveries": len(publish), "error": f"{type(exc).__name__}: {exc}"},
            )
            for p in (*publish, *followers):
                _fail(p.future, err)
            return
        for (src, slot), content in staged.items():
            self.windows[src].slots[slot] = content
        self.transactions += 1
        self.largest_batch = max(self.largest_batch, len(publish))
        self.last_success = self.clock.monotonic()
        for p in publish:
            _resolve(p.future, True)
        for p in followers:
            _resolve(p.future, False)
        for (source, key), n in collections.Counter((p.source, p.key) for p in publish).items():
            tel.records_published("webhook", self.component_types.get(source, "webhook"), source, key.decode(), n)


def _consume_exception(fut: asyncio.Future[bool]) -> None:
    if not fut.cancelled():
        fut.exception()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[bool], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
