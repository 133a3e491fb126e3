"""The shipped correlation rules fire on connector-shaped events, and ``replay --rules`` agrees with live."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC
from pipeline.cli.main import main
from pipeline.clock import format_time
from pipeline.rules.testing import make_event
from pipeline.rules.worker import RulesWorker
from schemas import Event
from schemas.alert import Alert
from tests.conftest import make_bus

T0 = 1_790_000_000.0
CORRELATIONS = (
    "corr.all_scope_key_kept",
    "corr.mfa_disabled_kept",
    "corr.privilege_grant_burst",
    "corr.new_key_new_ip",
    "corr.lead_export_spread",
    "corr.block_list_emptied",
)
RULES_CFG: dict[str, Any] = {"defaults": {"enabled": False}, **{r: {"enabled": True} for r in CORRELATIONS}}


def scenario() -> list[Event]:
    """One positive and one negative story per shipped correlation rule, in event-time order."""
    ev: list[tuple[float, str, dict[str, Any]]] = [
        # all:all key kept (k1) vs deleted in time (k2)
        (0, "api_key.created", {"target": {"kind": "api_key", "id": "k1", "name": "ci"},
                                "attributes": {"scopes": ["all:all"]}}),
        (1, "api_key.created", {"target": {"kind": "api_key", "id": "k2"}, "attributes": {"scopes": ["all:all"]}}),
        (1800, "api_key.deleted", {"target": {"kind": "api_key", "id": "k2"}}),
        # MFA off for u1 (kept), u2 (re-enabled)
        (10, "audit.mfa_totp_disabled", {"actor": {"user_id": "u1", "ip": "198.51.100.7"}}),
        (20, "audit.mfa_totp_disabled", {"actor": {"user_id": "u2"}}),
        (3600, "audit.mfa_totp_enabled", {"actor": {"user_id": "u2"}}),
        # three admin grants by boss; two by other
        *[(100 + i * 60, "member.invited", {"actor": {"user_id": "boss"}, "target": {"kind": "member", "id": f"m{i}"},
                                           "attributes": {"role": "admin"}}) for i in range(3)],
        *[(100 + i * 60, "member.invited", {"actor": {"user_id": "other"}, "target": {"kind": "member", "id": f"o{i}"},
                                           "attributes": {"role": "admin"}}) for i in range(2)],
        # key k9 created then used from a new IP; k8 used from the known one
        (200, "audit.lead_added", {"actor": {"api_key_id": "old", "ip": "203.0.113.5"}}),
        (300, "api_key.created", {"target": {"kind": "api_key", "id": "k9"}, "attributes": {"scopes": ["leads:read"]}}),
        (301, "api_key.created", {"target": {"kind": "api_key", "id": "k8"}, "attributes": {"scopes": ["leads:read"]}}),
        (900, "audit.lead_added", {"actor": {"api_key_id": "k9", "ip": "198.51.100.66"}}),
        (901, "audit.lead_added", {"actor": {"api_key_id": "k8", "ip": "203.0.113.5"}}),
        # three lists exported by u3; one list three times by u4
        *[(400 + i * 60, "audit.lead_exported", {"actor": {"user_id": "u3"}, "attributes": {"list_id": f"l{i}"}})
          for i in range(3)],
        *[(400 + i * 60, "audit.lead_exported", {"actor": {"user_id": "u4"}, "attributes": {"list_id": "l0"}})
          for i in range(3)],
        # the block list emptied: ten entries removed within a minute
        *[(500 + i, "block_list.entry_removed", {"attributes": {"value": f"d{i}.example", "is_domain": True}})
          for i in range(10)],
        # later activity: event time passes every window + grace
        (26 * 3600, "audit.user_login", {"actor": {"user_id": "u5"}}),
    ]  # fmt: skip
    return [make_event(t, time=T0 + dt, workspace="ws-1", **kw) for dt, t, kw in sorted(ev, key=lambda x: x[0])]


async def _live(bus_cfg: dict[str, Any], events: list[Event]) -> list[Alert]:
    async with make_bus(bus_cfg) as bus:
        async with bus.transaction("corr-test") as tx:
            for e in events:
                tx.send(EVENTS_TOPIC, e.to_json(), key=b"ws-1", headers=[("event_type", e.type.encode())])
        # On Kafka a read_committed consumer sees the transaction once the broker wrote its markers,
        # shortly after the commit returned; run_once reads up to the end offsets it sees at start
        # (the last stable offset), so wait until they cover the events (missed alerts once, under load).
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as c:
            for _ in range(150):
                if sum((await c.end_offsets()).values()) >= len(events):
                    break
                await asyncio.sleep(0.1)
        worker = RulesWorker(bus, RULES_CFG, clock=_Clock(T0 + 26 * 3600))
        await worker.run_once()
        await worker.tick()
        await worker.close()
        out = []
        async with bus.consumer([ALERTS_TOPIC], start="earliest") as c:
            ends = await c.end_offsets()
            while sum(c.positions().get(tp, 0) for tp in ends) < sum(ends.values()):
                for rec in await c.poll(timeout_s=1.0):
                    out.append(Alert.from_json(rec.value))
        return out


class _Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return 0.0


def test_shipped_correlations_fire_live_and_replay_agrees(
    bus_cfg: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Live: exactly one alert per correlation rule (the positive story); replay --rules: new 0, missing 0."""
    alerts = asyncio.run(_live(bus_cfg, scenario()))
    got = sorted((a.rule.id, a.dedup_key) for a in alerts)
    assert got == sorted([
        ("corr.all_scope_key_kept", "corr.all_scope_key_kept:ws-1:k1"),
        ("corr.mfa_disabled_kept", "corr.mfa_disabled_kept:ws-1:u1"),
        ("corr.privilege_grant_burst", "corr.privilege_grant_burst:ws-1:boss"),
        ("corr.new_key_new_ip", "corr.new_key_new_ip:ws-1:k9"),
        ("corr.lead_export_spread", "corr.lead_export_spread:ws-1:u3"),
        ("corr.block_list_emptied", "corr.block_list_emptied:ws-1:ws-1"),
    ])  # fmt: skip
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"bus": bus_cfg, "rules": RULES_CFG}))
    code = main(["replay", "-c", str(cfg), "--rules", "--format", "jsonl", "--no-progress",
                 "--since", format_time(T0 - 1)])  # fmt: skip
    out = capsysbinary.readouterr()
    assert code == 0, out.err.decode()
    rows = [orjson.loads(line) for line in out.out.splitlines() if line.strip()]
    assert sorted(r["alert"]["rule"]["id"] for r in rows) == sorted(CORRELATIONS)
    assert {r["diff"] for r in rows} == {"same"} and b"new 0, missing 0" in out.err, out.err.decode()[-800:]
