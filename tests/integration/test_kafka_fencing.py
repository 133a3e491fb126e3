"""Fencing on a real broker: a writer whose transactional id another process claimed.

* A producer fenced in the middle of a transaction is left by aiokafka in ``FATAL_ERROR``:
  the rest of the transaction fails with ``IllegalOperation`` and every later
  ``begin_transaction`` with an ``AssertionError``. The bus must drop it, so the writer's next
  commit starts a new producer (seen: a webhook replica answering 503 forever).
* A fenced transaction's failures are all retrieved (none logged when collected).
* A rules worker fenced by another process and restarted on the same bus (what the supervisor
  does) must reload the rule state the other committed, not the bus's copy read before: else an
  alert the other suppressed is raised again (``/tmp/rev-kafka/rules2.py``).
* A sink runner whose commit was fenced must start again at the committed offsets: going on from
  its own position, its next commit skipped the records of the fenced one (their dead letters lost).
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import Any

import orjson
import pytest

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Bus, TopicPartition, consumer_lags, iter_records
from pipeline.clock import SYSTEM_CLOCK, format_time
from pipeline.errors import BusError
from pipeline.rules.worker import RulesWorker
from schemas.codec import encode_event
from schemas.event import Event, Source, WorkspaceRef
from tests.conftest import kafka_bootstrap, make_bus

pytestmark = [pytest.mark.kafka]


def _cfg(tag: str) -> dict[str, Any]:
    return {"type": "kafka", "bootstrap_servers": [kafka_bootstrap()], "partitions": 3,
            "transactional_id_prefix": f"fence-{tag}", "topic_prefix": f"fence{tag}."}  # fmt: skip


async def _commit(bus: Bus, txn_id: str, n: int) -> str:
    """One transaction over several partitions and the state topic; "ok" or the error."""
    try:
        async with bus.transaction(txn_id) as tx:
            for k in range(8):  # keys over every partition: several batches, handed over one by one
                tx.send(EVENTS_TOPIC, f"r{n}-{k}".encode(), key=f"ws{k}".encode())
            tx.put_state("test/cursor", str(n).encode())
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "ok"


async def test_writer_fenced_mid_transaction_recovers_at_its_next_commit() -> None:
    """Another process claims the writer id; this writer's sender learns it (AddPartitionsToTxn
    refused) while the transaction is still handing batches over. That commit fails as fenced;
    the next one starts a new producer and commits (it fences the other in turn)."""
    tag = uuid.uuid4().hex[:8]
    async with make_bus(_cfg(tag)) as a, make_bus(_cfg(tag)) as b:
        assert await _commit(a, "w", 1) == "ok"
        producer: Any = a._writers.producers["w"]  # type: ignore[attr-defined]
        handed = producer.send_batch

        async def send_batch(*args: Any, **kwargs: Any) -> Any:
            fut = await handed(*args, **kwargs)
            # Deterministic: the sender processes the broker's refusal before the next batch is handed over.
            await asyncio.wait([producer._sender.sender_task], timeout=10)
            return fut

        producer.send_batch = send_batch
        await b.fence("w")  # bumps the epoch: a's producer is now a zombie
        fenced = await _commit(a, "w", 2)
        assert fenced.startswith("BusError: writer w was fenced"), fenced
        assert producer._txn_manager.is_fatal_error()  # the state aiokafka never leaves
        assert "w" not in a._writers.producers  # type: ignore[attr-defined]
        assert [await _commit(a, "w", n) for n in (3, 4)] == ["ok", "ok"]
        with pytest.raises(BusError, match="fenced"):  # a's new producer fenced b in turn
            async with b.transaction("w") as tx:
                tx.send(EVENTS_TOPIC, b"b", key=b"ws0")
        async with a.consumer([EVENTS_TOPIC], start="earliest") as consumer:
            values = sorted(r.value for batch in [x async for x in iter_records(consumer)] for r in batch)
        assert values == sorted(f"r{n}-{k}".encode() for n in (1, 3, 4) for k in range(8))
        assert await a.get_state("test/cursor") == b"4"


async def test_commit_cancelled_mid_transaction_leaves_no_open_transaction_behind() -> None:
    """A commit cancelled after its transaction began (a task stopped at shutdown or revocation)
    leaves aiokafka IN_TRANSACTION; the writer's next commit must not begin a second one on it."""
    tag = uuid.uuid4().hex[:8]
    async with make_bus(_cfg(tag)) as a:
        assert await _commit(a, "w", 1) == "ok"
        producer: Any = a._writers.producers["w"]  # type: ignore[attr-defined]
        began = asyncio.Event()

        async def stuck(*_args: Any, **_kwargs: Any) -> Any:
            began.set()
            await asyncio.Event().wait()

        producer.send_batch = stuck
        task = asyncio.create_task(_commit(a, "w", 2))
        await asyncio.wait_for(began.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert producer._txn_manager.is_in_transaction()
        assert await _commit(a, "w", 3) == "ok"
        async with a.consumer([EVENTS_TOPIC], start="earliest") as consumer:
            values = sorted(r.value for batch in [x async for x in iter_records(consumer)] for r in batch)
        assert values == sorted(f"r{n}-{k}".encode() for n in (1, 3) for k in range(8))


async def test_fenced_transaction_leaves_no_unretrieved_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A transaction fenced while its consumer offsets are added fails before its batches'
    delivery futures are gathered; their exceptions must still count as retrieved (collected
    unretrieved, each is logged, and on CPython 3.11 a collection inside pytest's ``ast.parse``
    then failed the run with "AST constructor recursion depth mismatch")."""
    tag = uuid.uuid4().hex[:8]
    async with make_bus(_cfg(tag)) as a, make_bus(_cfg(tag)) as b:
        assert await _commit(a, "w", 1) == "ok"
        await b.fence("w")
        with pytest.raises(BusError, match="fenced"):
            async with a.transaction("w") as tx:
                for k in range(8):
                    tx.send(EVENTS_TOPIC, f"r2-{k}".encode(), key=f"ws{k}".encode())
                tx.commit_offsets("g", {TopicPartition(EVENTS_TOPIC, 0): 1})
        gc.collect()
        await asyncio.sleep(0)
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_state_refresh_sees_other_processes_and_keeps_own_commits_made_meanwhile() -> None:
    """The bus serves state from a copy: a refresh re-reads what other processes committed; a
    commit of this process made while the refresh reads is kept; reads meanwhile are served."""
    tag = uuid.uuid4().hex[:8]
    async with make_bus(_cfg(tag)) as a, make_bus(_cfg(tag)) as b:
        async with a.transaction("wa") as tx:
            tx.put_state("test/k", b"a1")
            tx.put_state("test/gone", b"x")
        assert await a.get_state("test/k") == b"a1"
        async with b.transaction("wb") as tx:
            tx.put_state("test/k", b"b2")
            tx.put_state("test/gone", None)
        assert await a.get_state("test/k") == b"a1"  # the copy read before
        refresh = asyncio.create_task(a.refresh_state())  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        async with a.transaction("wa") as tx:
            tx.put_state("test/own", b"during")
        assert await a.get_state("test/own") == b"during"
        await refresh
        assert await a.state_items("test/") == {"test/k": b"b2", "test/own": b"during"}


WS = WorkspaceRef("ws-fence-1", "Fence")


async def _stream_refused(bus: Bus, n: int, stream: str) -> None:
    """Publish a ``pipeline.stream_unavailable`` (403) for ``stream`` (from one bus, as a poller
    would): the rule alerts once per workspace and stream, then suppresses the same condition for a day."""
    now = format_time(SYSTEM_CLOCK.now())
    attributes = {"stream": stream, "status": 403, "transient": False, "error": "forbidden"}
    event = Event.build(type="pipeline.stream_unavailable", time=now, observed_at=now, workspace=WS,
                        source=Source("pipeline", "pipeline", f"r-{n}"), natural_key=(f"r-{n}",),
                        attributes=attributes)  # fmt: skip
    async with bus.transaction("events") as tx:  # not the writer the rules use
        tx.send(EVENTS_TOPIC, encode_event(event), key=WS.id.encode())


async def _run(worker: RulesWorker) -> int:
    """One pass, then leave the consumer group (the other process's worker gets the partitions)."""
    try:
        return await worker.run_once()
    finally:
        await worker.close()


async def _alerts(bus: Bus) -> list[bytes]:
    async with bus.consumer([ALERTS_TOPIC], start="earliest") as consumer:
        return [r.value async for batch in iter_records(consumer) for r in batch]


async def test_fenced_rules_worker_restarts_with_the_rule_state_the_other_committed() -> None:
    """Two processes (two buses) run the rules worker on one group and writer id, handing over by
    fencing each other. After each handover the restarted worker suppresses what the other alerted."""
    tag = uuid.uuid4().hex[:8]
    async with make_bus(_cfg(tag)) as a, make_bus(_cfg(tag)) as b:
        wa, wb = RulesWorker(a, None, clock=SYSTEM_CLOCK), RulesWorker(b, None, clock=SYSTEM_CLOCK)
        await a.fence("rules")
        await _stream_refused(a, 1, "members")
        assert await _run(wa) == 1
        await b.fence("rules")  # process B starts: A is fenced
        await _stream_refused(a, 2, "webhooks")
        assert await _run(wb) == 1
        await _stream_refused(a, 3, "webhooks")  # the condition B alerted on: suppressed
        with pytest.raises(BusError, match="fenced"):
            await _run(wa)
        assert await _run(wa) == 0  # restarted on the same bus (the supervisor's retry)
        await _stream_refused(a, 4, "api_keys")
        assert await _run(wa) == 1
        await _stream_refused(a, 5, "api_keys")  # the condition A alerted on after taking over
        with pytest.raises(BusError, match="fenced"):
            await _run(wb)
        assert await _run(wb) == 0
        assert len(await _alerts(a)) == 3  # members, webhooks, api_keys: none twice


async def test_fenced_sink_runner_resumes_at_the_committed_offsets() -> None:
    """Another process claims the sink's writer id while this runner delivers: its commit (the
    batch's dead letters and offsets) is refused. Its next run must deliver that batch again and
    commit it, not go on after it; every rejected record ends up dead-lettered."""
    from pipeline.bus.base import DEADLETTER_TOPIC
    from pipeline.delivery.base import Failure, SendResult
    from pipeline.delivery.deadletter import original_value
    from pipeline.delivery.runner import SinkRunner
    from tests.fakes import make_event, publish
    from tests.unit.test_delivery_runner import ScriptedSink, cfg

    def poison(_attempt: int, batch: Any) -> SendResult:  # every third event is refused for good
        return SendResult(failures=[Failure(d, "bad", retriable=False) for d in batch if d.id in rejected])

    tag = uuid.uuid4().hex[:8]
    events = [make_event(i, workspace=f"ws-{tag}") for i in range(30)]
    rejected = {e.id for e in events[::3]}
    async with make_bus({**_cfg(tag), "partitions": 1}) as a, make_bus({**_cfg(tag), "partitions": 1}) as b:
        sink = ScriptedSink("s1", script=poison)
        runner = await SinkRunner(a, sink, cfg(topics=["events"])).__aenter__()  # entered, as the topology does
        await publish(a, events[:10])
        assert (await runner.run_once()).committed == 10
        await publish(a, events[10:20])
        await b.fence("sink-s1")  # a second process starts
        with pytest.raises(BusError, match="fenced"):
            await runner.run_once()
        await runner.run_once()  # the supervisor's retry
        await publish(a, events[20:])
        await runner.run_once()
        await runner.__aexit__(None, None, None)
        async with a.consumer([EVENTS_TOPIC], start="earliest") as consumer:
            ends = await consumer.end_offsets()
        assert set((await consumer_lags(a, "sink-s1", EVENTS_TOPIC, ends)).values()) == {0}
        async with a.consumer([DEADLETTER_TOPIC], start="earliest") as consumer:
            letters = [r async for batch in iter_records(consumer) for r in batch]
    dead = {orjson.loads(original_value(r.value))["id"] for r in letters}
    assert dead == rejected
    assert set(sink.delivered) == {e.id for e in events} - rejected
