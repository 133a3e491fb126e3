"""Poller replicas that share workspaces through the bus (Kafka): each workspace is polled by one.

Every replica announces the workspaces of its config on the compacted control topic
(``instantly.workspaces.v1``, key = source id — an idempotent upsert) and joins one consumer
group on it. A workspace belongs to the partition its key hashes to (Kafka's partitioner, so its
control record lives there), and a replica polls exactly the workspaces of the partitions the
group coordinator gave it:

* **revoked** (another replica joined, or this one stops): each of those pollers is asked to stop
  after its current poll, given :data:`REVOKE_GRACE_SECS`, then cancelled (an open transaction is
  left to the next owner's fence, which aborts it); its writer is released. Only then does the
  listener return, so the next owner never overlaps with this one.
* **assigned**: fresh pollers are built and entered — each fences its transactional id
  (``poller-<source id>``), which aborts whatever a dead or stalled previous owner left open —
  then the state topic is read again, so each cursor is the last one committed by anybody, and
  an owner record (``owner/<source id>``) is written with the new writer before polling starts.

**Discovered workspaces** (an agency's sub-workspaces) are shared the same way. The replica that
polls the agency announces each one it finds on the control topic (key = the sub-workspace's
source id, value = :func:`~pipeline.sources.base.discovered_record`; a departed one gets a
tombstone), in the agency's own transaction. Every replica reads its assigned control partitions
from the beginning at each assignment: an announced workspace in a partition it owns is built by
its plugin (``build_discovered``: credentials come from the parent's config, never from the
topic) and taken over exactly like a configured one (fence, re-read state, owner record); a
tombstone stops it and clears its ``owner``/``status`` rows.

A poller that fails in a way no retry of its own can fix — its writer fenced while this replica
still holds the workspace (a ``run --once`` or a stray process claimed ``poller-<id>``), a record
other than an event over its topic's ``max.message.bytes`` (an oversized event is dead-lettered by
the bus: :mod:`pipeline.bus.oversize`) — restarts after a backoff (:data:`FENCED_DELAY_SECS`
doubling to :data:`MAX_FENCED_DELAY_SECS`) for as long as the workspace stays assigned here: the
restart claims the writer id again. A workspace revoked by a rebalance stops at once (its new
owner fenced the writer). The embedded bus never uses this module: one process polls every
workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from pipeline.bus.base import CONTROL_PARTITIONS, CONTROL_TOPIC, Bus
from pipeline.errors import BusError
from pipeline.observability.logs import get_logger
from pipeline.sources.backpressure import Backpressure
from pipeline.sources.base import Discoverer, Pausable, Source, status_key

log = get_logger("assignment")
CONTROL_GROUP = "pollers"
REVOKE_GRACE_SECS = 10.0
"""How long a revoked poller may take to finish its current poll before it is cancelled."""
RESTART_DELAY_SECS = 1.0
FENCED_DELAY_SECS = 5.0
"""First wait before a poller whose failure is not retriable restarts (a fence: long enough for a
rebalance that moved the workspace to revoke it here first)."""
MAX_FENCED_DELAY_SECS = 60.0


def owner_key(source_id: str) -> str:
    """State key naming the replica that polls a workspace: ``owner/{source_id}``."""
    return f"owner/{source_id}"


def replica_name() -> str:
    """This process, as status shows it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


Callback = Callable[[set[int]], Awaitable[None]]
RecordsCallback = Callable[[list[tuple[int, bytes | None, bytes | None]]], Awaitable[None]]
BuildDiscovered = Callable[[dict[str, object]], Source | None]


