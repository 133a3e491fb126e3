"""InstantlyClient against a real aiohttp server on 127.0.0.1: headers, paging, retries, typed errors."""

from __future__ import annotations

import contextlib
import random
import socket
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.client import USER_AGENT, ClientRequestError, InstantlyClient
from connectors.instantly.config import WorkspaceConfig
from pipeline.clock import FakeClock
from pipeline.errors import (
    AuthError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ScopeError,
    SourceError,
    UpstreamError,
)
from pipeline.observability.telemetry import Telemetry
from tests.unit.test_instantly_fake_api import FakeInstantly, load_fixture, serve

CANARY = "CANARY-bearer-7f3c1d9e5a2b4c6d8e0f"


class Sleeps:
    """Records the delays the client asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_cfg(url: str, key: str, **kw: Any) -> WorkspaceConfig:
    return WorkspaceConfig(api_key=SecretStr(key), base_url=url, **kw)


@pytest.fixture
async def fake() -> AsyncIterator[FakeInstantly]:
    async with serve(FakeInstantly(api_key=CANARY)) as f:
        yield f


def client_for(fake: FakeInstantly, sleeps: Sleeps | None = None, seed: int = 7, **kw: Any) -> InstantlyClient:
    cfg = make_cfg(fake.url, fake.api_key, **kw)
    return InstantlyClient(cfg, budget=RequestBudget(1000, 6000), rng=random.Random(seed), sleep=sleeps or Sleeps())


def expected_delays(seed: int, n: int, base: float = 0.5, cap: float = 60.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.0, min(cap, base * 2**i)) for i in range(n)]


async def test_sends_bearer_accept_user_agent_and_as_workspace(fake: FakeInstantly) -> None:
    """Every request carries Bearer auth, Accept JSON, the explicit User-Agent and x-as-workspace."""
    async with client_for(fake, as_workspace="sub-123") as client:
        ws = await client.get("/api/v2/workspaces/current")
    assert ws["id"] == "019cc043-af79-73db-a904-19add8ce4af2"
    headers = fake.calls[0].headers
    assert headers["Authorization"] == f"Bearer {CANARY}"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT == "instantly-audit/0.1.0"
    assert headers["x-as-workspace"] == "sub-123"
    assert "Content-Type" not in headers


async def test_no_as_workspace_header_by_default(fake: FakeInstantly) -> None:
    """Without ``as_workspace`` the client acts on the key's own workspace (no header)."""
    async with client_for(fake) as client:
        await client.get("/api/v2/workspaces/current")
    assert "x-as-workspace" not in fake.calls[0].headers


@pytest.mark.parametrize("trailing", [True, False])
async def test_paginates_many_pages(fake: FakeInstantly, trailing: bool) -> None:
    """1,050 items over 11 pages arrive once each, in order, with or without a cursor on the last page."""
    fake.trailing_cursor = trailing
    fake.collections["api-keys"] = [{"id": f"key-{i:05d}"} for i in range(1050)]
    async with client_for(fake) as client:
        pages = [page async for page in client.paginate("/api/v2/api-keys", {"search": "x y"}, limit=100)]
    assert [len(p) for p in pages] == [100] * 10 + [50]
    assert [i["id"] for p in pages for i in p] == [f"key-{i:05d}" for i in range(1050)]
    calls = fake.calls_to("/api-keys")
    assert len(calls) == (12 if trailing else 11)
    assert "starting_after" not in calls[0].query
    assert calls[1].query["starting_after"] == "key-00099"
    assert all(c.query["limit"] == "100" and c.query["search"] == "x y" for c in calls)


async def test_empty_listing_is_one_request(fake: FakeInstantly) -> None:
    """An empty first page ends the listing without yielding a page."""
    async with client_for(fake) as client:
        assert await client.get_all("/api/v2/webhooks") == []
    assert len(fake.calls) == 1


async def test_repeated_cursor_ends_the_listing(fake: FakeInstantly, caplog: pytest.LogCaptureFixture) -> None:
    """A server answering every page with one fixed cursor (as Instantly's documented examples do)
    gives its items once and ends the listing with a warning: no loop, no failure, no duplicate."""

    def stuck(records: list[dict[str, Any]], query: Any) -> web.Response:
        return web.json_response({"items": [{"id": "w1"}, {"id": "w2"}], "next_starting_after": "019cc043-e2f1"})

    fake._page = stuck  # type: ignore[method-assign]
    async with client_for(fake) as client:
        assert [i["id"] for i in await client.get_all("/api/v2/webhooks")] == ["w1", "w2"]
    assert len(fake.calls) == 2
    assert "repeated a page" in caplog.text


