"""The Sink contract: every sink, against its fake destination, through the real SinkRunner and SQLite bus.

Each sink must: deliver a batch and commit its offsets only once the destination confirmed
it (batching); resend after a transient failure without losing anything (retry); send a
record the destination refuses for good to ``instantly.deadletter.v1`` as DeadLetter v1
while the rest are delivered (dead letters); and pass ``healthcheck()`` against a live
destination but raise a :class:`SinkError` when it is down (health check).

A :class:`Target` adapts one sink: how to start its fake, build a minimal config, read back
the alert ids the destination holds, make it fail transiently, and which record it refuses.
Sink-specific behaviour (payload shapes, HEC acks, Slack pacing, PagerDuty resolve,
signatures, syslog framing) stays in ``tests/unit/test_sink_*.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from connectors.jsonl import JsonlConfig, JsonlSink
from connectors.pagerduty import PagerDutySink, PagerDutySinkConfig
from connectors.slack import SlackSink, SlackSinkConfig
from connectors.splunk_hec import SplunkHecConfig, SplunkHecSink
from connectors.syslog import SyslogSink, SyslogSinkConfig
from connectors.webhook_sink import SignedWebhookConfig, SignedWebhookSink
from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, OutRecord, TopicPartition
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Sink, SinkConfig
from pipeline.delivery.runner import SinkRunner
from pipeline.errors import SinkError
from schemas import DeadLetter
from schemas.alert import Alert
from tests.fakes import FakeServer, FakeSleep, make_alert, publish
from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.hec import FakeHec
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.receiver import FakeReceiver
from tests.fakes.slack import FakeSlack
from tests.fakes.syslog_tcp import SyslogListener
from tests.unit.test_formats_syslog5424 import parse_5424

HEC_TOKEN = "contract-hec-token-0001"
ES_KEY = "contract-es-api-key-0001"
PD_KEY = "R0UTINGKEY0000000000000000000001"
WH_SECRET = "whsec_" + base64.b64encode(b"contract-webhook-secret-bytes!").decode()
FAST = {"retry_initial_secs": 0.01, "retry_max_secs": 0.05, "circuit_open_secs": 5}
SINKS = ["jsonl", "splunk_hec", "elasticsearch", "webhook", "syslog", "slack", "pagerduty"]
N = 7


@dataclass
class Target:
    """One sink and its fake destination, as the contract tests drive them."""

    sink_id: str
    build: Callable[[dict[str, Any]], tuple[Sink, SinkConfig]]
    ids: Callable[[], list[str]]
    """Alert ids the destination holds, one per copy received."""
    go_down: Callable[[], Awaitable[None]]
    """Make the destination fail transiently (answer 503, refuse connections, lose its directory)."""
    come_back: Callable[[], Awaitable[None]]
    refuse: Callable[[Alert], None]
    """Make the destination refuse this alert for good (the first one published)."""
    poison: Callable[[Alert], Alert | bytes] = lambda alert: alert
    """What to publish as the refused record (a sink that refuses nothing gets an undecodable one)."""
    unreachable: Callable[[], Awaitable[None]] | None = None
    """Take the destination away entirely (default: :attr:`go_down`)."""
    stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _http_faults(server: FakeServer) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    async def down() -> None:
        server.faults.down = True

    async def up() -> None:
        server.faults.down = False

    return down, up


async def _start(server: FakeServer, target: Target) -> Target:
    await server.start()
    target.stop.append(server.stop)
    target.unreachable = server.stop  # connection refused
    return target


async def jsonl(tmp_path: Path) -> Target:
    directory = tmp_path / "out"
    directory.mkdir()
    path = directory / "alerts.jsonl"

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = JsonlConfig.model_validate({"type": "jsonl", "path": str(path), **FAST, **extra})
        return JsonlSink("archive", cfg), cfg

    def ids() -> list[str]:
        return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []

    async def down() -> None:  # a file where the directory should be: the sink cannot create it
        if path.exists():
            path.unlink()
        directory.rmdir()
        directory.write_text("not a directory")

    async def up() -> None:
        directory.unlink()
        directory.mkdir()

    # A file accepts any line: the only record it refuses is one the runner cannot decode.
    return Target("archive", build, ids, down, up, refuse=lambda alert: None, poison=lambda alert: b"{not json")


async def splunk_hec(tmp_path: Path) -> Target:
    hec = FakeHec(HEC_TOKEN)

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = SplunkHecConfig.model_validate(
            {"type": "splunk_hec", "url": hec.url, "token": EnvValue(HEC_TOKEN), **FAST, **extra}
        )
        return SplunkHecSink("splunk", cfg), cfg

    def refuse(alert: Alert) -> None:
        hec.reject = lambda obj: obj["event"].get("id") == alert.id

    return await _start(hec, Target("splunk", build, lambda: hec.ids, *_http_faults(hec), refuse=refuse))


async def elasticsearch(tmp_path: Path) -> Target:
    es = FakeElasticsearch(api_key=ES_KEY)

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = ElasticsearchConfig.model_validate(
            {"type": "elasticsearch", "url": es.url, "api_key": EnvValue(ES_KEY), **FAST, **extra}
        )
        return ElasticsearchSink("elastic", cfg), cfg

    def refuse(alert: Alert) -> None:
        es.reject = lambda doc: alert.id in (doc.get("id"), (doc.get("event") or {}).get("id"))  # native or ECS

    return await _start(es, Target("elastic", build, lambda: es.ids, *_http_faults(es), refuse=refuse))


async def webhook(tmp_path: Path) -> Target:
    rc = FakeReceiver(WH_SECRET)

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = SignedWebhookConfig.model_validate(
            {"type": "webhook", "url": rc.hook_url, "secret": EnvValue(WH_SECRET), **FAST, **extra}
        )
        return SignedWebhookSink("hooks", cfg), cfg

    def refuse(alert: Alert) -> None:
        rc.reject = lambda rec: rec.get("id") == alert.id

    return await _start(rc, Target("hooks", build, lambda: rc.ids, *_http_faults(rc), refuse=refuse))


async def syslog(tmp_path: Path) -> Target:
    listener = SyslogListener()
    await listener.start()

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = SyslogSinkConfig.model_validate(
            {"type": "syslog", "host": "127.0.0.1", "port": listener.port, "max_message_bytes": 4096, **FAST, **extra}
        )
        return SyslogSink("siem", cfg), cfg

    def ids() -> list[str]:
        return [dict(parse_5424(f).sd[0][1])["id"] for f in listener.frames()]

    def big(alert: Alert) -> Alert:  # over max_message_bytes: the sink refuses it for good
        return _alert(0, event_ids=tuple(f"event-{i:05d}-{'x' * 40}" for i in range(100)))

    target = Target("siem", build, ids, listener.stop, listener.start, refuse=lambda alert: None, poison=big)
    target.stop.append(listener.stop)
    return target


async def slack(tmp_path: Path) -> Target:
    server = FakeSlack()

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = SlackSinkConfig.model_validate(
            {"type": "slack", "webhook_url": EnvValue(server.hook_url), "min_interval_secs": 0.01, **FAST, **extra}
        )
        return SlackSink("chat", cfg), cfg

    def ids() -> list[str]:
        return [i for body in server.posted for i in _known if i in orjson.dumps(body).decode()]

    def refuse(alert: Alert) -> None:
        server.script = [(400, "invalid_blocks", None)]  # the first post: the first alert published

    _known: list[str] = [make_alert(i).id for i in range(N + 1)]
    return await _start(server, Target("chat", build, ids, *_http_faults(server), refuse=refuse))


async def pagerduty(tmp_path: Path) -> Target:
    server = FakePagerDuty(PD_KEY)

    def build(extra: dict[str, Any]) -> tuple[Sink, SinkConfig]:
        cfg = PagerDutySinkConfig.model_validate(
            {"type": "pagerduty", "routing_key": EnvValue(PD_KEY), "url": server.url, **FAST, **extra}
        )
        return PagerDutySink("pager", cfg), cfg

    def ids() -> list[str]:
        return [b["payload"]["custom_details"]["alert_id"] for b in server.accepted if b["event_action"] == "trigger"]

    def refuse(alert: Alert) -> None:
        server.script = [(400, {"status": "invalid event", "message": "Event object is invalid", "errors": ["x"]})]

    return await _start(server, Target("pager", build, ids, *_http_faults(server), refuse=refuse))


TARGETS: dict[str, Callable[[Path], Awaitable[Target]]] = {
    "jsonl": jsonl,
    "splunk_hec": splunk_hec,
    "elasticsearch": elasticsearch,
    "webhook": webhook,
    "syslog": syslog,
    "slack": slack,
    "pagerduty": pagerduty,
}


def _alert(i: int, **over: Any) -> Alert:
    base = make_alert(i)
    kw: dict[str, Any] = {
        "rule": base.rule,
        "workspace": base.workspace,
        "summary": base.summary,
        "dedup_key": base.dedup_key,
        "event_ids": base.event_ids,
        "entities": base.entities,
        "first_seen": base.first_seen,
        "last_seen": base.last_seen,
        **over,
    }
    return Alert.build(**kw)


@pytest.fixture(params=SINKS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """Each contract test runs once per sink, against that sink's fake destination."""
    t = await TARGETS[request.param](tmp_path)
    try:
        yield t
    finally:
        for stop in t.stop:
            with contextlib.suppress(AssertionError, OSError):
                await stop()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    async with SqliteBus(tmp_path / "bus.db") as b:
        yield b


