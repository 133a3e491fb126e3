"""The client and poller against forms the public API v2 reference allows but our simulator never used.

Each test drives the real client or poller against the test fake (:mod:`tests.unit.test_instantly_fake_api`)
set up the way a server written from developer.instantly.ai may behave:

* a base URL spelled ``https://api.instantly.ai/api/v2`` (the OpenAPI server is the host; paths
  carry ``/api/v2``);
* a 429 whose wait is an HTTP-date ``Retry-After`` (RFC 9110 §10.2.3) or a rate-limit reset header.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.instantly.api import api_root
from connectors.instantly.budget import RequestBudget
from connectors.instantly.client import InstantlyClient
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.responses import retry_after_from
from tests.unit.test_instantly_fake_api import FakeInstantly, load_fixture, serve

KEY = "conformance-key-5d2e8a"


class Sleeps:
    """Records the delays the client asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def fake() -> AsyncIterator[FakeInstantly]:
    async with serve(FakeInstantly(api_key=KEY)) as f:
        yield f


def client(url: str, sleeps: Sleeps | None = None, **kw: Any) -> InstantlyClient:
    cfg = WorkspaceConfig(api_key=SecretStr(KEY), base_url=url, **kw)
    return InstantlyClient(cfg, budget=RequestBudget(1000, 6000), rng=random.Random(1), sleep=sleeps or Sleeps())


# ------------------------------------------------------------------------------------ base URL
@pytest.mark.parametrize("suffix", ["", "/", "/api/v2", "/api/v2/"])
async def test_base_url_with_or_without_api_v2(fake: FakeInstantly, suffix: str) -> None:
    """``https://host`` and ``https://host/api/v2`` both reach ``/api/v2/<path>`` (never ``/api/v2/api/v2``)."""
    async with client(fake.url + suffix) as c:
        ws = await c.get("/api/v2/workspaces/current")
    assert ws["id"] == load_fixture("workspace.current.json")["id"]
    assert [call.path for call in fake.calls] == ["/api/v2/workspaces/current"]


def test_api_root_keeps_other_paths() -> None:
    """Only a trailing ``/api/v2`` is removed; a proxy prefix stays."""
    assert api_root("https://api.instantly.ai/api/v2/") == "https://api.instantly.ai"
    assert api_root("https://proxy.example/instantly/") == "https://proxy.example/instantly"
    assert api_root("https://proxy.example/instantly/api/v2") == "https://proxy.example/instantly"


# --------------------------------------------------------------------------------- 429 waits
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 30, tz=UTC), usegmt=True)}, 30.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 30, tz=UTC), usegmt=True)}, 0.0),
        ({"RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": "4"}, 4.0),
        ({"X-RateLimit-Reset": str(int(NOW + 45))}, 45.0),
        ({"Retry-After": "2", "X-RateLimit-Reset": "40"}, 2.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_wait_headers(headers: dict[str, str], wait: float | None) -> None:
    """Retry-After (seconds or HTTP-date) first, then RateLimit-Reset / X-RateLimit-Reset (delta or epoch)."""
    got = retry_after_from(headers, NOW)
    assert got == (None if wait is None else pytest.approx(wait))


async def test_http_date_retry_after_is_a_floor(fake: FakeInstantly) -> None:
    """A 429 with an HTTP-date Retry-After 20 s ahead waits at least ~20 s (the old parser ignored it)."""
    when = datetime.fromtimestamp(datetime.now(tz=UTC).timestamp() + 20, tz=UTC)
    fake.fail("/workspaces/current", 429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    sleeps = Sleeps()
    async with client(fake.url, sleeps) as c:
        await c.get("/api/v2/workspaces/current")
    assert len(sleeps.delays) == 1 and 15.0 <= sleeps.delays[0] <= 21.0
