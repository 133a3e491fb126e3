"""Correlation state survives SIGKILL of the rules worker: every alert raised exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Bus, iter_records
from pipeline.rules.testing import make_event
from schemas import Event
from schemas.alert import Alert
from tests.conftest import make_bus
from tests.integration.test_correlation_replay import RULES_CFG, T0

WORKER = Path(__file__).with_name("rules_crash_worker.py")
ROOT = Path(__file__).resolve().parents[2]
GROUPS = 400
END = T0 + 2 * 86_400


def stories() -> list[Event]:
    """Per group g: an admin-grant burst (g even: 3 grants, alert; odd: 2), a 3-list export spread
    (g % 3 == 0) and an MFA disable kept (g % 4 == 0) or re-enabled; interleaved across groups so
    each story spans many batches."""
    out: list[Event] = []
    for step in range(3):
        for g in range(GROUPS):
            t = T0 + step * 60 + g
            ws = f"ws-{g % 3}"
            if step < 2 or g % 2 == 0:
                out.append(
                    make_event(
                        "member.invited",
                        time=t,
                        workspace=ws,
                        actor={"user_id": f"boss{g}"},
                        target={"kind": "member", "id": f"m{g}-{step}"},
                        attributes={"role": "admin"},
                    )
                )
            lst = f"l{step}" if g % 3 == 0 else "l0"
            out.append(
                make_event(
                    "audit.lead_exported",
                    time=t + 1,
                    workspace=ws,
                    actor={"user_id": f"exp{g}"},
                    attributes={"list_id": lst},
                )
            )
            if step == 0:
                out.append(
                    make_event("audit.mfa_totp_disabled", time=t + 2, workspace=ws, actor={"user_id": f"mfa{g}"})
                )
            if step == 2 and g % 4 != 0:
                out.append(make_event("audit.mfa_totp_enabled", time=t + 3, workspace=ws, actor={"user_id": f"mfa{g}"}))
    return out


def expected() -> list[str]:
    keys = []
    for g in range(GROUPS):
        ws = f"ws-{g % 3}"
        if g % 2 == 0:
            keys.append(f"corr.privilege_grant_burst:{ws}:boss{g}")
        if g % 3 == 0:
            keys.append(f"corr.lead_export_spread:{ws}:exp{g}")
        if g % 4 == 0:
            keys.append(f"corr.mfa_disabled_kept:{ws}:mfa{g}")
    return sorted(keys)


async def _seed(bus_cfg: dict[str, Any]) -> None:
    async with make_bus(bus_cfg) as bus, bus.transaction("seed") as tx:
        for e in stories():
            tx.send(EVENTS_TOPIC, e.to_json(), key=e.workspace.id.encode(), headers=[("event_type", e.type.encode())])


async def _alerts(bus: Bus) -> list[Alert]:
    out = []
    async with bus.consumer([ALERTS_TOPIC], start="earliest") as c:
        async for batch in iter_records(c):
            out += [Alert.from_json(r.value) for r in batch]
    return out


def _run_until_done(bus_cfg: dict[str, Any], kills: int, seed: int) -> int:
    rnd = random.Random(seed)
    # a Kafka worker needs seconds to join its group before it does any work
    low, high = (0.4, 1.2) if bus_cfg["type"] == "sqlite" else (4.0, 12.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [json.dumps(bus_cfg), json.dumps(RULES_CFG), str(END), "1"]
    killed = 0
    for _ in range(kills + 50):
        proc = subprocess.Popen([sys.executable, str(WORKER), *args], env=env, cwd=ROOT)
        if killed < kills:
            try:
                proc.wait(timeout=rnd.uniform(low, high))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                continue
        else:
            proc.wait(timeout=300)
        if proc.returncode == 0:
            return killed
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"worker failed with exit code {proc.returncode}")
    raise AssertionError("worker never finished")


@pytest.mark.slow
def test_killed_rules_worker_raises_each_correlation_alert_once(bus_cfg: dict[str, Any]) -> None:
    """kill -9 of the rules worker at random points, restarted each time: each expected alert once."""
    asyncio.run(_seed(bus_cfg))
    killed = _run_until_done(bus_cfg, kills=4, seed=20)

    async def read() -> list[Alert]:
        async with make_bus(bus_cfg) as bus:
            return await _alerts(bus)

    # Kafka writes a committed transaction's markers to the partitions just after the commit
    # returns, so a read_committed reader may briefly stop short of the last one: read again.
    for _ in range(20):
        got = sorted(a.dedup_key for a in asyncio.run(read()))
        if got == expected():
            break
        time.sleep(0.5)
    assert killed >= 1
    assert got == expected(), f"killed {killed} times; {len(got)} alerts vs {len(expected())} expected"
