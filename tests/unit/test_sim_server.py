"""The simulator server: lifecycle, call log, helpers and the standalone ``serve`` entry point."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest

from connectors.instantly.sim import DEMO_INCIDENT, InstantlySimulator, serve
from connectors.instantly.sim.server import Rehearsal
from pipeline.clock import FakeClock

pytestmark = pytest.mark.asyncio


async def test_binds_a_free_port_and_logs_calls() -> None:
    """port=0 binds a free port; every answer is logged with method, path, status, workspace and clock time."""
    clock = FakeClock(1_780_000_000.0)
    async with InstantlySimulator(host="127.0.0.1", port=0, clock=clock.now) as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.url)
        assert sim.port > 0
        ws = sim.add_workspace("Log")
        key = sim.add_api_key(ws.id, ["workspaces:read"])
        async with aiohttp.ClientSession() as session:
            async with session.get(sim.api_url + "/workspaces/current", headers=sim.headers(key)) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            clock.advance(3)
            async with session.get(sim.api_url + "/audit-logs") as resp:
                assert resp.status == 401
            async with session.get(sim.api_url + "/api-keys", headers=sim.headers(key)) as resp:
                assert resp.status == 403
        assert [(c.method, c.path, c.status, c.workspace_id, c.time) for c in sim.calls] == [
            ("GET", "/api/v2/workspaces/current", 200, ws.id, 1_780_000_000.0),
            ("GET", "/api/v2/audit-logs", 401, None, 1_780_000_003.0),
            ("GET", "/api/v2/api-keys", 403, ws.id, 1_780_000_003.0),
        ]
        assert sim.count_calls(path="/api/v2/audit-logs") == 1
        assert sim.count_calls(method="GET", status=200) == 1


async def test_stop_frees_the_port() -> None:
    """After the context exits the port refuses connections."""
    async with InstantlySimulator() as sim:
        url = sim.api_url + "/workspaces/current"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url):
                pass


async def test_serve_runs_the_demo_until_cancelled() -> None:
    """serve() starts the demo world and scenario, hands over the URL and keys, answers them, and stops on cancel."""
    ready: list[Rehearsal] = []
    task = asyncio.create_task(serve("127.0.0.1", 0, DEMO_INCIDENT, 1, on_ready=ready.append))
    for _ in range(200):
        if ready:
            break
        await asyncio.sleep(0.01)
    url, secret = ready[0].base_url + "/api/v2", ready[0].world.poller_key.key
    assert ready[0].admin_key.key != secret and "api_keys:all" in ready[0].admin_key.scopes
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/workspaces/current", headers={"Authorization": f"Bearer {secret}"}) as resp,
    ):
        assert (await resp.json())["name"] == "Acme Outreach"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
