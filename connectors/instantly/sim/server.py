"""The simulator as a server: :class:`InstantlySimulator` (async context manager) and :func:`serve`.

::

    async with InstantlySimulator(host="127.0.0.1", port=0, seed=1) as sim:
        ws = sim.add_workspace("Acme", alias="acme")
        key = sim.add_api_key(ws.id, ["all:read"])
        # GET f"{sim.url}/api/v2/audit-logs" with sim.headers(key)

The server reads time only from ``clock`` (default: the wall clock), so a test can pass
``FakeClock().now`` or a :class:`~.clock.ScaledClock` and make time pass.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web

from .agency import agency_world
from .app import API_PREFIX, Call, SimApp
from .clock import Clock, system_clock
from .config import SimConfig
from .delivery import WebhookDelivery
from .faults import Faults
from .models import ApiKey, Workspace
from .ratelimit import RateLimiter
from .scenario import Scenario, ScenarioRunner
from .seed import DemoWorld, demo_world
from .state import SimState

log = logging.getLogger(__name__)


class InstantlySimulator:
    """A local Instantly API v2 on a real TCP port.

    Attributes:
        state: the in-memory workspaces (change it directly to set up a test).
        config: behaviour switches (:class:`~.config.SimConfig`), mutable at run time.
        faults: fault injection settings (:class:`~.faults.Faults`), mutable at run time.
        limiter: the per-workspace rate limiter (its limits are mutable).
        calls: every answered request as :class:`~.app.Call` (method, path, status, workspace_id, time).
        runner: the scenario runner once a scenario was started.
        deliveries: webhook delivery to the webhooks' URLs, logged in ``webhook-events``
            (:class:`~.delivery.WebhookDelivery`; retries in the background after :meth:`start_delivery_retries`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int = 0,
        clock: Clock = system_clock,
        config: SimConfig | None = None,
        scenario: Scenario | str | Path | None = None,
        sock: socket.socket | None = None,
    ):
        self.host, self.port, self.clock = host, port, clock
        self._sock = sock
        """A socket already bound to (host, port) to serve on (``simulate`` binds before anything else)."""
        self.config = config or SimConfig()
        self.state = SimState(clock, seed)
        self.faults = Faults(seed=seed)
        self.limiter = RateLimiter(self.config.rate_limit_per_second, self.config.rate_limit_per_minute, clock)
        self.calls: list[Call] = []
        self.scenario = Scenario.load(scenario) if isinstance(scenario, str | Path) else scenario
        self.runner: ScenarioRunner | None = None
        self._runner: web.AppRunner | None = None
        self._scenario_task: asyncio.Task[None] | None = None
        self.deliveries = WebhookDelivery(self.state, self.config, clock)
        self._retry_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (API paths start with ``/api/v2``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """``url`` + ``/api/v2``."""
        return self.url + API_PREFIX

    async def start(self) -> None:
        """Bind the port and start serving (and the scenario, if one was given)."""
        app = SimApp(self.state, self.config, self.faults, self.limiter, self.calls, self.clock).build()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite = (
            web.SockSite(self._runner, self._sock)
            if self._sock is not None
            else web.TCPSite(self._runner, self.host, self.port)
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.scenario is not None:
            self.start_scenario(self.scenario)

    async def stop(self) -> None:
        """Stop the scenario, the webhook retries and the server."""
        if self._retry_task is not None:
            self._retry_task.cancel()
            await asyncio.gather(self._retry_task, return_exceptions=True)
            self._retry_task = None
        await self.deliveries.aclose()
        if self._scenario_task is not None:
            self._scenario_task.cancel()
            await asyncio.gather(self._scenario_task, return_exceptions=True)
            self._scenario_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> InstantlySimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start_scenario(self, scenario: Scenario | str | Path, poll_interval: float = 0.01) -> ScenarioRunner:
        """Play ``scenario`` from now on, in the background."""
        loaded = Scenario.load(scenario) if isinstance(scenario, str | Path) else scenario
        self.runner = ScenarioRunner(loaded, self.state, self.clock, start=self.clock())
        self._scenario_task = asyncio.get_running_loop().create_task(self.runner.run(poll_interval))
        return self.runner

    def start_delivery_retries(self, interval: float = 0.05) -> None:
        """Make due webhook retries in the background (every ``interval`` seconds) until :meth:`stop`."""
        if self._retry_task is None:
            self._retry_task = asyncio.get_running_loop().create_task(self.deliveries.run(interval))

    async def scenario_done(self) -> None:
        """Wait until the running scenario has applied every step."""
        if self._scenario_task is not None:
            await self._scenario_task

    # ---- helpers for tests and set-up -----------------------------------------------------

    def add_workspace(
        self, name: str, *, owner_email: str | None = None, alias: str | None = None, paid: bool = True
    ) -> Workspace:
        """Create a workspace with an owner (no audit records)."""
        email = owner_email or f"owner@{name.lower().replace(' ', '-')}.example"
        return self.state.add_workspace(name, owner_email=email, alias=alias, paid=paid)

    def add_api_key(
        self,
        workspace: str,
        scopes: list[str] | tuple[str, ...] = ("all:all",),
        *,
        name: str = "test key",
        alias: str | None = None,
    ) -> ApiKey:
        """Create a key for ``workspace`` (id or alias) without an audit record."""
        return self.state.create_api_key(self.state.workspace(workspace).id, name, list(scopes), alias=alias)

    @staticmethod
    def headers(key: ApiKey | str, as_workspace: str | None = None) -> dict[str, str]:
        """Request headers authenticating with ``key`` (optionally acting as a sub-workspace)."""
        secret = key.key if isinstance(key, ApiKey) else key
        out = {"Authorization": f"Bearer {secret}"}
        if as_workspace is not None:
            out["x-as-workspace"] = as_workspace
        return out

    def count_calls(self, *, method: str | None = None, path: str | None = None, status: int | None = None) -> int:
        """How many answered calls match (``path`` is a prefix, e.g. ``/api/v2/audit-logs``)."""
        return sum(
            1
            for c in self.calls
            if (method is None or c.method == method)
            and (path is None or c.path.startswith(path))
            and (status is None or c.status == status)
        )


ADMIN_SCOPES = ("api_keys:all", "workspaces:read", "workspace_members:read")
"""Scopes of the simulator's admin key: enough to rehearse ``keys rotate``."""


@dataclass(frozen=True, slots=True)
class Rehearsal:
    """What ``simulate`` tells a newcomer: where the API is and the (fake) keys to use."""

    base_url: str
    """What a workspace's ``base_url`` should be (the API paths start with ``/api/v2`` below it)."""
    world: DemoWorld
    admin_key: ApiKey


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (the first address ``host`` resolves to), not yet listening.

    Raises:
        OSError: the port cannot be bound (``EADDRINUSE``: already in use).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's TCPSite: TIME_WAIT is not "in use"
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(
    host: str = "127.0.0.1",
    port: int = 8787,
    scenario_path: str | Path | None = None,
    seed: int = 0,
    on_ready: Callable[[Rehearsal], None] | None = None,
    agency: int = 0,
    sock: socket.socket | None = None,
) -> None:
    """Run the simulator with the demo world (and an optional scenario) until cancelled.

    ``agency``: that many sub-workspaces in the demo workspace's group (:mod:`.agency`); the
    scenario can add and remove more (an agency script).

    ``on_ready`` is called once the port is open, with the URL and the keys (fake secrets).
    ``sock``: serve on this socket, already bound to ``host``/``port`` (see :func:`bind`).

    Raises:
        OSError: the port cannot be bound (e.g. already in use).
    """
    async with InstantlySimulator(host, port, seed=seed, sock=sock) as sim:
        world = demo_world(sim.state)
        agency_world(sim.state, world.workspace.id, agency)
        admin = sim.state.create_api_key(
            world.workspace.id, "key-admin (simulator)", list(ADMIN_SCOPES), alias="admin-key"
        )
        if scenario_path is not None:
            sim.start_scenario(scenario_path)
        log.info("Instantly simulator listening on %s (workspace %s)", sim.api_url, world.workspace.id)
        if on_ready is not None:
            on_ready(Rehearsal(sim.url, world, admin))
        await asyncio.Event().wait()
