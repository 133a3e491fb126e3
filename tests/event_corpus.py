"""Every kind of record the pipeline can emit, for the format and mapping tests.

* :func:`fixture_events` — the real Instantly normalizer over the documented API examples:
  every audit activity code (and an unknown one), a baseline of every snapshot stream, the
  snapshot diffs of ``normalizer_events``, and the hand-made samples of every family;
* :func:`webhook_events` — the webhook receiver's normalizer over a delivery of every known
  Instantly webhook ``event_type`` and a custom label;
* :func:`incident_records` — the simulator's scripted incident (``demo_incident.yaml``) run
  through the real poller and rules onto a SQLite bus (as ``instantly-audit demo`` does): its
  events and alerts, and the bus file for the sink tests.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import io
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import format_time
from schemas.event import Event, WorkspaceRef

WS = WorkspaceRef("019cc043-af79-73db-a904-19add8ce4af2", "My Workspace")
OBSERVED = "2026-11-27T12:00:00.000Z"
AUDIT_FIXTURES = ("audit_logs.list.json", "audit_logs.list.aug2026.json", "audit_logs.list.2025.json")
STREAM_FIXTURES = (
    ("api_keys", "api_keys.list.json"),
    ("webhooks", "webhooks.list.json"),
    ("block_list", "block_list_entries.list.json"),
    ("members", "workspace_members.list.json"),
    ("group_members", "workspace_group_members.list.json"),
    ("accounts", "accounts.list.json"),
)


def fixture_events() -> list[Event]:
    """Normalizer output over the documented examples, every audit code, every stream, every sample family."""
    from connectors.instantly.audit_codes import AUDIT_CODES
    from connectors.instantly.normalize import normalize_audit_record
    from connectors.instantly.snapshots import build_snapshot, diff_snapshots
    from tests.unit.test_formats_native import normalizer_events, sample_events
    from tests.unit.test_instantly_fake_api import load_fixture

    events: list[Event] = []
    for stream, fixture in STREAM_FIXTURES:
        snap, _ = build_snapshot(stream, load_fixture(fixture)["items"])
        events += diff_snapshots(stream, None, snap, workspace=WS, observed_at=OBSERVED)
    ws_snap, _ = build_snapshot("workspace", [load_fixture("workspace.current.json")])
    events += diff_snapshots("workspace", None, ws_snap, workspace=WS, observed_at=OBSERVED)
    examples = [r for f in AUDIT_FIXTURES for r in load_fixture(f)["items"]]
    codes = sorted(AUDIT_CODES)
    for i in range(max(len(codes), len(examples))):
        record = copy.deepcopy(examples[i % len(examples)])
        record["id"] = str(uuid.UUID(int=i + 1))
        record["activity_type"] = codes[i % len(codes)]
        record["timestamp"] = format_time(1_780_000_000 + i)
        events.append(normalize_audit_record(record, WS, OBSERVED))
    return events + normalizer_events() + list(sample_events().values())


def webhook_events() -> list[Event]:
    """The webhook receiver's events: one delivery of every known event_type and one custom label."""
    from connectors.instantly.webhook_normalize import (
        DEFAULT_KEPT_FIELDS,
        KNOWN_EVENT_TYPES,
        FieldPolicy,
        body_digest,
        normalize_delivery,
        parse_delivery,
    )
    from tests.unit.test_webhook_support import delivery

    policy = FieldPolicy(frozenset(DEFAULT_KEPT_FIELDS))
    out = []
    for n, label in enumerate([*sorted(KNOWN_EVENT_TYPES), "Custom Label"]):
        body = delivery(n, event_type=label)
        out.append(normalize_delivery(parse_delivery(body), source_name="crm", workspace=WS, digest=body_digest(body),
                                      body_bytes=len(body), observed_at=OBSERVED, policy=policy))  # fmt: skip
    return out


async def run_incident(workdir: Path, speed: float = 5.0) -> Path:
    """Play the scripted incident through the poller and rules; the SQLite bus file it filled."""
    from connectors.instantly.demo import run_demo

    code = await run_demo(speed=speed, workdir=workdir, console=Console(file=io.StringIO(), width=200))
    assert code == 0
    return workdir / "bus.db"


async def read_topic(bus_path: Path, topic: str) -> list[bytes]:
    """Every record value of ``topic`` in the bus file."""
    async with SqliteBus(bus_path) as bus, bus.consumer([topic], start="earliest") as consumer:
        return [r.value for batch in [b async for b in iter_records(consumer)] for r in batch]


@functools.cache
def incident_records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, alerts) of the scripted incident, as dicts (run once per test session)."""
    import tempfile

    import orjson

    workdir = Path(tempfile.mkdtemp(prefix="incident-"))

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bus = await run_incident(workdir)
        events = [orjson.loads(v) for v in await read_topic(bus, EVENTS_TOPIC)]
        alerts = [orjson.loads(v) for v in await read_topic(bus, ALERTS_TOPIC)]
        return events, alerts

    return asyncio.run(go())


def rule_case_events() -> dict[str, list[Event]]:
    """The events of every shipped rule's test cases (``connectors/instantly/rules/cases``), per rule id, as
    ``rules test`` builds them."""
    from connectors.instantly.rules import PACK
    from pipeline.clock import parse_time
    from pipeline.rules.testing import _event, load_case_file

    assert PACK.cases_dir is not None
    out: dict[str, list[Event]] = {}
    for path in sorted(PACK.cases_dir.glob("*.yaml")):
        cf = load_case_file(path)
        w = cf.workspace
        ws = WorkspaceRef(w) if isinstance(w, str) else WorkspaceRef(w.id, w.name)
        t = parse_time(cf.start)
        for case in cf.cases:
            for i, raw in enumerate(case.events):
                if set(raw) != {"tick"}:
                    t += 1.0
                    out.setdefault(cf.rule, []).append(_event(raw, ws, t, f"{path.name}: {case.name}: {i}"))
    return out


@functools.cache
def sigma_mapping_corpus() -> list[dict[str, Any]]:
    """What :mod:`pipeline.rules.sigma_fieldmap` derives the shipped Sigma pipelines from: every event the
    pipeline can produce (normalizer, webhooks, the incident) and every rule test case event, as dicts."""
    cases = [e for evs in rule_case_events().values() for e in evs]
    return [e.to_dict() for e in fixture_events() + webhook_events() + cases] + incident_records()[0]
