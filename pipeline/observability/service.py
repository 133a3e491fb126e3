"""The process's own HTTP port: ``/metrics``, ``/healthz``, ``/readyz``.

* ``GET /metrics`` — Prometheus text (OpenMetrics when the scraper asks for it). Each scrape
  first mirrors the readiness checks into the ``pipeline.readiness`` gauge.
* ``GET /healthz`` — 200 while the process (and its event loop) answers.
* ``GET /readyz`` — 200 when every readiness check passes, else 503; the JSON body lists
  each check with its reason either way.

Usage::

    server = ServiceServer(telemetry, health, cfg.service.host, cfg.service.port)
    await server.start()      # server.port is the bound port (useful with port 0)
    ...
    await server.stop()
"""

from __future__ import annotations

import errno

import orjson
from aiohttp import web

from pipeline import __version__
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.observability.health import HealthRegistry
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry

log = get_logger("service")
_JSON = "application/json"


class ServiceServer:
    """An aiohttp server for the service endpoints."""

    def __init__(
        self,
        telemetry: Telemetry,
        health: HealthRegistry,
        host: str = "127.0.0.1",
        port: int = 9464,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self._clock = clock
        self.telemetry = telemetry
        self.health = health
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._started = self._clock.monotonic()

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._port is None:
            raise RuntimeError("the service server is not started")
        return self._port

    def app(self) -> web.Application:
        """The aiohttp application (also usable with ``aiohttp.test_utils``)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            OSError: the address cannot be bound (e.g. the port is in use).
        """
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            # aiohttp's words ("error while attempting to bind on address …") name neither the setting nor the fix
            where = f"{self.host}:{self._requested_port}"
            if err.errno == errno.EADDRINUSE:
                raise OSError(err.errno, f"service port {where} (service.port) is already in use") from None
            raise OSError(err.errno, f"service port {where} (service.port) cannot be opened: {err.strerror}") from None
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        self._started = self._clock.monotonic()
        log.info("Service port is listening.", extra={"host": self.host, "port": self._port})

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> ServiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        for check in self.health.report().checks:
            self.telemetry.readiness(check.name, check.ok)
        body, content_type = self.telemetry.render_prometheus(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        payload = {
            "status": "alive",
            "version": __version__,
            "uptime_secs": round(self._clock.monotonic() - self._started, 1),
        }
        return web.Response(body=orjson.dumps(payload), content_type=_JSON)

    async def _readyz(self, request: web.Request) -> web.Response:
        report = self.health.report()
        return web.Response(
            body=orjson.dumps(report.to_dict()),
            status=200 if report.ready else 503,
            content_type=_JSON,
            headers={"Cache-Control": "no-store"},
        )
