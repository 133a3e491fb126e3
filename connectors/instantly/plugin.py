"""The Instantly connector's source plugin: one poller per configured workspace (agencies: plus their subs).

Registered as ``instantly_audit.sources: instantly``; the runtime finds it there and never
imports this package by name.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from connectors.instantly.config import workspaces
from connectors.instantly.discovery import AgencyPoller
from connectors.instantly.source import InstantlyWorkspacePoller, identity_key
from pipeline.bus.base import Bus
from pipeline.clock import Clock
from pipeline.config.model import PipelineConfig
from pipeline.observability.health import HealthRegistry
from pipeline.observability.telemetry import Telemetry
from pipeline.sources.base import Source


class InstantlySources:
    """Builds the workspace pollers of the ``workspaces`` section."""

    name: ClassVar[str] = "instantly"
    sections: ClassVar[tuple[str, ...]] = ("workspaces",)

    def build(
        self,
        cfg: PipelineConfig,
        bus: Bus,
        clock: Clock,
        *,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ) -> list[Source]:
        """One poller per configured workspace (an :class:`AgencyPoller` where ``discover_subworkspaces`` is on)."""
        return [
            AgencyPoller(sid, wcfg, bus, clock=clock, telemetry=telemetry, health=health)
            if wcfg.discover_subworkspaces
            else InstantlyWorkspacePoller(sid, wcfg, bus, clock=clock, telemetry=telemetry, health=health)
            for sid, wcfg in workspaces(cfg).items()
        ]

    async def workspace_ids(self, cfg: PipelineConfig, bus: Bus) -> dict[str, str]:
        """Alias → Instantly workspace id: ``as_workspace`` when configured, else the id the poller
        last read from ``GET /workspaces/current`` (bus state ``identity/<alias>``)."""
        out: dict[str, str] = {}
        for alias, wcfg in workspaces(cfg).items():
            if wcfg.as_workspace:
                out[alias] = wcfg.as_workspace
                continue
            raw = await bus.get_state(identity_key(alias))
            try:
                doc = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
                out[alias] = doc["id"]
        return out


SOURCE = InstantlySources()
"""The entry point object."""
