"""Canary: planted secrets never reach an output — the bus file, sink payloads, logs, replay, errors.

Hypothesis places canaries in an Instantly audit record and a webhook snapshot record: under
camelCase, hyphenated, ``*_key`` and nested secret names; in free text (``Bearer <v>``,
``token=<v>``); the pipeline's own key (registered, Instantly-shaped) quoted in the audit record;
a registered webhook secret echoed in a kept field; credentials in every part of a webhook URL
(userinfo, path, query, ``;params``, fragment); and a credential nobody registered, known by its
shape (a Slack or GitHub token, a Slack hook URL without a scheme, an AWS key pair, a
protocol-relative URL). Every record goes through the publish gate
(:class:`connectors.instantly.streams.Publisher`) onto a SQLite bus; then the bus file, every
format a sink renders, a real sink's payload (Splunk HEC fake, JSONL file), both log formats,
``replay`` and the error messages are searched: 0 found. ``webhooks check`` and ``check`` run
against the simulator with such a webhook URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.instantly.snapshots import build_snapshot, diff_snapshots
from connectors.instantly.streams import Publisher, prepare_audit_batch
from connectors.instantly.txn_pipeline import TxnPipeline
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.main import main
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.delivery.batches import decode
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS, render_bytes
from pipeline.observability.logs import ConsoleFormatter, JsonFormatter, RedactingFilter
from pipeline.redaction import encode_alert, register_secret
from schemas.alert import Alert, Entity
from schemas.event import WorkspaceRef
from tests.fakes import make_alert

WS = WorkspaceRef("019a41ff-4c08-7280-ba65-d965cf873b40", "Acme")
OBSERVED = "2026-11-27T12:00:00.000Z"
_ALNUM = string.ascii_letters + string.digits
CAMEL = ("accessToken", "clientSecret", "refreshToken", "apiKey", "sessionToken", "privateKey")
HYPHEN = ("x-api-key", "client-secret", "auth-token", "X-Auth-Token")
UNDERSCORE_KEY = ("secret_key", "private_key", "signing_key", "master_key", "aws_secret_access_key")
TEXT_FIELDS = ("user_agent", "user_name", "description", "note")
QUERY_NAMES = ("sig2", "hmac", "X-Amz-Signature", "code", "foo")
VENDOR_KINDS = ("slack", "github", "hook", "aws", "protocol_relative")


def vendor_text(kind: str, value: str) -> str:
    """A credential nobody registered, recognisable by its shape, around the canary ``value``."""
    if kind == "slack":
        return "xox" + f"b-2718281828-3141592653589-{value}"
    if kind == "github":
        return "gh" + f"p_{value}{'x' * 12}"
    if kind == "hook":
        return f"hooks.slack.com/services/T0CNRY/B0CNRY/{value}"
    if kind == "aws":
        return f"AKIA{'Q' * 16} {(value + '/Ab1' * 10)[:40]}"
    return f"//cdn.acme-widgets.com/export?access={value}"


def token(prefix: str) -> st.SearchStrategy[str]:
    """A canary: a prefix plus 20 letters and digits (at least one of each)."""
    return st.text(_ALNUM, min_size=20, max_size=24).map(lambda s: f"{prefix}{s}7q")


@st.composite
def planted(draw: st.DrawFn) -> dict[str, Any]:
    """Canary values and where each goes."""
    uid = draw(st.uuids()).hex
    uuid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
    own = base64.b64encode(f"{uuid}:{draw(token('OWN'))}".encode()).decode()
    return {
        "own_key": own,
        "hook_secret": draw(token("HOOK")),
        "camel": (draw(st.sampled_from(CAMEL)), draw(token("CAM"))),
        "hyphen": (draw(st.sampled_from(HYPHEN)), draw(token("HYP"))),
        "key": (draw(st.sampled_from(UNDERSCORE_KEY)), draw(token("KEY"))),
        "nested": (draw(st.integers(1, 4)), draw(st.sampled_from(CAMEL + UNDERSCORE_KEY)), draw(token("NST"))),
        "bearer": (
            draw(st.sampled_from(TEXT_FIELDS)),
            draw(st.sampled_from(("Bearer", "bearer", "Basic", "Token"))),
            draw(token("BRR")),
        ),
        "assigned": (draw(st.sampled_from(TEXT_FIELDS)), draw(token("ASG"))),
        "own_at": draw(st.sampled_from(TEXT_FIELDS)),
        "hook_at": draw(st.sampled_from(("campaign_name", "description", "note", "user_name"))),
        "url": {part: draw(token(part.upper()[:3])) for part in ("user", "path", "query", "param", "frag")},
        "query_name": draw(st.sampled_from(QUERY_NAMES)),
        "vendor": (draw(st.sampled_from(TEXT_FIELDS)), draw(st.sampled_from(VENDOR_KINDS)), draw(token("VND"))),
    }


def canaries(p: dict[str, Any]) -> list[str]:
    """Every planted value (what must never be found)."""
    out = [p["own_key"], p["hook_secret"], p["camel"][1], p["hyphen"][1], p["key"][1], p["nested"][2]]
    out += [p["bearer"][2], p["assigned"][1], *p["url"].values(), p["vendor"][2]]
    return out


def hook_url(p: dict[str, Any]) -> str:
    u = p["url"]
    return f"https://{u['user']}@hooks.example.com/services/T0/B0/{u['path']};k={u['param']}?{p['query_name']}={u['query']}#{u['frag']}"


def _put(record: dict[str, Any], where: str, text: str) -> None:
    meta = record.setdefault("audit_metadata", {})
    if where in ("user_agent", "user_name"):
        record[where] = f"{record.get(where) or ''} {text}".strip()
    else:
        meta[where] = f"{meta.get(where, '')} {text}".strip()


def audit_record(p: dict[str, Any], rid: str = "01a24def-0c18-717d-8400-6deaa0d327ba") -> dict[str, Any]:
    """An audit record with every canary planted where ``p`` says."""
    rec: dict[str, Any] = {
        "id": rid, "timestamp": OBSERVED, "organization_id": WS.id, "activity_type": 4, "ip_address": "203.0.113.9",
        "from_api": True, "user_agent": "python-requests/2.32", "user_id": "u-1", "user_name": "Sam",
        "api_key_id": "k-1", "audit_metadata": {"webhook_url": hook_url(p)},
    }  # fmt: skip
    meta = rec["audit_metadata"]
    meta[p["camel"][0]] = p["camel"][1]
    rec[p["hyphen"][0]] = p["hyphen"][1]
    meta[p["key"][0]] = p["key"][1]
    depth, name, value = p["nested"]
    node = meta
    for i in range(depth):
        node = node.setdefault(f"level{i}", {})
    node[name] = value
    where, scheme, value = p["bearer"]
    _put(rec, where, f"called with Authorization: {scheme} {value}")
    where, value = p["assigned"]
    _put(rec, where, f"retry token={value} failed")
    _put(rec, p["own_at"], f'the key "{p["own_key"]}" was used')
    _put(rec, p["hook_at"], f"echo {p['hook_secret']}")
    where, kind, value = p["vendor"]
    _put(rec, where, f"pasted {vendor_text(kind, value)} here")
    return rec


def webhook_record(p: dict[str, Any]) -> dict[str, Any]:
    """A webhook listing entry whose URL holds credentials in every part."""
    return {
        "id": "019cc043-b005-72ef-8501-678c9a77be6f", "name": f"hook {p['hook_secret']}",
        "target_hook_url": hook_url(p),
        "event_type": "all_events", "headers": {"X-Webhook-Secret": p["hook_secret"]}, "status": 1,
    }  # fmt: skip


def assert_clean(texts: list[str | bytes], secrets: list[str]) -> None:
    """No secret (raw, or as bytes) in any text; the message names the secret's index, never the value."""
    for i, text in enumerate(texts):
        blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        for j, secret in enumerate(secrets):
            assert secret.encode() not in blob, f"canary #{j} found in output #{i}"


