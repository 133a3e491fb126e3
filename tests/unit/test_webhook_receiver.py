"""The webhook receiver on a real aiohttp server (127.0.0.1) and a real SqliteBus."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from pipeline.bus.sqlite import SqliteBus
from pipeline.observability.telemetry import Telemetry
from pipeline.sources.webhook.admission import SecretChecker, client_address
from pipeline.sources.webhook.dedup import SEEN_SLOTS, SeenWindow, stale_keys
from pipeline.sources.webhook.receiver import WebhookReceiver
from schemas.validate import schema_errors
from tests.unit.test_webhook_support import (
    JSON,
    SECRET_A,
    SECRET_B,
    WS,
    FlakyBus,
    delivery,
    events_of,
    hdrs,
    letters_of,
    make_config,
    serve,
)

PATH = "/hooks/crm"


@pytest.fixture
async def sqlite_bus(tmp_path: Path) -> AsyncIterator[SqliteBus]:
    """A real embedded bus in a temporary file."""
    async with SqliteBus(tmp_path / "bus.db") as bus:
        yield bus


async def raw_http(host: str, port: int, head: bytes, body: bytes = b"", wait_s: float = 5.0) -> bytes:
    """Send raw bytes and return the response (for requests the aiohttp client will not make)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()
        await writer.wait_closed()


# ------------------------------------------------------------------------------------ accepted
async def test_valid_delivery_is_published_once_then_recognised(sqlite_bus: SqliteBus) -> None:
    """A valid delivery is answered 200 after the commit; its exact redelivery is 200 'duplicate'."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        first = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert first.status == 200
        doc = await first.json()
        again = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert again.status == 200 and (await again.json()) == {"status": "duplicate", "id": doc["id"]}
    recs = await events_of(sqlite_bus)
    assert len(recs) == 1
    ev = orjson.loads(recs[0].value)
    assert ev["id"] == doc["id"] and ev["type"] == "webhook_delivery.email_sent"
    assert recs[0].key == WS.encode() and recs[0].header("event_type") == b"webhook_delivery.email_sent"
    assert schema_errors("event", ev) == []
    assert (r.accepted, r.duplicates) == (1, 1)
    assert r.secret_matches("crm") == [2]


async def test_reserialized_retry_is_the_same_delivery(sqlite_bus: SqliteBus) -> None:
    """A retry carrying the same JSON serialized again (other key order, spacing) is a duplicate, not a
    second event with another id; a delivery whose content differs is new."""
    first = delivery(1)
    doc = orjson.loads(first)
    reordered = orjson.dumps(dict(reversed(list(doc.items()))), option=orjson.OPT_INDENT_2)
    assert reordered != first
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        a = await (await c.post(PATH, data=first, headers=hdrs())).json()
        b = await c.post(PATH, data=reordered, headers=hdrs())
        assert b.status == 200 and (await b.json()) == {"status": "duplicate", "id": a["id"]}
        other = await c.post(PATH, data=orjson.dumps({**doc, "step": 2}), headers=hdrs())
        assert (await other.json())["status"] != "duplicate"
    assert len(await events_of(sqlite_bus)) == 2


async def test_dedup_survives_restart(sqlite_bus: SqliteBus) -> None:
    """The dedup window is bus state: a new receiver on the same bus still recognises the delivery."""
    async with serve(WebhookReceiver(make_config(), sqlite_bus)) as c:
        assert (await c.post(PATH, data=delivery(1), headers=hdrs())).status == 200
    r2 = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r2) as c:
        resp = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
    assert len(await events_of(sqlite_bus)) == 1
    assert any(k.startswith("webhook/seen/crm/") for k in await sqlite_bus.state_items("webhook/seen/"))


async def test_group_commit_batches_concurrent_deliveries(sqlite_bus: SqliteBus) -> None:
    """Concurrent deliveries share bus transactions; each is answered 200 and published once."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:

        async def send(n: int) -> int:
            resp = await c.post(PATH, data=delivery(n), headers=hdrs())
            return resp.status

        statuses = await asyncio.gather(*(send(n) for n in range(120)))
    assert statuses == [200] * 120
    recs = await events_of(sqlite_bus)
    assert sorted(orjson.loads(x.value)["raw"]["email_id"][-3:] for x in recs) == [f"{n:03d}" for n in range(120)]
    assert r.committer.transactions < 120 and r.committer.largest_batch > 1


