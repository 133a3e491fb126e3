"""An agency workspace whose accepted sub-workspaces are found and polled without configuring them.

A workspace entry with ``discover_subworkspaces: true`` (its key must be the agency's, with
``workspace_group_members:read``) becomes an :class:`AgencyPoller`: it polls the agency workspace
as any other, then — every ``discovery_interval_secs`` — lists ``/api/v2/workspace-group-members``
and keeps one child poller per *accepted* sub-workspace whose admin is this workspace. A child
polls with ``x-as-workspace: <sub id>`` under the source id ``<agency source id>--<sub id>`` (its
own cursor, snapshots and transactional id); a sub-workspace that left the group, or whose link
is no longer accepted, is dropped. The agency's own ``group_members`` snapshot stream publishes
the joins and departures (``workspace_group.member_added`` / ``member_removed`` /
``member_status_changed``) and the built-in rules alert on them.

Shared replicas (Kafka, ``bus.share_pollers``): the assignment calls :meth:`share_discovered`
and the agency polls no child itself. It announces each accepted sub-workspace on the control
topic (``instantly.workspaces.v1``, key = the child's source id) and writes a tombstone for each
that left, in one transaction with the list it announced (state ``discovered/<agency id>``), so a
new owner of the agency continues from that list. Every replica builds the children of the
control partitions it owns (:func:`child_poller`, from the agency's config: no secret is on the
bus), so the sub-workspaces are spread over the replicas like configured workspaces.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import orjson

from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.deliveries import ReceiverTargets
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import CONTROL_TOPIC, Bus
from pipeline.clock import Clock
from pipeline.errors import BusError, SourceError
from pipeline.observability.health import HealthRegistry
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry
from pipeline.sources.backpressure import Backpressure
from pipeline.sources.base import discovered_key, discovered_record
from pipeline.sources.poll_loop import poll_until_stopped

log = get_logger("instantly.discovery")


def child_id(agency_id: str, sub_workspace_id: str) -> str:
    """The source id of a discovered sub-workspace: ``<agency source id>--<sub id>``."""
    return f"{agency_id}--{sub_workspace_id}"


def child_poller(
    agency_id: str,
    cfg: WorkspaceConfig,
    sub: str,
    name: str | None,
    bus: Bus,
    *,
    clock: Clock,
    telemetry: Telemetry | None = None,
    health: HealthRegistry | None = None,
    receivers: ReceiverTargets | None = None,
) -> InstantlyWorkspacePoller:
    """The poller of sub-workspace ``sub`` of the agency ``agency_id`` (its key, ``x-as-workspace: sub``)."""
    sub_cfg = cfg.model_copy(update={"as_workspace": sub, "discover_subworkspaces": False, "name": name})
    return InstantlyWorkspacePoller(
        child_id(agency_id, sub), sub_cfg, bus, clock=clock, telemetry=telemetry, health=health, receivers=receivers
    )


class AgencyPoller:
    """Polls an agency workspace and every accepted sub-workspace of its group (see module docstring)."""

    def __init__(
        self,
        source_id: str,
        cfg: WorkspaceConfig,
        bus: Bus,
        *,
        clock: Clock,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
        receivers: ReceiverTargets | None = None,
    ):
        self.source_id = source_id
        self.receivers = receivers
        self.backpressure: Backpressure | None = None
        """Set by the runtime with ``bus.max_consumer_lag``: wait there before each poll."""
        self.cfg = cfg
        self.bus = bus
        self.clock = clock
        self.telemetry, self.health = telemetry, health
        self.agency = InstantlyWorkspacePoller(
            source_id, cfg, bus, clock=clock, telemetry=telemetry, health=health, receivers=receivers
        )
        self.txn_id = self.agency.txn_id
        self.children: dict[str, InstantlyWorkspacePoller] = {}
        """Sub-workspace id → its poller."""
        self.last_failures: dict[str, str] = {}
        self._listed_at: float | None = None
        self.shared = False
        """Announce the sub-workspaces on the control topic instead of polling them (:meth:`share_discovered`)."""
        self.announced: dict[str, str | None] | None = None
        """Shared mode: sub-workspace id → name, as last announced (loaded from state on first use)."""

    def share_discovered(self) -> None:
        """Announce sub-workspaces on the control topic; the replicas that own them poll them."""
        self.shared = True

    async def __aenter__(self) -> AgencyPoller:
        await self.agency.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in list(self.children):
            await self._drop(sub)
        await self.agency.__aexit__(*exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the agency and its sub-workspaces every ``poll_interval_secs`` until ``stop``.

        Raises:
            BusError: the bus failed in a way that retrying cannot fix.
        """
        try:
            await poll_until_stopped(
                self.poll_once,
                stop,
                interval_secs=lambda: self.cfg.poll_interval_secs,
                backpressure=self.backpressure,
                log=log,
                log_extra={"source": self.source_id},
            )
        finally:
            for child in self.children.values():
                await child.aclose()
            await self.agency.aclose()

    async def poll_once(self) -> dict[str, Any]:
        """Poll the agency, refresh the sub-workspaces when due, poll each; counts per source id.

        Raises:
            BusError: writing to the bus failed.
        """
        out: dict[str, Any] = {self.source_id: await self.agency.poll_once()}
        self.last_failures = dict(self.agency.last_failures)
        await self._discover()
        for sub, child in sorted(self.children.items()):
            out[child.source_id] = await child.poll_once()
            self.last_failures.update({f"{sub} {k}": v for k, v in child.last_failures.items()})
        return out

    async def _discover(self) -> None:
        now = self.clock.now()
        if self._listed_at is not None and now - self._listed_at < self.cfg.discovery_interval_secs:
            return
        try:
            links = await self.agency.list_group_members()
        except SourceError as err:
            self.last_failures["discovery"] = f"failed: {type(err).__name__}"
            log.warning(
                "Listing the workspace group failed; sub-workspaces unchanged", extra={"source": self.source_id}
            )
            return
        self._listed_at = now
        me = self.agency.workspace.id
        accepted = {
            str(r["sub_workspace_id"]): r
            for r in links
            if r.get("admin_workspace_id") == me and r.get("status") == "accepted" and r.get("sub_workspace_id")
        }
        if self.shared:
            try:
                await self._announce({sub: _name(r) for sub, r in accepted.items()})
            except BusError:
                self._listed_at = None  # list and announce again next poll
                raise
            return
        for sub in sorted(set(self.children) - set(accepted)):
            await self._drop(sub)
            log.warning("Sub-workspace left the group; no longer polled", extra={"source": self.source_id, "sub": sub})
        for sub in sorted(set(accepted) - set(self.children)):
            child = child_poller(
                self.source_id,
                self.cfg,
                sub,
                _name(accepted[sub]),
                self.bus,
                clock=self.clock,
                telemetry=self.telemetry,
                health=self.health,
                receivers=self.receivers,
            )
            await child.__aenter__()
            self.children[sub] = child
            log.info("Sub-workspace enrolled", extra={"source": self.source_id, "sub": sub, "child": child.source_id})

    async def _announce(self, accepted: dict[str, str | None]) -> None:
        """Shared mode: upsert the joined sub-workspaces, tombstone the departed, in one transaction.

        The first listing in this process announces every accepted one again (an idempotent upsert).

        Raises:
            BusError: the write failed (retried at the next listing: nothing is recorded as announced).
        """
        first = self.announced is None
        if self.announced is None:
            raw = await self.bus.get_state(discovered_key(self.source_id))
            try:
                doc = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                doc = {}
            self.announced = {str(k): v for k, v in doc.items()} if isinstance(doc, dict) else {}
        before = self.announced
        joined = {k: v for k, v in accepted.items() if first or before.get(k, "\0") != v}
        left = sorted(set(before) - set(accepted))
        if not joined and not left:
            return
        async with self.bus.transaction(self.txn_id) as tx:
            for sub, name in sorted(joined.items()):
                cid = child_id(self.source_id, sub)
                spec = {"as_workspace": sub, "name": name}
                tx.send(
                    CONTROL_TOPIC,
                    discovered_record(cid, plugin="instantly", parent=self.source_id, spec=spec),
                    key=cid.encode(),
                )
            for sub in left:
                tx.send(CONTROL_TOPIC, None, key=child_id(self.source_id, sub).encode())
            tx.put_state(discovered_key(self.source_id), orjson.dumps(accepted))
        self.announced = dict(accepted)
        for sub in left:
            log.warning("Sub-workspace left the group; no longer polled", extra={"source": self.source_id, "sub": sub})
        if joined:
            log.info(
                "Sub-workspaces announced",
                extra={
                    "source": self.source_id,
                    "subs": sorted(joined),
                    "children": [child_id(self.source_id, s) for s in sorted(joined)],
                },
            )

    async def _drop(self, sub: str) -> None:
        child = self.children.pop(sub)
        await child.__aexit__(None, None, None)
        release = getattr(self.bus, "release", None)
        if release is not None:
            with suppress(BusError):
                await release(child.txn_id)


def _name(link: dict[str, Any]) -> str | None:
    name = link.get("sub_workspace_name")
    return name if isinstance(name, str) else None