async def _publish(p: dict[str, Any], bus_path: Path) -> None:
    """Publish the planted records through the gate (audit page, a broken record, the webhook snapshot)."""
    async with SqliteBus(bus_path) as bus:
        pub = Publisher(bus, "canary", "acme", WS)
        broken = {k: v for k, v in audit_record(p, "x").items() if k != "id"}  # no id: a dead letter
        async with TxnPipeline(bus, "canary") as line:
            batch = await prepare_audit_batch(pub, [audit_record(p), broken], OBSERVED, line)
        snap, _ = build_snapshot("webhooks", [webhook_record(p)])
        events = diff_snapshots("webhooks", None, snap, workspace=WS, observed_at=OBSERVED)
        async with bus.transaction("canary") as tx:
            for topic, value, key, headers in batch.records:
                tx.send(topic, value, key=key, headers=headers)
            for ev in events:
                pub.send(tx, ev, ())
        assert batch.dead_letters == 1 and batch.events == 1


def _log_lines(p: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The record logged in both formats (message text, an attached field, an exception)."""
    out = []
    for formatter in (JsonFormatter(), ConsoleFormatter(color=False)):
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        lg = logging.getLogger(f"canary.{type(formatter).__name__}")
        lg.handlers, lg.propagate = [handler], False
        lg.warning("record %s from %s", orjson.dumps(record).decode(), hook_url(p), extra={"record": record})
        try:
            raise ValueError(f"bad delivery to {hook_url(p)} with Bearer {p['bearer'][2]} key {p['own_key']}")
        except ValueError:
            lg.exception("failed")
        out.append(buf.getvalue())
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=planted())
def test_no_canary_in_bus_formats_logs_or_errors(p: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Bus file (db + WAL), every format's bytes, both log formats, dead letters and config errors: 0 canaries."""
    register_secret(p["own_key"])  # the config's Instantly key and webhook secret, as loading a config does
    register_secret(p["hook_secret"])
    d = tmp_path_factory.mktemp("canary")
    asyncio.run(_publish(p, d / "bus.db"))
    texts: list[str | bytes] = [f.read_bytes() for f in d.iterdir() if f.is_file()]
    texts += _decoded_outputs(d / "bus.db")
    texts += _log_lines(p, audit_record(p))
    texts += _config_errors(p)
    assert_clean(texts, canaries(p))


def _decoded_outputs(bus_path: Path) -> list[str | bytes]:
    """Every record on the bus as each sink format renders it."""
    import sqlite3

    out: list[str | bytes] = []
    with sqlite3.connect(bus_path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in db.execute(f"select * from {table}"):
                for cell in row:
                    if isinstance(cell, bytes) and cell.startswith(b"{"):
                        out.append(cell)
                        rec = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"k", cell))
                        if not isinstance(rec, str):
                            out += [render_bytes(rec.body, fmt) for fmt in FORMATS]
    assert len(out) >= 3
    return out


