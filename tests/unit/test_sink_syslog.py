"""Syslog sink against an in-process TCP listener: framing, confirmation, reconnects, errors, config."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from connectors.syslog import SyslogSink, SyslogSinkConfig
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.config.loader import parse_config
from pipeline.delivery.base import Delivery, Sink
from pipeline.delivery.registry import register_sink, sink_class, unregister_sink
from pipeline.delivery.runner import decode
from pipeline.errors import ConfigError, SinkError
from tests.fakes.rsyslog import make_certs
from tests.fakes.syslog_tcp import SyslogListener
from tests.unit.test_formats_native import WS, sample_alert, sample_events
from tests.unit.test_formats_syslog5424 import parse_5424


def delivery(item: Any, offset: int = 0) -> Delivery:
    topic = ALERTS_TOPIC if hasattr(item, "rule") else EVENTS_TOPIC
    d = decode(Record(topic, 0, offset, 0, WS.id.encode(), item.to_json()))
    assert not isinstance(d, str)
    return d


@pytest.fixture
async def listener() -> AsyncIterator[SyslogListener]:
    server = SyslogListener()
    await server.start()
    yield server
    await server.stop()


def cfg(port: int, **kw: Any) -> SyslogSinkConfig:
    return SyslogSinkConfig.model_validate({"type": "syslog", "host": "127.0.0.1", "port": port, **kw})


def test_is_a_sink() -> None:
    """SyslogSink satisfies the Sink protocol and declares its Config."""
    sink = SyslogSink("s", cfg(514))
    assert isinstance(sink, Sink)
    assert SyslogSink.Config is SyslogSinkConfig


async def test_frames_carry_rfc5424_messages(listener: SyslogListener) -> None:
    """Each record becomes one octet-counted RFC 5424 frame with PRI, app, msgid and an SD id."""
    items = [delivery(e, i) for i, e in enumerate(sample_events().values())] + [delivery(sample_alert(), 99)]
    async with SyslogSink("siem", cfg(listener.port, hostname="pipeline-1", facility="local4")) as sink:
        assert (await sink.send(items)).ok
        transport = sink._conn.writer.transport if sink._conn else None
        assert transport is not None and transport.get_write_buffer_size() == 0, "confirmed only when flushed"
    frames = await listener.wait_frames(len(items))
    assert len(frames) == len(items)
    for d, data in zip(items, frames, strict=True):
        p = parse_5424(data)
        assert p.pri // 8 == 20
        assert (p.hostname, p.app_name) == ("pipeline-1", "instantly-audit")
        assert p.sd[0][0] == "instantly@32473"
        params = dict(p.sd[0][1])
        assert (params["id"], params["kind"], params["workspace"]) == (d.id, d.kind, WS.id)
        assert orjson.loads(p.msg) == d.body
    alert = parse_5424(frames[-1])
    assert (alert.msgid, alert.pri % 8) == ("alert", 2), "critical alert → severity 2"
    assert parse_5424(frames[0]).pri % 8 == 6


async def test_a_resolved_alert_is_a_notice_not_its_rules_severity(listener: SyslogListener) -> None:
    """RFC 5424 severity is the message's: a critical condition's all-clear is 5 Notice (a ``*.crit`` route must not
    page on it), the open alert stays 2 Critical; the SD element says which (``status``)."""
    items = [delivery(sample_alert(), 1), delivery(sample_alert(status="resolved"), 2)]
    async with SyslogSink("siem", cfg(listener.port)) as sink:
        assert (await sink.send(items)).ok
    opened, res = (parse_5424(f) for f in await listener.wait_frames(2))
    assert (opened.msgid, opened.pri % 8, dict(opened.sd[0][1])["status"]) == ("alert", 2, "open")
    assert (res.msgid, res.pri % 8, dict(res.sd[0][1])["status"]) == ("alert", 5, "resolved")
    assert "status" not in dict(
        parse_5424(SyslogSink("s", cfg(514)).message(delivery(sample_events()["login"]))).sd[0][1]
    )


async def test_cef_body_and_bom(listener: SyslogListener) -> None:
    """format: cef puts the CEF line in MSG; utf8_bom prefixes the BOM."""
    d = delivery(sample_events()["login"])
    async with SyslogSink("siem", cfg(listener.port, format="cef", utf8_bom=True)) as sink:
        await sink.send([d])
    (frame,) = await listener.wait_frames(1)
    assert parse_5424(frame).msg.startswith(b"\xef\xbb\xbfCEF:0|Instantly-Audit|instantly-audit|")


async def test_one_connection_for_many_batches(listener: SyslogListener) -> None:
    """Batches share one persistent connection."""
    async with SyslogSink("siem", cfg(listener.port)) as sink:
        for i in range(5):
            await sink.send([delivery(sample_alert(dedup_key=f"k{i}"), i)])
        assert sink.connects == 1
    assert len(await listener.wait_frames(5)) == 5
    assert len(listener.connections) == 1


async def test_reconnects_when_receiver_drops_the_connection(listener: SyslogListener) -> None:
    """When the receiver closes an idle connection, the next batch opens a new one and arrives."""
    async with SyslogSink("siem", cfg(listener.port)) as sink:
        await sink.send([delivery(sample_alert(dedup_key="a"), 1)])
        await listener.wait_frames(1)
        await listener.drop_connections()
        await sink.send([delivery(sample_alert(dedup_key="b"), 2)])
        assert sink.connects == 2
    assert len(await listener.wait_frames(2)) == 2


async def test_unreachable_is_retriable_and_names_the_destination() -> None:
    """A refused connection fails the batch as retriable; the message names host:port only."""
    async with SyslogSink("siem", cfg(1)) as sink:
        with pytest.raises(SinkError, match=r"syslog 127\.0\.0\.1:1: cannot connect") as err:
            await sink.send([delivery(sample_alert())])
        assert err.value.retriable
        with pytest.raises(SinkError):
            await sink.healthcheck()


async def test_write_failure_is_retriable_then_recovers(listener: SyslogListener) -> None:
    """A receiver gone mid-stream fails the batch (retriable); after it returns the resend arrives."""
    items = [delivery(sample_alert(dedup_key=f"k{i}"), i) for i in range(3)]
    async with SyslogSink("siem", cfg(listener.port)) as sink:
        await sink.send(items[:1])
        await listener.wait_frames(1)
        await listener.stop()
        with pytest.raises(SinkError) as err:
            for _ in range(50):  # the first writes may still land in the kernel buffer
                await sink.send(items[1:])
                await asyncio.sleep(0.01)
        assert err.value.retriable
        await listener.start()
        assert (await sink.send(items[1:])).ok
    ids = {dict(parse_5424(f).sd[0][1])["id"] for f in await listener.wait_frames(3)}
    assert ids >= {d.id for d in items}


def test_config_validation(tmp_path: Path) -> None:
    """Facility names map to numbers; bad app names, SD-IDs, facilities and TLS key-only configs are refused."""
    assert cfg(514, facility="auth").facility == 4
    assert cfg(514, facility=23).facility == 23
    assert cfg(514).facility == 13
    for bad in ({"facility": "nope"}, {"facility": 24}, {"app_name": "has space"}, {"sd_id": "bad id"},
                {"tls": {"keyfile": "k.pem"}}, {"unknown": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            cfg(514, **bad)
    with pytest.raises(ValidationError):
        cfg(0)
    with pytest.raises(ValidationError, match="private enterprise number"):
        cfg(514, sd_id="instantly")  # RFC 5424 §6.3.2: an SD-ID without "@" is reserved for IANA
    with pytest.raises(ValidationError):
        cfg(514, sd_id="instantly@acme")
    assert cfg(514, sd_id="acme@1234.5").sd_id == "acme@1234.5"
    with pytest.raises(ConfigError, match=r"sinks\.siem\.tls\.cafile: file .*missing\.pem does not exist"):
        SyslogSink("siem", cfg(6514, tls={"cafile": str(tmp_path / "missing.pem")}))


def test_bom_only_when_asked() -> None:
    """A UTF-8 JSON MSG has no BOM by default (rsyslog keeps it in msg); ``utf8_bom: true`` adds it (RFC 5424 §6.4)."""
    accented = sample_events()["login"].to_dict()
    accented["actor"]["user_name"] = "Zoë Ångström"
    d = decode(Record(EVENTS_TOPIC, 0, 1, 0, WS.id.encode(), orjson.dumps(accented)))
    assert not isinstance(d, str)
    plain = parse_5424(SyslogSink("siem", cfg(514, hostname="h", format="native")).message(d)).msg
    assert orjson.loads(plain)["actor"]["user_name"] == "Zoë Ångström"
    marked = parse_5424(SyslogSink("siem", cfg(514, hostname="h", format="native", utf8_bom=True)).message(d)).msg
    assert marked.startswith(b"\xef\xbb\xbf{") and marked[3:] == plain


def test_messages_have_stable_ids_for_dedup() -> None:
    """The same delivery always renders to the same bytes (a resend is recognisable by its SD id)."""
    sink = SyslogSink("siem", cfg(514, hostname="h"))
    d = delivery(sample_events()["key_created"])
    assert sink.message(d) == sink.message(d)
    assert re.search(rb'id="' + d.id.encode() + rb'"', sink.message(d))


def test_yaml_config_example(tmp_path: Path) -> None:
    """The documented YAML example validates through the registry."""
    ca, cert, key = make_certs(tmp_path)
    text = f"""
sinks:
  qradar:
    type: syslog
    host: siem.example.com
    port: 6514
    tls: {{cafile: {ca}, certfile: {cert}, keyfile: {key}}}
    format: cef
    facility: log_audit
    app_name: instantly-audit
"""
    config = parse_config(text, env={})
    register_sink("syslog", SyslogSink)
    try:
        sink_cfg = config.sinks["qradar"]
        cls = sink_class(sink_cfg.type)
    finally:
        unregister_sink("syslog")
    assert cls is SyslogSink
    assert isinstance(sink_cfg, SyslogSinkConfig)
    assert sink_cfg.tls is not None and sink_cfg.tls.verify and sink_cfg.facility == 13