JOIN_DEADLINE_SECS = 45.0
"""A replica that has no assignment this long after it started joining (announce, JoinGroup,
SyncGroup, the assigned callback) leaves and rejoins. A join normally completes in seconds and at
worst waits out a dead member: the rebalance timeout (25 s). Seen twice in ~26 loaded runs of the
agency test: a replica started, logged nothing more and was never given its partitions while the
others rebalanced around it; the watchdog turns that into a logged rejoin instead of an unwatched
workspace."""
TAKEOVER_CONCURRENCY = 16
"""Workspaces fenced (and given their owner record) at once when a replica takes partitions over."""
TAKEOVER_STATE_WAIT_SECS = 20.0
"""How long a takeover's state reload waits behind transactions open when it began. The new
owners fence the previous owners' writers first, so only a writer nobody has claimed yet — a
killed replica still counted in the group until its session expires — holds it longer; waiting
for Kafka's 60 s transaction timeout there (inside the rebalance, holding the assignment) stalled
the group. Past this bound the replica leaves the group and rejoins, by when the dead member is
gone and its writers are fenced by their new owners."""


class Membership(Protocol):
    """A member of a consumer group (see :mod:`pipeline.bus.kafka_membership`)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Stay in the group until ``stop``; the callbacks run inside each rebalance."""


class SharedBus(Bus, Protocol):
    """What a bus offers for sharing pollers (the Kafka bus)."""

    def membership(
        self,
        topic: str,
        group: str,
        *,
        assigned: Callback,
        revoked: Callback,
        records: RecordsCallback | None = None,
        weights: Callable[[], Mapping[int, int]] | None = None,
    ) -> Membership:
        """A member of ``group`` over ``topic``'s partitions; ``records`` gets what it reads of them;
        ``weights`` (workspaces per partition) lets the group balance workspaces rather than partitions."""
        ...

    def partition_of(self, key: bytes, partitions: int) -> int:
        """The partition the bus gives ``key``."""
        ...

    async def release(self, txn_id: str) -> None:
        """Stop the writer ``txn_id``."""
        ...

    async def refresh_state(self, max_wait_secs: float = ...) -> None:
        """Read the state again, waiting at most ``max_wait_secs`` behind open transactions."""
        ...


def can_share(bus: Bus) -> bool:
    """Whether ``bus`` supports sharing workspaces among replicas."""
    return all(hasattr(bus, m) for m in ("membership", "partition_of", "release", "refresh_state"))


