"""Property-based: every way of being wrong is rejected and leaves nothing in the bus (Hypothesis).

One receiver on a real aiohttp server (127.0.0.1) and a real SqliteBus per test, driven from a
private event loop so Hypothesis can run thousands of requests quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pydantic import SecretStr

from pipeline.bus.sqlite import SqliteBus
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.unit.test_webhook_support import (
    JSON,
    SECRET_A,
    SECRET_B,
    WS,
    delivery,
    events_of,
    hdrs,
    letters_of,
    make_config,
)

T = TypeVar("T")
PATH = "/hooks/crm"
LIMIT = 4096
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
FAST = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Harness:
    """A receiver + bus + client living on a private event loop."""

    def __init__(self, tmp: Path, secrets: tuple[str, ...] = (SECRET_A,)):
        self.loop = asyncio.new_event_loop()
        self.bus = SqliteBus(tmp / "bus.db")
        self.run(self.bus.__aenter__())
        self.receiver = WebhookReceiver(make_config(secrets, max_body_bytes=LIMIT), self.bus)
        self.client: TestClient[Any, Any] = self.run(self._client())
        self.requests = 0

    async def _client(self) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(self.receiver.make_app(), host="127.0.0.1"))
        await client.start_server()
        return client

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def post(self, *, body: Any = None, headers: Any = None, path: str = PATH) -> int:
        """POST and return the status."""
        self.requests += 1

        async def go() -> int:
            async with self.client.post(path, data=body if body is not None else delivery(1), headers=headers) as r:
                await r.read()
                return r.status

        return self.run(go())

    def assert_bus_empty(self) -> None:
        """No event published; dedup state written only for dead letters (authenticated invalid bodies)."""
        assert self.run(events_of(self.bus)) == []
        if not self.run(letters_of(self.bus)):
            assert self.run(self.bus.state_items("webhook/seen/")) == {}
        assert self.receiver.accepted == 0

    def close(self) -> None:
        self.run(self.client.close())
        self.run(self.bus.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A fresh receiver with secret A; after the test, the bus must be empty."""
    h = Harness(tmp_path)
    try:
        yield h
        h.assert_bus_empty()
    finally:
        h.close()


def mutations(secret: str) -> Iterator[str]:
    """Every one-byte change of ``secret``: each position bumped up and down, deleted, and doubled."""
    for i, ch in enumerate(secret):
        for d in (1, -1):
            c = chr(ord(ch) + d)
            if 0x21 <= ord(c) <= 0x7E:
                yield secret[:i] + c + secret[i + 1 :]
        yield secret[:i] + secret[i + 1 :]
        yield secret[:i] + ch + secret[i:]


def test_every_single_byte_change_is_rejected(harness: Harness) -> None:
    """Each position of the secret off by one (up, down, deleted, doubled) → 401."""
    cases = list(mutations(SECRET_A))
    assert len(cases) >= 4 * len(SECRET_A) - 2
    for wrong in cases:
        assert wrong != SECRET_A
        assert harness.post(headers=hdrs(wrong)) == 401
    assert harness.receiver.rejections["wrong_secret"] == len(cases)


def test_every_prefix_and_suffix_is_rejected(harness: Harness) -> None:
    """Every proper prefix and suffix of the secret, and the secret with anything appended or prepended → 401."""
    n = len(SECRET_A)
    cases = [SECRET_A[:i] for i in range(1, n)] + [SECRET_A[i:] for i in range(1, n)]
    cases += [SECRET_A + "x", "x" + SECRET_A, SECRET_A + SECRET_A, SECRET_A + "," + SECRET_B]
    for wrong in cases:
        assert harness.post(headers=hdrs(wrong)) == 401


@settings(FAST, max_examples=800)
@given(st.text(PRINTABLE, min_size=0, max_size=96))
def test_random_secrets_are_rejected(harness: Harness, value: str) -> None:
    """Any header value other than the secret → 401."""
    if value == SECRET_A:
        return
    assert harness.post(headers=hdrs(value)) == 401


@settings(FAST, max_examples=600)
@given(st.integers(0, len(SECRET_A) - 1), PRINTABLE)
def test_random_single_substitutions_are_rejected(harness: Harness, pos: int, ch: str) -> None:
    """The secret with one character replaced by any other → 401."""
    if SECRET_A[pos] == ch:
        return
    assert harness.post(headers=hdrs(SECRET_A[:pos] + ch + SECRET_A[pos + 1 :])) == 401


@settings(FAST, max_examples=150)
@given(st.lists(st.sampled_from([SECRET_A, SECRET_B, "not-the-secret-0000"]), min_size=2, max_size=4))
def test_duplicated_headers_are_rejected(harness: Harness, values: list[str]) -> None:
    """The secret header sent two or more times (even all correct) → 401."""
    h: CIMultiDict[str] = CIMultiDict(JSON)
    for v in values:
        h.add("X-Webhook-Secret", v)
    assert harness.post(headers=h) == 401


