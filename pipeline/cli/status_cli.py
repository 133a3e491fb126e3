"""``instantly-audit status``: each workspace's owner, cursor and last poll, and each group's lag — from the bus.

It reads the bus, never the processes: the poll status every poller writes to state
(``status/<source id>``, :func:`pipeline.sources.base.status_key`), the owner record a Kafka
replica writes when it takes a workspace over (``owner/<source id>``), the control group's current
assignment (Kafka: the admin client's ``DescribeGroups``), and the committed offsets of the rules
and sink consumer groups against the topics' end offsets — and, with ``bus.max_consumer_lag``,
whether polling is paused by backpressure (:mod:`pipeline.sources.backpressure`: same lags, same
bound). One shot by default; ``--watch [SECS]`` redraws until interrupted; ``--format json``
prints one JSON document per refresh.

Open sink circuits are not recorded on the bus, so they are not shown (the sink's
``/health`` endpoint reports them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.bus.base import CONTROL_PARTITIONS, CONTROL_TOPIC, Bus
from pipeline.bus.factory import open_bus
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.clock import SYSTEM_CLOCK
from pipeline.config.model import PipelineConfig
from pipeline.sources.backpressure import measure_lags, over_bound, watched_groups
from pipeline.sources.base import failure_lines, source_plugins, status_key

JSON = dict[str, Any]
CONTROL_GROUP = "pollers"  # pipeline.sources.assignment.CONTROL_GROUP (not imported: no cycle via topology)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` command."""
    p = sub.add_parser(
        "status",
        help="per workspace: owner, cursor age, last poll; consumer lag per group (reads the bus)",
        description="Show each workspace's owner replica, cursor age and last poll result, and the lag of the "
        "rules and sink consumer groups, as recorded on the bus. Exit 0, or 2 for a config error, 1 when "
        "the bus cannot be read.",
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECS", help="refresh every SECS (2)"
    )
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config, resolve_under

    cfg = load_config(config_path(args.config), resolve=resolve_under(("bus",)))
    render = _json if args.format == "json" else _text
    if args.watch is None:
        print(render(asyncio.run(collect(cfg))))
        return 0
    try:
        while True:
            out = render(asyncio.run(collect(cfg)))
            if args.format == "text" and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(out, flush=True)
            time.sleep(max(0.5, args.watch))
    except KeyboardInterrupt:
        return 0


async def collect(cfg: PipelineConfig, now: float | None = None) -> JSON:
    """The status document: ``workspaces`` (one entry each) and ``groups`` (lag per consumer group).

    Raises:
        BusError: the bus cannot be read.
    """
    now = SYSTEM_CLOCK.now() if now is None else now
    async with open_bus(cfg.bus, read_only=True) as bus:
        state = await bus.state_items()
        ids = _source_ids(cfg, bus) | {k.split("/", 1)[1] for k in state if k.startswith("status/")}
        members = await _control_members(bus)
        embedded = _embedded_owner(bus) if members is None else ""
        workspaces = [_workspace(sid, state, members, bus, now, embedded) for sid in sorted(ids)]
        groups = await measure_lags(bus, watched_groups(cfg))
    bound = getattr(cfg.bus, "max_consumer_lag", None)
    over = over_bound(groups, bound)
    backpressure = {"max_consumer_lag": bound, "paused": bool(over), "groups_over": over}
    return {"at": now, "bus": bus.name, "workspaces": workspaces, "groups": groups, "backpressure": backpressure}


def _source_ids(cfg: PipelineConfig, bus: Bus) -> set[str]:
    """The configured sources (built, never entered: no connection is made)."""
    return {s.source_id for p in source_plugins().values() for s in p.build(cfg, bus, SYSTEM_CLOCK)}


async def _control_members(bus: Bus) -> dict[int, str] | None:
    """Control partition → the group member owning it (Kafka); None on a bus without sharing."""
    describe = getattr(bus, "describe_group", None)
    if describe is None:
        return None
    out: dict[int, str] = {}
    for member, owned in (await describe(CONTROL_GROUP)).items():
        for topic, part in owned:
            if topic == CONTROL_TOPIC:
                out[part] = member
    return out


def _embedded_owner(bus: Bus) -> str:
    """Who polls on the embedded bus: the ``run`` holding its writer lock, or nobody."""
    from pipeline.bus.sqlite_files import writer_pid

    path = getattr(bus, "path", None)
    pid = writer_pid(path) if isinstance(path, Path) else None
    if pid is None:
        return "no process running (embedded bus: `run` polls every workspace)"
    return f"pid {pid} (embedded bus: one process polls every workspace)"


def _workspace(
    sid: str, state: dict[str, bytes], members: dict[int, str] | None, bus: Bus, now: float, embedded: str = ""
) -> JSON:
    status = _doc(state.get(status_key(sid)))
    owner_doc = _doc(state.get(f"owner/{sid}"))
    row: JSON = {"source_id": sid}
    if members is None:
        row["owner"] = embedded
    else:
        part = bus.partition_of(sid.encode(), CONTROL_PARTITIONS)  # type: ignore[attr-defined]
        member = members.get(part)
        row["partition"] = part
        row["member"] = member
        row["owner"] = (owner_doc.get("replica") or "?") if member else "unassigned"
    at, cursor_at = status.get("at"), status.get("cursor_at")
    row["last_poll_age_secs"] = round(now - at, 1) if isinstance(at, int | float) else None
    row["cursor_age_secs"] = round(now - cursor_at, 1) if isinstance(cursor_at, int | float) else None
    failures = status.get("failures") or {}
    row["last_poll"] = ("failed: " + "; ".join(failure_lines(failures))) if failures else ("ok" if status else "never")
    published = status.get("published") or {}
    row["published"] = sum(v for v in published.values() if isinstance(v, int))
    row["requests_last_minute"] = status.get("requests_last_minute")
    return row


def _doc(raw: bytes | None) -> JSON:
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _json(doc: JSON) -> str:
    return orjson.dumps(doc).decode()


def _age(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}s"


def _text(doc: JSON) -> str:
    lines = [f"bus: {doc['bus']}", ""]
    head = ("WORKSPACE", "OWNER", "CURSOR AGE", "LAST POLL", "AGO", "REQ/MIN")
    rows = [
        (
            w["source_id"],
            str(w["owner"]),
            _age(w["cursor_age_secs"]),
            w["last_poll"],
            _age(w["last_poll_age_secs"]),
            "-" if w["requests_last_minute"] is None else str(w["requests_last_minute"]),
        )
        for w in doc["workspaces"]
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in [head, *rows]]
    groups = [("GROUP", "LAG"), *((str(g["group"]), str(g["lag"])) for g in doc["groups"])]
    width = max(len(g) for g, _ in groups)
    lines += ["", *(f"{g.ljust(width)}  {lag}" for g, lag in groups)]
    bp = doc.get("backpressure") or {}
    if bp.get("max_consumer_lag") is not None:
        state = f"polling paused ({', '.join(bp['groups_over'])} at or over)" if bp["paused"] else "polling runs"
        lines += ["", f"backpressure: max_consumer_lag {bp['max_consumer_lag']}: {state}"]
    return "\n".join(lines)
