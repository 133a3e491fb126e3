"""RequestBudget: a burst never exceeds requests/second nor requests/minute (fake clock, fake sleep)."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import BudgetConfig
from pipeline.clock import FakeClock


def fake_budget(rps: float, rpm: int, clock: FakeClock) -> RequestBudget:
    async def sleep(delay: float) -> None:
        clock.advance(delay)
        await asyncio.sleep(0)

    return RequestBudget(rps, rpm, clock=clock, sleep=sleep)


def max_in_window(times: list[float], width: float) -> int:
    """The most timestamps in any half-open window [t, t + width) (tolerating float noise)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + width - 1e-6) - i for i, t in enumerate(times))


async def test_burst_respects_both_limits() -> None:
    """200 concurrent acquires never exceed 5 per second nor 120 per minute."""
    clock = FakeClock()
    budget = fake_budget(5, 120, clock)
    times: list[float] = []

    async def one() -> None:
        await budget.acquire()
        times.append(clock.monotonic())

    await asyncio.gather(*(one() for _ in range(200)))
    assert len(times) == 200
    assert max_in_window(times, 1.0) <= 5
    assert max_in_window(times, 60.0) <= 120
    assert times[-1] >= 60.0  # the minute limit made the 121st request wait for the window


async def test_rate_spacing_matches_requests_per_second() -> None:
    """Under the per-second limit alone, requests are spaced 1/rps apart after the first."""
    clock = FakeClock()
    budget = fake_budget(10, 6000, clock)
    times = []
    for _ in range(21):
        await budget.acquire()
        times.append(clock.monotonic())
    assert times[0] == 0.0
    assert times[-1] == pytest.approx(2.0)
    assert max_in_window(times, 1.0) <= 10


async def test_idle_time_does_not_bank_a_burst() -> None:
    """After a long idle period only the configured burst (1) goes out at once."""
    clock = FakeClock()
    budget = fake_budget(2, 6000, clock)
    await budget.acquire()
    clock.advance(3600)
    start = clock.monotonic()
    for _ in range(3):
        await budget.acquire()
    assert clock.monotonic() - start == pytest.approx(1.0)


def test_from_config_and_validation() -> None:
    """The budget is built from the workspace's budget block; non-positive limits are refused."""
    budget = RequestBudget.from_config(BudgetConfig(requests_per_second=3, requests_per_minute=100))
    assert (budget.rate, budget.per_minute) == (3.0, 100)
    with pytest.raises(ValueError, match="positive"):
        RequestBudget(0, 10)
    with pytest.raises(ValueError, match="burst"):
        RequestBudget(1, 10, burst=0.5)
