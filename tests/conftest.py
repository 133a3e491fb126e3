"""Shared fixtures: bus implementations for the contract suite, Kafka and OpenSearch availability, canaries.

The Kafka leg runs when ``KAFKA_BOOTSTRAP`` is set (``make test`` starts a local broker
and sets it); the OpenSearch tests when ``OPENSEARCH_URL`` is set (``make test`` starts a
local node). Under ``CI=true`` a Kafka or OpenSearch test that would skip fails instead, and
the session prints how many of each ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.base import Bus
from pipeline.bus.factory import open_bus
from pipeline.config.model import KafkaBusConfig, SqliteBusConfig
from pipeline.redaction import registry as secret_registry

_reached: dict[str, set[str]] = {"kafka": set(), "opensearch": set()}
"""Per real service, the tests of this process that reached it (a Kafka test: any that called
:func:`kafka_bootstrap` with it set). The summary counts them from the test reports."""


def kafka_bootstrap() -> str:
    """The broker to test against, or skip (fail under CI=true)."""
    boot = os.environ.get("KAFKA_BOOTSTRAP", "")
    if not boot:
        if os.environ.get("CI") == "true":
            pytest.fail("KAFKA_BOOTSTRAP is not set under CI=true: Kafka tests must run, not skip")
        pytest.skip("KAFKA_BOOTSTRAP not set (make test starts a local broker)")
    current = os.environ.get("PYTEST_CURRENT_TEST", "")  # "nodeid (setup|call)" while a test runs
    if current:
        _reached["kafka"].add(current.rsplit(" ", 1)[0])
    return boot


def opensearch_base_url() -> str:
    """The OpenSearch node to test against, or skip (fail under CI=true)."""
    url = os.environ.get("OPENSEARCH_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("OPENSEARCH_URL is not set under CI=true: OpenSearch tests must run, not skip")
        pytest.skip("OPENSEARCH_URL not set (make test starts a local node; make opensearch-up for one by hand)")
    return url.rstrip("/")


@pytest.fixture
def opensearch_url(request: pytest.FixtureRequest) -> str:
    """Base URL of the real OpenSearch node (``OPENSEARCH_URL``); counted in the session summary."""
    url = opensearch_base_url()
    _reached["opensearch"].add(request.node.nodeid)
    return url


def bus_config(kind: str, tmp_path: Path) -> dict[str, Any]:
    """A bus config block for ``kind`` (sqlite file under tmp_path, or the test broker)."""
    if kind == "sqlite":
        return {"type": "sqlite", "path": str(tmp_path / "bus.db")}
    return {
        "type": "kafka",
        "bootstrap_servers": [kafka_bootstrap()],
        "partitions": 2,
        "transactional_id_prefix": f"test-{uuid.uuid4().hex[:8]}",
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
    }


def make_bus(cfg: dict[str, Any], *, read_only: bool = False) -> Bus:
    """Build a bus from a config block (``read_only``: a reader that takes no writer lock)."""
    model = SqliteBusConfig.model_validate(cfg) if cfg["type"] == "sqlite" else KafkaBusConfig.model_validate(cfg)
    return open_bus(model, read_only=read_only)


@pytest.fixture(params=["sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus_kind(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per bus implementation."""
    if request.param == "kafka":
        kafka_bootstrap()
    return str(request.param)


@pytest.fixture
def bus_cfg(bus_kind: str, tmp_path: Path) -> dict[str, Any]:
    """The config block of the bus under test."""
    return bus_config(bus_kind, tmp_path)


@pytest.fixture
async def bus(bus_cfg: dict[str, Any]) -> AsyncIterator[Bus]:
    """An open bus of the implementation under test."""
    async with make_bus(bus_cfg) as b:
        yield b


@pytest.fixture
def bus_factory(bus_cfg: dict[str, Any]) -> Callable[[], Bus]:
    """Build further (unopened) buses on the same storage, e.g. to simulate a restart."""
    return lambda: make_bus(bus_cfg)


@pytest.fixture
def unique() -> str:
    """A unique suffix for topic, group and state names."""
    return uuid.uuid4().hex[:10]


_SERVICE = "real_service"
_services_ran: dict[str, set[str]] = {"kafka": set(), "opensearch": set()}
"""Per real service, the tests that reached it, as the reports say (so xdist workers' count too)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Mark the teardown report of a test that reached a real service (reports travel to the xdist controller)."""
    if call.when == "teardown":
        item.user_properties += [(_SERVICE, service) for service, ids in _reached.items() if item.nodeid in ids]
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the marks (in the process that prints the summary: the controller under xdist)."""
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == _SERVICE and value in _services_ran:
                _services_ran[value].add(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many Kafka and OpenSearch tests ran, so a silent skip cannot hide."""
    terminalreporter.write_line(f"Kafka tests run against a real broker: {len(_services_ran['kafka'])}")
    terminalreporter.write_line(f"OpenSearch tests run against a real node: {len(_services_ran['opensearch'])}")


@pytest.fixture
def clean_secret_registry() -> Iterator[None]:
    """An empty secret registry for the test; what modules registered at import is restored after
    (a test that empties it must not leave later tests without those values)."""
    saved = [s.forms[0] for s in secret_registry.known_secrets()]
    secret_registry.forget_secrets()
    yield
    secret_registry.forget_secrets()
    for value in saved:
        secret_registry.register_secret(value)
