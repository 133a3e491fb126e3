"""Shared delivery helpers: backoff, Retry-After parsing, URL redaction, the HTTP client's errors."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from aiohttp import web

from pipeline.clock import parse_time
from pipeline.config.base import validate_block
from pipeline.delivery.backoff import MAX_RETRY_AFTER_SECS, Backoff
from pipeline.delivery.http import (
    HttpClient,
    HttpSinkConfig,
    epoch_seconds,
    parse_retry_after,
    redact_url,
    status_error,
)
from pipeline.errors import BackpressureError, ConfigError, SinkError
from tests.fakes import FakeServer

NOW = 1_780_000_000.0


def http_cfg(url: str, **kw: object) -> HttpSinkConfig:
    return HttpSinkConfig.model_validate({"type": "t", "url": url, **kw})


def test_backoff_full_jitter_bounds() -> None:
    """Delays are rng * min(max, initial * 2**attempt)."""
    b = Backoff(0.5, 10, rng=lambda: 1.0)
    assert [b.delay(a) for a in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert Backoff(0.5, 10, rng=lambda: 0.0).delay(3) == 0.0
    assert b.delay(10_000) == 10  # no overflow


def test_backoff_never_shorter_than_retry_after() -> None:
    """Retry-After raises the delay (clamped to one hour), never lowers it."""
    b = Backoff(1, 60, rng=lambda: 0.1)
    assert b.delay(0, retry_after=30) == 30
    assert b.delay(9, retry_after=1) == pytest.approx(6.0)
    assert b.delay(0, retry_after=10**9) == MAX_RETRY_AFTER_SECS


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 2.5 ", 2.5), ("-3", 0.0), ("soon", None), ("", None), (None, None), ("nan", None),
     ("99999999", MAX_RETRY_AFTER_SECS)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds are read, clamped to [0, 1 h]; garbage is ignored."""
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    """An HTTP date is turned into seconds from now (a past date gives 0)."""
    future = format_datetime(datetime.fromtimestamp(NOW + 90, tz=UTC), usegmt=True)
    past = format_datetime(datetime.fromtimestamp(NOW - 90, tz=UTC), usegmt=True)
    assert parse_retry_after(future, NOW) == pytest.approx(90)
    assert parse_retry_after(past, NOW) == 0.0


def test_redact_url_drops_credentials_and_query() -> None:
    """Credentials, query strings and fragments never reach a message."""
    assert redact_url("https://u:pw@host:8088/p/x?token=abc#f") == "https://host:8088/p/x"
    assert redact_url("http://[::1]:9200/_bulk") == "http://[::1]:9200/_bulk"


@pytest.mark.parametrize("url", ["ftp://x", "https://user:pw@host", "https://host/?token=x", "not a url"])
def test_http_config_refuses_unsafe_urls(url: str) -> None:
    """URLs with credentials or query strings (or not http) are config errors."""
    with pytest.raises(ConfigError, match=r"sinks\.x\.url"):
        validate_block(HttpSinkConfig, {"type": "t", "url": url}, "sinks.x")


def test_http_config_strips_trailing_slash() -> None:
    """The base URL is normalised."""
    assert http_cfg("https://es:9200/").url == "https://es:9200"


def test_status_error_classification() -> None:
    """429/503 → BackpressureError with Retry-After; other 5xx retriable; 4xx not."""
    from pipeline.delivery.http import HttpResponse

    assert isinstance(status_error("n", "w", HttpResponse(429, {}, b"", 3.0)), BackpressureError)
    assert status_error("n", "w", HttpResponse(503, {}, b"", 3.0)).retry_after == 3.0
    assert status_error("n", "w", HttpResponse(502, {}, b"")).retriable
    assert not status_error("n", "w", HttpResponse(401, {}, b"")).retriable


class Echo(FakeServer):
    def app(self) -> web.Application:
        app = web.Application()

        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=429, headers={"Retry-After": "7"}, body=b"x" * 5000)

        app.router.add_post("/x", handler)
        return app


async def test_client_reads_status_and_retry_after() -> None:
    """Responses of any status are returned whole, with Retry-After parsed."""
    async with Echo() as srv, HttpClient(http_cfg(srv.url), name="t") as client:
        resp = await client.request("POST", "/x", data=b"{}")
    assert (resp.status, resp.retry_after, len(resp.body)) == (429, 7.0, 5000)


async def test_client_transport_error_carries_no_secret() -> None:
    """A refused connection is a retriable SinkError without headers, query or the aiohttp error attached."""
    srv = Echo()
    await srv.start()
    url = srv.url
    await srv.stop()
    headers = {"Authorization": "Splunk CANARY-TOKEN-123"}
    async with HttpClient(http_cfg(url, connect_timeout_secs=1), name="t", headers=headers) as client:
        with pytest.raises(SinkError) as info:
            await client.request("POST", "/x", params={"q": "CANARY-TOKEN-123"})
    err = info.value
    assert err.retriable and "ClientConnectorError" in str(err)
    assert err.__cause__ is None and err.__context__ is None
    text = "".join(traceback.format_exception_only(err)) + repr(err) + repr(err.args)
    assert "CANARY-TOKEN-123" not in text


async def test_client_transport_error_names_the_cause_in_plain_words() -> None:
    """A sink that cannot be reached says why, as the Instantly client does: the error was the
    aiohttp class alone (``failed (ClientConnectorError)``, ``(ClientConnectorDNSError)``,
    ``(ClientConnectorSSLError)``), which names neither the problem nor what to change."""
    srv = Echo()
    await srv.start()
    live, port = srv.url, srv.url.rsplit(":", 1)[1]
    try:
        cases = {
            "http://127.0.0.1:1": "127.0.0.1:1 refused the connection (nothing listens there?)",
            "https://sink.invalid:8088": "cannot resolve the host sink.invalid",
            live.replace("http://", "https://"): f"the TLS handshake with 127.0.0.1:{port} failed: it answers plain "
            "HTTP (use http://, or its TLS port)",
        }
        for url, cause in cases.items():
            async with HttpClient(http_cfg(url, connect_timeout_secs=2), name="splunk_hec s") as client:
                with pytest.raises(SinkError) as info:
                    await client.request("GET", "/services/collector/health")
            assert cause in str(info.value) and info.value.retriable, str(info.value)
    finally:
        await srv.stop()


async def test_client_not_open_is_an_error() -> None:
    """Using the client outside 'async with' is a clear error."""
    with pytest.raises(SinkError, match="not open"):
        await HttpClient(http_cfg("http://127.0.0.1:9"), name="t").request("GET", "/")


@pytest.mark.parametrize(
    "text",
    ["2026-03-05T23:09:47.337Z", "2026-03-05T23:09:47Z", "2026-03-05T23:09:47.123456Z", "1999-12-31T23:59:59.9Z",
     "2026-03-05T23:09:47+02:00", "2026-03-05T23:09:47.337+00:00"],
)  # fmt: skip
def test_epoch_seconds_matches_parse_time(text: str) -> None:
    """The fast RFC 3339 path agrees with pipeline.clock.parse_time."""
    assert epoch_seconds(text) == pytest.approx(parse_time(text), abs=1e-6)


@pytest.mark.parametrize("text", ["2026-03-05T24:00:00Z", "2026-03-05T23:60:00Z", "2026-13-05T23:00:00Z", "soon",
                                  "2026-03-05T23:09:47.33xZ"])  # fmt: skip
def test_epoch_seconds_rejects_garbage(text: str) -> None:
    """Out-of-range fields and junk are errors, not silently wrong times."""
    with pytest.raises(ValueError):
        epoch_seconds(text)
