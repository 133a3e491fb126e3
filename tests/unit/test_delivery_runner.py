"""The sink runner against a scripted in-memory sink: batching, commits, dead letters, circuit, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, OutRecord, TopicPartition
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from pipeline.delivery.base import Delivery, Failure, SendResult, SinkConfig
from pipeline.delivery.deadletter import original_value
from pipeline.delivery.runner import CircuitState, SinkRunner, decode
from pipeline.errors import BackpressureError, SinkError
from pipeline.observability.telemetry import Telemetry
from schemas.alert import Alert
from schemas.codec import validate
from schemas.event import Event
from tests.fakes import FakeSleep, make_alert, make_event, publish

Script = Callable[[int, Sequence[Delivery]], SendResult | Exception]


class ScriptedConfig(SinkConfig):
    type: Literal["scripted"] = "scripted"


class ScriptedSink:
    """Confirms everything unless ``script(attempt, batch)`` says otherwise."""

    Config: ClassVar[type[SinkConfig]] = ScriptedConfig

    def __init__(self, sink_id: str = "s1", script: Script | None = None) -> None:
        self.sink_id = sink_id
        self.script = script
        self.batches: list[list[str]] = []
        self.delivered: list[str] = []
        self.opened = 0
        self.closed = 0

    async def __aenter__(self) -> ScriptedSink:
        self.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed += 1

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        attempt = len(self.batches)
        self.batches.append([d.id for d in batch])
        outcome = self.script(attempt, batch) if self.script else SendResult()
        if isinstance(outcome, Exception):
            raise outcome
        failed = {id(f.delivery) for f in outcome.failures}
        self.delivered += [d.id for d in batch if id(d) not in failed]
        return outcome

    async def healthcheck(self) -> None:
        return None


def cfg(**kw: Any) -> ScriptedConfig:
    base: dict[str, Any] = {"retry_initial_secs": 1.0, "retry_max_secs": 8.0, "circuit_failures": 3,
                            "circuit_open_secs": 30.0}  # fmt: skip
    return ScriptedConfig.model_validate({**base, **kw})


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    async with SqliteBus(tmp_path / "bus.db", partitions=2) as b:
        yield b


async def committed(bus: SqliteBus, group: str = "sink-s1") -> int:
    total = 0
    for topic in (EVENTS_TOPIC, ALERTS_TOPIC):
        total += sum((await bus.committed(group, topic)).values())
    return total


async def dead_letters(bus: SqliteBus) -> list[dict[str, Any]]:
    async with bus.consumer([DEADLETTER_TOPIC], start="earliest") as c:
        recs = await c.poll(10_000, timeout_s=0)
    return [orjson.loads(r.value) for r in recs]


def dead_letter_samples(tel: Telemetry) -> list[tuple[str, str, float]]:
    """(component_kind, component_id, value) of each ``pipeline_dead_letters_total`` series /metrics shows."""
    text = tel.render_prometheus()[0].decode()
    return [
        (s.labels["component_kind"], s.labels["component_id"], s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pipeline_dead_letters_total"
    ]


def runner(bus: SqliteBus, sink: ScriptedSink, config: ScriptedConfig, **kw: Any) -> SinkRunner:
    kw.setdefault("sleep", FakeSleep(kw.get("clock")))
    return SinkRunner(bus, sink, config, rng=lambda: 1.0, **kw)


async def test_batches_split_by_record_count(bus: SqliteBus) -> None:
    """A batch never holds more than batch_max_records; every record is delivered once."""
    ids = await publish(bus, [make_event(i) for i in range(25)])
    sink = ScriptedSink()
    stats = await runner(bus, sink, cfg(batch_max_records=10)).run_once()
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert sorted(sink.delivered) == sorted(ids)
    assert (stats.delivered, stats.batches, stats.committed) == (25, 3, 25)
    assert await committed(bus) == 25


async def test_batches_split_by_bytes(bus: SqliteBus) -> None:
    """batch_max_bytes bounds a batch's size (a single oversized record still travels alone)."""
    await publish(bus, [make_event(i, pad=400) for i in range(10)])
    sink = ScriptedSink()
    await runner(bus, sink, cfg(batch_max_bytes=2048)).run_once()
    assert all(1 <= len(b) <= 2 for b in sink.batches)
    assert sum(len(b) for b in sink.batches) == 10


