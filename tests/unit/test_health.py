"""Health: /healthz is liveness; /readyz flips to 503 with the right reason and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import aiohttp
import pytest

from pipeline.clock import FakeClock
from pipeline.observability.health import HealthRegistry, get_health, set_health
from pipeline.observability.service import ServiceServer
from pipeline.observability.telemetry import Telemetry, set_telemetry


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves."""
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthRegistry:
    """A registry on the fake clock."""
    return HealthRegistry(clock)


@pytest.fixture
async def server(health: HealthRegistry, clock: FakeClock) -> AsyncIterator[ServiceServer]:
    """The service port on an ephemeral port."""
    srv = ServiceServer(Telemetry.disabled(), health, "127.0.0.1", 0, clock=clock)
    await srv.start()
    yield srv
    await srv.stop()


async def get(srv: ServiceServer, path: str) -> tuple[int, dict[str, Any]]:
    """GET a path; return the status and the JSON body."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{srv.port}{path}") as r:
        return r.status, await r.json()


def check(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The named check in a /readyz body."""
    found: list[dict[str, Any]] = [c for c in body["checks"] if c["name"] == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


async def test_healthz_is_alive_whatever_readiness_says(server: ServiceServer, health: HealthRegistry) -> None:
    """/healthz answers 200 even while the process is not ready."""
    health.bus_error("connection refused")
    status, body = await get(server, "/healthz")
    assert status == 200 and body["status"] == "alive"
    assert (await get(server, "/readyz"))[0] == 503


async def test_ready_with_no_checks(server: ServiceServer) -> None:
    """With nothing registered the process is ready."""
    assert await get(server, "/readyz") == (200, {"status": "ready", "checks": []})


async def test_sink_circuit_open_then_closed(server: ServiceServer, health: HealthRegistry) -> None:
    """An open circuit makes /readyz 503 naming the sink; closing it restores 200."""
    health.circuit("soc", "closed")
    assert (await get(server, "/readyz"))[0] == 200
    health.circuit("soc", "open", reason="5 consecutive failures: HTTP 503")
    status, body = await get(server, "/readyz")
    assert status == 503 and body["status"] == "not_ready"
    assert check(body, "sink:soc") == {
        "name": "sink:soc",
        "ok": False,
        "reason": "circuit open: 5 consecutive failures: HTTP 503",
    }
    health.circuit("soc", "half_open")
    assert (await get(server, "/readyz"))[0] == 200
    health.circuit("soc", "closed")
    status, body = await get(server, "/readyz")
    assert status == 200 and check(body, "sink:soc")["reason"] == "circuit closed"


async def test_circuit_accepts_the_runner_enum(health: HealthRegistry) -> None:
    """The delivery runner's StrEnum states are accepted; an unknown state is refused."""

    class CircuitState(StrEnum):
        OPEN = "open"

    health.circuit("soc", CircuitState.OPEN)
    assert not health.report().ready
    with pytest.raises(ValueError, match="unknown circuit state"):
        health.circuit("soc", "ajar")


async def test_stream_goes_stale_and_recovers(server: ServiceServer, health: HealthRegistry, clock: FakeClock) -> None:
    """A stream without a success for longer than its threshold is not ready, with its last error."""
    health.watch_stream("acme", "audit_logs", stale_after_secs=300)
    status, body = await get(server, "/readyz")
    assert status == 200 and "waiting for the first poll" in check(body, "stream:acme/audit_logs")["reason"]
    health.stream_ok("acme", "audit_logs")
    clock.advance(299)
    assert (await get(server, "/readyz"))[0] == 200
    health.stream_error("acme", "audit_logs", PermissionError("HTTP 401 Unauthorized"))
    clock.advance(2)
    status, body = await get(server, "/readyz")
    assert status == 503
    reason = check(body, "stream:acme/audit_logs")["reason"]
    assert reason.startswith("stale: last success 301s ago (threshold 300s)")
    assert "PermissionError: HTTP 401 Unauthorized" in reason
    health.stream_ok("acme", "audit_logs")
    status, body = await get(server, "/readyz")
    assert status == 200 and check(body, "stream:acme/audit_logs")["reason"] == "last success 0s ago"


async def test_stream_never_polled_becomes_not_ready(health: HealthRegistry, clock: FakeClock) -> None:
    """A watched stream that never succeeds fails once the grace period (its threshold) is over."""
    health.watch_stream("acme", "members", stale_after_secs=60)
    clock.advance(61)
    (c,) = health.report().checks
    assert not c.ok and c.reason == "no successful poll in 61s (threshold 60s)"
    health.forget_stream("acme", "members")
    health.stream_ok("acme", "members")  # unknown streams are ignored
    assert health.report().ready


async def test_a_crash_looping_poller_keeps_its_grace_period(health: HealthRegistry, clock: FakeClock) -> None:
    """A poller that crashes before its first success (seen with the bus on a full disk: `Task
    crashed; restarting` with a growing backoff) watches its streams again at each restart; the grace
    period still counts from the first watch, so readiness fails once it is over — before, /readyz
    said `waiting for the first poll (10s of 300s)` for ever. Forgetting the stream starts anew."""
    for _ in range(5):  # restarts every 60 s (the supervisor's longest backoff)
        health.watch_stream("acme", "members", stale_after_secs=300)
        clock.advance(60)
    health.watch_stream("acme", "members", stale_after_secs=300)
    clock.advance(1)
    (c,) = health.report().checks
    assert not c.ok and c.reason == "no successful poll in 301s (threshold 300s)"
    health.forget_stream("acme", "members")  # the workspace moved to another replica
    health.watch_stream("acme", "members", stale_after_secs=300)
    assert health.report().ready


async def test_bus_failure_and_recovery(server: ServiceServer, health: HealthRegistry, clock: FakeClock) -> None:
    """A failed bus operation makes /readyz 503 naming the error; the next success restores it."""
    health.expect_bus()
    status, body = await get(server, "/readyz")
    assert status == 503 and check(body, "bus")["reason"] == "bus not reached yet"
    health.bus_ok()
    assert (await get(server, "/readyz"))[0] == 200
    clock.advance(12)
    health.bus_error(ConnectionError("KafkaConnectionError: 127.0.0.1:9092"))
    status, body = await get(server, "/readyz")
    assert status == 503
    assert check(body, "bus") == {
        "name": "bus",
        "ok": False,
        "reason": "bus unreachable: ConnectionError: KafkaConnectionError: 127.0.0.1:9092; last success 12s ago",
    }
    health.bus_ok()
    status, body = await get(server, "/readyz")
    assert status == 200 and check(body, "bus")["ok"] is True


async def test_bus_never_reached(health: HealthRegistry) -> None:
    """A bus that failed before any success says so."""
    health.bus_error(TimeoutError())
    (c,) = health.report().checks
    assert c.reason == "bus unreachable: TimeoutError; never reached"


async def test_custom_check_and_all_failures_listed(server: ServiceServer, health: HealthRegistry) -> None:
    """Every failing check is listed, so one response explains the whole state."""
    health.set_check("webhook", False, "not listening on 0.0.0.0:8080")
    health.circuit("a", "open")
    health.circuit("b", "open")
    status, body = await get(server, "/readyz")
    assert status == 503
    assert [c["name"] for c in body["checks"] if not c["ok"]] == ["sink:a", "sink:b", "webhook"]
    health.remove_check("webhook")
    health.forget_sink("a")
    health.forget_sink("b")
    assert (await get(server, "/readyz"))[0] == 200


async def test_circuit_is_mirrored_to_the_metric(clock: FakeClock) -> None:
    """Reporting a circuit state sets pipeline.sink.circuit.open on the current telemetry."""
    tel = Telemetry(clock=clock)
    previous = set_telemetry(tel)
    try:
        h = HealthRegistry(clock)
        h.circuit("soc", "open")
        assert b'pipeline_sink_circuit_open{sink="soc"} 1.0' in tel.render_prometheus()[0]
        h.circuit("soc", "closed")
        assert b'pipeline_sink_circuit_open{sink="soc"} 0.0' in tel.render_prometheus()[0]
    finally:
        set_telemetry(previous)
        tel.shutdown()


async def test_server_lifecycle(health: HealthRegistry, clock: FakeClock) -> None:
    """port is known only while started; start/stop are idempotent; a taken port raises OSError."""
    srv = ServiceServer(Telemetry.disabled(), health, "127.0.0.1", 0, clock=clock)
    with pytest.raises(RuntimeError):
        _ = srv.port
    async with srv:
        await srv.start()
        port = srv.port
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and await r.read() == b""
        other = ServiceServer(Telemetry.disabled(), health, "127.0.0.1", port, clock=clock)
        with pytest.raises(OSError):
            await other.start()
    await srv.stop()
    with pytest.raises(RuntimeError):
        _ = srv.port


def test_module_accessor() -> None:
    """get_health() gives the process registry; set_health replaces it."""
    mine = HealthRegistry()
    previous = set_health(mine)
    try:
        assert get_health() is mine
        set_health(None)
        assert get_health() is not mine
    finally:
        set_health(previous)
