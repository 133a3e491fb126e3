"""Fault injection over HTTP: deterministic 5xx, 429 bursts, malformed pages, late 401s, latency."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from itertools import groupby

import aiohttp
import orjson
import pytest
import pytest_asyncio

from connectors.instantly.sim import ApiKey, InstantlySimulator

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def reader(sim: InstantlySimulator) -> ApiKey:
    ws = sim.add_workspace("Faulty")
    sim.state.insert_audit(ws.id, 1)
    return sim.add_api_key(ws.id, ["all:read"])


async def fetch(session: aiohttp.ClientSession, sim: InstantlySimulator, key: ApiKey, path: str) -> tuple[int, bytes]:
    async with session.get(sim.api_url + path, headers=sim.headers(key)) as resp:
        return resp.status, await resp.read()


async def status_run(session: aiohttp.ClientSession, seed: int, calls: int = 60) -> list[int]:
    async with InstantlySimulator(seed=seed) as sim:
        sim.faults.error_rate = 0.2
        sim.faults.burst_rate = 0.05
        sim.faults.burst_length = 3
        key = reader(sim)
        return [(await fetch(session, sim, key, "/audit-logs"))[0] for _ in range(calls)]


async def test_same_seed_same_faults(session: aiohttp.ClientSession) -> None:
    """Two simulators with the same seed answer the same status sequence; another seed differs."""
    first = await status_run(session, seed=99)
    assert first == await status_run(session, seed=99)
    assert first != await status_run(session, seed=100)
    assert set(first) - {200, 429, 500, 502, 503} == set()
    assert 200 in first
    assert any(s >= 500 for s in first)


async def test_bursts_of_429_are_consecutive(session: aiohttp.ClientSession) -> None:
    """A 429 burst covers ``burst_length`` consecutive calls (runs may merge, never shorter mid-sequence)."""
    async with InstantlySimulator(seed=7) as sim:
        sim.faults.burst_rate = 0.08
        sim.faults.burst_length = 4
        key = reader(sim)
        statuses = [(await fetch(session, sim, key, "/audit-logs"))[0] for _ in range(150)]
    runs = [len(list(group)) for status, group in groupby(statuses[:-4]) if status == 429]
    assert runs
    assert min(runs) >= 4


async def test_injected_error_bodies_keep_the_envelope(session: aiohttp.ClientSession) -> None:
    """Scripted faults answer the given status with the three-field body, then calls succeed again."""
    async with InstantlySimulator() as sim:
        key = reader(sim)
        sim.faults.scripted = {1: 503, 2: 429}
        first = await fetch(session, sim, key, "/workspaces/current")
        second = await fetch(session, sim, key, "/workspaces/current")
        third = await fetch(session, sim, key, "/workspaces/current")
    assert first == (503, orjson.dumps({"statusCode": 503, "error": "Service Unavailable",
                                        "message": "Internal server error"}))  # fmt: skip
    assert orjson.loads(second[1]) == {
        "statusCode": 429,
        "error": "Too Many Requests",
        "message": "Rate limit exceeded",
    }
    assert third[0] == 200


async def test_unauthorized_after_n_calls(session: aiohttp.ClientSession) -> None:
    """With ``unauthorized_after=3`` the fourth and later calls answer 401 although the key is valid."""
    async with InstantlySimulator() as sim:
        key = reader(sim)
        sim.faults.unauthorized_after = 3
        statuses = [(await fetch(session, sim, key, "/api-keys"))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 401, 401]
        sim.faults.clear()
        assert (await fetch(session, sim, key, "/api-keys"))[0] == 200


async def test_malformed_pages(session: aiohttp.ClientSession) -> None:
    """Malformed pages are 200s with invalid JSON or without ``items``; non-list bodies are untouched."""
    async with InstantlySimulator() as sim:
        key = reader(sim)
        sim.faults.scripted = {1: "invalid_json", 2: "missing_items", 3: "invalid_json"}
        status, raw = await fetch(session, sim, key, "/audit-logs")
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        status, raw = await fetch(session, sim, key, "/audit-logs")
        assert status == 200
        assert "items" not in orjson.loads(raw)
        status, raw = await fetch(session, sim, key, "/workspaces/current")
        assert orjson.loads(raw)["name"] == "Faulty"


async def test_latency_and_path_filter(session: aiohttp.ClientSession) -> None:
    """Added latency delays only calls on the selected paths."""
    async with InstantlySimulator() as sim:
        key = reader(sim)
        sim.faults.latency_secs = 0.15
        sim.faults.paths = ("/api/v2/audit-logs",)
        started = time.monotonic()
        await fetch(session, sim, key, "/api-keys")
        fast = time.monotonic() - started
        started = time.monotonic()
        await fetch(session, sim, key, "/audit-logs")
        slow = time.monotonic() - started
    assert fast < 0.1
    assert slow >= 0.15