async def test_cursor_repeating_after_new_items_ends_the_listing(fake: FakeInstantly) -> None:
    """A cursor already followed ends the listing after the page that brought it, new items kept once each."""
    pages = iter([["a", "b"], ["b", "c"], ["c", "d"], ["x"]])

    def cycling(records: list[dict[str, Any]], query: Any) -> web.Response:
        cursor = "c1" if query.get("starting_after") != "c1" else "c2"
        if query.get("starting_after") == "c2":
            cursor = "c1"
        return web.json_response({"items": [{"id": i} for i in next(pages)], "next_starting_after": cursor})

    fake._page = cycling  # type: ignore[method-assign]
    async with client_for(fake) as client:
        got = [i["id"] for i in await client.get_all("/api/v2/webhooks")]
    assert got == ["a", "b", "c", "d"]
    assert [c.query.get("starting_after") for c in fake.calls] == [None, "c1", "c2"]


@pytest.mark.parametrize("repeat", ["page", "cursor"])
async def test_repetition_after_a_full_page_abandons_the_listing(fake: FakeInstantly, repeat: str) -> None:
    """A full page (``limit`` items) followed by a repeated page or cursor means the rest of the
    listing was not delivered: raising keeps a snapshot from reading the missing items as deleted
    (a cut-short listing of 250 keys became 150 ``api_key.deleted`` events)."""
    served: list[str | None] = []

    def skipping(records: list[dict[str, Any]], query: Any) -> web.Response:
        after = query.get("starting_after")
        served.append(after)
        if repeat == "page" and after == "c1":  # ignores the cursor once: page 1 again
            return web.json_response({"items": [{"id": f"k{i}"} for i in range(3)], "next_starting_after": "c2"})
        start = 0 if after is None else 3  # ("cursor": page 2 hands out c1 again)
        return web.json_response({"items": [{"id": f"k{i}"} for i in range(start, start + 3)],
                                  "next_starting_after": "c1"})  # fmt: skip

    fake._page = skipping  # type: ignore[method-assign]
    async with client_for(fake) as client:
        with pytest.raises(UpstreamError, match=f"repeated a {repeat} after a full page") as info:
            await client.get_all("/api/v2/api-keys", limit=3)
    assert "listing is abandoned" in str(info.value)
    assert served[:2] == [None, "c1"]


async def test_429_storm_exhausts_retries_with_full_jitter(fake: FakeInstantly) -> None:
    """A 429 storm costs exactly 1 + max_retries attempts with full-jitter exponential delays."""
    fake.fail("/api-keys", 429, times=100)
    sleeps = Sleeps()
    async with client_for(fake, sleeps, seed=11, max_retries=6) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.get_all("/api/v2/api-keys")
    assert len(fake.calls) == 7
    assert sleeps.delays == pytest.approx(expected_delays(11, 6))
    assert all(0 <= d <= min(60.0, 0.5 * 2**i) for i, d in enumerate(sleeps.delays))
    assert "Rate limit exceeded" in str(info.value)
    assert info.value.retriable


async def test_429_then_success(fake: FakeInstantly) -> None:
    """Three 429s then a page: four attempts, three delays, and the data arrives."""
    fake.collections["api-keys"] = load_fixture("api_keys.list.json")["items"]
    fake.fail("/api-keys", 429, times=3)
    sleeps = Sleeps()
    async with client_for(fake, sleeps, seed=3) as client:
        items = await client.get_all("/api/v2/api-keys")
    assert [i["name"] for i in items] == ["My API Key"]
    assert len(fake.calls_to("/api-keys")) == 5  # 3 x 429, the page, the trailing empty page
    assert sleeps.delays == pytest.approx(expected_delays(3, 3))
    assert client.retries == 3


async def test_retry_after_is_a_floor(fake: FakeInstantly) -> None:
    """A Retry-After header (seconds) is honoured as the minimum delay."""
    fake.fail("/workspaces/current", 429, times=1, headers={"Retry-After": "5"})
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        await client.get("/api/v2/workspaces/current")
    assert sleeps.delays[0] >= 5.0


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (402, PaymentRequiredError), (403, ScopeError), (404, NotFoundError)],
)
async def test_typed_errors_are_not_retried(fake: FakeInstantly, status: int, error: type[SourceError]) -> None:
    """401/402/403/404 raise their typed error after exactly one attempt, with the server message."""
    body = load_fixture("errors.json")[str(status)]
    fake.fail("/audit-logs", status, times=10, message=body["message"])
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        with pytest.raises(error) as info:
            await client.get_all("/api/v2/audit-logs")
    assert len(fake.calls) == 1 and sleeps.delays == []
    assert f"HTTP {status}" in str(info.value) and body["message"] in str(info.value)
    assert not info.value.retriable


