"""PagerDuty sink against the fake Events API v2: dedup_key, trigger/resolve, severities, errors, no key leaks."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.pagerduty import PagerDutySink, PagerDutySinkConfig, dedup_key
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.bus.sqlite import SqliteBus
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.delivery.base import Delivery, Sink
from pipeline.delivery.registry import register_sink, sink_class, unregister_sink
from pipeline.delivery.runner import SinkRunner, decode
from pipeline.errors import SinkError
from schemas import RuleRef
from tests.fakes import FakeSleep, Faults, publish
from tests.fakes.pagerduty import FakePagerDuty
from tests.unit.test_formats_native import sample_alert, sample_events

KEY = "R0UT1NGKEYCANARY0123456789abcdef"  # 32 characters, like a real integration key
assert len(KEY) == 32


def alert_delivery(offset: int = 0, **over: Any) -> Delivery:
    d = decode(Record(ALERTS_TOPIC, 0, offset, 0, b"ws", sample_alert(**over).to_json()))
    assert not isinstance(d, str)
    return d


def pd_cfg(url: str, key: str = KEY, **kw: Any) -> PagerDutySinkConfig:
    return PagerDutySinkConfig.model_validate({"type": "pagerduty", "url": url, "routing_key": EnvValue(key), **kw})


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    server = FakePagerDuty(KEY)
    async with server:
        yield server


def test_config_alerts_only_and_default_url() -> None:
    """PagerDuty defaults to the public Events API, subscribes to alerts, and refuses events."""
    cfg = PagerDutySinkConfig.model_validate({"type": "pagerduty", "routing_key": EnvValue(KEY)})
    assert cfg.url == "https://events.pagerduty.com" and cfg.topics == ["alerts"]
    assert KEY not in repr(cfg)
    assert isinstance(PagerDutySink("pd", cfg), Sink)
    with pytest.raises(ValidationError, match="alerts only"):
        pd_cfg("https://events.pagerduty.com", topics=["events", "alerts"])


async def test_trigger_body(pd: FakePagerDuty) -> None:
    """An open alert triggers with its dedup_key, mapped severity, summary, source, component and details."""
    d = alert_delivery()
    async with PagerDutySink("pd", pd_cfg(pd.url, client_url="https://audit.example.com")) as sink:
        assert (await sink.send([d])).ok
    (body,) = pd.accepted
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == d.body["dedup_key"]
    p = body["payload"]
    assert p["severity"] == "critical"
    assert p["summary"].startswith("API key with all:all scope: Key 'CRM sync' holds all:all")
    assert p["source"] == "instantly workspace Acme | Growth = \\ team (019cc043-e2f1-7def-8b07-0aab88328dad)"
    assert p["component"] == "api_key:CRM sync"
    assert p["class"] == "api_key.all_scope"
    assert p["timestamp"] == d.body["last_seen"]
    assert p["custom_details"]["alert_id"] == d.id and p["custom_details"]["event_ids"] == d.body["event_ids"]
    assert body["links"] == [{"href": d.body["rule"]["runbook"], "text": "Runbook"}]
    assert body["client"] == "instantly-audit" and body["client_url"] == "https://audit.example.com"
    assert pd.pages == 1


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("critical", "critical"), ("high", "error"), ("medium", "warning"), ("low", "info"), ("info", "info")],
)
async def test_severity_mapping(pd: FakePagerDuty, severity: str, expected: str) -> None:
    """Alert severities map to PagerDuty's critical/error/warning/info."""
    rule = RuleRef("member.admin_added", 1, "Admin added", severity)  # type: ignore[arg-type]
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        assert (await sink.send([alert_delivery(rule=rule)])).ok
    assert pd.accepted[0]["payload"]["severity"] == expected


async def test_replays_never_page_twice(pd: FakePagerDuty) -> None:
    """The same alert sent again (a retry or a replay) folds into the open incident: one page."""
    d = alert_delivery()
    again = alert_delivery(count=4, last_seen="2026-03-06T00:00:00.000Z")
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        for batch in ([d], [d], [again], [d, again]):
            assert (await sink.send(batch)).ok
    assert pd.pages == 1
    assert len({b["dedup_key"] for b in pd.accepted}) == 1


async def test_resolve_closes_and_batch_keeps_last_state(pd: FakePagerDuty) -> None:
    """A resolved alert sends resolve; a batch holding trigger then resolve for one key sends only resolve."""
    trigger = alert_delivery(0)
    resolve = alert_delivery(1, status="resolved")
    assert trigger.body["dedup_key"] == resolve.body["dedup_key"] and trigger.id != resolve.id
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        assert (await sink.send([trigger])).ok
        assert pd.open
        result = await sink.send([trigger, resolve])  # a replay of both
        assert result.ok and result.duplicates == 1
        assert (await sink.send([resolve])).ok  # resolve is idempotent
    assert pd.accepted[1] == {"routing_key": KEY, "event_action": "resolve", "dedup_key": trigger.body["dedup_key"]}
    assert [b["event_action"] for b in pd.accepted] == ["trigger", "resolve", "resolve"]
    assert not pd.open and pd.pages == 1


