"""``instantly-audit demo``: a scripted incident against the local simulator, watched live.

No configuration needed. The simulator serves the "Acme Outreach" demo workspace on
loopback and plays ``scenarios/demo_incident.yaml``: a leaked legacy ``all:all`` key is used
from an unfamiliar IP to create another ``all:all`` key, invite an outside member, promote
them to admin, add a webhook to an http:// URL without an auth header, and export 5,000
leads. The real pipeline — the Instantly poller, the embedded SQLite bus, the rules —
runs against it, and the terminal shows events and alerts as they land on the bus, then
a summary. The whole run takes about 20 seconds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Consumer
from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.base import program_name
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.base import EnvValue
from pipeline.observability.logs import register_secret, setup_logging

SEV_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}
DEMO_RULES: dict[str, Any] = {
    "allowlists": {"member_domains": ["acme-outreach.com"], "webhook_hosts": ["hooks.acme-outreach.com"]},
    "protected_domains": ["acme-outreach.com"],
    "data.lead_export": {"threshold": 1000},
}


def _event_line(e: dict[str, Any]) -> str:
    t = e.get("type", "?")
    a = e.get("actor") or {}
    who = a.get("user_name") or ""
    tgt = e.get("target") or {}
    what = tgt.get("name") or tgt.get("id") or ""
    attrs = e.get("attributes") or {}
    extra = ""
    if "scopes" in attrs:
        extra = " scopes=" + ",".join(attrs["scopes"] or [])
    elif "role" in attrs:
        extra = f" role={attrs['role']}"
    elif "target_hook_url" in attrs:
        extra = f" url={attrs['target_hook_url']}"
    elif attrs.get("affected_count"):
        extra = f" affected={attrs['affected_count']}"
    by = f" by {who}" if who else ""
    if a.get("ip"):
        by += f" from {a['ip']}"
    if a.get("via_api"):
        by += " (API)"
    return f"[dim]{str(e.get('time', ''))[11:19]}[/] [cyan]{t}[/]" + (f" {what}" if what else "") + f"{extra}{by}"


def _alert_line(a: dict[str, Any]) -> str:
    rule = a.get("rule") or {}
    sev = str(rule.get("severity", "info"))
    style = SEV_STYLE.get(sev, "")
    status = "" if a.get("status") == "open" else f" [green]({a.get('status')})[/]"
    return f"  [{style}] {sev.upper():<8} [/] [bold]{rule.get('id')}[/]: {a.get('summary')}{status}"


async def _drain(c: Consumer) -> list[dict[str, Any]]:
    out = []
    for r in await c.poll(1000, timeout_s=0):
        out.append(orjson.loads(r.value))
    return out


async def run_demo(speed: float = 1.0, workdir: Path | None = None, console: Console | None = None) -> int:
    """Run the demo; return the exit code."""
    from connectors.instantly.sim import DEMO_INCIDENT, InstantlySimulator
    from connectors.instantly.sim.clock import ScaledClock
    from connectors.instantly.sim.seed import demo_world
    from connectors.instantly.source import InstantlyWorkspacePoller
    from pipeline.rules.worker import RulesWorker

    console = console or Console()
    setup_logging("console", "WARNING")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="instantly-audit-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    events: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    try:
        # One clock for the simulator and its watchers: at speed 4 the simulator's time runs ahead of
        # the wall clock, and a poller on the wall clock would observe events before they happened.
        clock: Clock = ScaledClock(speed) if speed != 1.0 else SYSTEM_CLOCK
        sim = InstantlySimulator(seed=7, clock=clock.now) if speed != 1.0 else InstantlySimulator(seed=7)
        world = demo_world(sim.state)
        register_secret(world.poller_key.key)
        async with sim, SqliteBus(workdir / "bus.db") as bus:
            cfg = WorkspaceConfig(
                api_key=EnvValue(world.poller_key.key),
                name="Acme Outreach",
                base_url=sim.url,
                poll_interval_secs=1,
                budget=BudgetConfig(requests_per_second=20, requests_per_minute=1200),
            )
            console.rule("[bold]instantly-audit demo[/] — a leaked key becomes an incident")
            console.print(
                f"Simulator: {sim.url} (workspace [bold]Acme Outreach[/]); {_bus_line(workdir, kept=tmp is None)}\n"
                "First poll: baseline of what already exists, then the scripted incident plays out.\n"
            )
            rules = RulesWorker(bus, DEMO_RULES, clock=clock)
            async with InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, audit_backfill_secs=0) as poller:
                ev_c = bus.consumer([EVENTS_TOPIC], start="earliest")
                al_c = bus.consumer([ALERTS_TOPIC], start="earliest")
                async with ev_c, al_c:
                    await _cycle(poller, rules, ev_c, al_c, events, alerts, console)
                    sim.start_scenario(DEMO_INCIDENT)
                    deadline = time.monotonic() + 14 / max(speed, 0.1)
                    while time.monotonic() < deadline:
                        await asyncio.sleep(1.0 / max(speed, 0.5))
                        await _cycle(poller, rules, ev_c, al_c, events, alerts, console)
                    await sim.scenario_done()
                    await _cycle(poller, rules, ev_c, al_c, events, alerts, console)
            _summary(console, events, alerts, time.monotonic() - started)
        config = None if tmp is not None else _write_bus_config(workdir)
        console.print(next_steps(program_name(), workdir if tmp is None else None, config))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


async def _cycle(
    poller: Any,
    rules: Any,
    ev_c: Consumer,
    al_c: Consumer,
    events: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    console: Console,
) -> None:
    await poller.poll_once()
    await rules.run_once()
    new_events = await _drain(ev_c)
    baseline = [e for e in new_events if str(e.get("type", "")).endswith("baseline")]
    if baseline:
        kinds = Counter(str(e["type"]).split(".")[0] for e in baseline)
        console.print("[dim]baseline:[/] " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    for e in new_events:
        if not str(e.get("type", "")).endswith("baseline"):
            console.print(_event_line(e))
    for a in await _drain(al_c):
        console.print(_alert_line(a))
        alerts.append(a)
    events.extend(new_events)


def _summary(console: Console, events: list[dict[str, Any]], alerts: list[dict[str, Any]], secs: float) -> None:
    console.rule("summary")
    t = Table(title=f"{len(alerts)} alerts from {len(events)} events in {secs:.0f}s", header_style="bold")
    t.add_column("severity")
    t.add_column("rule")
    t.add_column("alerts", justify="right")
    by_rule = Counter((a["rule"]["severity"], a["rule"]["id"]) for a in alerts if a.get("status") == "open")
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
    for (sev, rid), n in sorted(by_rule.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        t.add_row(f"[{SEV_STYLE.get(sev, '')}]{sev}[/]", rid, str(n))
    console.print(t)


def _bus_line(workdir: Path, *, kept: bool) -> str:
    if kept:
        return f"bus: {workdir / 'bus.db'}"
    return "bus: a temporary directory, deleted at exit (--workdir DIR keeps it)"


DEMO_CONFIG = "instantly-audit.yaml"
DEMO_CONFIG_HEADER = "# Written by `instantly-audit demo --workdir`: the demo's bus, for replay and status.\n"


def _write_bus_config(workdir: Path) -> Path | None:
    """``DIR/instantly-audit.yaml`` naming the kept bus (every reader takes a config, not a bus path);
    a file of that name the demo did not write is left alone (then ``None``)."""
    path = workdir / DEMO_CONFIG
    if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith(DEMO_CONFIG_HEADER):
        return None
    path.write_text(DEMO_CONFIG_HEADER + "bus: {type: sqlite, path: bus.db}   # relative to this file\n", "utf-8")
    return path


def next_steps(prog: str, kept: Path | None, config: Path | None = None) -> str:
    """The closing hint: commands that work when pasted (``prog`` is how this executable is typed)."""
    lines = [
        f"Next: [bold]{prog} simulate --write-config sim/instantly-audit.yaml[/] serves this world for a rehearsal "
        f"([bold]{prog} run -c sim/instantly-audit.yaml --once[/], then [bold]replay[/], [bold]check[/]); see README.",
    ]
    if kept is None:
        lines.append(f"The demo's bus is gone: [bold]{prog} demo --workdir DIR[/] keeps it in DIR/bus.db.")
    else:
        lines.append(f"The demo's bus is kept in {kept / 'bus.db'}.")
        if config is not None:
            lines.append(f"Look at it again: [bold]{prog} replay -c {config} --topic alerts[/] (or events, status).")
    return "\n".join(lines)