@dataclass
class _Running:
    source: Source
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WorkspaceAssignment:
    """Runs the pollers of the workspaces this replica was assigned (see the module docstring)."""

    def __init__(
        self,
        bus: SharedBus,
        build: Callable[[], list[Source]],
        *,
        build_discovered: BuildDiscovered | None = None,
        backpressure: Backpressure | None = None,
        replica: str | None = None,
        partitions: int = CONTROL_PARTITIONS,
        grace_secs: float = REVOKE_GRACE_SECS,
    ):
        self.bus = bus
        self._build = build
        self._build_discovered = build_discovered
        self.backpressure = backpressure
        self.replica = replica or replica_name()
        self.partitions = partitions
        self.grace_secs = grace_secs
        self.running: dict[str, _Running] = {}
        self._known = [s.source_id for s in build()]
        self._closing = False
        self._broken: BusError | None = None
        self._inner = asyncio.Event()
        self._joined = asyncio.Event()
        self.owned: set[int] = set()
        """Control partitions assigned to this replica now."""
        self.discovered: dict[str, dict[str, object]] = {}
        """Announced discovered workspaces seen in the owned partitions: source id → record."""
        self._lock = asyncio.Lock()
        """Rebalance callbacks and control records take turns (each may await the bus)."""
        self._heard: set[str] = set()
        """Every discovered workspace this replica has read announced (kept over rebalances: for :meth:`weights`)."""

    def weights(self) -> dict[int, int]:
        """Workspaces this replica knows per control partition (configured, and discovered ones it read)."""
        return dict(Counter(self.partition(sid) for sid in [*self._known, *self._heard]))

    def partition(self, source_id: str) -> int:
        """The control partition of a workspace."""
        return self.bus.partition_of(source_id.encode(), self.partitions)

    async def announce(self) -> None:
        """Upsert this config's workspaces on the control topic (same key, same value: idempotent).

        Raises:
            BusError: the bus refused the write.
        """
        async with self.bus.transaction(f"control-{self.replica}") as tx:
            for sid in self._known:
                tx.send(CONTROL_TOPIC, orjson.dumps({"source_id": sid}), key=sid.encode())

    async def run(self, stop: asyncio.Event) -> None:
        """Announce, join the group and poll what it assigns until ``stop``; then stop every poller.

        Raises:
            BusError: the bus failed.
        """
        self._closing = False
        self._broken = None
        self._joined = asyncio.Event()
        try:
            await asyncio.wait_for(self.announce(), JOIN_DEADLINE_SECS)
        except TimeoutError:
            raise BusError(f"announcing the workspaces took over {JOIN_DEADLINE_SECS:.0f} s", retriable=True) from None
        member = self.bus.membership(
            CONTROL_TOPIC,
            CONTROL_GROUP,
            assigned=self.assigned,
            revoked=self.revoked,
            records=self.records,
            weights=self.weights,
        )
        inner = asyncio.Event()  # set on ``stop``, or when a takeover failed (then leave and rejoin)
        self._inner = inner
        relay = asyncio.create_task(_relay(stop, inner))
        membership = asyncio.create_task(member.run(inner), name="poller-group-membership")
        watchdog = asyncio.create_task(self._watch_join(membership))
        try:
            await membership
        except asyncio.CancelledError:
            if stop.is_set() or not watchdog.done():  # cancelled from outside, not by the watchdog
                raise
        finally:
            relay.cancel()
            watchdog.cancel()
            membership.cancel()
            self._closing = True
            await self.revoked(set(range(self.partitions)))
        if self._broken is not None:
            raise self._broken

    async def _watch_join(self, membership: asyncio.Task[None]) -> None:
        """Leave and rejoin when no assignment came within :data:`JOIN_DEADLINE_SECS` of joining."""
        try:
            await asyncio.wait_for(self._joined.wait(), JOIN_DEADLINE_SECS)
        except TimeoutError:
            log.error(
                "No assignment from the poller group in time; leaving and rejoining",
                extra={"replica": self.replica, "waited_secs": JOIN_DEADLINE_SECS},
            )
            self._broken = BusError(
                f"no assignment from the poller group within {JOIN_DEADLINE_SECS:.0f} s", retriable=True
            )
            membership.cancel()

    async def assigned(self, partitions: set[int]) -> None:
        """Enter the pollers of ``partitions`` (fencing their previous owners), reload state, start them."""
        # Logged before the takeover too: a takeover that hangs (fence, state reload) shows where it stopped.
        log.info("Partitions assigned; taking over", extra={"replica": self.replica, "partitions": sorted(partitions)})
        self._joined.set()
        async with self._lock:
            if self._closing:
                return
            self.owned |= partitions
            fresh = [s for s in self._build() if s.source_id not in self.running]
            mine = [s for s in fresh if self.partition(s.source_id) in partitions]
            mine += [s for s in self._discovered_sources() if s.source_id not in self.running]
            started = await self._start(mine)
            log.info(
                "Workspaces assigned",
                extra={"replica": self.replica, "partitions": sorted(partitions), **started},
            )

    async def records(self, records: list[tuple[int, bytes | None, bytes | None]]) -> None:
        """Control records of the owned partitions: start announced discovered workspaces, stop tombstoned ones."""
        latest: dict[str, bytes | None] = {}
        for _part, key, value in records:
            if key is not None:
                latest[key.decode(errors="replace")] = value  # the last record of a key wins, as compaction keeps
        async with self._lock:
            if self._closing:
                return
            gone: list[str] = []
            for sid, value in latest.items():
                doc = _control_doc(value)
                if doc is None:
                    self._heard.discard(sid)
                    if self.discovered.pop(sid, None) is not None:
                        gone.append(sid)
                elif "parent" in doc:
                    self.discovered[sid] = doc
                    self._heard.add(sid)
            if gone:
                await self._stop([r for sid, r in self.running.items() if sid in gone], forget=True)
                log.info("Discovered workspaces left", extra={"replica": self.replica, "workspaces": sorted(gone)})
            new = [s for s in self._discovered_sources() if s.source_id not in self.running]
            if new:
                started = await self._start(new)
                log.info("Discovered workspaces assigned", extra={"replica": self.replica, **started})

    def _discovered_sources(self) -> list[Source]:
        """Sources for the announced discovered workspaces in owned partitions (not yet entered)."""
        if self._build_discovered is None:
            return []
        out: list[Source] = []
        for sid, doc in sorted(self.discovered.items()):
            if self.partition(sid) not in self.owned or sid in self.running:
                continue
            src = self._build_discovered(doc)
            if src is not None and src.source_id == sid:
                out.append(src)
        return out

    async def _start(self, sources: list[Source]) -> dict[str, object]:
        """Enter ``sources`` (fencing previous owners), re-read state, write owner records, start polling."""
        t0 = time.monotonic()
        gate = asyncio.Semaphore(TAKEOVER_CONCURRENCY)

        async def enter(src: Source) -> Source | None:
            if self.backpressure is not None and isinstance(src, Pausable):
                src.backpressure = self.backpressure
            if isinstance(src, Discoverer):
                src.share_discovered()  # its finds go to the control topic, shared like configured ones
            async with gate:
                try:
                    return await src.__aenter__()  # fences ``poller-<id>``: a zombie's transaction is aborted
                except BusError as err:
                    log.error("Could not take over a workspace", extra={"source": src.source_id, "error": str(err)})
                    return None

        # Concurrently: each fence is a new transactional producer's round trips (~100 ms), and one
        # after the other they took 23 s for 117 sub-workspaces of an agency before the first poll.
        results = await asyncio.gather(*(enter(src) for src in sources), return_exceptions=True)
        entered = [r for r in results if r is not None and not isinstance(r, BaseException)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for src in entered:
                await self._close(src)
            raise failed[0]
        if entered:
            try:
                # After fencing: the cursors the previous owners committed last. For a discovered
                # workspace other pollers here are still running; the reload keeps their own commits
                # (applied while it reads) and they own their keys, so what they read stays theirs.
                await self.bus.refresh_state(max_wait_secs=TAKEOVER_STATE_WAIT_SECS)
            except BusError as err:
                # Never poll on a stale cursor: give the workspaces back and let the supervisor rejoin.
                log.error("State could not be re-read after a takeover; leaving the group", extra={"error": str(err)})
                for src in entered:
                    await self._close(src)
                self._broken = err
                self._inner.set()
                return {"workspaces": []}

        async def own(src: Source) -> None:
            txn_id = getattr(src, "txn_id", None)
            if isinstance(txn_id, str):
                doc = {"replica": self.replica, "since": time.time()}
                async with gate:
                    with contextlib.suppress(BusError):
                        async with self.bus.transaction(txn_id) as tx:
                            tx.put_state(owner_key(src.source_id), orjson.dumps(doc))

        await asyncio.gather(*(own(src) for src in entered))
        for src in entered:
            run = _Running(src)
            run.task = asyncio.create_task(self._poll(run), name=f"poller:{src.source_id}")
            self.running[src.source_id] = run
        return {
            "workspaces": sorted(s.source_id for s in entered),
            "takeover_ms": round((time.monotonic() - t0) * 1000),
        }

    async def revoked(self, partitions: set[int]) -> None:
        """Stop the pollers of ``partitions`` (finish the poll, else cancel) and release their writers."""
        async with self._lock:
            self.owned -= partitions
            # Forget what was read of them: the next owner re-reads them (a tombstone may be compacted away).
            self.discovered = {k: v for k, v in self.discovered.items() if self.partition(k) not in partitions}
            gone = [r for sid, r in self.running.items() if self.partition(sid) in partitions]
            if not gone:
                return
            await self._stop(gone)
            log.info(
                "Workspaces revoked",
                extra={"replica": self.replica, "workspaces": sorted(r.source.source_id for r in gone)},
            )

    async def _stop(self, gone: list[_Running], *, forget: bool = False) -> None:
        """Stop pollers (finish the poll, else cancel) and release their writers; ``forget``: the
        workspace left for good, so its ``owner`` and ``status`` rows are deleted too."""
        for r in gone:
            r.stop.set()
        tasks = [r.task for r in gone if r.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.grace_secs)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for r in gone:
            self.running.pop(r.source.source_id, None)
            txn_id = getattr(r.source, "txn_id", None)
            if forget and isinstance(txn_id, str):
                with contextlib.suppress(BusError):
                    async with self.bus.transaction(txn_id) as tx:
                        tx.put_state(owner_key(r.source.source_id), None)
                        tx.put_state(status_key(r.source.source_id), None)
            await self._close(r.source)

    async def _close(self, src: Source) -> None:
        """Exit a poller and stop its writer (the next owner fences a new one)."""
        with contextlib.suppress(Exception):
            await src.__aexit__(None, None, None)
        txn_id = getattr(src, "txn_id", None)
        if isinstance(txn_id, str):
            with contextlib.suppress(BusError):
                await self.bus.release(txn_id)

    def _owned_elsewhere(self, owner_record: bytes | None) -> bool:
        """The workspace's owner record names another replica (it took the workspace over)."""
        owner = _owner_of(owner_record)
        return owner is not None and owner != self.replica

    async def _poll(self, run: _Running) -> None:
        """Run one poller until revoked, restarting it after any failure while it stays assigned here."""
        sid = run.source.source_id
        fenced_delay = FENCED_DELAY_SECS
        reclaim = False
        while not run.stop.is_set():
            delay = RESTART_DELAY_SECS
            try:
                if reclaim:  # as a takeover: claim the writer id, then read what the other writer committed
                    await self.bus.refresh_state(max_wait_secs=TAKEOVER_STATE_WAIT_SECS)
                    if self._owned_elsewhere(await self.bus.get_state(owner_key(sid))):
                        log.warning("Poller stopped: another replica owns the workspace now", extra={"source": sid})
                        return  # the rebalance that gave it away revokes it here
                    await self._close(run.source)
                    await run.source.__aenter__()
                    await self.bus.refresh_state(max_wait_secs=TAKEOVER_STATE_WAIT_SECS)
                    reclaim, fenced_delay = False, FENCED_DELAY_SECS
                    log.warning("Poller reclaimed its workspace", extra={"source": sid})
                await run.source.run(run.stop)
            except asyncio.CancelledError:
                raise
            except BusError as err:
                if not err.retriable or reclaim:
                    # Still assigned here (a rebalance would have set run.stop first): nobody else
                    # polls this workspace, so stopping would leave it unwatched. Claim it again.
                    reclaim = True
                    delay, fenced_delay = fenced_delay, min(fenced_delay * 2, MAX_FENCED_DELAY_SECS)
                    log.error("Poller failed; restarting while the workspace stays assigned here",
                              extra={"source": sid, "error": str(err), "retry_in_secs": delay})  # fmt: skip
                else:
                    log.error("Poller crashed; restarting", extra={"source": sid, "error": str(err)})
            except Exception as err:  # noqa: BLE001 - one workspace's crash must not stop the replica
                log.error("Poller crashed; restarting", extra={"source": sid, "error": f"{type(err).__name__}: {err}"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop.wait(), timeout=delay)


def _owner_of(value: bytes | None) -> str | None:
    """The replica an ``owner`` state record names (None: no record, or not one)."""
    doc = _control_doc(value)
    replica = doc.get("replica") if doc is not None else None
    return replica if isinstance(replica, str) else None


def _control_doc(value: bytes | None) -> dict[str, object] | None:
    """A control record's JSON object; None for a tombstone (or a value that is not one)."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def _relay(outer: asyncio.Event, inner: asyncio.Event) -> None:
    """Set ``inner`` when ``outer`` is set."""
    await outer.wait()
    inner.set()
