"""The emulation suite: one scripted attack per claimed ATT&CK technique, played through the real pipeline.

Each file under ``sim/scenarios/emulation/`` is a simulator scenario with one more block::

    emulation:
      technique: T1556.006          # the technique the attack performs
      rule: auth.mfa_disabled       # the rule that must fire because of it
      rules: {...}                  # optional rules config for the run (allowlists, thresholds)

:func:`run_emulation` seeds the demo workspace in the simulator, runs the Instantly poller and
the rules worker on an embedded SQLite bus, takes the baseline (one poll), then applies the
steps in order with one poll and one rules pass after each (no waiting on ``at``). The rule
*fires* when it opens an alert after the baseline — an alert the baseline alone raised does not
count. ``rules coverage --navigator`` puts a technique in the layer only when such a file names
a rule claiming it, and CI (``tests/integration/test_emulation.py``) fails when one does not fire.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from pipeline.bus.base import ALERTS_TOPIC
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import SYSTEM_CLOCK
from pipeline.config.base import EnvValue

EMULATION_DIR = Path(__file__).resolve().parent / "sim" / "scenarios" / "emulation"


@dataclass
class EmulationResult:
    """What one emulation run saw: the alerts opened by the attack (not by the baseline)."""

    technique: str
    rule: str
    opened: list[dict[str, Any]] = field(default_factory=list)
    refused_steps: list[str] = field(default_factory=list)

    @property
    def fired(self) -> bool:
        """Whether the named rule opened an alert because of the attack."""
        return any(a["rule"]["id"] == self.rule for a in self.opened)


def emulation_block(path: Path) -> dict[str, Any]:
    """The ``emulation:`` block of a scenario file.

    Raises:
        ValueError: the file has none, or it lacks ``technique`` or ``rule``.
    """
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    block = doc.get("emulation") if isinstance(doc, dict) else None
    if (
        not isinstance(block, dict)
        or not isinstance(block.get("technique"), str)
        or not isinstance(block.get("rule"), str)
    ):
        raise ValueError(f"{path}: needs emulation: {{technique, rule}}")
    return block


async def _alerts(bus: SqliteBus, seen: int) -> tuple[list[dict[str, Any]], int]:
    c = bus.consumer([ALERTS_TOPIC], start="earliest")
    async with c:
        records = await c.poll(100_000, timeout_s=0)
    return [orjson.loads(r.value) for r in records[seen:]], len(records)


async def run_emulation(path: Path, workdir: Path | None = None) -> EmulationResult:
    """Play one emulation scenario through poller → SQLite bus → rules; return what the attack opened.

    Raises:
        ValueError: the file is not an emulation scenario.
        ScenarioError: its steps are invalid.
    """
    from connectors.instantly.sim import InstantlySimulator
    from connectors.instantly.sim.errors import ApiError
    from connectors.instantly.sim.scenario import Scenario, apply_step
    from connectors.instantly.sim.seed import demo_world
    from connectors.instantly.source import InstantlyWorkspacePoller
    from pipeline.rules.worker import RulesWorker

    block = emulation_block(path)
    scenario = Scenario.load(path)
    result = EmulationResult(block["technique"], block["rule"])
    with tempfile.TemporaryDirectory(prefix="instantly-audit-emulation-", dir=workdir) as tmp:
        sim = InstantlySimulator(seed=7)
        world = demo_world(sim.state)
        async with sim, SqliteBus(Path(tmp) / "bus.db") as bus:
            cfg = WorkspaceConfig(
                api_key=EnvValue(world.poller_key.key), name="Acme Outreach", base_url=sim.url, poll_interval_secs=1,
                budget=BudgetConfig(requests_per_second=50, requests_per_minute=3000), max_retries=0,
                snapshot_intervals={"block_list": None, "accounts": None},  # every step's poll lists everything
            )  # fmt: skip
            rules = RulesWorker(bus, block.get("rules") or {}, clock=SYSTEM_CLOCK)
            async with InstantlyWorkspacePoller("acme", cfg, bus, clock=SYSTEM_CLOCK, audit_backfill_secs=0) as poller:
                await poller.poll_once()
                await rules.run_once()
                _, seen = await _alerts(bus, 0)
                for step in scenario.steps:
                    try:
                        apply_step(sim.state, step)
                    except (ApiError, KeyError, ValueError) as err:
                        result.refused_steps.append(f"{step.action}: {err}")
                    await poller.poll_once()
                    await rules.run_once()
            new, _ = await _alerts(bus, seen)
            result.opened = [a for a in new if a.get("status") == "open"]
    return result