async def test_identical_concurrent_deliveries_publish_once(sqlite_bus: SqliteBus) -> None:
    """The same body sent 20 times at once is published once; all 20 get 200."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resps = await asyncio.gather(*(c.post(PATH, data=delivery(5), headers=hdrs()) for _ in range(20)))
        assert [x.status for x in resps] == [200] * 20
    assert len(await events_of(sqlite_bus)) == 1
    assert (r.accepted, r.duplicates) == (1, 19)


async def test_custom_label_named_like_a_real_event_is_its_own_type(sqlite_bus: SqliteBus) -> None:
    """A workspace label ``Email Sent`` and the real ``email_sent``: two event types on the bus, the
    label's under ``webhook_delivery.label.``; both still map to the webhook-delivery family in ECS."""
    from pipeline.formats.registry import render

    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        for n, label in enumerate(["email_sent", "Email Sent", "Интерес", "Встреча"]):
            assert (await c.post(PATH, data=delivery(n, event_type=label), headers=hdrs())).status == 200
    evs = [orjson.loads(x.value) for x in await events_of(sqlite_bus)]
    types = [e["type"] for e in evs]
    assert types[0] == "webhook_delivery.email_sent" and len(set(types)) == 4
    assert all(t.startswith("webhook_delivery.label.") for t in types[1:])
    assert [e["attributes"]["event_label"] for e in evs] == ["email_sent", "Email Sent", "Интерес", "Встреча"]
    ecs = render(evs[1], "ecs")
    assert isinstance(ecs, dict) and ecs["event"]["category"] == ["email"]


async def test_valid_inputs_at_the_edges_are_published(sqlite_bus: SqliteBus) -> None:
    """A leap second (valid RFC 3339) is clamped to :59.999 of its minute; a custom label of 300
    characters keeps its whole label with a cut type; ``step``/``variant`` sent as digit strings are ints
    in the attributes (the raw payload keeps what was sent). None of them is dead-lettered."""
    label = "Follow-up " + " ".join(f"stage{i}" for i in range(45))  # 300+ characters, nothing repeated
    assert len(label) > 300
    bodies = [
        delivery(1, timestamp="2016-12-31T23:59:60Z"),
        delivery(2, timestamp="2016-12-31T18:59:60.5-05:00"),
        delivery(3, event_type=label),
        delivery(4, step="2", variant="01"),
        delivery(5, step="2.5", variant=3),
    ]
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        for body in bodies:
            resp = await c.post(PATH, data=body, headers=hdrs())
            assert resp.status == 200 and (await resp.json())["status"] == "accepted"
    assert await letters_of(sqlite_bus) == []
    leap, leap_offset, long_label, digits, other = (orjson.loads(x.value) for x in await events_of(sqlite_bus))
    assert leap["time"] == leap_offset["time"] == "2016-12-31T23:59:59.999Z"
    assert long_label["attributes"]["event_label"] == label
    assert (
        long_label["type"].startswith("webhook_delivery.label.follow_up_stage0_stage1")
        and len(long_label["type"]) <= 128
    )
    assert (digits["attributes"]["step"], digits["attributes"]["variant"]) == (2, 1)
    assert (digits["raw"]["step"], digits["raw"]["variant"]) == ("2", "01")
    assert (other["attributes"]["step"], other["attributes"]["variant"]) == ("2.5", 3)
    assert all(schema_errors("event", e) == [] for e in (leap, long_label, digits))


# ----------------------------------------------------------------------------------- rejected
@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", PATH, 405, "method_not_allowed"),
        ("PUT", PATH, 405, "method_not_allowed"),
        ("POST", "/hooks/other", 404, "not_found"),
        ("POST", "/", 404, "not_found"),
        ("POST", PATH + "/x", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ],
)
async def test_method_and_path(sqlite_bus: SqliteBus, method: str, path: str, status: int, reason: str) -> None:
    """Wrong method → 405 (with Allow), unknown path → 404; nothing published."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.request(method, path, data=delivery(1), headers=hdrs())
        assert resp.status == status
        if status == 405:
            assert resp.headers["Allow"]
    assert r.rejections[reason] == 1
    assert await events_of(sqlite_bus) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "text/plain;charset=UTF-8"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json; charset=latin-1"},
        {"Content-Type": "application/octet-stream"},
    ],
)
async def test_any_content_type_of_an_authenticated_delivery_is_read_as_json(
    sqlite_bus: SqliteBus, headers: dict[str, str]
) -> None:
    """Instantly documents no Content-Type: an authenticated JSON delivery is published whatever its
    header says (a 415 made Instantly retry, then disable the webhook)."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH, data=delivery(1), headers={**headers, "X-Webhook-Secret": SECRET_A})
        assert resp.status == 200 and (await resp.json())["status"] == "accepted"
    assert len(await events_of(sqlite_bus)) == 1 and not r.rejections


