"""The real poller against an Instantly fake written from the public API v2 reference alone.

:class:`tests.fakes.instantly_public.PublicInstantly` knows nothing of ``sim/`` or of the other
test fake: it serves what developer.instantly.ai states (bearer auth, the list envelope, ``limit``
1-100 or 1-1000, ``starting_after`` = the last item's id, the error body) and varies what the docs
leave open. Each test names the documented freedom it exercises.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import EVENTS_TOPIC
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, format_time
from tests.fakes.instantly_public import PublicInstantly
from tests.unit.test_instantly_source import records

KEY = "public-docs-key-3c9e71"
WS = "019c0000-0000-7000-8000-0000000000aa"


async def no_sleep(_: float) -> None:
    return None


def workspace() -> dict[str, Any]:
    """``GET /workspaces/current`` with only the required fields (id, timestamps, owner, name)."""
    return {"id": WS, "name": "Acme", "owner": "019c0000-0000-7000-8000-0000000000bb",
            "timestamp_created": "2025-01-01T00:00:00Z", "timestamp_updated": "2025-01-01T00:00:00Z"}  # fmt: skip


def audit_record(rid: str, ts: float, code: Any = 1, **extra: Any) -> dict[str, Any]:
    """An audit record with only the required fields (optional ones absent)."""
    return {"id": rid, "timestamp": format_time(ts), "organization_id": WS, "activity_type": code,
            "ip_address": "203.0.113.9", "from_api": False, **extra}  # fmt: skip


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[PublicInstantly, SqliteBus]]:
    fake = PublicInstantly(KEY)
    fake.workspace = workspace()
    async with fake, SqliteBus(tmp_path / "bus.db") as bus:
        yield fake, bus


def poller(fake: PublicInstantly, bus: SqliteBus, clock: FakeClock, **kw: Any) -> InstantlyWorkspacePoller:
    cfg = WorkspaceConfig(
        api_key=SecretStr(KEY), base_url=fake.url, max_retries=kw.pop("max_retries", 1),
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000), **kw,
    )  # fmt: skip
    return InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, sleep=no_sleep, rng=random.Random(1))


async def bus_docs(bus: SqliteBus, topic: str = EVENTS_TOPIC) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await records(bus, (topic,))]


# ------------------------------------------------------------------------------ audit log ids
async def test_uuid4_audit_ids_are_not_read_as_time_ordered(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """Ids are ``format: uuid`` and the cursor is "the ID of the last item"; nothing says a new record
    gets a greater id. A listing sorted by random (version 4) UUIDs put about half of the new records
    before ``last_id``: the incremental read never listed them and they waited for the hourly
    re-read (p50 28 min, max 59 min measured). Each record must be published by the poll after it
    appears, exactly once."""
    fake, bus = env
    rng = random.Random(7)

    def uuid4() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    clock = FakeClock()
    fake.audit = [audit_record(uuid4(), clock.now() - 600 + i) for i in range(20)]
    async with poller(fake, bus, clock, streams=["audit_logs"]) as p:
        assert (await p.poll_once())["audit_logs"] == 20
        for _ in range(12):
            clock.advance(60)
            fake.audit.append(audit_record(uuid4(), clock.now() - 1, 37))
            assert (await p.poll_once())["audit_logs"] == 1
    ids = [e["source"]["record_id"] for e in await bus_docs(bus)]
    assert Counter(ids) == Counter(r["id"] for r in fake.audit)
