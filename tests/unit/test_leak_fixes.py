"""Canaries for the leaks the review of the redaction reproduced: each test seeds ``CNRY…`` values,
drives the surface, and greps everything captured (bus file with its state and dead letters, logs,
stdout) for them."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.instantly.snapshots import KINDS, build_snapshot, encode_snapshot
from connectors.instantly.streams import Publisher, publish_snapshot
from pipeline.bus.sqlite import SqliteBus
from pipeline.errors import WebhookRejected
from pipeline.observability.logs import JsonFormatter, RedactingFilter, register_secret
from pipeline.observability.telemetry import Telemetry
from pipeline.redaction import encode_event
from pipeline.redaction.text import redact_text
from pipeline.sources.webhook.kind import webhook_kind
from pipeline.sources.webhook.receiver import WebhookReceiver, delivery_letter
from schemas.event import WorkspaceRef
from schemas.secret_names import is_secret_name
from tests.fakes import make_event
from tests.unit.test_webhook_support import SECRET_A, delivery, events_of, hdrs, letters_of, make_config, serve

WS = WorkspaceRef("019a41ff-4c08-7280-ba65-d965cf873b40", "Acme")
OBSERVED = "2026-12-07T12:00:00.000Z"
CANARY = b"CNRY"


def _files(d: Path) -> list[bytes]:
    """Every file under ``d`` (the bus database, its WAL and journal)."""
    return [f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()]


def _workspace() -> dict[str, Any]:
    return {
        "id": WS.id, "name": "Acme", "owner": "019a41ff-0000-7280-ba65-d965cf873b41",
        "org_client_domain": "https://admin:CNRYdom01pw@portal.example.com/",
        "org_logo_url": "https://b.s3.amazonaws.com/logo.png?X-Amz-Credential=AKIACNRY02EXAMPLE&X-Amz-Signature=CNRYsig03",
    }  # fmt: skip


def _webhook() -> dict[str, Any]:
    return {
        "id": "019cc043-b005-72ef-8501-678c9a77be6f",
        "name": "zap https://hooks.zapier.com/hooks/catch/1/CNRYzap04/ Bearer CNRYbearer05xyz",
        "target_hook_url": "https://hooks.zapier.com/hooks/catch/1/CNRYzap06/",
        "event_type": "all_events", "headers": {"Authorization": "CNRYhdr07"}, "status": 1,
    }  # fmt: skip


async def _poll(bus_path: Path, stream: str, records: list[dict[str, Any]]) -> tuple[int, dict[str, bytes]]:
    async with SqliteBus(bus_path) as bus:
        n = await publish_snapshot(Publisher(bus, "t", "acme", WS), stream, records, observed_at=OBSERVED)
        return n, await bus.state_items("snapshot/")


def test_a_snapshot_event_the_gate_refuses_is_counted_as_a_dead_letter(tmp_path: Path) -> None:
    """A listed record whose id is a known secret: its event goes to the dead letters (the gate never
    rewrites ids), and the stream counts it there — ``pipeline_dead_letters_total``, which the
    DeadLettersGrowing alert reads — not as published."""
    register_secret("CNRYidsecret08-0123456789")
    tel = Telemetry()

    async def poll() -> None:
        async with SqliteBus(tmp_path / "bus.db") as bus:
            pub = Publisher(bus, "t", "acme", WS, telemetry=tel)
            await publish_snapshot(pub, "webhooks", [_webhook() | {"id": "CNRYidsecret08-0123456789"}],
                                   observed_at=OBSERVED)  # fmt: skip

    asyncio.run(poll())
    text = tel.render_prometheus()[0].decode()
    got = {
        (s.name, s.labels.get("reason", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("component_type") == "instantly_webhooks"
    }
    tel.shutdown()
    assert got.get(("pipeline_dead_letters_total", "")) == 1.0, got
    assert got.get(("pipeline_component_events_sent_total", ""), 0.0) == 0.0, got


@pytest.mark.parametrize(("stream", "record"), [("workspace", _workspace), ("webhooks", _webhook)])
def test_snapshot_state_holds_what_the_events_hold(tmp_path: Path, stream: str, record: Any) -> None:
    n, state = asyncio.run(_poll(tmp_path / "bus.db", stream, [record()]))
    assert n == 1  # the baseline
    assert state and all(CANARY not in v for v in state.values())
    assert all(CANARY not in blob for blob in _files(tmp_path))
    # a second poll of the same listing: no spurious diff (the URL fingerprints are deterministic)
    assert asyncio.run(_poll(tmp_path / "bus.db", stream, [record()]))[0] == 0


@pytest.mark.parametrize(("stream", "record"), [("workspace", _workspace), ("webhooks", _webhook)])
def test_snapshot_stored_by_an_older_version_is_rebaselined_silently(tmp_path: Path, stream: str, record: Any) -> None:
    """A shard written before the gate ran on snapshots (name pass only) makes no ``*.updated`` event."""
    old = {str(record()["id"]): KINDS[stream].redact(record())}
    assert CANARY in encode_snapshot(old)

    async def seed() -> None:
        async with SqliteBus(tmp_path / "bus.db") as bus, bus.transaction("t") as tx:
            tx.put_state(f"snapshot/acme/{stream}", encode_snapshot(old))  # the single value of format 1

    asyncio.run(seed())
    n, state = asyncio.run(_poll(tmp_path / "bus.db", stream, [record()]))
    assert n == 0
    assert state and all(CANARY not in v for v in state.values())
    assert orjson.loads(state[f"snapshot/acme/{stream}/shard/0000"])["records"] == build_snapshot(stream, [record()])[0]


async def test_receiver_dead_letter_redacts_a_json_body_by_field_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-lettered JSON body takes the name pass: a secret-named field loses its whole value,
    whatever the text pass would have left after a quote, a comma or a space."""
    caplog.set_level(logging.DEBUG)
    fields = {
        "password": "correct horse CNRYpw62 staple",
        "api_token": 'abc"CNRYesc63',
        "client_secret": "xyz,CNRYsec65",
        "note": "see https://u:CNRYurl67@hooks.example.com/x?sig=CNRYsig68",
    }
    responses = []
    async with SqliteBus(tmp_path / "bus.db") as bus:
        r = WebhookReceiver(make_config((SECRET_A,)), bus)
        async with serve(r) as c:
            for body in (delivery(4, workspace="other", **fields), delivery(5, timestamp="not a time", **fields)):
                resp = await c.post("/hooks/crm", data=body, headers=hdrs(SECRET_A))
                responses.append(f"{resp.status} {await resp.text()}")
        letters = await letters_of(bus)
    assert len(letters) == 2
    for letter in letters:
        doc = orjson.loads(letter["original"]["value"])
        assert doc["password"] == "<redacted>" and doc["client_secret"] == "<redacted>"
        assert doc["note"].startswith("see https://hooks.example.com/sha256:")
    logged = " ".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert "CNRY" not in logged and "CNRY" not in " ".join(responses)
    assert all(CANARY not in blob for blob in _files(tmp_path))