async def test_delivery_without_content_type_is_read_as_json(sqlite_bus: SqliteBus) -> None:
    """No Content-Type header at all (raw HTTP: clients add one): published."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    body = delivery(1)
    async with serve(r) as c:
        assert c.server.port is not None
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {SECRET_A}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        answer = await raw_http("127.0.0.1", c.server.port, head, body)
        assert answer.startswith(b"HTTP/1.1 200") and b'"accepted"' in answer
    assert len(await events_of(sqlite_bus)) == 1


async def test_authenticated_non_json_body_is_a_dead_letter_whatever_its_content_type(sqlite_bus: SqliteBus) -> None:
    """A form body with a form Content-Type, authenticated: no 4xx, a dead letter (malformed_json) and 200."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-Webhook-Secret": SECRET_A}
    async with serve(r) as c:
        resp = await c.post(PATH, data=b"event_type=email_sent&workspace=x", headers=form)
        assert resp.status == 200 and (await resp.json())["status"] == "dead_lettered"
    assert [x["reason"] for x in await letters_of(sqlite_bus)] == ["malformed_json"]
    assert await events_of(sqlite_bus) == []


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Type": "application/json"}, {}])
async def test_unauthenticated_requests_get_401_whatever_their_content_type(
    sqlite_bus: SqliteBus, headers: dict[str, str]
) -> None:
    """Without the secret the answer is the same 401 as before (the content type changes nothing)."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH, data=delivery(1), headers={**headers, "X-Webhook-Secret": "wrong-wrong-wrong"})
        assert resp.status == 401 and (await resp.json()) == {"error": "unauthorized"}
    assert r.rejections["wrong_secret"] == 1 and await events_of(sqlite_bus) == []
    assert await letters_of(sqlite_bus) == []


async def test_compressed_body_is_415(sqlite_bus: SqliteBus) -> None:
    """A Content-Encoding other than identity is still refused (415) before the secret."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH, data=delivery(1), headers={**hdrs(), "Content-Encoding": "gzip"})
        assert resp.status == 415
    assert r.rejections["unsupported_media_type"] == 1 and await events_of(sqlite_bus) == []


async def test_json_with_charset_utf8_is_accepted(sqlite_bus: SqliteBus) -> None:
    """application/json; charset=utf-8 is fine."""
    async with serve(WebhookReceiver(make_config(), sqlite_bus)) as c:
        resp = await c.post(
            PATH,
            data=delivery(1),
            headers={"Content-Type": "application/json; charset=UTF-8", "X-Webhook-Secret": SECRET_A},
        )
        assert resp.status == 200


async def test_declared_oversize_is_413_before_the_body_is_read(sqlite_bus: SqliteBus) -> None:
    """A Content-Length above the limit is refused at once, although no body byte was sent."""
    r = WebhookReceiver(make_config(max_body_bytes=4096), sqlite_bus)
    async with serve(r) as c:
        assert c.server.port is not None
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Webhook-Secret: {SECRET_A}\r\nContent-Length: 5000000\r\n\r\n"
        ).encode()
        answer = await raw_http("127.0.0.1", c.server.port, head, wait_s=3.0)
        assert answer.startswith(b"HTTP/1.1 413")
    assert r.rejections["body_too_large"] == 1 and await events_of(sqlite_bus) == []


async def test_chunked_oversize_is_413(sqlite_bus: SqliteBus) -> None:
    """A chunked body is capped while streaming: 413 once it passes the limit."""
    r = WebhookReceiver(make_config(max_body_bytes=4096), sqlite_bus)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"event_type":"email_sent","timestamp":"2026-03-05T23:09:47Z","workspace":"' + WS.encode() + b'","x":"'
        for _ in range(64):
            yield b"a" * 1024
        yield b'"}'

    async with serve(r) as c:
        resp = await c.post(PATH, data=chunks(), headers=hdrs())
        assert resp.status == 413
    assert r.rejections["body_too_large"] == 1 and await events_of(sqlite_bus) == []


async def test_chunked_within_limit_is_accepted(sqlite_bus: SqliteBus) -> None:
    """A chunked body under the limit is read whole and published."""
    body = delivery(3)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 50):
            yield body[i : i + 50]

    async with serve(WebhookReceiver(make_config(), sqlite_bus)) as c:
        resp = await c.post(PATH, data=chunks(), headers=hdrs())
        assert resp.status == 200
    assert len(await events_of(sqlite_bus)) == 1