async def test_other_4xx_is_a_client_request_error(fake: FakeInstantly) -> None:
    """A 400 is the caller's fault: ClientRequestError with the status, never retried."""
    fake.fail("/api-keys", 400, times=5, message="body must have required property 'name'")
    async with client_for(fake) as client:
        with pytest.raises(ClientRequestError) as info:
            await client.post("/api/v2/api-keys", {"scopes": []})
    assert info.value.status == 400 and len(fake.calls) == 1


async def test_5xx_is_retried_then_raised(fake: FakeInstantly) -> None:
    """5xx is retried up to max_retries and then raised as UpstreamError with the status."""
    fake.fail("/webhooks", 503, times=50)
    async with client_for(fake, max_retries=2) as client:
        with pytest.raises(UpstreamError) as info:
            await client.get_all("/api/v2/webhooks")
    assert info.value.status == 503 and len(fake.calls) == 3


@pytest.mark.parametrize(("kind", "text"), [("malformed_json", "not valid JSON"), ("no_items", "'items' is missing")])
async def test_malformed_pages_are_retriable_upstream_errors(fake: FakeInstantly, kind: str, text: str) -> None:
    """A body that is not JSON, or a page without ``items``, is retried and then reported clearly."""
    fake.fail("/webhooks", kind=kind, times=50)
    async with client_for(fake, max_retries=1) as client:
        with pytest.raises(UpstreamError, match=text) as info:
            await client.get_all("/api/v2/webhooks")
    assert info.value.retriable and len(fake.calls) == 2


async def test_malformed_once_then_ok(fake: FakeInstantly) -> None:
    """One malformed answer is absorbed by a retry."""
    fake.collections["webhooks"] = load_fixture("webhooks.list.json")["items"]
    fake.fail("/webhooks", kind="malformed_json", times=1)
    async with client_for(fake) as client:
        assert len(await client.get_all("/api/v2/webhooks")) == 1


async def test_timeout_becomes_upstream_error(fake: FakeInstantly) -> None:
    """A request slower than request_timeout_secs is an UpstreamError naming only the error type."""
    fake.fail("/workspaces/current", kind="slow", times=5)
    async with client_for(fake, request_timeout_secs=0.2, max_retries=1) as client:
        with pytest.raises(UpstreamError, match="timed out") as info:
            await client.get("/api/v2/workspaces/current")
    assert len(fake.calls) == 2
    assert info.value.__cause__ is None and info.value.__context__ is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_error_hides_the_key() -> None:
    """A refused connection raises UpstreamError whose text, repr and traceback never hold the key."""
    cfg = make_cfg(f"http://127.0.0.1:{free_port()}", CANARY, max_retries=1)
    async with InstantlyClient(cfg, budget=RequestBudget(1000, 6000), sleep=Sleeps()) as client:
        with pytest.raises(UpstreamError) as info:
            await client.get("/api/v2/workspaces/current")
    err = info.value
    rendered = str(err) + repr(err) + "".join(traceback.format_exception(err))
    assert "ClientConnectorError" in str(err)
    assert CANARY not in rendered and "Bearer" not in rendered
    assert err.__cause__ is None and err.__context__ is None


async def test_server_echo_of_the_key_is_scrubbed(fake: FakeInstantly) -> None:
    """A server message that echoes the bearer value does not carry it into the exception."""
    fake.fail("/api-keys", 401, times=1, message=f"Invalid authorization header Bearer {CANARY}")
    async with client_for(fake) as client:
        with pytest.raises(AuthError) as info:
            await client.get_all("/api/v2/api-keys")
    rendered = str(info.value) + repr(info.value) + "".join(traceback.format_exception(info.value))
    assert CANARY not in rendered and "<redacted>" in str(info.value)


async def test_writes_send_json_and_retry_only_on_429(fake: FakeInstantly) -> None:
    """POST sends a JSON body; a 500 on a write is not retried (not idempotent), a 429 is."""
    async with client_for(fake) as client:
        created = await client.post("/api/v2/api-keys", {"name": "rotation", "scopes": ["audit_logs:read"]})
        assert created["name"] == "rotation"
        post = fake.calls[-1]
        assert post.method == "POST" and post.headers["Content-Type"] == "application/json"
        assert b'"scopes":["audit_logs:read"]' in post.body
        fake.fail("/api-keys", 500, times=1)
        with pytest.raises(UpstreamError):
            await client.post("/api/v2/api-keys", {"name": "x", "scopes": []})
        fake.fail("/api-keys/k1", 429, times=1)
        assert await client.delete("/api/v2/api-keys/k1") == {"id": "k1"}
        delete = fake.calls[-1]
        assert delete.method == "DELETE" and "Content-Type" not in delete.headers and delete.body == b""
        with pytest.raises(NotFoundError):
            await client.patch("/api/v2/api-keys/k1", {"name": "y"})


