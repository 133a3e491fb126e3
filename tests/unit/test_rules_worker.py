"""The rules worker on the embedded bus: exactly once, restarts, dead letters, ticks and the run loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, OutRecord, Record, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, parse_time
from pipeline.errors import BusError
from pipeline.observability.telemetry import Telemetry
from pipeline.rules.testing import make_event
from pipeline.rules.worker import RulesWorker
from schemas.alert import Alert
from schemas.codec import decode_deadletter, validate
from schemas.event import Event
from schemas.validate import schema_errors
from tests.unit.test_delivery_runner import dead_letter_samples

T0 = parse_time("2026-03-01T00:00:00Z")


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    async with SqliteBus(tmp_path / "bus.db") as b:
        yield b


def key_event(kind: str, t: float, kid: str = "k1", scopes: list[str] | None = None, ws: str = "ws-1") -> Event:
    attrs = {"scopes": scopes or ["all:all"], "name": "ci", "created_at": "2026-02-20T00:00:00Z"}
    return make_event(f"api_key.{kind}", time=t, workspace=ws, target={"kind": "api_key", "id": kid}, attributes=attrs)


async def publish(bus: SqliteBus, *events: Event | bytes) -> None:
    await bus.publish([
        OutRecord(EVENTS_TOPIC, e if isinstance(e, bytes) else e.to_json(),
                  key=b"ws-1" if isinstance(e, bytes) else e.workspace.id.encode())
        for e in events
    ])  # fmt: skip


async def read(bus: SqliteBus, topic: str) -> list[Record]:
    out: list[Record] = []
    async with bus.consumer([topic], start="earliest") as c:
        async for batch in iter_records(c):
            out.extend(batch)
    return out


async def alerts(bus: SqliteBus) -> list[Alert]:
    out = [Alert.from_json(r.value) for r in await read(bus, ALERTS_TOPIC)]
    for a in out:
        assert schema_errors("alert", a.to_dict()) == []
    return out


def worker(bus: Any, cfg: dict[str, Any] | None = None, clock: FakeClock | None = None) -> RulesWorker:
    return RulesWorker(bus, cfg or {}, clock=clock or FakeClock(T0))


class FailingBus:
    """Wraps a bus; the next ``fail`` transactions raise inside the block, after every write was buffered."""

    def __init__(self, bus: SqliteBus, fail: int = 1):
        self._bus = bus
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    @asynccontextmanager
    async def transaction(self, txn_id: str) -> AsyncIterator[Any]:
        async with self._bus.transaction(txn_id) as txn:
            yield txn
            if self.fail > 0:
                self.fail -= 1
                raise BusError("injected failure before commit", retriable=True)


async def test_alerts_are_published_with_key_and_headers(bus: SqliteBus) -> None:
    """An alert goes to instantly.alerts.v1 keyed by workspace with alert_rule and severity headers."""
    await publish(bus, key_event("baseline", T0))
    w = worker(bus)
    assert await w.run_once() == 1  # alerts published
    [rec] = [r for r in await read(bus, ALERTS_TOPIC) if r.header("alert_rule") == b"api_key.all_scope"]
    assert rec.key == b"ws-1" and rec.header("severity") == b"critical"
    assert w.stats.events == 1 and w.stats.alerts == 1
    assert await bus.committed("rules", EVENTS_TOPIC) == {(EVENTS_TOPIC, 0): 1}


async def test_nothing_new_commits_nothing(bus: SqliteBus) -> None:
    """run_once with no new events writes nothing and returns 0."""
    w = worker(bus)
    assert await w.run_once() == 0
    assert await bus.committed("rules", EVENTS_TOPIC) == {} and await bus.state_items("rules/") == {}


async def test_a_restarted_worker_continues_without_duplicates(bus: SqliteBus) -> None:
    """A new worker on the same bus resumes offsets and rule state: no repeated alert, resolution still works."""
    await publish(bus, key_event("baseline", T0))
    await worker(bus).run_once()
    await publish(bus, key_event("baseline", T0 + 600), key_event("deleted", T0 + 1200))
    await worker(bus).run_once()
    got = [(a.rule.id, a.status) for a in await alerts(bus)]
    assert got == [("api_key.all_scope", "open"), ("api_key.all_scope", "resolved")]


async def test_a_second_worker_taking_over_is_seen_by_the_first(bus: SqliteBus) -> None:
    """When another worker committed in between, a worker reloads state and offsets before going on."""
    a, b = worker(bus), worker(bus)
    await publish(bus, key_event("baseline", T0))
    await a.run_once()
    await publish(bus, key_event("deleted", T0 + 60))
    await b.run_once()
    await publish(bus, key_event("created", T0 + 120))
    await a.run_once()  # must know the key was deleted (resolved) and not re-read b's events
    got = [a.status for a in await alerts(bus) if a.rule.id == "api_key.all_scope"]
    assert got == ["open", "resolved", "open"] and a.stats.reloads == 2


async def test_a_failure_before_commit_leaves_no_trace_and_retries_once(bus: SqliteBus) -> None:
    """A failure between evaluate and commit writes no alert, state or offset; the retry alerts exactly once."""
    await publish(bus, key_event("baseline", T0))
    failing = FailingBus(bus, fail=1)
    w = worker(failing)
    with pytest.raises(BusError, match="injected"):
        await w.run_once()
    assert await read(bus, ALERTS_TOPIC) == [] and await bus.committed("rules", EVENTS_TOPIC) == {}
    assert await bus.state_items("rules/") == {}
    assert await w.run_once() == 1  # same worker: reloads from the bus and redoes the batch
    assert await w.run_once() == 0 and w.last_consumed == 0
    got = await alerts(bus)
    assert [a.rule.id for a in got].count("api_key.all_scope") == 1
    assert await bus.committed("rules", EVENTS_TOPIC) == {(EVENTS_TOPIC, 0): 1}


async def test_a_retried_batch_yields_the_same_alert_ids(bus: SqliteBus, tmp_path: Path) -> None:
    """A batch retried after a failure is evaluated from the committed state: same alerts, same ids as a clean run."""
    evs = [key_event("baseline", T0), key_event("deleted", T0 + 60)]
    async with SqliteBus(tmp_path / "clean.db") as clean:
        for e in evs:
            await publish(clean, e)
            await worker(clean).run_once()
        expected = [a.id for a in await alerts(clean)]
    await publish(bus, evs[0])
    await worker(bus).run_once()
    await publish(bus, evs[1])
    w = worker(FailingBus(bus, fail=1))
    with pytest.raises(BusError):
        await w.run_once()
    await w.run_once()
    assert [a.id for a in await alerts(bus)] == expected and len(expected) == 2


async def test_undecodable_records_go_to_the_dead_letter_topic(bus: SqliteBus) -> None:
    """A record that is not Event v1 is skipped, counted and dead-lettered with its error in the same commit."""
    await publish(
        bus, b"{not json", orjson.dumps({"schema": "instantly.event.v1", "type": "x"}), key_event("baseline", T0)
    )
    tel = Telemetry()
    w = RulesWorker(bus, {}, clock=FakeClock(T0), telemetry=tel)
    await w.run_once()
    assert dead_letter_samples(tel) == [("rules", "rules", 2.0)]  # what the DeadLettersGrowing alert reads
    tel.shutdown()
    dead = await read(bus, DEADLETTER_TOPIC)
    letters = [decode_deadletter(d.value) for d in dead]
    assert letters[0].original_bytes() == b"{not json" and len(dead) == 2
    assert [(x.stage, x.reason, x.original.offset) for x in letters] == [
        ("rules", "undecodable", 0),
        ("rules", "undecodable", 1),
    ]
    assert all(validate(x) == [] for x in letters) and "not JSON" in letters[0].error
    assert {d.header("dlq.reason") for d in dead} == {b"undecodable"}
    assert dead[0].header("dlq.topic") == EVENTS_TOPIC.encode() and dead[0].header("dlq.offset") == b"0"
    assert b"not JSON" in (dead[0].header("dlq.error") or b"")
    assert w.stats.undecodable == 2 and any(a.rule.id == "api_key.all_scope" for a in await alerts(bus))
    assert await bus.committed("rules", EVENTS_TOPIC) == {(EVENTS_TOPIC, 0): 3}


async def test_a_rule_failure_dead_letters_the_event(bus: SqliteBus, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event a rule raised on is dead-lettered naming the rule; the other rules' alerts still go out."""
    await publish(bus, key_event("baseline", T0))
    w = worker(bus)
    rule = w.engine.ruleset.get("api_key.broad_scope")

    def boom(ctx: object, event: object) -> list[object]:
        raise ValueError("bug")

    monkeypatch.setattr(rule, "on_event", boom)
    await w.run_once()
    [dead] = await read(bus, DEADLETTER_TOPIC)
    assert dead.header("dlq.reason") == b"rule_error" and dead.header("dlq.rule") == b"api_key.broad_scope"
    letter = decode_deadletter(dead.value)
    assert (letter.reason, letter.rule, letter.error) == ("rule_error", "api_key.broad_scope", "ValueError: bug")
    assert letter.original_bytes() == key_event("baseline", T0).to_json() and validate(letter) == []
    assert w.stats.rule_failures == 1 and any(a.rule.id == "api_key.all_scope" for a in await alerts(bus))