async def _committed(bus: SqliteBus, runner: SinkRunner) -> int:
    return sum((await bus.committed(runner.group, ALERTS_TOPIC)).values())


async def _ends(bus: SqliteBus) -> dict[TopicPartition, int]:
    async with bus.consumer([ALERTS_TOPIC]) as c:
        return await c.end_offsets()


async def test_a_batch_is_delivered_and_committed(target: Target, bus: SqliteBus) -> None:
    """N records in batches of 3: each delivered exactly once, then the offsets of all N committed."""
    ids = await publish(bus, [make_alert(i) for i in range(N)])
    sink, cfg = target.build({"batch_max_records": 3})
    runner = SinkRunner(bus, sink, cfg, sleep=FakeSleep())
    stats = await runner.run_once()
    assert Counter(target.ids()) == Counter(ids)
    assert (stats.delivered, stats.batches, stats.committed, stats.retries) == (N, 3, N, 0)
    assert await _committed(bus, runner) == N == sum((await _ends(bus)).values())


async def test_nothing_is_committed_until_the_destination_confirms(target: Target, bus: SqliteBus) -> None:
    """While the destination fails, the circuit opens and no offset moves; once it is back, all N arrive."""
    ids = await publish(bus, [make_alert(i) for i in range(N)])
    await target.go_down()
    sink, cfg = target.build({"circuit_failures": 2})
    clock = FakeClock()
    runner = SinkRunner(bus, sink, cfg, clock=clock, sleep=FakeSleep(clock))
    async with runner:
        first = await runner.run_once()
        assert (first.delivered, first.committed) == (0, 0)
        assert await _committed(bus, runner) == 0 and target.ids() == []
        await target.come_back()
        clock.advance(cfg.circuit_open_secs)
        second = await runner.run_once()
    assert Counter(target.ids()) == Counter(ids)
    assert second.committed == N and await _committed(bus, runner) == N