def test_receiver_dead_letter_of_a_body_that_is_not_json_keeps_the_text_redaction() -> None:
    rej = WebhookRejected(400, "bad_json", "the body is not JSON")
    body = b'{"event_type":"x","password":"CNRYmal41", broken'
    letter = delivery_letter("crm", webhook_kind("instantly"), WS, body, rej, OBSERVED)
    assert letter.original_bytes() is not None and CANARY not in letter.to_json()


SECRET_NAMES = [
    "pass", "pw", "PW", "smtp_pass", "smtpPass", "db-pw", "passcode", "secrets", "passwords", "tokens",
    "apikeys", "api_keys", "recovery_codes", "backup_codes", "session", "auth_header", "x-signature",
]  # fmt: skip
READABLE_NAMES = [
    "passenger", "bypass", "compass", "passed", "signature", "email_signature", "sessionId", "session_id",
    "api_key_id", "public_key", "dedup_keys", "sort_keys", "status", "name", "ACC_FILTER_PW_ACCOUNTS",
]  # fmt: skip


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_common_secret_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", READABLE_NAMES)
def test_instantly_and_ordinary_field_names_stay_readable(name: str) -> None:
    assert not is_secret_name(name)


def test_secret_named_fields_lose_their_values_in_events_dead_letters_and_logs(tmp_path: Path) -> None:
    attrs = {name: f"CNRY{i:02d}value" for i, name in enumerate(SECRET_NAMES)}
    ev = msgspec.structs.replace(make_event(1), attributes=attrs)
    captured: list[bytes] = [encode_event(ev)]
    body = orjson.dumps({"event_type": "x", **attrs})
    rej = WebhookRejected(400, "bad_shape", "no")
    captured.append(delivery_letter("crm", webhook_kind("instantly"), WS, body, rej, OBSERVED).to_json())
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    lg = logging.getLogger("leak.names")
    lg.handlers, lg.propagate = [handler], False
    lg.warning("cfg", extra={"cfg": {"pass": "CNRYlog01", "pw": "CNRYlog02", "session": "CNRYlog03"}})
    captured.append(buf.getvalue().encode())
    assert all(CANARY not in blob for blob in captured)


@pytest.mark.parametrize(
    "text",
    [
        "reset smtp pass to CNRYauditpass09",
        "pass=CNRYrecvform43&pw=CNRYrecvform44&password=CNRYrecvform45",
        "cfg pw: CNRYpw12345",
        "secrets: CNRYsec02 passcode=CNRYcode03 passwords=CNRYpws04",
        "Cookie: session=CNRYrecvcookie34",
    ],
)
def test_free_text_pass_pw_and_plurals_are_redacted(text: str) -> None:
    assert "CNRY" not in redact_text(text)


def test_prose_with_pass_and_scopes_stay_readable() -> None:
    text = (
        "bypass=foo compass=north; pass to the next step; session_id=019a41ff; drop api_keys:all security_tokens:read"
    )
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "label",
    [
        "token=CNRYrecvlabel38 pass CNRYrecvlabel39",
        "https://hooks.zapier.com/hooks/catch/1/CNRYrecvlabel40/",
        "Bearer CNRYlabel41abcdef",
    ],
)
async def test_a_custom_label_holding_a_secret_is_not_slugged_into_the_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, label: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with SqliteBus(tmp_path / "bus.db") as bus:
        r = WebhookReceiver(make_config((SECRET_A,)), bus)
        async with serve(r) as c:
            resp = await c.post("/hooks/crm", data=delivery(7, event_type=label), headers=hdrs(SECRET_A))
            text = await resp.text()
        events = await events_of(bus)
    assert resp.status < 300 and "CNRY" not in text
    assert all(orjson.loads(e.value)["type"].startswith("webhook_delivery.label.redacted_") for e in events)
    assert len(events) == 1
    logged = " ".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert "cnry" not in logged.lower()  # the slug is lower-cased
    assert all(b"cnry" not in blob.lower() for blob in _files(tmp_path))