async def test_ticks_commit_alerts_and_state(bus: SqliteBus) -> None:
    """tick() publishes time-based alerts and persists them: a restarted worker does not repeat them."""
    await publish(bus, key_event("created", T0, scopes=["leads:read"]))
    clock = FakeClock(T0)
    w = worker(bus, clock=clock)
    await w.run_once()
    assert await w.tick() == 0
    clock.advance(100 * 86_400)
    assert await w.tick() == 1
    assert await worker(bus, clock=clock).tick() == 0
    assert [a.rule.id for a in await alerts(bus)] == ["api_key.stale"]


async def test_run_processes_until_stopped(bus: SqliteBus) -> None:
    """run(stop) catches up, ticks, waits for new events, and returns promptly when stopped."""
    w = RulesWorker(bus, {}, clock=FakeClock(T0), idle_secs=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await publish(bus, key_event("baseline", T0))
    for _ in range(200):
        if await read(bus, ALERTS_TOPIC):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert w.stats.alerts >= 1 and w.stats.ticks >= 1


async def test_run_retries_retriable_bus_errors(bus: SqliteBus) -> None:
    """A retriable bus error inside run() is retried; the alert is still published exactly once."""
    failing = FailingBus(bus, fail=2)
    w = RulesWorker(failing, {}, clock=FakeClock(T0), idle_secs=0.01)
    await publish(bus, key_event("baseline", T0))
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    for _ in range(500):
        if failing.fail == 0 and await bus.committed("rules", EVENTS_TOPIC):
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert [a.rule.id for a in await alerts(bus)].count("api_key.all_scope") == 1


async def test_batches_are_committed_one_transaction_each(bus: SqliteBus) -> None:
    """With a small batch size every batch commits its own offsets; alerts match one big batch."""
    evs = [key_event("baseline", T0 + i, kid=f"k{i}") for i in range(7)]
    await publish(bus, *evs)
    w = RulesWorker(bus, {}, clock=FakeClock(T0), batch_size=3)
    assert await w.run_once() == 7 and w.last_consumed == 7
    assert w.stats.batches == 3
    assert sum(1 for a in await alerts(bus) if a.rule.id == "api_key.all_scope") == 7
