"""A local, faithful simulator of the Instantly API v2 endpoints a security poller uses.

Used by the demo, the tests, the benchmarks and by users who want to rehearse an
incident. Start with :class:`InstantlySimulator` (an aiohttp server on a real port);
:func:`demo_world` seeds the "Acme Outreach" workspace and ``scenarios/demo_incident.yaml``
(:data:`DEMO_INCIDENT`) plays an incident against it. Facts modelled: see
``reference/instantly-api.md``; choices where the docs are silent: :class:`SimConfig`.
"""

from __future__ import annotations

from .app import Call
from .clock import Clock, ScaledClock, system_clock
from .config import SimConfig
from .errors import ApiError
from .faults import FaultDecision, Faults
from .ids import UUIDv7Factory, uuid7_time
from .models import Actor, ApiKey, AuditRecord, Member, Webhook, Workspace
from .ratelimit import RateLimiter
from .scenario import DEMO_INCIDENT, Scenario, ScenarioError, ScenarioRunner
from .seed import DemoWorld, demo_world
from .server import InstantlySimulator, serve
from .state import SimState

__all__ = [
    "DEMO_INCIDENT",
    "Actor",
    "ApiError",
    "ApiKey",
    "AuditRecord",
    "Call",
    "Clock",
    "DemoWorld",
    "FaultDecision",
    "Faults",
    "InstantlySimulator",
    "Member",
    "RateLimiter",
    "ScaledClock",
    "Scenario",
    "ScenarioError",
    "ScenarioRunner",
    "SimConfig",
    "SimState",
    "UUIDv7Factory",
    "Webhook",
    "Workspace",
    "demo_world",
    "serve",
    "system_clock",
    "uuid7_time",
]