async def test_a_transient_failure_is_retried_and_nothing_is_lost(target: Target, bus: SqliteBus) -> None:
    """The first attempt fails (503, refused connection, missing directory); the retry delivers every record once."""
    ids = await publish(bus, [make_alert(i) for i in range(N)])
    await target.go_down()
    backoff = FakeSleep()

    async def recover_then_sleep(seconds: float) -> None:
        await target.come_back()
        await backoff(seconds)

    sink, cfg = target.build({})
    stats = await SinkRunner(bus, sink, cfg, sleep=recover_then_sleep).run_once()
    assert stats.retries >= 1 and len(backoff.calls) >= 1
    assert Counter(target.ids()) == Counter(ids), "each record delivered exactly once after the retry"
    assert stats.committed == N and stats.dead_lettered == 0


async def test_a_refused_record_goes_to_dead_letters_and_the_rest_are_delivered(target: Target, bus: SqliteBus) -> None:
    """A record the destination refuses for good becomes a DeadLetter v1 naming the sink; all others arrive."""
    bad = make_alert(0)
    target.refuse(bad)
    published = target.poison(bad)
    if isinstance(published, bytes):
        await bus.publish([OutRecord(ALERTS_TOPIC, published, key=b"ws-1")])
        bad_id = None
    else:
        await publish(bus, [published])
        bad_id = published.id
    rest = await publish(bus, [make_alert(i) for i in range(1, N)])
    sink, cfg = target.build({})
    runner = SinkRunner(bus, sink, cfg, sleep=FakeSleep())
    stats = await runner.run_once()
    assert Counter(target.ids()) == Counter(rest)
    assert (stats.dead_lettered, stats.committed) == (1, N)
    assert await _committed(bus, runner) == N
    async with bus.consumer([DEADLETTER_TOPIC], start="earliest") as c:
        (rec,) = await c.poll(10, timeout_s=0)
    letter = DeadLetter.from_json(rec.value)
    assert (letter.stage, letter.component, letter.record_id) == ("sink", sink.sink_id, bad_id)
    assert letter.error and letter.original.topic == ALERTS_TOPIC and letter.original.offset == 0
    expected = published if isinstance(published, bytes) else published.to_json()
    assert letter.original_bytes() == expected


async def test_healthcheck_passes_when_up_and_raises_when_down(target: Target) -> None:
    """``healthcheck()`` passes against the live fake and raises SinkError once the destination is gone."""
    sink, _ = target.build({})
    async with sink:
        await sink.healthcheck()
    await (target.unreachable or target.go_down)()
    sink, _ = target.build({})
    async with sink:
        with pytest.raises(SinkError):
            await sink.healthcheck()
