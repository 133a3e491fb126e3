"""The Instantly connector's source plugin: one poller per configured workspace (agencies: plus their subs).

Registered as ``instantly_audit.sources: instantly``; the runtime finds it there and never
imports this package by name.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from connectors.instantly.config import workspaces
from connectors.instantly.deliveries import receiver_targets
from connectors.instantly.discovery import AgencyPoller, child_poller
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
        """One poller per configured workspace (an :class:`AgencyPoller` where ``discover_subworkspaces`` is on).

        Each learns the webhook receiver's ``public_urls`` (for ``webhook_deliveries``) from ``cfg.webhook``.
        """
        rx = receiver_targets(cfg.webhook)
        return [
            AgencyPoller(sid, wcfg, bus, clock=clock, telemetry=telemetry, health=health, receivers=rx)
            if wcfg.discover_subworkspaces
            else InstantlyWorkspacePoller(sid, wcfg, bus, clock=clock, telemetry=telemetry, health=health, receivers=rx)
            for sid, wcfg in workspaces(cfg).items()
        ]

    def build_discovered(
        self,
        cfg: PipelineConfig,
        bus: Bus,
        clock: Clock,
        record: dict[str, object],
        *,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ) -> Source | None:
        """The poller of a sub-workspace an agency announced on the control topic (shared replicas).

        None when the record's agency is not configured here with ``discover_subworkspaces`` (its
        key comes from that entry), or the record is not one :class:`AgencyPoller` writes.
        """
        parent, spec = record.get("parent"), record.get("spec")
        wcfg = workspaces(cfg).get(parent) if isinstance(parent, str) else None
        if wcfg is None or not wcfg.discover_subworkspaces or not isinstance(spec, dict):
            return None
        sub, name = spec.get("as_workspace"), spec.get("name")
        if not isinstance(sub, str) or not sub:
            return None
        return child_poller(
            str(parent),
            wcfg,
            sub,
            name if isinstance(name, str) else None,
            bus,
            clock=clock,
            telemetry=telemetry,
            health=health,
            receivers=receiver_targets(cfg.webhook),  # as the agency's own pollers (webhook_deliveries)
        )

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
