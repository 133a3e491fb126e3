"""The Instantly connector's source plugin: one poller per configured workspace (agencies: plus their subs).

Registered as ``instantly_audit.sources: instantly``; the runtime finds it there and never
imports this package by name.
"""

from __future__ import annotations

from typing import ClassVar

from connectors.instantly.config import workspaces
from connectors.instantly.discovery import AgencyPoller
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import Bus
from pipeline.clock import Clock
from pipeline.config.model import PipelineConfig
from pipeline.sources.base import Source


class InstantlySources:
    """Builds the workspace pollers of the ``workspaces`` section."""

    name: ClassVar[str] = "instantly"
    sections: ClassVar[tuple[str, ...]] = ("workspaces",)

    def build(self, cfg: PipelineConfig, bus: Bus, clock: Clock) -> list[Source]:
        """One poller per configured workspace (an :class:`AgencyPoller` where ``discover_subworkspaces`` is on)."""
        return [
            AgencyPoller(sid, wcfg, bus, clock=clock)
            if wcfg.discover_subworkspaces
            else InstantlyWorkspacePoller(sid, wcfg, bus, clock=clock)
            for sid, wcfg in workspaces(cfg).items()
        ]


SOURCE = InstantlySources()
"""The entry point object."""
