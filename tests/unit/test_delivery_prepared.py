"""Encoding ahead: the runner prepares batch N+1 while batch N is sent, and still commits in order.

Also checks that the HTTP sinks' ``send_prepared(prepare(batch))`` is what ``send(batch)`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from pipeline.bus.base import EVENTS_TOPIC, TopicPartition
from pipeline.bus.sqlite import SqliteBus
from pipeline.delivery.base import Delivery, Failure, PreparedBatch, PreparingSink, SendResult, SinkConfig
from pipeline.delivery.runner import CircuitState, SinkRunner
from pipeline.errors import SinkError
from tests.fakes import FakeSleep, make_event, publish


class PrepConfig(SinkConfig):
    type: Literal["prep"] = "prep"


class PreparingScriptedSink:
    """Records the order of prepare/send calls; fails the attempts listed in ``fail``."""

    Config: ClassVar[type[SinkConfig]] = PrepConfig

    def __init__(self, fail: dict[int, str] | None = None, prepare_error: bool = False) -> None:
        self.sink_id = "p1"
        self.fail = fail or {}  # attempt number -> "retriable" | "fatal" | "partial"
        self.prepare_error = prepare_error
        self.log: list[tuple[str, str]] = []  # (what, first id of the batch)
        self.delivered: list[str] = []
        self.attempts = 0
        self.in_flight = False
        self.prepared_while_in_flight = 0

    async def __aenter__(self) -> PreparingScriptedSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def prepare(self, batch: Sequence[Delivery]) -> PreparedBatch:
        if self.prepare_error:
            raise ValueError("cannot encode")
        self.log.append(("prepare", batch[0].id))
        self.prepared_while_in_flight += self.in_flight
        return PreparedBatch(batch, [(list(batch), b"".join(d.raw for d in batch))])

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        self.log.append(("send", batch[0].id))
        return await self._deliver(list(batch), b"".join(d.raw for d in batch))

    async def send_prepared(self, prepared: PreparedBatch) -> SendResult:
        ((items, body),) = prepared.requests
        self.log.append(("send_prepared", items[0].id))
        return await self._deliver(items, body)

    async def _deliver(self, items: list[Delivery], body: bytes) -> SendResult:
        assert body == b"".join(d.raw for d in items)
        attempt, self.attempts = self.attempts, self.attempts + 1
        self.in_flight = True
        try:
            await asyncio.sleep(0.01)  # the round trip: the runner reads and encodes ahead meanwhile
        finally:
            self.in_flight = False
        how = self.fail.get(attempt)
        if how == "retriable":
            raise SinkError("p1: HTTP 503", retriable=True)
        if how == "fatal":
            raise SinkError("p1: HTTP 401", retriable=False)
        if how == "partial":  # the second half fails, retriably
            half = len(items) // 2
            self.delivered += [d.id for d in items[:half]]
            return SendResult(failures=[Failure(d, "p1: item 429", retriable=True) for d in items[half:]])
        self.delivered += [d.id for d in items]
        return SendResult()

    async def healthcheck(self) -> None:
        return None


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    async with SqliteBus(tmp_path / "bus.db") as b:
        yield b


def make_runner(bus: SqliteBus, sink: PreparingScriptedSink, **kw: Any) -> tuple[SinkRunner, list[int]]:
    """A runner whose commits are checked: in order, and only of confirmed records."""
    config = PrepConfig.model_validate({"batch_max_records": 10, "retry_initial_secs": 1.0, "circuit_failures": 2,
                                        "topics": ["events"], **kw})  # fmt: skip
    r = SinkRunner(bus, sink, config, sleep=FakeSleep(), rng=lambda: 1.0)
    commits: list[int] = []
    commit = r._commit

    async def checked(pending: Any) -> None:
        end = pending.offsets[TopicPartition(EVENTS_TOPIC, 0)]
        assert not commits or end > commits[-1], "commits go forward"
        assert len(sink.delivered) >= end, "nothing is committed before the sink confirmed it"
        commits.append(end)
        await commit(pending)

    r._commit = checked  # type: ignore[method-assign]
    return r, commits


def test_http_sinks_can_prepare() -> None:
    from connectors.elasticsearch import ElasticsearchSink
    from connectors.splunk_hec import SplunkHecSink

    assert all(hasattr(cls, "prepare") and hasattr(cls, "send_prepared") for cls in (SplunkHecSink, ElasticsearchSink))
    assert isinstance(PreparingScriptedSink(), PreparingSink)


async def test_next_batch_is_encoded_while_one_is_sent(bus: SqliteBus) -> None:
    ids = await publish(bus, [make_event(i) for i in range(45)])
    sink = PreparingScriptedSink()
    r, commits = make_runner(bus, sink)
    stats = await r.run_once()
    assert sink.delivered == ids  # in order, each once
    assert (stats.delivered, stats.committed, commits[-1]) == (45, 45, 45)
    assert sink.prepared_while_in_flight >= 3  # batches 2..5 were encoded during the previous request
    sent = [what for what, _ in sink.log if what.startswith("send")]
    assert sent[0] == "send" and set(sent[1:]) == {"send_prepared"}


async def test_failure_mid_pipeline_resends_pending_and_loses_nothing(bus: SqliteBus) -> None:
    """Batch 2 fails (whole, then partly) while batch 3 is already encoded: nothing lost, nothing twice."""
    ids = await publish(bus, [make_event(i) for i in range(40)])
    sink = PreparingScriptedSink(fail={1: "retriable", 2: "partial"})
    r, commits = make_runner(bus, sink)
    stats = await r.run_once()
    assert sorted(sink.delivered) == sorted(ids) and len(sink.delivered) == len(set(sink.delivered))
    assert (stats.delivered, stats.committed, stats.retries, commits[-1]) == (40, 40, 2, 40)
    # The retries re-encode what is pending; the batch encoded ahead is sent as prepared afterwards.
    second = ids[10]
    assert [w for w, first in sink.log if first == second and w.startswith("send")] == ["send_prepared", "send"]
    assert ("send", ids[15]) in sink.log  # the half that failed, alone
    assert ("send_prepared", ids[20]) in sink.log


async def test_circuit_opening_mid_pipeline_commits_only_confirmed(bus: SqliteBus) -> None:
    ids = await publish(bus, [make_event(i) for i in range(30)])
    sink = PreparingScriptedSink(fail={1: "fatal"})
    r, commits = make_runner(bus, sink)
    async with r:
        first = await r.run_once()
        assert r.health().circuit is CircuitState.OPEN
        assert (first.delivered, first.committed, commits) == (10, 10, [10])
        r._circuit.half_open()
        second = await r.run_once()
    assert sink.delivered == ids
    assert (second.delivered, second.committed, commits[-1]) == (20, 20, 30)


async def test_prepare_error_falls_back_to_send(bus: SqliteBus) -> None:
    ids = await publish(bus, [make_event(i) for i in range(25)])
    sink = PreparingScriptedSink(prepare_error=True)
    r, commits = make_runner(bus, sink)
    stats = await r.run_once()
    assert sink.delivered == ids and stats.committed == 25 and commits[-1] == 25
    assert {what for what, _ in sink.log} == {"send"}


async def test_batches_respect_byte_cap_within_one_poll(bus: SqliteBus) -> None:
    """Records that do not fit are carried to the next batch (the first one always travels)."""
    ids = await publish(bus, [make_event(i, pad=300 if i != 3 else 5000) for i in range(12)])
    sink = PreparingScriptedSink()
    r, _ = make_runner(bus, sink, batch_max_bytes=2048)
    await r.run_once()
    assert sink.delivered == ids
    firsts = [first for what, first in sink.log if what.startswith("send")]
    assert ids[3] in firsts and ids[4] in firsts  # the 5 KB record went alone


# ---- the HTTP sinks: send_prepared(prepare(batch)) is send(batch) -----------------------------------
async def test_hec_prepared_requests_match_send() -> None:
    from connectors.splunk_hec import SplunkHecConfig, SplunkHecSink
    from pipeline.bus.base import Record
    from pipeline.config.base import EnvValue
    from pipeline.delivery.runner import decode
    from tests.fakes.hec import FakeHec

    ds = [decode(Record(EVENTS_TOPIC, 0, i, 0, None, make_event(i).to_json())) for i in range(30)]
    batch = [d for d in ds if isinstance(d, Delivery)]
    async with FakeHec("tok") as hec:
        cfg = SplunkHecConfig.model_validate({"url": hec.url, "token": EnvValue("tok"), "max_request_bytes": 4096})
        async with SplunkHecSink("h", cfg) as sink:
            prepared = await sink.prepare(batch)
            assert len(prepared.requests) > 1 and [d for items, _ in prepared.requests for d in items] == batch
            assert (await sink.send_prepared(prepared)).ok
            first = list(hec.ids)
            assert (await sink.send(batch)).ok
    assert first == [d.id for d in batch] and hec.ids == first * 2


async def test_elasticsearch_prepared_requests_match_send() -> None:
    from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink
    from pipeline.bus.base import Record
    from pipeline.config.base import EnvValue
    from pipeline.delivery.runner import decode
    from tests.fakes.elasticsearch import FakeElasticsearch

    ds = [decode(Record(EVENTS_TOPIC, 0, i, 0, None, make_event(i).to_json())) for i in range(20)]
    batch = [d for d in ds if isinstance(d, Delivery)]
    async with FakeElasticsearch(api_key="k") as es:
        cfg = ElasticsearchConfig.model_validate({"url": es.url, "api_key": EnvValue("k")})
        async with ElasticsearchSink("e", cfg) as sink:
            prepared = await sink.prepare(batch)
            ((items, body),) = prepared.requests
            assert items == batch and body == b"".join(sink.encode(d) for d in batch)
            assert (await sink.send_prepared(prepared)).ok
            again = await sink.send(batch)  # every item a 409: duplicates, through the slow path
    assert again.ok and again.duplicates == 20
    assert sorted(es.ids) == sorted(d.id for d in batch)


def test_millis_time_matches_the_float_path() -> None:
    """The fast time path gives the digits repr(round(epoch_seconds(t), 3)) gives, or declines."""
    import random
    from datetime import UTC, datetime, timedelta

    from pipeline.delivery.http import epoch_seconds, millis_time

    rnd = random.Random(3)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    texts = [(start + timedelta(milliseconds=rnd.randrange(200 * 365 * 86_400_000))).strftime("%Y-%m-%dT%H:%M:%S.")
             + f"{rnd.randrange(1000):03d}Z" for _ in range(3000)]  # fmt: skip
    texts += ["1970-01-01T00:00:00.000Z", "2026-05-28T20:26:59.990Z", "9999-12-31T23:59:59.999Z"]
    for text in texts:
        got = millis_time(text)
        assert got is not None, text
        assert f"{got[0]}.{got[1].rstrip('0') or '0'}" == repr(round(epoch_seconds(text), 3)), text
    others: list[object] = [
        "2026-05-28T20:26:60.000Z",
        "2026-13-28T20:26:00.100Z",
        "2026-05-28T20:26:00.1Z",
        "1969-12-31T23:59:59.500Z",
        "2026-05-28T20:26:00.\u0661\u0662\u0663Z",
        "2026-05-28 20:26:00.100Z",
        "2026-05-28T20:26:00.100+00:00",
        None,
        5,
    ]
    for other in others:
        assert millis_time(other) is None, other


async def test_settled_batches_are_released_and_retries_keep_nothing(bus: SqliteBus) -> None:
    """What is kept to be freed later is at most the last settled batch, however many retries."""
    ids = await publish(bus, [make_event(i) for i in range(30)])
    sink = PreparingScriptedSink(fail=dict.fromkeys(range(1, 9), "retriable"))
    r, commits = make_runner(bus, sink, circuit_failures=20)
    reader = r._reader
    kept: list[int] = []
    release_later = reader.release_later

    def watch(*done: object) -> None:
        release_later(*done)
        kept.append(len(reader._released))

    reader.release_later = watch  # type: ignore[method-assign]
    stats = await r.run_once()
    assert sink.delivered == ids and (stats.retries, commits[-1]) == (8, 30)
    assert kept and max(kept) <= 3  # a batch's deliveries and encoding, and the batch
    assert reader._released == []
