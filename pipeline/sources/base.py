"""What the runtime needs from a polling source, and how connectors provide sources.

A connector registers one :class:`SourcePlugin` in the ``instantly_audit.sources`` entry point
group; the topology asks each installed plugin for the sources the config describes (for the
Instantly connector: one poller per configured workspace) and supervises them. A source writes
its events and its cursor in one bus transaction (exactly once into the bus) and never raises
for an expected upstream condition: it reports it as a pipeline event and keeps polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import orjson

from pipeline.bus.base import Bus
from pipeline.clock import Clock
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.registry import SOURCES, load_group

if TYPE_CHECKING:
    from pipeline.observability.health import HealthRegistry
    from pipeline.observability.telemetry import Telemetry
    from pipeline.sources.backpressure import Backpressure


@runtime_checkable
class Source(Protocol):
    """One polling source (an async context manager)."""

    source_id: str
    last_failures: dict[str, str]
    """Streams the last ``poll_once`` could not read → a short reason without secrets."""

    async def __aenter__(self) -> Self:
        """Open sessions and fence the source's bus writer."""

    async def __aexit__(self, *exc: object) -> None:
        """Close everything."""

    async def poll_once(self) -> dict[str, Any]:
        """Poll every stream once; return counts per stream (or an ``error``)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on the configured schedule until ``stop`` is set."""


@runtime_checkable
class SourcePlugin(Protocol):
    """A connector's sources, built from the config."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]
    """The top-level config keys the plugin's sources read (``run --role pollers`` resolves only their secrets)."""

    def build(
        self,
        cfg: PipelineConfig,
        bus: Bus,
        clock: Clock,
        *,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ) -> list[Source]:
        """The sources ``cfg`` asks for (not yet entered), reporting to ``telemetry`` and ``health``
        (default: the process's current ones)."""

    async def workspace_ids(self, cfg: PipelineConfig, bus: Bus) -> dict[str, str]:
        """The workspaces ``cfg`` configures, alias → the vendor's workspace id, as far as known.

        Read from what the sources keep on the bus (a workspace never polled yet is left out), so
        ``replay --workspace ALIAS`` and the ``workspace`` metric label work in any process.
        """


def status_key(source_id: str) -> str:
    """State key of a source's last poll (``status/{source_id}``), which ``instantly-audit status`` reads.

    The value is JSON: ``at`` (epoch seconds the poll ended), ``published`` (counts per stream),
    ``failures`` (stream → short reason), ``cursor_at`` (the last poll whose incremental stream
    succeeded), ``requests_last_minute``.
    """
    return f"status/{source_id}"


def failure_lines(failures: Mapping[str, str]) -> list[str]:
    """``last_failures`` as ``streams reason`` lines, the streams sharing a reason on one line: a
    refused key or an unreachable server is said once, not once per stream."""
    by_reason: dict[str, list[str]] = {}
    for stream, reason in sorted(failures.items()):
        by_reason.setdefault(reason, []).append(stream)
    return [f"{', '.join(streams)} {reason}" for reason, streams in by_reason.items()]


def source_plugins() -> dict[str, SourcePlugin]:
    """Every installed source plugin by name.

    Raises:
        ConfigError: an entry is not a :class:`SourcePlugin`.
    """
    out: dict[str, SourcePlugin] = {}
    for name, plugin in load_group(SOURCES).items():
        if not isinstance(plugin, SourcePlugin):
            raise ConfigError(f"source plugin {name!r} does not provide the SourcePlugin interface")
        out[name] = plugin
    return out


async def configured_workspace_ids(cfg: PipelineConfig, bus: Bus) -> dict[str, str]:
    """Every workspace alias of every installed source plugin → its vendor id, as far as the bus knows.

    Raises:
        ConfigError: a plugin is broken (see :func:`source_plugins`).
    """
    out: dict[str, str] = {}
    for plugin in source_plugins().values():
        out.update(await plugin.workspace_ids(cfg, bus))
    return out


def discovered_key(parent_id: str) -> str:
    """State key listing what a source discovered and announced (``discovered/{parent_id}``)."""
    return f"discovered/{parent_id}"


def discovered_record(source_id: str, *, plugin: str, parent: str, spec: dict[str, Any]) -> bytes:
    """The control-topic value announcing a discovered source (key = ``source_id``).

    ``plugin`` names the source plugin that builds it (``build_discovered``), ``parent`` the
    configured source that found it (its config supplies the credentials: no secret is written),
    ``spec`` what the plugin needs besides (for Instantly: the sub-workspace id and name).
    """
    return orjson.dumps({"source_id": source_id, "plugin": plugin, "parent": parent, "spec": spec})


@runtime_checkable
class Discoverer(Protocol):
    """A source that finds more sources (an agency finds its sub-workspaces)."""

    def share_discovered(self) -> None:
        """Announce what is found on the control topic (:func:`discovered_record`, tombstones for
        departures) instead of polling it here: poller replicas then share it like a configured one."""


@runtime_checkable
class Pausable(Protocol):
    """A source that waits at a backpressure gate before each poll (:mod:`pipeline.sources.backpressure`)."""

    backpressure: Backpressure | None
    """Set by the runtime when ``bus.max_consumer_lag`` is configured; None: never wait."""