async def test_in_flight_bytes_cap_the_batch(bus: SqliteBus) -> None:
    """max_in_flight_bytes caps what one batch holds in memory even if batch_max_bytes is larger."""
    await publish(bus, [make_event(i, pad=400) for i in range(10)])
    sink = ScriptedSink()
    await runner(bus, sink, cfg(batch_max_bytes=1_000_000, max_in_flight_bytes=2048)).run_once()
    assert max(len(b) for b in sink.batches) <= 2


async def test_run_lingers_for_batch_max_wait(bus: SqliteBus) -> None:
    """run() waits up to batch_max_wait_secs after the first record to fill a batch."""
    sink = ScriptedSink()
    r = SinkRunner(bus, sink, cfg(batch_max_records=100, batch_max_wait_secs=0.3), poll_timeout_secs=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    await publish(bus, [make_event(0)])
    await asyncio.sleep(0.1)
    await publish(bus, [make_event(1)])
    for _ in range(100):
        if sink.delivered:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task
    assert sink.batches == [[make_event(0).id, make_event(1).id]]


async def test_filters_by_type_glob_and_severity_and_commits_filtered(bus: SqliteBus) -> None:
    """Filtered-out records are not sent but their offsets are committed."""
    items: list[Event | Alert] = [make_event(0, type="api_key.created"), make_event(1, type="member.invited"),
             make_alert(2, severity="low"), make_alert(3, severity="critical")]  # fmt: skip
    await publish(bus, items)
    sink = ScriptedSink()
    config = cfg(types=["api_key.*", "all_scope_key"], min_severity="high")
    stats = await runner(bus, sink, config).run_once()
    assert sorted(sink.delivered) == sorted([items[0].id, items[3].id])
    assert (stats.delivered, stats.filtered, stats.committed) == (2, 2, 4)
    assert await committed(bus) == 4


async def test_topics_option_limits_subscription(bus: SqliteBus) -> None:
    """A sink subscribed to alerts only never sees events."""
    await publish(bus, [make_event(0), make_alert(1)])
    sink = ScriptedSink()
    await runner(bus, sink, cfg(topics=["alerts"])).run_once()
    assert sink.delivered == [make_alert(1).id]


async def test_offsets_not_committed_until_confirmed(bus: SqliteBus) -> None:
    """While the destination refuses, nothing is committed; a new runner redelivers from the commit."""
    ids = await publish(bus, [make_event(i) for i in range(5)])
    down = ScriptedSink(script=lambda a, b: SinkError("down", retriable=True))
    clock = FakeClock()
    stats = await runner(bus, down, cfg(), clock=clock).run_once()
    assert stats.delivered == 0 and await committed(bus) == 0
    up = ScriptedSink()
    stats = await runner(bus, up, cfg()).run_once()
    assert sorted(up.delivered) == sorted(ids) and await committed(bus) == 5


async def test_partial_failure_retries_only_the_failed(bus: SqliteBus) -> None:
    """Retriable per-record failures are re-sent alone; the batch commits when all are confirmed."""
    await publish(bus, [make_event(i) for i in range(4)])

    def script(attempt: int, batch: Sequence[Delivery]) -> SendResult:
        if attempt == 0:
            return SendResult(failures=[Failure(batch[1], "429", retriable=True)], duplicates=1)
        return SendResult()

    sink = ScriptedSink(script=script)
    stats = await runner(bus, sink, cfg()).run_once()
    assert [len(b) for b in sink.batches] == [4, 1]
    assert (stats.delivered, stats.duplicates, stats.retries) == (3, 1, 1)


async def test_poison_goes_to_dead_letter_with_error_and_sink(bus: SqliteBus) -> None:
    """A non-retriable failure is dead-lettered (error + sink name) in the commit; offsets move on."""
    items = [make_event(i) for i in range(3)]
    await publish(bus, items)

    def script(attempt: int, batch: Sequence[Delivery]) -> SendResult:
        bad = [d for d in batch if d.id == items[1].id]
        return SendResult(failures=[Failure(bad[0], "item 400 mapper_parsing_exception", retriable=False)])

    tel = Telemetry()
    stats = await runner(bus, ScriptedSink(script=script), cfg(), telemetry=tel).run_once()
    assert (stats.delivered, stats.dead_lettered, stats.committed) == (2, 1, 3)
    assert dead_letter_samples(tel) == [("sink", "s1", 1.0)]  # what the DeadLettersGrowing alert reads
    tel.shutdown()
    (dl,) = await dead_letters(bus)
    assert validate(dl) == [] and dl["schema"] == "instantly.deadletter.v1"
    assert (dl["stage"], dl["component"], dl["component_type"], dl["reason"]) == ("sink", "s1", "scripted", "rejected")
    assert dl["error"] == "item 400 mapper_parsing_exception" and dl["record_id"] == items[1].id
    assert dl["original"]["topic"] == EVENTS_TOPIC and dl["original"]["encoding"] == "utf-8"
    assert original_value(orjson.dumps(dl)) == items[1].to_json()
    assert await committed(bus) == 3


async def test_a_sinks_counters_are_shown_at_zero_from_the_start(bus: SqliteBus) -> None:
    """Before anything was delivered or dead-lettered, /metrics shows the sink's delivery and
    dead-letter counters at 0: ``increase()`` needs a sample before the first increment, and an alert
    on ``rate(pipeline_sink_deliveries_total[…]) == 0`` needs the series to exist at all."""
    tel = Telemetry()
    runner(bus, ScriptedSink(), cfg(), telemetry=tel)
    assert dead_letter_samples(tel) == [("sink", "s1", 0.0)]
    text = tel.render_prometheus()[0].decode()
    delivered = [
        (s.labels["sink"], s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pipeline_sink_deliveries_total"
    ]
    tel.shutdown()
    assert delivered == [("s1", 0.0)]


async def test_undecodable_record_goes_to_dead_letter(bus: SqliteBus) -> None:
    """A record that is not an event (bad JSON, missing fields) is dead-lettered with its bytes."""
    await bus.publish([OutRecord(EVENTS_TOPIC, b"\xff not json", key=b"ws-1"),
                       OutRecord(EVENTS_TOPIC, b'{"id": "x"}', key=b"ws-1")])  # fmt: skip
    await publish(bus, [make_event(0)])
    sink = ScriptedSink()
    stats = await runner(bus, sink, cfg()).run_once()
    assert stats.dead_lettered == 2 and stats.delivered == 1
    dls = await dead_letters(bus)
    assert all(validate(d) == [] and d["reason"] == "undecodable" for d in dls)
    assert {(d["original"]["encoding"], d["original"]["value"]) for d in dls} == {
        ("base64", "/yBub3QganNvbg=="),
        ("utf-8", '{"id": "x"}'),
    }
    assert all("undecodable event" in d["error"] and d["record_id"] is None for d in dls)
    assert original_value(orjson.dumps(dls[0])) in (b"\xff not json", b'{"id": "x"}')


async def test_dead_letters_and_commit_are_one_transaction(bus: SqliteBus, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead letter and the offset commit travel in the same bus transaction (or neither is written)."""
    await publish(bus, [make_event(0), make_event(1)])
    sink = ScriptedSink(script=lambda a, b: SendResult(failures=[Failure(b[0], "bad", retriable=False)]))
    seen: list[Any] = []
    real_transaction = bus.transaction

    def spy(txn_id: str) -> Any:
        cm = real_transaction(txn_id)

        class Wrapped:
            async def __aenter__(self) -> Any:
                txn = await cm.__aenter__()
                seen.append(txn)
                return txn

            async def __aexit__(self, *exc: Any) -> Any:
                return await cm.__aexit__(*exc)

        return Wrapped()

    monkeypatch.setattr(bus, "transaction", spy)
    monkeypatch.setattr(bus._store, "_write", lambda txn: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError):
        await runner(bus, sink, cfg()).run_once()
    (txn,) = seen
    assert [r.topic for r in txn.records] == [DEADLETTER_TOPIC]
    assert sum(txn.offsets.values()) == 2
    monkeypatch.undo()
    assert await dead_letters(bus) == [] and await committed(bus) == 0
    await runner(bus, sink, cfg()).run_once()
    assert len(await dead_letters(bus)) == 1 and await committed(bus) == 2


async def test_retry_after_is_honoured(bus: SqliteBus) -> None:
    """The delay before a retry is at least the destination's Retry-After (backoff otherwise)."""
    await publish(bus, [make_event(0)])
    outcomes: list[SendResult | Exception] = [
        BackpressureError("slow down", retry_after=7.0),
        SinkError("503", retriable=True),
        SendResult(),
    ]
    sleep = FakeSleep()
    sink = ScriptedSink(script=lambda a, b: outcomes[a])
    r = SinkRunner(bus, sink, cfg(retry_initial_secs=0.5, retry_max_secs=60), sleep=sleep, rng=lambda: 0.5)
    stats = await r.run_once()
    assert sleep.calls == [7.0, 0.5]  # max(7, 0.5*0.5*2**0); then 0.5 * 0.5 * 2**1
    assert stats.retries == 2 and stats.delivered == 1


async def test_per_record_retry_after_is_honoured(bus: SqliteBus) -> None:
    """A Retry-After carried by per-record failures sets the next delay too."""
    await publish(bus, [make_event(0), make_event(1)])

    def script(attempt: int, batch: Sequence[Delivery]) -> SendResult:
        if attempt == 0:
            return SendResult(failures=[Failure(batch[0], "429", retriable=True, retry_after=12.0)])
        return SendResult()

    sleep = FakeSleep()
    await SinkRunner(bus, ScriptedSink(script=script), cfg(), sleep=sleep, rng=lambda: 0.0).run_once()
    assert sleep.calls == [12.0]


async def test_backoff_is_exponential_with_full_jitter(bus: SqliteBus) -> None:
    """Successive delays are rng * min(max, initial * 2**attempt)."""
    await publish(bus, [make_event(0)])
    fails = 5
    sink = ScriptedSink(script=lambda a, b: SinkError("x", retriable=True) if a < fails else SendResult())
    sleep = FakeSleep()
    r = SinkRunner(bus, sink, cfg(circuit_failures=10, retry_initial_secs=1, retry_max_secs=5),
                   sleep=sleep, rng=lambda: 0.9)  # fmt: skip
    await r.run_once()
    assert sleep.calls == pytest.approx([0.9, 1.8, 3.6, 4.5, 4.5])


async def test_circuit_opens_pauses_and_closes(bus: SqliteBus) -> None:
    """N failed attempts open the circuit (reading stops); after circuit_open_secs a success closes it."""
    ids = await publish(bus, [make_event(i) for i in range(3)])
    healthy = False
    sink = ScriptedSink(script=lambda a, b: SendResult() if healthy else SinkError("503", retriable=True))
    clock = FakeClock()
    r = runner(bus, sink, cfg(circuit_failures=3, circuit_open_secs=30), clock=clock)
    async with r:
        await r.run_once()
        h = r.health()
        assert h.circuit is CircuitState.OPEN and h.consecutive_failures == 3 and h.last_error == "503"
        assert len(sink.batches) == 3
        clock.advance(10)
        assert (await r.run_once()).delivered == 0 and len(sink.batches) == 3  # still paused
        clock.advance(25)
        assert r.health().circuit is CircuitState.HALF_OPEN
        await r.run_once()  # half-open trial fails: open again at once
        assert r.health().circuit is CircuitState.OPEN and len(sink.batches) == 4
        clock.advance(30)
        healthy = True
        stats = await r.run_once()
    assert r.health().circuit is CircuitState.CLOSED and r.health().consecutive_failures == 0
    assert sorted(sink.delivered) == sorted(ids) and stats.delivered == 3
    assert await committed(bus) == 3


async def test_non_retriable_batch_error_opens_circuit_without_dead_letters(bus: SqliteBus) -> None:
    """A raised non-retriable SinkError (bad token) opens the circuit at once and dead-letters nothing."""
    await publish(bus, [make_event(0)])
    sink = ScriptedSink(script=lambda a, b: SinkError("HTTP 403 code 4 (Invalid token)", retriable=False))
    r = runner(bus, sink, cfg(circuit_failures=5), clock=FakeClock())
    stats = await r.run_once()
    assert r.health().circuit is CircuitState.OPEN and len(sink.batches) == 1
    assert stats.dead_lettered == 0 and await dead_letters(bus) == [] and await committed(bus) == 0


async def test_unexpected_exception_in_sink_is_a_failed_attempt(bus: SqliteBus) -> None:
    """A sink bug (any exception) pauses that sink instead of crashing the runner."""
    await publish(bus, [make_event(0)])
    sink = ScriptedSink(script=lambda a, b: KeyError("oops") if a == 0 else SendResult())
    stats = await runner(bus, sink, cfg()).run_once()
    assert stats.delivered == 1 and stats.retries == 1


async def test_run_pauses_while_circuit_open_and_resumes(bus: SqliteBus) -> None:
    """run() sleeps circuit_open_secs when the circuit opens, then resumes and delivers everything."""
    ids = await publish(bus, [make_event(i) for i in range(3)])
    sink = ScriptedSink(script=lambda a, b: SinkError("down", retriable=True) if a < 2 else SendResult())
    clock = FakeClock()
    sleep = FakeSleep(clock)
    r = SinkRunner(bus, sink, cfg(circuit_failures=2, circuit_open_secs=30), clock=clock, sleep=sleep,
                   rng=lambda: 0.0, poll_timeout_secs=0.01)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    for _ in range(200):
        if len(sink.delivered) == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert sorted(sink.delivered) == sorted(ids)
    assert 30.0 in sleep.calls


async def test_stop_interrupts_backoff(bus: SqliteBus) -> None:
    """Setting stop ends run() promptly even during a long backoff, without committing."""
    await publish(bus, [make_event(0)])
    sink = ScriptedSink(script=lambda a, b: BackpressureError("busy", retry_after=3600))
    r = SinkRunner(bus, sink, cfg(circuit_failures=10), poll_timeout_secs=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    for _ in range(200):
        if sink.batches:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert await committed(bus) == 0 and sink.closed == 1


async def test_run_once_opens_and_closes_the_sink(bus: SqliteBus) -> None:
    """run_once on a closed runner opens the sink and consumer for the call only."""
    sink = ScriptedSink()
    await runner(bus, sink, cfg()).run_once()
    assert (sink.opened, sink.closed) == (1, 1)


async def test_groups_are_independent(bus: SqliteBus) -> None:
    """Each sink's consumer group commits its own offsets."""
    await publish(bus, [make_event(i) for i in range(4)])
    a, b = ScriptedSink("a"), ScriptedSink("b", script=lambda n, batch: SinkError("down", retriable=True))
    await runner(bus, a, cfg()).run_once()
    await runner(bus, b, cfg(), clock=FakeClock()).run_once()
    assert await committed(bus, "sink-a") == 4 and await committed(bus, "sink-b") == 0


def test_decode_classifies_records() -> None:
    """decode() reads events and alerts (alert type = rule id) and explains what it cannot read."""
    from pipeline.bus.base import Record

    ev, al = make_event(1), make_alert(2)
    d = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"ws", ev.to_json()))
    assert not isinstance(d, str) and (d.kind, d.id, d.type) == ("event", ev.id, ev.type)
    a = decode(Record(ALERTS_TOPIC, 0, 0, 0, b"ws", al.to_json()))
    assert not isinstance(a, str) and (a.kind, a.type, a.severity) == ("alert", "all_scope_key", "high")
    assert "not a JSON object" in str(decode(Record(EVENTS_TOPIC, 0, 0, 0, None, b"[1]")))
    bad_id = orjson.dumps({**ev.to_dict(), "id": 5})
    assert "'id' must be a non-empty string" in str(decode(Record(EVENTS_TOPIC, 0, 0, 0, None, bad_id)))
    no_type = orjson.dumps({**ev.to_dict(), "type": ""})
    assert "non-empty strings" in str(decode(Record(EVENTS_TOPIC, 0, 0, 0, None, no_type)))
    assert "not instantly.event.v1" in str(decode(Record(EVENTS_TOPIC, 0, 0, 0, None, al.to_json())))
    assert "not an event or alert topic" in str(decode(Record("other", 0, 0, 0, None, ev.to_json())))


async def test_commit_is_offset_after_last_record_per_partition(bus: SqliteBus) -> None:
    """The committed offset of each partition is the one after the batch's last record there."""
    await publish(bus, [make_event(i, workspace=f"ws-{i % 5}") for i in range(20)])
    await runner(bus, ScriptedSink(), cfg(batch_max_records=7)).run_once()
    ends = {}
    async with bus.consumer([EVENTS_TOPIC]) as c:
        ends = await c.end_offsets()
    assert await bus.committed("sink-s1", EVENTS_TOPIC) == {tp: off for tp, off in ends.items() if off}
    assert all(isinstance(tp, TopicPartition) for tp in ends)


async def test_retriable_commit_failure_is_retried(bus: SqliteBus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retriable bus error while committing is retried with backoff; nothing is lost or skipped."""
    from pipeline.errors import BusError

    await publish(bus, [make_event(i) for i in range(3)])
    real_write = bus._store._write
    calls = {"n": 0}

    def flaky(txn: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise BusError("database is locked", retriable=True)
        real_write(txn)

    monkeypatch.setattr(bus._store, "_write", flaky)
    sleep = FakeSleep()
    stats = await SinkRunner(bus, ScriptedSink(), cfg(), sleep=sleep, rng=lambda: 0.5).run_once()
    assert stats.committed == 3 and await committed(bus) == 3 and sleep.calls == [0.5]