@settings(FAST, max_examples=60)
@given(st.sampled_from(["secret", "token", "X-Webhook-Secret", "key", "auth", "s"]), st.booleans())
def test_secret_in_query_is_never_accepted(harness: Harness, name: str, with_wrong_header: bool) -> None:
    """The secret in the query string (with no header, or a wrong one) → 401."""
    headers = hdrs("wrong-wrong-wrong-wrong") if with_wrong_header else dict(JSON)
    assert harness.post(headers=headers, path=f"{PATH}?{name}={SECRET_A}") == 401


def test_retired_secret_is_rejected_after_rotation(tmp_path: Path) -> None:
    """After A → [A, B] → [B], A and every one-byte change of B are refused; B works."""
    h = Harness(tmp_path)
    try:
        h.receiver.rotate("crm", [SecretStr(SECRET_A), SecretStr(SECRET_B)])
        h.receiver.rotate("crm", [SecretStr(SECRET_B)])
        assert h.post(headers=hdrs(SECRET_A)) == 401
        for wrong in mutations(SECRET_B):
            assert h.post(headers=hdrs(wrong)) == 401
        h.assert_bus_empty()
        assert h.post(headers=hdrs(SECRET_B)) == 200
    finally:
        h.close()


_MEDIA = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "text/json",
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json-patch+json",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "",
        ]
    ),
    st.from_regex(r"\A[a-z]{1,10}/[a-z0-9.+-]{1,16}\Z").filter(lambda t: t != "application/json"),
)


@settings(FAST, max_examples=300)
@given(_MEDIA)
def test_content_type_without_the_secret_is_401(harness: Harness, ctype: str) -> None:
    """Any content type (or none) without the secret → the same 401: the secret is checked first."""
    assert harness.post(headers={"Content-Type": ctype} if ctype else {}) == 401


@pytest.fixture
def open_harness(tmp_path: Path) -> Iterator[Harness]:
    """A fresh receiver with secret A, without the empty-bus check."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@settings(FAST, max_examples=200)
@given(_MEDIA)
def test_content_type_never_refuses_an_authenticated_delivery(open_harness: Harness, ctype: str) -> None:
    """Instantly documents no Content-Type: with the secret, the JSON delivery is taken whatever the
    header says (once; the same body again is a duplicate), never a 415."""
    headers = {"X-Webhook-Secret": SECRET_A, **({"Content-Type": ctype} if ctype else {})}
    assert open_harness.post(headers=headers) == 200
    assert len(open_harness.run(events_of(open_harness.bus))) == 1
    assert not open_harness.receiver.rejections


def _valid(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and {"event_type", "timestamp", "workspace"} <= set(doc)


@settings(FAST, max_examples=600)
@given(st.binary(max_size=400))
def test_random_bytes_are_rejected(harness: Harness, body: bytes) -> None:
    """Arbitrary bytes as the body of an authenticated request → 200, dead-lettered (no retry fixes them)."""
    if _valid(body):
        return
    assert harness.post(body=body, headers=hdrs()) == 200


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(FAST, max_examples=500)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "event_type": st.one_of(_JSON, st.just("email_sent")),
            "timestamp": st.one_of(_JSON, st.just("not a time")),
            "workspace": st.one_of(_JSON, st.just("another-workspace")),
            "campaign_id": _JSON,
        },
    )
)
def test_wrongly_shaped_json_is_rejected(harness: Harness, doc: dict[str, Any]) -> None:
    """JSON objects lacking a valid event_type, timestamp or this source's workspace → 200, dead-lettered."""
    ok_type = isinstance(doc.get("event_type"), str) and doc["event_type"].strip()
    assert doc.get("workspace") != WS
    assert not (ok_type and doc.get("timestamp") == "2026-03-05T23:09:47Z" and doc.get("workspace") == WS)
    assert harness.post(body=orjson.dumps(doc), headers=hdrs()) == 200


@settings(FAST, max_examples=150)
@given(st.integers(LIMIT + 1, LIMIT * 3), st.booleans(), st.booleans())
def test_oversized_bodies_are_rejected(harness: Harness, size: int, chunked: bool, with_secret: bool) -> None:
    """Bodies over max_body_bytes → 413 (declared: before the secret check; chunked: while streaming)."""
    prefix = delivery(1)[:-1] + b',"pad":"'
    body = prefix + b"x" * max(0, size - len(prefix) - 2) + b'"}'
    assert len(body) > LIMIT

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    headers = hdrs() if with_secret else dict(JSON)
    # A declared length is refused before the secret check; a chunked body only after it.
    expected = 413 if with_secret or not chunked else 401
    assert harness.post(body=stream() if chunked else body, headers=headers) == expected