async def test_ip_allowlist(sqlite_bus: SqliteBus) -> None:
    """Outside allow_ips → 403 even with the right secret; inside → accepted."""
    r = WebhookReceiver(make_config(allow_ips=["203.0.113.0/24"]), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH, data=delivery(1), headers={**hdrs(), "X-Forwarded-For": "203.0.113.5"})
        assert resp.status == 403  # 127.0.0.1 is not a trusted proxy: the header is ignored
    assert r.rejections["ip_not_allowed"] == 1
    r2 = WebhookReceiver(make_config(allow_ips=["203.0.113.0/24"], trusted_proxies=["127.0.0.0/8"]), sqlite_bus)
    async with serve(r2) as c:
        ok = await c.post(PATH, data=delivery(1), headers={**hdrs(), "X-Forwarded-For": "198.51.100.1, 203.0.113.5"})
        assert ok.status == 200
        bad = await c.post(PATH, data=delivery(2), headers={**hdrs(), "X-Forwarded-For": "203.0.113.5, 198.51.100.1"})
        assert bad.status == 403
    assert len(await events_of(sqlite_bus)) == 1


def test_client_address_rules() -> None:
    """X-Forwarded-For counts only from trusted proxies, right to left; junk means unknown."""
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    ip = ipaddress.ip_address
    assert client_address("198.51.100.7", ["1.2.3.4"], trusted) == ip("198.51.100.7")
    assert client_address("10.0.0.2", ["1.2.3.4, 10.0.0.9"], trusted) == ip("1.2.3.4")
    assert client_address("10.0.0.2", ["5.6.7.8", "1.2.3.4"], trusted) == ip("1.2.3.4")
    assert client_address("10.0.0.2", [], trusted) == ip("10.0.0.2")
    assert client_address("10.0.0.2", ["garbage"], trusted) is None
    assert client_address("::ffff:10.0.0.2", ["[2001:db8::1]"], trusted) == ip("2001:db8::1")
    assert client_address(None, ["1.2.3.4"], trusted) is None
    assert client_address("10.0.0.2", ["1.2.3.4"], []) == ip("10.0.0.2")


@pytest.mark.parametrize(
    ("headers", "query", "reason"),
    [
        ({}, "", "missing_secret"),
        ({"X-Webhook-Secret": "wrong-secret-value-0123456789"}, "", "wrong_secret"),
        ({"X-Webhook-Secret": ""}, "", "wrong_secret"),
        ({"X-Webhook-Secret": SECRET_A[:-1]}, "", "wrong_secret"),
        ({"X-Webhook-Secret": SECRET_A[1:]}, "", "wrong_secret"),
        ({"X-Webhook-Secret": SECRET_A + "x"}, "", "wrong_secret"),
        ({"X-Webhook-Secret": SECRET_A.upper()}, "", "wrong_secret"),
        ({"X-Webhook-Secret": "x" * 5000}, "", "wrong_secret"),
        ({"Authorization": SECRET_A}, "", "missing_secret"),
        ({}, f"?secret={SECRET_A}", "missing_secret"),
        ({}, f"?X-Webhook-Secret={SECRET_A}", "missing_secret"),
        ({"X-Webhook-Secret": "nope-nope-nope-nope"}, f"?X-Webhook-Secret={SECRET_A}", "wrong_secret"),
    ],
)
async def test_bad_secrets_are_401(
    sqlite_bus: SqliteBus, caplog: pytest.LogCaptureFixture, headers: dict[str, str], query: str, reason: str
) -> None:
    """Missing, wrong, truncated, extended or query-string secrets: uniform 401, nothing published, no query logged."""
    caplog.set_level(logging.DEBUG)
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH + query, data=delivery(1), headers={**JSON, **headers})
        assert resp.status == 401 and await resp.read() == b'{"error":"unauthorized"}'
    assert r.rejections[reason] == 1 and await events_of(sqlite_bus) == []
    text = "\n".join(rec.getMessage() + str(rec.__dict__) for rec in caplog.records)
    assert SECRET_A not in text and "secret=" not in text.lower()


async def test_duplicated_secret_header_is_401(sqlite_bus: SqliteBus) -> None:
    """Two secret headers (even both correct) are refused."""
    from multidict import CIMultiDict

    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        h: CIMultiDict[str] = CIMultiDict(JSON)
        h.add("X-Webhook-Secret", SECRET_A)
        h.add("X-Webhook-Secret", SECRET_A)
        resp = await c.post(PATH, data=delivery(1), headers=h)
        assert resp.status == 401
    assert r.rejections["duplicate_secret_header"] == 1 and await events_of(sqlite_bus) == []