def _config_errors(p: dict[str, Any]) -> list[str | bytes]:
    """Config errors about values holding canaries (a sink URL with credentials, an http Slack URL)."""
    out: list[str | bytes] = []
    for doc in (
        {"sinks": {"hec": {"type": "splunk_hec", "url": hook_url(p), "token": EnvValue(p["hook_secret"])}}},
        {"sinks": {"slack": {"type": "slack", "webhook_url": EnvValue(hook_url(p).replace("https", "http"))}}},
    ):
        try:
            parse_config(orjson.dumps(doc).decode())  # every section is validated at load
        except ConfigError as err:
            out.append(str(err))
    assert out
    return out


def fixed() -> dict[str, Any]:
    """One planted example for the slower outputs (sinks, replay, the CLI commands)."""
    own = base64.b64encode(b"019a41ff-4c08-7280-ba65-d965cf873b40:OWNk3yQ9z8x7w6v5u4t3s2").decode()
    return {
        "own_key": own, "hook_secret": "HOOKs3cr3tQ9z8x7w6v5u4t3s2r1",
        "camel": ("accessToken", "CAMq9z8x7w6v5u4t3s2r1p0"), "hyphen": ("x-api-key", "HYPq9z8x7w6v5u4t3s2r1p0"),
        "key": ("secret_key", "KEYq9z8x7w6v5u4t3s2r1p0"), "nested": (3, "clientSecret", "NSTq9z8x7w6v5u4t3s2r1p0"),
        "bearer": ("user_agent", "Bearer", "BRRq9z8x7w6v5u4t3s2r1p0"),
        "assigned": ("description", "ASGq9z8x7w6v5u4t3s2r1p0"),
        "own_at": "description", "hook_at": "campaign_name",
        "url": {part: f"{part.upper()}q9z8x7w6v5u4t3s2r1p0" for part in ("user", "path", "query", "param", "frag")},
        "query_name": "X-Amz-Signature", "vendor": ("description", "hook", "VNDq9z8x7w6v5u4t3s2r1p0"),
    }  # fmt: skip


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """The fixed example published through the gate to ``bus.db``, with a config file for that bus."""
    p = fixed()
    register_secret(p["own_key"])
    register_secret(p["hook_secret"])
    asyncio.run(_publish(p, tmp_path / "bus.db"))
    (tmp_path / "config.yaml").write_text(f"bus: {{type: sqlite, path: {tmp_path / 'bus.db'}}}\n")
    yield p, tmp_path


