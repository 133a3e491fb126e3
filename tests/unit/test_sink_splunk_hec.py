"""Splunk HEC sink against the fake collector: envelope, gzip, errors, indexer acknowledgement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from connectors.splunk_hec import SplunkHecConfig, SplunkHecSink
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.clock import FakeClock, parse_time
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.errors import SinkError
from pipeline.formats import to_splunk
from tests.fakes import BASE_TIME, FakeSleep, Faults, make_alert, make_event
from tests.fakes.hec import FakeHec

TOKEN = "hec-token-0000"


def ev(i: int, **kw: Any) -> Delivery:
    d = decode(Record(EVENTS_TOPIC, 0, i, 0, b"ws-1", make_event(i, **kw).to_json()))
    assert not isinstance(d, str)
    return d


def al(i: int) -> Delivery:
    d = decode(Record(ALERTS_TOPIC, 0, i, 0, b"ws-1", make_alert(i).to_json()))
    assert not isinstance(d, str)
    return d


def hec_cfg(url: str, **kw: Any) -> SplunkHecConfig:
    return SplunkHecConfig.model_validate({"type": "splunk_hec", "url": url, "token": EnvValue(TOKEN), **kw})


@pytest.fixture
async def hec() -> AsyncIterator[FakeHec]:
    async with FakeHec(TOKEN) as server:
        yield server


async def test_envelope_sourcetype_time_index_host(hec: FakeHec) -> None:
    """Events are sent gzip'd with sourcetype per kind, epoch time from the record, host, index, source."""
    async with SplunkHecSink("splunk", hec_cfg(hec.url, index="audit", host="pipeline-1")) as s:
        result = await s.send([ev(1), al(2)])
    assert result.ok and hec.gzip_requests == 1
    e, a = hec.events
    assert e["sourcetype"] == "instantly:audit:event" and a["sourcetype"] == "instantly:audit:alert"
    assert e["time"] == pytest.approx(BASE_TIME + 1) and a["time"] == pytest.approx(BASE_TIME + 2)
    assert (e["index"], e["host"], e["source"]) == ("audit", "pipeline-1", "instantly-audit")
    assert e["event"] == to_splunk(make_event(1)) and a["event"] == to_splunk(make_alert(2))
    assert e["event"]["instantly"] == make_event(1).to_dict()


async def test_native_format_sends_the_bus_json(hec: FakeHec) -> None:
    """format: native puts the record as on the bus into the HEC event."""
    async with SplunkHecSink("splunk", hec_cfg(hec.url, format="native")) as s:
        assert (await s.send([ev(1)])).ok
    assert hec.events[0]["event"] == make_event(1).to_dict()


async def test_time_keeps_milliseconds() -> None:
    """The HEC time is epoch seconds with the event's milliseconds."""
    d = ev(1)
    body = {**d.body, "time": "2026-03-05T23:09:47.337Z"}
    s = SplunkHecSink("s", hec_cfg("http://127.0.0.1:9", compression="none"))
    obj = orjson.loads(s.encode(Delivery(d.record, "event", d.id, d.type, body)))
    assert obj["time"] == pytest.approx(parse_time("2026-03-05T23:09:47.337Z"))


async def test_batch_is_split_by_max_request_bytes(hec: FakeHec) -> None:
    """A batch larger than max_request_bytes goes out as several requests; all events arrive."""
    async with SplunkHecSink("s", hec_cfg(hec.url, max_request_bytes=2048)) as s:
        assert (await s.send([ev(i) for i in range(20)])).ok
    assert hec.requests > 3 and sorted(hec.ids) == sorted(make_event(i).id for i in range(20))