async def test_custom_header_name(sqlite_bus: SqliteBus) -> None:
    """The configured header name (here Authorization) is the one checked."""
    cfg = make_config((f"Bearer {SECRET_A}",), source_extra={"header_name": "Authorization"})
    async with serve(WebhookReceiver(cfg, sqlite_bus)) as c:
        assert (await c.post(PATH, data=delivery(1), headers=hdrs(SECRET_A))).status == 401
        assert (await c.post(PATH, data=delivery(1), headers=hdrs(f"Bearer {SECRET_A}", "Authorization"))).status == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"[]", "bad_shape"),
        (orjson.dumps({"event_type": "email_sent", "workspace": WS}), "bad_shape"),
        (delivery(1, workspace="another-workspace"), "workspace_mismatch"),
    ],
)
async def test_authenticated_invalid_body_is_dead_lettered(sqlite_bus: SqliteBus, body: bytes, reason: str) -> None:
    """An authenticated body that is no valid delivery: no retry of Instantly's can fix it, so it is
    stored in the dead-letter topic with its reason and answered 200 (a 4xx made Instantly retry and
    then disable the webhook); its retry is a duplicate; no event is published."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        resp = await c.post(PATH, data=body, headers=hdrs())
        assert resp.status == 200
        answer = orjson.loads(await resp.read())
        again = orjson.loads(await (await c.post(PATH, data=body, headers=hdrs())).read())
    assert answer["status"] == "dead_lettered" and again == {"status": "duplicate", "id": answer["id"]}
    assert r.rejections[reason] == 2 and await events_of(sqlite_bus) == []
    [letter] = await letters_of(sqlite_bus)
    got = (letter["id"], letter["stage"], letter["reason"], letter["component"])
    assert got == (answer["id"], "source", reason, "crm")
    assert letter["original"]["value"] == body.decode()  # kept for a re-delivery once the cause is fixed


async def test_a_dead_letter_is_counted_in_pipeline_dead_letters_total(sqlite_bus: SqliteBus) -> None:
    """The dead letter shows as ``pipeline_dead_letters_total`` on /metrics (what the DeadLettersGrowing
    alert reads), once: its retry is a duplicate, not a second dead letter, and an accepted delivery
    or a duplicate of it counts none."""
    tel = Telemetry()
    r = WebhookReceiver(make_config(), sqlite_bus, telemetry=tel)
    async with serve(r) as c:
        for body in (b"{not json", b"{not json", delivery(1), delivery(1)):
            assert (await c.post(PATH, data=body, headers=hdrs())).status == 200
    text = tel.render_prometheus()[0].decode()
    dead = [
        s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "pipeline_dead_letters_total"
    ]
    assert [
        (s.labels["component_kind"], s.labels["component_id"], s.labels["workspace_id"], s.value) for s in dead
    ] == [("webhook", "crm", WS, 1.0)]
    tel.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "headers", "body", "status", "reason"),
    [
        ({"max_body_bytes": 1024}, hdrs(), delivery(1, pad="x" * 2000), 413, "body_too_large"),
        ({}, {**hdrs(), "Content-Encoding": "gzip"}, delivery(1), 415, "unsupported_media_type"),
    ],
)
async def test_refusals_name_their_reason(
    sqlite_bus: SqliteBus, kwargs: dict[str, Any], headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    """Oversized and wrongly typed bodies: the answer says why, in fixed words that never quote the request."""
    async with serve(WebhookReceiver(make_config(**kwargs), sqlite_bus)) as c:
        resp = await c.post(PATH, data=body, headers=headers)
        assert resp.status == status
        answer = orjson.loads(await resp.read())
    assert answer["reason"] == reason and set(answer) == {"error", "reason", "message"}
    assert SECRET_A not in answer["message"] and "xxxx" not in answer["message"]


@pytest.mark.parametrize(
    ("kwargs", "headers", "body", "status"),
    [
        ({}, {"Content-Type": "text/plain"}, delivery(1), 401),  # the secret before the content type (unchecked)
        ({}, {**hdrs(None), "Content-Encoding": "gzip"}, delivery(1), 415),  # encoding before the secret
        ({"max_body_bytes": 1024}, hdrs(None), delivery(1, pad="x" * 2000), 413),  # size before the secret
        ({"allow_ips": ["192.0.2.0/24"]}, hdrs("wrong-wrong-wrong-wrong"), delivery(1), 403),  # IP before secret
        ({}, hdrs("wrong-wrong-wrong-wrong"), b"{broken", 401),  # secret before JSON
    ],
)
async def test_check_order(
    sqlite_bus: SqliteBus, kwargs: dict[str, Any], headers: dict[str, str], body: bytes, status: int
) -> None:
    """Checks run in the documented order: encoding, size, IP, secret, JSON (the content type is not checked)."""
    async with serve(WebhookReceiver(make_config(**kwargs), sqlite_bus)) as c:
        assert (await c.post(PATH, data=body, headers=headers)).status == status


# ---------------------------------------------------------------------------------- bus failures
async def test_bus_down_answers_503_and_acknowledges_nothing(sqlite_bus: SqliteBus) -> None:
    """While the bus refuses commits: 503 + Retry-After, nothing published, not ready; then recovery."""
    flaky = FlakyBus(sqlite_bus)
    r = WebhookReceiver(make_config(), flaky)  # type: ignore[arg-type]
    async with serve(r) as c:
        flaky.down = True
        resp = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (await c.get("/readyz")).status == 503
        assert (await c.get("/healthz")).status == 200
        assert await events_of(sqlite_bus) == []
        flaky.down = False
        assert (await c.post(PATH, data=delivery(1), headers=hdrs())).status == 200
        assert (await c.get("/readyz")).status == 200
    assert r.rejections["bus_unavailable"] == 1 and len(await events_of(sqlite_bus)) == 1


async def test_closed_sqlite_bus_answers_503(tmp_path: Path) -> None:
    """A real bus failure (the SQLite bus closed under the receiver) is a 503, never a 200."""
    bus = SqliteBus(tmp_path / "bus.db")
    await bus.__aenter__()
    r = WebhookReceiver(make_config(), bus)
    async with serve(r) as c:
        await bus.__aexit__(None, None, None)
        resp = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert resp.status == 503
    async with SqliteBus(tmp_path / "bus.db") as again:
        assert await events_of(again) == []


async def test_slow_bus_times_out_then_retry_is_duplicate(sqlite_bus: SqliteBus) -> None:
    """A commit slower than ack_timeout gets 503; once it lands, Instantly's retry is a duplicate."""
    flaky = FlakyBus(sqlite_bus)
    flaky.delay = 0.5
    r = WebhookReceiver(make_config(ack_timeout_secs=0.1), flaky)  # type: ignore[arg-type]
    async with serve(r) as c:
        assert (await c.post(PATH, data=delivery(1), headers=hdrs())).status == 503
        await asyncio.sleep(0.6)
        flaky.delay = 0
        resp = await c.post(PATH, data=delivery(1), headers=hdrs())
        assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
    assert len(await events_of(sqlite_bus)) == 1 and r.rejections["bus_timeout"] == 1