async def test_no_canary_in_sink_payloads(published: tuple[dict[str, Any], Path]) -> None:
    """Every sink's fake (HEC, Elasticsearch, signed webhook, PagerDuty, Slack) and the JSONL file
    receive the gated records — events, and an alert quoting the canaries — without a canary."""
    from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink
    from connectors.jsonl import JsonlConfig, JsonlSink
    from connectors.pagerduty import PagerDutySink, PagerDutySinkConfig
    from connectors.slack import SlackSink, SlackSinkConfig
    from connectors.splunk_hec import SplunkHecConfig, SplunkHecSink
    from connectors.webhook_sink import SignedWebhookConfig, SignedWebhookSink
    from tests.fakes.elasticsearch import FakeElasticsearch
    from tests.fakes.hec import FakeHec
    from tests.fakes.pagerduty import FakePagerDuty
    from tests.fakes.receiver import FakeReceiver
    from tests.fakes.slack import FakeSlack

    p, d = published
    events = [x for x in (decode(Record(EVENTS_TOPIC, 0, i, 0, b"k", v)) for i, v in enumerate(_values(d)))
              if not isinstance(x, str)]  # fmt: skip
    assert len(events) >= 2
    alert = decode(Record(ALERTS_TOPIC, 0, 0, 0, b"k", encode_alert(planted_alert(p))))
    assert not isinstance(alert, str)
    everything = [*events, alert]
    hook_secret = "whsec_" + base64.b64encode(b"sink-signing-key-0123456789abcd").decode()
    payloads: list[str | bytes] = []
    async with FakeHec("hec-token-0000") as hec:
        cfg = SplunkHecConfig.model_validate(
            {"type": "splunk_hec", "url": hec.url, "token": EnvValue("hec-token-0000")}
        )
        async with SplunkHecSink("hec", cfg) as sink:
            assert (await sink.send(everything)).ok
        payloads += [orjson.dumps(e) for e in hec.events]
    async with FakeElasticsearch(api_key="es-key-0000") as es:
        ecfg = ElasticsearchConfig.model_validate(
            {"type": "elasticsearch", "url": es.url, "api_key": EnvValue("es-key-0000")}
        )
        async with ElasticsearchSink("es", ecfg) as esink:
            assert (await esink.send(everything)).ok
        payloads.append(orjson.dumps(es.docs))
    async with FakeReceiver(hook_secret) as receiver:
        wcfg = SignedWebhookConfig.model_validate(
            {"type": "webhook", "url": receiver.hook_url, "secret": EnvValue(hook_secret)}
        )
        async with SignedWebhookSink("hook", wcfg) as wsink:
            assert (await wsink.send(everything)).ok
        payloads.append(orjson.dumps(receiver.records))
    async with FakePagerDuty("pd-routing-key-00000000000000000") as pd:
        pcfg = PagerDutySinkConfig.model_validate(
            {"type": "pagerduty", "url": pd.url, "routing_key": EnvValue("pd-routing-key-00000000000000000")}
        )
        async with PagerDutySink("pd", pcfg) as psink:
            await psink.send([alert])
        payloads.append(orjson.dumps([body for _status, body in pd.received]))
    async with FakeSlack() as slack:
        scfg = SlackSinkConfig.model_validate({"type": "slack", "webhook_url": EnvValue(slack.hook_url)})
        async with SlackSink("slack", scfg) as ssink:
            await ssink.send([alert])
        payloads.append(orjson.dumps([r.json for r in slack.received]))
    jcfg = JsonlConfig.model_validate({"type": "jsonl", "path": str(d / "out" / "events.jsonl")})
    async with JsonlSink("file", jcfg) as jsink:
        await jsink.send(everything)
    payloads.append((d / "out" / "events.jsonl").read_bytes())
    assert all(len(x) > 20 for x in payloads)
    assert_clean(payloads, canaries(p))


