"""Signed webhook sink: Standard Webhooks signatures (checked by independent verifiers), answers, arrays."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.webhook_sink import SignedWebhookConfig, SignedWebhookSink, sign, verify_standard_webhook
from pipeline.bus.base import EVENTS_TOPIC, Record
from pipeline.clock import FakeClock
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.errors import SinkError, WebhookRejected
from tests.fakes import Faults, make_event
from tests.fakes.receiver import FakeReceiver, spec_verify

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_780_000_000


def ev(i: int) -> Delivery:
    d = decode(Record(EVENTS_TOPIC, 0, i, 0, b"ws-1", make_event(i).to_json()))
    assert not isinstance(d, str)
    return d


def wh_cfg(url: str, **kw: Any) -> SignedWebhookConfig:
    return SignedWebhookConfig.model_validate({"type": "webhook", "url": url, "secret": EnvValue(SECRET), **kw})


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver(SECRET) as server:
        yield server


def test_signature_matches_the_standardwebhooks_library() -> None:
    """Our signature verifies with the reference 'standardwebhooks' package, and theirs with ours."""
    sw = pytest.importorskip("standardwebhooks")
    now = int(time.time())
    body = make_event(1).to_json()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(KEY, "msg_1", now, body)}
    sw.Webhook(SECRET).verify(body, headers)
    from datetime import UTC, datetime

    theirs = sw.Webhook(SECRET).sign("msg_2", datetime.fromtimestamp(now, tz=UTC), body.decode())
    verify_standard_webhook(SECRET, {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(now),
                                     "Webhook-Signature": theirs}, body, now=now)  # fmt: skip


def test_signature_matches_the_specification_by_hand() -> None:
    """v1 = base64(HMAC-SHA256(decoded secret, '{id}.{timestamp}.{body}'))."""
    expected = base64.b64encode(hmac.new(KEY, b"msg_1.1780000000.{}", hashlib.sha256).digest()).decode()
    assert sign(KEY, "msg_1", NOW, b"{}") == "v1," + expected
    assert spec_verify(SECRET, {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
                                "webhook-signature": "v1," + expected}, b"{}", 300, NOW)  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "now", "reason"),
    [
        ({"webhook-id": "m"}, NOW, "missing_headers"),
        ({"webhook-id": "m", "webhook-timestamp": "abc", "webhook-signature": "v1,x"}, NOW, "bad_timestamp"),
        ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "SIG"}, NOW + 301, "stale_timestamp"),
        ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "SIG"}, NOW - 301, "stale_timestamp"),
        ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,AAAA v2,SIG"}, NOW,
         "bad_signature"),
        ({"webhook-id": "other", "webhook-timestamp": str(NOW), "webhook-signature": "SIG"}, NOW, "bad_signature"),
    ],
)  # fmt: skip
def test_verify_rejects(headers: dict[str, str], now: int, reason: str) -> None:
    """Missing headers, bad or stale timestamps and wrong signatures are refused with a reason."""
    good = sign(KEY, "m", NOW, b"body")
    hdrs = {k: v.replace("SIG", good) for k, v in headers.items()}
    with pytest.raises(WebhookRejected) as info:
        verify_standard_webhook(SECRET, hdrs, b"body", 300, now)
    assert info.value.status == 401 and info.value.reason == reason


def test_verify_accepts_any_of_several_signatures_and_tampering_fails() -> None:
    """During rotation any listed v1 signature may match; a changed body never does."""
    good = sign(KEY, "m", NOW, b"body")
    other = sign(b"x" * 32, "m", NOW, b"body")
    hdrs = {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": f"{other} {good}"}
    verify_standard_webhook(SECRET, hdrs, b"body", 300, NOW)
    with pytest.raises(WebhookRejected):
        verify_standard_webhook(SECRET, hdrs, b"body!", 300, NOW)


async def test_each_record_posted_and_signed(receiver: FakeReceiver) -> None:
    """Each record is POSTed as its JSON with webhook-id = its id; the receiver verifies every one."""
    async with SignedWebhookSink("hooks", wh_cfg(receiver.hook_url)) as s:
        assert (await s.send([ev(1), ev(2), ev(3)])).ok
    assert receiver.bad_signatures == 0
    assert sorted(receiver.webhook_ids) == sorted(make_event(i).id for i in (1, 2, 3))
    assert receiver.records[0]["schema"] == "instantly.event.v1"


async def test_array_mode_posts_one_signed_array(receiver: FakeReceiver) -> None:
    """batch_as_array sends one JSON array per batch with a deterministic batch id."""
    async with SignedWebhookSink("hooks", wh_cfg(receiver.hook_url, batch_as_array=True)) as s:
        assert (await s.send([ev(1), ev(2)])).ok
    assert receiver.arrays == 1 and receiver.ids == [make_event(1).id, make_event(2).id]
    (wid,) = receiver.webhook_ids
    assert wid.startswith("batch_")


async def test_wrong_secret_is_fatal_not_poison(receiver: FakeReceiver) -> None:
    """A 401 from the receiver (bad secret) fails the batch without retry; nothing is dead-lettered."""
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    cfg = SignedWebhookConfig.model_validate({"type": "webhook", "url": receiver.hook_url, "secret": EnvValue(other)})
    async with SignedWebhookSink("hooks", cfg) as s:
        with pytest.raises(SinkError) as info:
            await s.send([ev(1)])
    assert not info.value.retriable and "401" in str(info.value) and other not in str(info.value)


async def test_unprocessable_is_poison_and_array_is_split(receiver: FakeReceiver) -> None:
    """Another 4xx dead-letters the record; in array mode the batch is split to find it."""
    receiver.reject = lambda r: r["attributes"]["n"] == 2
    async with SignedWebhookSink("hooks", wh_cfg(receiver.hook_url, batch_as_array=True)) as s:
        result = await s.send([ev(1), ev(2), ev(3), ev(4)])
    assert [(f.delivery.id, f.retriable) for f in result.failures] == [(make_event(2).id, False)]
    assert "422" in result.failures[0].error
    assert sorted(receiver.ids) == sorted(make_event(i).id for i in (1, 3, 4))


async def test_5xx_and_429_are_retriable_with_retry_after(receiver: FakeReceiver) -> None:
    """503 with Retry-After marks the record retriable carrying the delay."""
    receiver.faults = Faults(down=True, retry_after=9)
    async with SignedWebhookSink("hooks", wh_cfg(receiver.hook_url)) as s:
        result = await s.send([ev(1)])
    (f,) = result.failures
    assert f.retriable and f.retry_after == 9


async def test_timestamp_comes_from_the_clock(receiver: FakeReceiver) -> None:
    """webhook-timestamp is the injected clock's integer seconds."""
    s = SignedWebhookSink("hooks", wh_cfg(receiver.hook_url), clock=FakeClock(NOW + 0.9))
    assert s.signed_headers("m", b"{}")["webhook-timestamp"] == str(NOW)


async def test_healthcheck(receiver: FakeReceiver) -> None:
    """HEAD on the endpoint must not answer 5xx/404/410."""
    async with SignedWebhookSink("hooks", wh_cfg(receiver.hook_url)) as s:
        await s.healthcheck()
        receiver.faults = Faults(down=True)
        with pytest.raises(SinkError, match="503"):
            await s.healthcheck()