async def test_429_and_5xx_are_retriable_with_backoff(pd: FakePagerDuty) -> None:
    """429 (Retry-After, else 30 s) and 5xx make the rest of the batch retriable; accepted alerts stay accepted."""
    items = [alert_delivery(i, dedup_key=f"k{i}") for i in range(4)]
    pd.faults = Faults(retry_after=7)
    pd.rate_limit_per_min = 1  # the first event is accepted, the second is throttled
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        result = await sink.send(items)
        assert [f.delivery.id for f in result.failures] == [d.id for d in items[1:]]
        assert all(f.retriable and f.retry_after == 7 for f in result.failures)
        pd.faults, pd.rate_limit_per_min = Faults(), None
        pd.script = [(429, {"status": "throttle exceeded"})]
        result = await sink.send(items[1:])
        assert result.failures[0].retry_after == 30.0
        pd.script = [(503, {"status": "unavailable"})]
        result = await sink.send(items[1:])
        assert all(f.retriable for f in result.failures) and len(result.failures) == 3
        assert (await sink.send(items[1:])).ok
    assert pd.pages == 4


async def test_wrong_url_or_unreachable(pd: FakePagerDuty) -> None:
    """A 404 (wrong base URL) fails the batch without retrying soon; an unreachable API is retriable."""
    pd.script = [(404, {"error": "not found"})]
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        with pytest.raises(SinkError) as err:
            await sink.send([alert_delivery()])
        assert not err.value.retriable
    async with PagerDutySink("pd", pd_cfg("http://127.0.0.1:1")) as sink:
        with pytest.raises(SinkError) as err:
            await sink.send([alert_delivery()])
        assert err.value.retriable


async def test_a_refused_routing_key_fails_the_batch_instead_of_dead_lettering(pd: FakePagerDuty) -> None:
    """PagerDuty's 400 naming the routing key is about the integration: nothing is dead-lettered, no retry soon.

    A 400 about the event itself (here: an unknown severity the fake refuses) stays that record's dead letter.
    """
    async with PagerDutySink("pd", pd_cfg(pd.url, key="z" * 31)) as sink:
        with pytest.raises(SinkError, match="routing_key") as err:
            await sink.send([alert_delivery(0, dedup_key="a"), alert_delivery(1, dedup_key="b")])
    assert not err.value.retriable and len(pd.received) == 1
    pd.script = [(400, {"status": "invalid event", "message": "Event object is invalid",
                        "errors": ["'payload.severity' is invalid"]})]  # fmt: skip
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        result = await sink.send([alert_delivery(0, dedup_key="a"), alert_delivery(1, dedup_key="b")])
    assert [f.retriable for f in result.failures] == [False] and len(pd.accepted) == 1


async def test_events_are_refused_and_long_fields_cut(pd: FakePagerDuty) -> None:
    """An event is dead-lettered; a 5000-character summary is cut to 1024; a 300-character dedup key is hashed."""
    ev = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"", sample_events()["login"].to_json()))
    assert not isinstance(ev, str)
    long_alert = alert_delivery(1, summary="s" * 5000)
    long_alert.body["dedup_key"] = "k" * 300
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        result = await sink.send([ev, long_alert])
    assert [f.delivery.id for f in result.failures] == [ev.id]
    (body,) = pd.accepted
    assert len(body["payload"]["summary"]) == 1024
    assert body["dedup_key"] == dedup_key(long_alert.body) and len(body["dedup_key"]) == 71


async def test_healthcheck(pd: FakePagerDuty) -> None:
    """The health check sends a no-op acknowledge: 202 passes, a wrong key fails, nothing pages."""
    await PagerDutySink("pd", pd_cfg(pd.url)).healthcheck()
    assert pd.accepted[0]["event_action"] == "acknowledge" and pd.pages == 0
    with pytest.raises(SinkError, match="Invalid routing key") as err:
        await PagerDutySink("pd", pd_cfg(pd.url, key="x" * 32)).healthcheck()
    assert not err.value.retriable


def _texts(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), *traceback.format_exception(e)]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