async def test_bad_token_is_fatal_and_not_retried(hec: FakeHec) -> None:
    """403 code 4 raises a non-retriable SinkError (the runner opens its circuit)."""
    cfg = SplunkHecConfig.model_validate({"type": "splunk_hec", "url": hec.url, "token": EnvValue("wrong-token")})
    async with SplunkHecSink("s", cfg) as s:
        with pytest.raises(SinkError) as info:
            await s.send([ev(1)])
    assert not info.value.retriable and "code 4" in str(info.value) and "Invalid token" in str(info.value)
    assert "wrong-token" not in str(info.value)


async def test_busy_is_retriable_with_retry_after(hec: FakeHec) -> None:
    """503 code 9 (server busy) marks every record retriable with the Retry-After."""
    hec.faults = Faults(down=True, retry_after=15)
    async with SplunkHecSink("s", hec_cfg(hec.url)) as s:
        result = await s.send([ev(1), ev(2)])
    assert len(result.failures) == 2
    assert all(f.retriable and f.retry_after == 15 and "code 9" in f.error for f in result.failures)


async def test_invalid_event_is_poison_others_retried(hec: FakeHec) -> None:
    """400 code 6 names the bad event: it is poison, the ones after it are retried, the ones before accepted."""
    hec.reject = lambda obj: obj["event"]["instantly"]["attributes"]["n"] == 2
    batch = [ev(i) for i in range(5)]
    async with SplunkHecSink("s", hec_cfg(hec.url)) as s:
        result = await s.send(batch)
    poison = [f for f in result.failures if not f.retriable]
    retry = [f for f in result.failures if f.retriable]
    assert [f.delivery.id for f in poison] == [batch[2].id] and "code 6" in poison[0].error
    assert [f.delivery.id for f in retry] == [batch[3].id, batch[4].id]
    assert hec.ids == [batch[0].id, batch[1].id]


async def test_oversized_request_is_split_and_a_lone_giant_is_poison() -> None:
    """413 halves the request; a single event larger than HEC accepts is dead-lettered."""
    async with FakeHec(TOKEN, max_content_length=3000) as hec:
        batch = [ev(i) for i in range(6)] + [ev(99, pad=5000)]
        async with SplunkHecSink("s", hec_cfg(hec.url, compression="none")) as s:
            result = await s.send(batch)
    assert [f.delivery.id for f in result.failures] == [batch[-1].id]
    assert not result.failures[0].retriable and "413" in result.failures[0].error
    assert sorted(hec.ids) == sorted(d.id for d in batch[:-1])


async def test_indexer_ack_waits_for_acknowledgement() -> None:
    """With ack on, send() returns only after the ack endpoint reports every ackId true."""
    async with FakeHec(TOKEN, ack=True) as hec:
        clock = FakeClock()
        async with SplunkHecSink("s", hec_cfg(hec.url, ack=True), clock=clock, sleep=FakeSleep(clock)) as s:
            result = await s.send([ev(i) for i in range(3)])
    assert result.ok and hec.ack_queries >= 1 and len(hec.ids) == 3


async def test_unacknowledged_events_are_resent_after_ack_timeout() -> None:
    """Events whose ackId never turns true within ack_timeout_secs come back as retriable failures."""
    async with FakeHec(TOKEN, ack=True, lose_rate=1.0) as hec:
        clock = FakeClock()
        sleep = FakeSleep(clock)
        cfg = hec_cfg(hec.url, ack=True, ack_timeout_secs=10, ack_poll_interval_secs=2)
        async with SplunkHecSink("s", cfg, clock=clock, sleep=sleep) as s:
            result = await s.send([ev(1), ev(2)])
    assert len(result.failures) == 2 and all(f.retriable for f in result.failures)
    assert "not acknowledged" in result.failures[0].error
    assert sum(sleep.calls) == pytest.approx(10) and max(sleep.calls) <= 2


async def test_ack_without_channel_support_is_fatal(hec: FakeHec) -> None:
    """ack: true against a token without indexer acknowledgement (no ackId) is a setup error."""
    async with SplunkHecSink("s", hec_cfg(hec.url, ack=True)) as s:
        with pytest.raises(SinkError, match="no ackId") as info:
            await s.send([ev(1)])
    assert not info.value.retriable


