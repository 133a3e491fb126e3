"""Syslog sink → a real rsyslogd over TCP and TLS: every message arrives exactly once and byte-for-byte intact."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.syslog import SyslogSink, SyslogSinkConfig
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.errors import SinkError
from pipeline.formats import to_cef
from schemas import Actor, Event, Source, Target
from tests.fakes.rsyslog import Rsyslog
from tests.unit.test_formats_cef import HOSTILE, parse_cef
from tests.unit.test_formats_native import SEEN, T0, WS, sample_alert, sample_events

pytestmark = pytest.mark.rsyslog

_SD_ID = re.compile(r'\bid="([0-9a-f]{32})"')


def deliveries() -> list[Delivery]:
    """Every sample event, one hostile event per hostile string, and alerts: distinct ids."""
    records: list[tuple[str, bytes]] = [(EVENTS_TOPIC, e.to_json()) for e in sample_events().values()]
    for i, text in enumerate(HOSTILE):
        ev = Event.build(
            type="member.removed", time=T0, observed_at=SEEN, workspace=WS, source=Source("snapshot", "members", text),
            natural_key=(i, text), actor=Actor(user_name=text, user_agent=text), target=Target("member", f"m{i}", text),
            attributes={"note": text},
        )  # fmt: skip
        records.append((EVENTS_TOPIC, ev.to_json()))
    for sev in ("info", "low", "medium", "high", "critical"):
        alert = sample_alert(summary=f"{sev}: " + '|=\\\n]"ü' * 3, dedup_key=f"k-{sev}")
        records.append((ALERTS_TOPIC, alert.to_json()))
    out = []
    for offset, (topic, value) in enumerate(records):
        d = decode(Record(topic, 0, offset, 0, WS.id.encode(), value))
        assert not isinstance(d, str), d
        out.append(d)
    return out


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    """A real rsyslogd with a TCP and a TLS listener on 127.0.0.1."""
    server = Rsyslog(tmp_path / "rsyslog", tls=True)
    with server:
        yield server


def tcp_config(server: Rsyslog, **kw: Any) -> SyslogSinkConfig:
    return SyslogSinkConfig.model_validate({"type": "syslog", "host": "127.0.0.1", "port": server.tcp_port, **kw})


def tls_config(server: Rsyslog, **kw: Any) -> SyslogSinkConfig:
    return SyslogSinkConfig.model_validate(
        {"type": "syslog", "host": "127.0.0.1", "port": server.tls_port, "tls": {"cafile": str(server.ca)}, **kw}
    )


async def _send_all(sink: SyslogSink, items: list[Delivery], size: int = 7) -> None:
    for start in range(0, len(items), size):
        result = await sink.send(items[start : start + size])
        assert result.ok, result.failures


def _check_exactly_once(sink: SyslogSink, items: list[Delivery], got: list[dict[str, Any]]) -> None:
    ids = Counter(m.group(1) for g in got if (m := _SD_ID.search(g["sd"])))
    assert set(ids) == {d.id for d in items}, "every message arrived"
    assert max(ids.values()) == 1, "no message arrived twice"
    by_id = {m.group(1): g for g in got if (m := _SD_ID.search(g["sd"]))}
    for d in items:
        g = by_id[d.id]
        assert g["raw"].encode("utf-8") == sink.message(d), "byte-for-byte intact"
        assert g["app"] == "instantly-audit"
        assert int(g["pri"]) // 8 == 13


async def test_tcp_json_exactly_once_and_intact(rsyslog: Rsyslog) -> None:
    """Over TCP with octet counting, every JSON record arrives once, intact, and parses back to the record."""
    items = deliveries()
    async with SyslogSink("siem", tcp_config(rsyslog)) as sink:
        await _send_all(sink, items)
        assert sink.connects == 1, "one persistent connection"
    got = await rsyslog.wait_for(len(items))
    assert len(got) == len(items)
    _check_exactly_once(sink, items, got)
    by_id = {m.group(1): g for g in got if (m := _SD_ID.search(g["sd"]))}
    for d in items:
        assert orjson.loads(by_id[d.id]["msg"]) == d.body
        assert by_id[d.id]["input"] == "tcp"
        assert by_id[d.id]["msgid"] == (d.type[:32] if d.kind == "event" else "alert")


async def test_tls_cef_exactly_once_and_intact(rsyslog: Rsyslog) -> None:
    """Over TLS (RFC 5425, verified certificate), every CEF record arrives once, intact and strictly parseable."""
    items = deliveries()
    async with SyslogSink("siem", tls_config(rsyslog, format="cef")) as sink:
        await sink.healthcheck()
        await _send_all(sink, items, size=11)
    got = await rsyslog.wait_for(len(items))
    assert len(got) == len(items)
    _check_exactly_once(sink, items, got)
    by_id = {m.group(1): g for g in got if (m := _SD_ID.search(g["sd"]))}
    for d in items:
        assert by_id[d.id]["msg"] == to_cef(d.body)
        assert by_id[d.id]["input"] == "tls"
        assert dict(parse_cef(by_id[d.id]["msg"])[1])["externalId"] == d.id


async def test_tls_ocsf_json(rsyslog: Rsyslog) -> None:
    """json_format: ocsf sends OCSF documents over TLS."""
    items = deliveries()[:5]
    async with SyslogSink("siem", tls_config(rsyslog, json_format="ocsf")) as sink:
        await _send_all(sink, items)
    got = await rsyslog.wait_for(len(items))
    docs = [orjson.loads(g["msg"]) for g in got]
    assert {doc["metadata"]["uid"] for doc in docs} == {d.id for d in items}


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_reconnects_after_receiver_restart(rsyslog: Rsyslog, transport: str) -> None:
    """A collector restarted while the sink is idle: the sink notices, reconnects, and nothing is lost."""
    items = deliveries()
    first, second = items[:10], items[10:20]
    cfg = tls_config(rsyslog) if transport == "tls" else tcp_config(rsyslog)
    async with SyslogSink("siem", cfg) as sink:
        await _send_all(sink, first)
        await rsyslog.wait_for(len(first))
        rsyslog.restart()
        await _send_all(sink, second)
        assert sink.connects == 2
    got = await rsyslog.wait_for(len(first) + len(second))
    _check_exactly_once(sink, first + second, got)


async def test_tls_with_unknown_ca_is_refused(rsyslog: Rsyslog, tmp_path: Path) -> None:
    """A server certificate from a CA the sink does not trust fails the health check and the send."""
    cfg = SyslogSinkConfig.model_validate({"type": "syslog", "host": "127.0.0.1", "port": rsyslog.tls_port, "tls": {}})
    async with SyslogSink("siem", cfg) as sink:
        with pytest.raises(SinkError, match="certificate verification failed") as err:
            await sink.healthcheck()
        assert err.value.retriable
        with pytest.raises(SinkError, match="cannot connect"):
            await sink.send(deliveries()[:1])
    assert rsyslog.messages() == []


async def test_large_message_arrives_intact(rsyslog: Rsyslog) -> None:
    """A 60 kB record (far over the 2048/8192-octet minimums) arrives whole thanks to octet counting."""
    event = sample_events()["reply"].to_dict()
    event["raw"] = {"reply_text": "line\n" * 12_000}
    d = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"", orjson.dumps(event)))
    assert not isinstance(d, str)
    async with SyslogSink("siem", tcp_config(rsyslog, max_message_bytes=200_000)) as sink:
        assert (await sink.send([d])).ok
        message = sink.message(d)
    (got,) = await rsyslog.wait_for(1)
    assert len(message) > 60_000
    assert got["raw"].encode("utf-8") == message


async def test_rsyslog_keeps_a_bom_in_msg(rsyslog: Rsyslog) -> None:
    """Why `utf8_bom` is off by default: rsyslog keeps the RFC 5424 §6.4 BOM in `msg`; JSON parsing there fails."""
    d = deliveries()[-1]  # an alert whose summary holds "ü": a UTF-8 MSG
    async with SyslogSink("siem", tcp_config(rsyslog, utf8_bom=True)) as sink:
        await _send_all(sink, [d])
    (got,) = await rsyslog.wait_for(1)
    assert got["msg"].startswith("\ufeff{")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got["msg"])
    assert orjson.loads(got["msg"][1:]) == d.body
