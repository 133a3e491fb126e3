"""Per-workspace rate limiting (429) of the simulated Instantly API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from connectors.instantly.sim import ApiKey, InstantlySimulator, SimConfig
from pipeline.clock import FakeClock

pytestmark = pytest.mark.asyncio

RATE_LIMITED = {"statusCode": 429, "error": "Too Many Requests", "message": "Rate limit exceeded"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_780_000_000.0)


@pytest_asyncio.fixture
async def sim(clock: FakeClock) -> AsyncIterator[InstantlySimulator]:
    config = SimConfig(rate_limit_per_second=5, rate_limit_per_minute=12)
    async with InstantlySimulator(seed=4, clock=clock.now, config=config) as s:
        yield s


async def statuses(sim: InstantlySimulator, key: ApiKey, count: int) -> list[int]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(sim.api_url + "/workspaces/current", headers=sim.headers(key)) as resp:
                out.append(resp.status)
    return out


async def test_exceeding_per_second_limit_is_429(sim: InstantlySimulator) -> None:
    """The call after the per-second budget answers 429 with the documented body and no rate headers."""
    key = sim.add_api_key(sim.add_workspace("R").id)
    assert await statuses(sim, key, 5) == [200] * 5
    async with (
        aiohttp.ClientSession() as session,
        session.get(sim.api_url + "/workspaces/current", headers=sim.headers(key)) as resp,
    ):
        assert resp.status == 429
        assert await resp.json() == RATE_LIMITED
        assert not [h for h in resp.headers if "ratelimit" in h.lower() or h.lower() == "retry-after"]


async def test_limit_is_shared_by_keys_of_a_workspace(sim: InstantlySimulator) -> None:
    """Every key of one workspace draws on one budget; another workspace is unaffected."""
    ws = sim.add_workspace("Shared")
    first, second = sim.add_api_key(ws.id), sim.add_api_key(ws.id)
    other = sim.add_api_key(sim.add_workspace("Other").id)
    assert await statuses(sim, first, 3) == [200] * 3
    assert await statuses(sim, second, 3) == [200, 200, 429]
    assert await statuses(sim, other, 1) == [200]
    assert sim.count_calls(status=429) == 1


async def test_windows_slide_with_the_clock(sim: InstantlySimulator, clock: FakeClock) -> None:
    """The second window reopens after a second; the minute window caps the total until it slides."""
    key = sim.add_api_key(sim.add_workspace("Slide").id)
    assert await statuses(sim, key, 6) == [200] * 5 + [429]
    clock.advance(1.0)
    assert await statuses(sim, key, 6) == [200] * 5 + [429]
    clock.advance(1.0)
    assert await statuses(sim, key, 3) == [200, 200, 429]  # 12 per minute reached
    clock.advance(58.5)
    assert await statuses(sim, key, 1) == [200]


async def test_limits_are_mutable_at_run_time(sim: InstantlySimulator) -> None:
    """Raising the limiter's limits between calls takes effect immediately."""
    key = sim.add_api_key(sim.add_workspace("Mutable").id)
    sim.limiter.per_second = None
    sim.limiter.per_minute = None
    assert await statuses(sim, key, 20) == [200] * 20