async def test_healthcheck(hec: FakeHec) -> None:
    """The health check passes with a good token and names the problem otherwise."""
    async with SplunkHecSink("s", hec_cfg(hec.url)) as s:
        await s.healthcheck()
    bad = SplunkHecConfig.model_validate({"type": "splunk_hec", "url": hec.url, "token": EnvValue("nope-nope")})
    async with SplunkHecSink("s", bad) as s:
        with pytest.raises(SinkError, match="token check: HTTP 403 code 4"):
            await s.healthcheck()
    hec.faults = Faults(down=True)
    async with SplunkHecSink("s", hec_cfg(hec.url)) as s:
        with pytest.raises(SinkError, match="code 18") as info:
            await s.healthcheck()
    assert info.value.retriable


async def test_unreachable_is_retriable() -> None:
    """A refused connection makes every record retriable (no exception escapes send)."""
    server = FakeHec(TOKEN)
    await server.start()
    url = server.url
    await server.stop()
    async with SplunkHecSink("s", hec_cfg(url)) as s:
        result = await s.send([ev(1)])
    assert result.failures[0].retriable and "ClientConnectorError" in result.failures[0].error


@pytest.mark.parametrize(
    "suffix",
    ["/services/collector", "/services/collector/event", "/services/collector/event/1.0", "/services/collector/raw/"],
)
async def test_the_hec_endpoint_url_splunk_documents_works_as_the_url(hec: FakeHec, suffix: str) -> None:
    """Splunk documents HEC as ``https://<host>:8088/services/collector/event``; pasted as ``url``,
    the sink appended its own paths (``…/services/collector/event/services/collector/health``) and
    every request got a 404. The endpoint's path is accepted and ignored, as the base URL is meant."""
    cfg = hec_cfg(hec.url + suffix)
    assert cfg.url == hec.url
    async with SplunkHecSink("s", cfg) as s:
        await s.healthcheck()
        assert (await s.send([ev(1)])).ok
    assert hec.ids == [make_event(1).id]


def test_a_path_before_the_hec_endpoint_is_kept() -> None:
    """A proxy prefix stays: only Splunk's own endpoint path is removed."""
    assert hec_cfg("https://proxy.example.com/splunk/services/collector/event").url == (
        "https://proxy.example.com/splunk"
    )
    assert hec_cfg("https://splunk.example.com:8088").url == "https://splunk.example.com:8088"
    assert hec_cfg("https://splunk.example.com:8088/services/collectors").url.endswith("/collectors")


async def test_no_collector_at_the_url_is_named(hec: FakeHec) -> None:
    """A URL where no HEC answers (another service, a proxy path that is not routed) said
    ``health: HTTP 404 code None ()``; it says no collector answers there and what ``url`` is."""
    async with SplunkHecSink("s", hec_cfg(hec.url + "/not-hec")) as s:
        with pytest.raises(SinkError) as info:
            await s.healthcheck()
    msg = str(info.value)
    assert "no HTTP Event Collector answers at" in msg and "url is the collector's base" in msg, msg
    assert not info.value.retriable


async def test_token_with_indexer_ack_tells_to_turn_ack_on() -> None:
    """A token with indexer acknowledgement needs the channel (400 code 10): sending and the health check fail for
    good and say what to change (``ack: true``), instead of only quoting HEC's "Data channel is missing"."""
    async with FakeHec(TOKEN, ack=True) as server, SplunkHecSink("s", hec_cfg(server.url)) as s:
        with pytest.raises(SinkError) as sent:
            await s.send([ev(1)])
        with pytest.raises(SinkError) as checked:
            await s.healthcheck()
    for err in (sent.value, checked.value):
        assert not err.retriable and "code 10" in str(err) and "set ack: true" in str(err), str(err)
    assert server.events == []