def planted_alert(p: dict[str, Any]) -> Alert:
    """An alert whose summary, entity and attributes quote the canaries (as a careless rule might)."""
    base = make_alert(1)
    return msgspec.structs.replace(
        base,
        summary=f"key {p['own_key']} used from {hook_url(p)} with Bearer {p['bearer'][2]}",
        entities=(Entity("webhook", "h-1", hook_url(p)),),
        attributes={"target_hook_url": hook_url(p), p["camel"][0]: p["camel"][1], "note": f"echo {p['hook_secret']}"},
    )


def _values(d: Path) -> list[bytes]:
    import sqlite3

    with sqlite3.connect(d / "bus.db") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        cells = [c for t in tables for row in db.execute(f"select * from {t}") for c in row]
    return [c for c in cells if isinstance(c, bytes) and c.startswith(b'{"id"')]


def test_no_canary_in_replay_output(published: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``replay`` of the events and the dead letters prints no canary."""
    p, d = published
    texts: list[str | bytes] = []
    for topic in ("events", "deadletter"):
        for fmt in ("jsonl", "table"):
            code = main(
                ["replay", "--config", str(d / "config.yaml"), "--topic", topic, "--format", fmt, "--no-progress"]
            )
            out, err = capsys.readouterr()
            assert code == 0, err
            texts += [out, err]
    assert any('"type"' in t for t in texts if isinstance(t, str))
    assert_clean(texts, canaries(p))


def test_no_canary_in_webhooks_check_or_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``webhooks check`` and ``check`` (every format) print neither the URL's credentials nor the keys."""
    from tests.unit.test_check_cli import ThreadedSim

    caplog.set_level(logging.DEBUG)
    p = fixed()
    with ThreadedSim() as sim:
        ws = sim.add_workspace("Acme Outreach")
        key = sim.add_api_key(ws.id)
        sim.state.create_webhook(
            ws.id, hook_url(p), fields={"name": "crm", "headers": {"X-Webhook-Secret": p["hook_secret"]}}
        )
        (tmp_path / "acme.key").write_text(key.key + "\n")
        budget = "{requests_per_second: 100, requests_per_minute: 6000}"
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"workspaces:\n  acme:\n    api_key_file: acme.key\n    base_url: {sim.url}\n    budget: {budget}\n"
        )
        texts: list[str | bytes] = []
        for argv in (
            ["webhooks", "check", "--config", str(cfg), "--format", "json"],
            ["webhooks", "check", "--config", str(cfg), "--format", "table"],
            ["check", "--config", str(cfg), "--format", "json"],
            ["check", "--config", str(cfg), "--format", "table"],
            ["check", "--config", str(cfg), "--format", "sarif"],
        ):
            with contextlib.suppress(SystemExit):
                main(argv)
            out, err = capsys.readouterr()
            texts += [out, err]
        texts.append(caplog.text)
    assert "hooks.example.com" in "".join(t for t in texts if isinstance(t, str))  # the host stays readable
    assert_clean(texts, [*canaries(p), key.key])