async def test_canary_routing_key_never_leaks(pd: FakePagerDuty, caplog: pytest.LogCaptureFixture) -> None:
    """The routing key (a canary) appears in no log line, error text or dead-letter reason, even when echoed."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    pd.script = [
        (400, {"status": "invalid event", "message": f"bad key {KEY}", "errors": [f"routing_key {KEY}"]}),
        (429, {"status": KEY}),
        (500, {"message": KEY}),
        (404, {"message": KEY}),
    ]
    async with PagerDutySink("pd", pd_cfg(pd.url)) as sink:
        for i in range(4):
            try:
                result = await sink.send([alert_delivery(i, dedup_key=f"c{i}")])
                texts += [f.error for f in result.failures]
            except SinkError as err:
                texts.append(_texts(err))
    for url in ("http://127.0.0.1:1", pd.url):
        try:
            await PagerDutySink("pd", pd_cfg(url, key="y" * 32 if url == pd.url else KEY)).healthcheck()
        except SinkError as err:
            texts.append(_texts(err))
    assert len(texts) >= 6
    for text in [*texts, caplog.text]:
        assert KEY not in text


async def test_through_the_runner_retries_and_replays_page_once(pd: FakePagerDuty, tmp_path: Path) -> None:
    """Via the sink runner and a real bus: a 500 is retried, and a full replay (new group) pages nobody again."""
    k1_open = sample_alert(dedup_key="k1")
    k2_open = sample_alert(dedup_key="k2")
    k1_resolved = sample_alert(dedup_key="k1", status="resolved")
    pd.script = [(500, {"status": "error"})]
    async with SqliteBus(tmp_path / "bus.db") as bus:
        await publish(bus, [k1_open, k2_open, k1_resolved])
        cfg = pd_cfg(pd.url, batch_max_records=1, retry_initial_secs=0.01)
        stats = await SinkRunner(bus, PagerDutySink("pd", cfg), cfg, sleep=FakeSleep()).run_once()
        assert (stats.delivered, stats.retries) == (3, 1)
        assert pd.pages == 2 and set(pd.open) == {"k2"}
        replay = pd_cfg(pd.url, batch_max_records=100)
        await SinkRunner(bus, PagerDutySink("pd", replay), replay, group="replay", sleep=FakeSleep()).run_once()
    assert pd.pages == 2 and set(pd.open) == {"k2"}, "the replayed trigger of k1 was superseded by its resolve"


def test_yaml_config_example() -> None:
    """The documented YAML example validates through the registry with the key from the environment."""
    text = """
sinks:
  oncall:
    type: pagerduty
    routing_key: ${PAGERDUTY_ROUTING_KEY}
    min_severity: high
"""
    config = parse_config(text, env={"PAGERDUTY_ROUTING_KEY": KEY})
    register_sink("pagerduty", PagerDutySink)
    try:
        sink_cfg = config.sinks["oncall"]
        cls = sink_class(sink_cfg.type)
    finally:
        unregister_sink("pagerduty")
    assert cls is PagerDutySink
    assert isinstance(sink_cfg, PagerDutySinkConfig)
    assert sink_cfg.routing_key.get_secret_value() == KEY and sink_cfg.min_severity == "high"


async def test_replay_to_pagerduty_does_not_page_for_conditions_resolved_later_in_the_range(
    pd: FakePagerDuty, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``replay --to`` PagerDuty sends only the last record of each dedup key in the whole range.

    PagerDuty folds a trigger into an *open* alert only: a resolved condition's trigger, replayed in
    an earlier batch than its resolve (batch_max_records apart), opened a new incident and paged
    the on-call for something closed long ago (the docs promise one copy per dedup key).
    """
    from types import SimpleNamespace

    from pipeline.replay.deliver import redeliver
    from pipeline.replay.scan import ReplayStats, Selection

    k1_open = sample_alert(dedup_key="k1")
    k2_open = sample_alert(dedup_key="k2")
    k1_resolved = sample_alert(dedup_key="k1", status="resolved")
    async with SqliteBus(tmp_path / "bus.db") as bus:
        await publish(bus, [k1_open, k2_open, k1_resolved])
        cfg = pd_cfg(pd.url, batch_max_records=1, retry_initial_secs=0.01)
        await SinkRunner(bus, PagerDutySink("pd", cfg), cfg, sleep=FakeSleep()).run_once()
        assert pd.pages == 2 and set(pd.open) == {"k2"}
        config = SimpleNamespace(sinks={"pd": cfg})
        code = await redeliver(bus, config, Selection(topic=ALERTS_TOPIC), ReplayStats(), "pd")
    assert code == 0
    assert pd.pages == 2 and set(pd.open) == {"k2"}, "nobody is paged for k1, resolved later in the range"
    assert [b["event_action"] for b in pd.accepted[3:]] == ["trigger", "resolve"]
    assert "superseded by a later record of the same key 1" in capsys.readouterr().err