async def test_health_endpoints(sqlite_bus: SqliteBus) -> None:
    """/healthz and /readyz answer 200 on a healthy receiver and write a heartbeat."""
    cfg = make_config()
    async with serve(WebhookReceiver(cfg, sqlite_bus)) as c:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
    assert await sqlite_bus.get_state(f"webhook/heartbeat/{cfg.writer_id}") is not None


async def test_start_and_stop_on_a_real_port(sqlite_bus: SqliteBus) -> None:
    """start() binds a port; stop() closes it after committing."""
    import aiohttp

    r = WebhookReceiver(make_config(), sqlite_bus)
    await r.start()
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{r.port}{PATH}", data=delivery(1), headers=hdrs()) as resp,
        ):
            assert resp.status == 200
    finally:
        await r.stop()
    assert len(await events_of(sqlite_bus)) == 1


# --------------------------------------------------------------------------------- rotation
async def test_rotation_steps(sqlite_bus: SqliteBus) -> None:
    """A → [A, B] → [B]: each step accepts its secrets; the retired secret is then refused."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        assert (await c.post(PATH, data=delivery(1), headers=hdrs(SECRET_A))).status == 200
        assert (await c.post(PATH, data=delivery(2), headers=hdrs(SECRET_B))).status == 401
        r.rotate("crm", [SecretStr(SECRET_A), SecretStr(SECRET_B)])
        assert (await c.post(PATH, data=delivery(3), headers=hdrs(SECRET_A))).status == 200
        assert (await c.post(PATH, data=delivery(4), headers=hdrs(SECRET_B))).status == 200
        assert r.secret_matches("crm") == [1, 1]
        r.rotate("crm", [SecretStr(SECRET_B)])
        assert (await c.post(PATH, data=delivery(5), headers=hdrs(SECRET_A))).status == 401
        assert (await c.post(PATH, data=delivery(6), headers=hdrs(SECRET_B))).status == 200
    assert len(await events_of(sqlite_bus)) == 4
    with pytest.raises(ValueError, match="1 or 2"):
        r.rotate("crm", [SecretStr(SECRET_A), SecretStr(SECRET_A)])
    with pytest.raises(KeyError):
        r.rotate("nope", [SecretStr(SECRET_A)])


def test_secret_checker_compares_every_secret() -> None:
    """The checker returns the matching slot and refuses near misses."""
    chk = SecretChecker([SecretStr(SECRET_A), SecretStr(SECRET_B)])
    assert chk.match(SECRET_A.encode()) == 0 and chk.match(SECRET_B.encode()) == 1
    assert chk.match(SECRET_A[:-1].encode()) is None and chk.match(b"") is None


# ------------------------------------------------------------------------------ dedup window
def test_seen_window_bounds_and_round_trip() -> None:
    """Entries expire by age, the oldest go first over the cap, and encode/decode round-trips."""
    w = SeenWindow("crm", window_secs=100, max_entries=SEEN_SLOTS * 2)
    hashes = [bytes([i]) * 4 + bytes(12) for i in range(3)]
    slot = SeenWindow.slot_of(hashes[0])
    same_slot = [h for h in (bytes([0, 0, (SEEN_SLOTS >> 8) * k, 0]) + bytes(12) for k in range(1, 4))]
    assert all(SeenWindow.slot_of(h) == slot for h in same_slot)
    w.slots[slot] = w.staged(slot, [hashes[0]], now=1000)
    assert w.contains(hashes[0], 1050) and not w.contains(hashes[0], 1100)
    content = w.staged(slot, same_slot, now=1010)
    assert len(content) == 2 and list(content) == same_slot[1:]  # cap 2: the oldest went first
    assert SeenWindow.decode(SeenWindow.encode(content)) == content
    assert SeenWindow.decode(b"\x09junk") == {}
    w2 = SeenWindow("crm", window_secs=100, max_entries=SEEN_SLOTS * 2)
    w2.load({w.key(slot): SeenWindow.encode(content)})
    assert w2.contains(same_slot[2], 1011)


def test_seen_window_keys_are_per_writer_and_load_from_every_writer() -> None:
    """A window writes only its writer's keys and loads every writer's (and the older shared layout's)."""
    a = SeenWindow("crm", window_secs=100, max_entries=SEEN_SLOTS * 2, writer="webhook-a")
    h1, h2, h3 = (bytes([i]) * 16 for i in (1, 2, 3))
    assert a.key(5) == "webhook/seen/crm/webhook-a/005"
    assert SeenWindow("crm", 100, SEEN_SLOTS * 2).key(5) == "webhook/seen/crm/005"
    a.load(
        {
            "webhook/seen/crm/webhook-b/001": SeenWindow.encode({h1: 1000}),
            "webhook/seen/crm/002": SeenWindow.encode({h2: 1000}),
            "webhook/seen/crm/webhook-a/003": SeenWindow.encode({h3: 990, h1: 1001}),
        }
    )
    assert all(a.contains(h, 1050) for h in (h1, h2, h3))
    assert a.slots[SeenWindow.slot_of(h1)][h1] == 1001  # held by two writers: the latest time


def test_stale_keys_name_only_writers_gone_for_longer_than_the_window() -> None:
    """A writer's keys go when all of them, in every source, and its heartbeat are older than the window."""
    old, new = SeenWindow.encode({bytes(16): 1000}), SeenWindow.encode({bytes(16): 1000, b"x" * 16: 5000})
    state = {
        "webhook/seen/crm/gone/001": old,  # every key and its heartbeat expired: deleted
        "webhook/seen/other/gone/002": old,
        "webhook/heartbeat/gone": b"1970-01-01T00:16:40.000Z",
        "webhook/seen/crm/busy/001": old,  # one fresh key in another source keeps all of it
        "webhook/seen/other/busy/003": new,
        "webhook/seen/crm/idle/001": old,  # idle but its heartbeat is fresh
        "webhook/heartbeat/idle": b"1970-01-01T01:23:00.000Z",
        "webhook/heartbeat/left": b"1970-01-01T00:00:00.000Z",  # only a heartbeat: deleted
        "webhook/seen/crm/me/001": old,  # the caller's own keys, never
        "webhook/seen/crm/00a": old,  # the layout before writer ids, per source: all expired
        "webhook/seen/other/00b": old,
        "webhook/seen/other/00c": new,
    }
    assert stale_keys(state, writer="me", window_secs=3600, now=5100) == [
        "webhook/heartbeat/gone",
        "webhook/heartbeat/left",
        "webhook/seen/crm/00a",
        "webhook/seen/crm/gone/001",
        "webhook/seen/other/gone/002",
    ]


# ------------------------------------------------------------------------------ operations
@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl CLI)."""
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls_listener(sqlite_bus: SqliteBus, self_signed: tuple[Path, Path]) -> None:
    """With tls: the receiver serves HTTPS with the given certificate."""
    import ssl

    import aiohttp

    key, cert = self_signed
    r = WebhookReceiver(make_config(tls={"certfile": str(cert), "keyfile": str(key)}), sqlite_bus)
    await r.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"https://127.0.0.1:{r.port}{PATH}", data=delivery(1), headers=hdrs(), ssl=ctx) as resp,
        ):
            assert resp.status == 200
    finally:
        await r.stop()
    assert len(await events_of(sqlite_bus)) == 1


async def test_rejection_logs_are_throttled(sqlite_bus: SqliteBus, caplog: pytest.LogCaptureFixture) -> None:
    """A flood of bad requests is fully counted but logs at most 20 lines per reason per 10 s."""
    caplog.set_level(logging.WARNING, logger="instantly_audit.webhook")
    r = WebhookReceiver(make_config(), sqlite_bus)
    async with serve(r) as c:
        for _ in range(50):
            assert (await c.post(PATH, data=delivery(1), headers=hdrs("wrong-wrong-wrong-wrong"))).status == 401
    lines = [x for x in caplog.records if x.getMessage() == "Webhook delivery rejected"]
    assert r.rejections["wrong_secret"] == 50 and len(lines) == 20
    assert lines[0].__dict__["reason"] == "wrong_secret" and lines[0].__dict__["remote"] == "127.0.0.1"


async def test_max_batch_bounds_transactions(sqlite_bus: SqliteBus) -> None:
    """max_batch caps the deliveries per bus transaction."""
    r = WebhookReceiver(make_config(max_batch=2), sqlite_bus)
    async with serve(r) as c:
        resps = await asyncio.gather(*(c.post(PATH, data=delivery(n), headers=hdrs()) for n in range(20)))
        assert {x.status for x in resps} == {200}
    assert r.committer.largest_batch <= 2 and r.committer.transactions >= 10


async def test_health_reports_a_dead_committer(sqlite_bus: SqliteBus) -> None:
    """/healthz turns 500 (restart me) and /readyz 503 if the commit loop died; a closed receiver is not ready."""
    r = WebhookReceiver(make_config(), sqlite_bus)
    assert await r.ready() is False
    async with serve(r) as c:
        task = r.committer._task
        assert task is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (await c.get("/healthz")).status == 500
        assert (await c.get("/readyz")).status == 503
        assert (await c.post(PATH, data=delivery(1), headers=hdrs())).status == 503
    assert await events_of(sqlite_bus) == []


async def test_overload_answers_503(sqlite_bus: SqliteBus) -> None:
    """When more deliveries wait for the bus than max_pending, new ones get 503 at once (memory stays bounded)."""
    flaky = FlakyBus(sqlite_bus)
    flaky.delay = 0.3
    r = WebhookReceiver(make_config(max_pending=2, max_batch=1), flaky)  # type: ignore[arg-type]
    async with serve(r) as c:
        resps = await asyncio.gather(*(c.post(PATH, data=delivery(n), headers=hdrs()) for n in range(8)))
        codes = sorted(x.status for x in resps)
    assert 503 in codes and 200 in codes and r.rejections["overloaded"] == codes.count(503)
    assert len(await events_of(sqlite_bus)) == codes.count(200)


async def test_slow_body_times_out(sqlite_bus: SqliteBus) -> None:
    """An authenticated body that trickles in slower than body_timeout_secs is 408; nothing published."""
    r = WebhookReceiver(make_config(body_timeout_secs=0.2), sqlite_bus)

    async def slow() -> AsyncIterator[bytes]:
        yield delivery(1)[:10]
        await asyncio.sleep(0.6)
        yield delivery(1)[10:]

    async with serve(r) as c:
        resp = await c.post(PATH, data=slow(), headers=hdrs())
        assert resp.status == 408
    assert r.rejections["body_timeout"] == 1 and await events_of(sqlite_bus) == []