async def test_closed_client_refuses_requests() -> None:
    """Using the client outside ``async with`` is a programming error, reported clearly."""
    client = InstantlyClient(make_cfg("http://127.0.0.1:1", CANARY), budget=RequestBudget(1000, 6000))
    with pytest.raises(RuntimeError, match="not open"):
        await client.get("/api/v2/workspaces/current")
    assert CANARY not in repr(client)


def test_transport_failures_have_plain_causes() -> None:
    """Each aiohttp failure maps to a plain cause; only failures to reach the server are unreachable."""
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    from connectors.instantly.client import TransportError, UnreachableError, _transport_error, cause_of

    key = ConnectionKey("api.example", 443, True, True, None, None, None)
    cases = {
        "timeout": TimeoutError(),
        "DNS": aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known")),
        "connection refused": aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")),
        "connection failed": aiohttp.ClientConnectorError(key, OSError(113, "no route")),
    }
    for cause, exc in cases.items():
        err = _transport_error("GET", "/api/v2/api-keys", exc)
        assert isinstance(err, UnreachableError) and cause_of(err) == cause, cause
        assert "api.example" not in str(err)
    dropped = _transport_error("GET", "/api/v2/api-keys", aiohttp.ServerDisconnectedError())
    assert type(dropped) is TransportError  # the server answered, then dropped: not unreachable
    assert cause_of(dropped) == "disconnected"
    assert cause_of(UpstreamError("x", status=503)) == "HTTP 503"


async def test_unreachable_server_fails_the_rest_of_the_poll_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A host that accepts connections and never answers: one request's retries, then every other
    call of the poll fails at once with the same cause; new_poll() tries again. The retry line names
    the workspace and the cause, not the URL."""
    import asyncio

    writers: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.read()  # never answers; returns when the client gives up
        finally:
            writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = make_cfg(f"http://127.0.0.1:{port}", CANARY, request_timeout_secs=0.2, max_retries=2)
    try:
        async with InstantlyClient(cfg, budget=RequestBudget(1000, 6000), sleep=Sleeps(), source_id="acme") as client:
            client.workspace_id = "ws-1"
            with caplog.at_level("WARNING"), pytest.raises(UpstreamError, match="timed out") as first:
                await client.get("/api/v2/workspaces/current")
            assert client.requests == 3
            for path in ("/api/v2/audit-logs", "/api/v2/api-keys"):
                with pytest.raises(UpstreamError, match=r"unreachable earlier in this poll \(timeout\)"):
                    await client.get_all(path)
            assert client.requests == 3  # nothing more was sent
            client.new_poll()
            with pytest.raises(UpstreamError):
                await client.get("/api/v2/api-keys")
            assert client.requests == 6
    finally:
        server.close()
        for w in writers:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        await server.wait_closed()
    assert len(writers) == 6
    assert getattr(first.value, "cause", None) == "timeout"
    retries = [r for r in caplog.records if r.getMessage() == "Instantly request failed; retrying."]
    fields = [(r.__dict__.get("workspace"), r.__dict__.get("source"), r.__dict__.get("cause")) for r in retries]
    assert fields and set(fields) == {("ws-1", "acme", "timeout")}
    assert all(str(port) not in str(r.__dict__) for r in retries)


async def test_refused_connection_cause() -> None:
    """A closed port is 'connection refused' in the error."""
    from connectors.instantly.client import cause_of

    cfg = make_cfg(f"http://127.0.0.1:{free_port()}", CANARY, max_retries=0)
    async with InstantlyClient(cfg, budget=RequestBudget(1000, 6000), sleep=Sleeps()) as client:
        with pytest.raises(UpstreamError) as info:
            await client.get("/api/v2/workspaces/current")
    assert cause_of(info.value) == "connection refused"


async def test_time_held_back_by_the_local_budget_is_exported(fake: FakeInstantly) -> None:
    """Requests the local budget holds back add their wait to
    ``pipeline_instantly_api_budget_wait_seconds_total`` on /metrics: an operator sees that the budget,
    not Instantly, slows the polls (a stale cursor with no 429) before lowering or raising it."""
    clock = FakeClock()

    async def sleep(delay: float) -> None:
        clock.advance(delay)

    tel = Telemetry()
    cfg = make_cfg(fake.url, fake.api_key, as_workspace="ws-1")
    budget = RequestBudget(2, 6000, clock=clock, sleep=sleep)  # 2/s: the 2nd and 3rd request wait 0.5 s each
    async with InstantlyClient(cfg, budget=budget, source_id="acme", telemetry=tel) as client:
        for _ in range(3):
            await client.get("/api/v2/workspaces/current")
    text = tel.render_prometheus()[0].decode()
    waits = {
        (s.labels["workspace"], s.labels["workspace_id"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "pipeline_instantly_api_budget_wait_seconds_total"
    }
    tel.shutdown()
    assert waits == {("acme", "ws-1"): pytest.approx(1.0)}
