"""``instantly-audit status``: each workspace's owner, cursor and last poll, and each group's lag — from the bus.

It reads the bus, never the processes: the poll status every poller writes to state
(``status/<source id>``, :func:`pipeline.sources.base.status_key`), the owner record a Kafka
replica writes when it takes a workspace over (``owner/<source id>``), the control group's current
assignment (Kafka: the admin client's ``DescribeGroups``), and the committed offsets of the rules
and sink consumer groups against the topics' end offsets. One shot by default; ``--watch [SECS]``
redraws until interrupted; ``--format json`` prints one JSON document per refresh.

Open sink circuits are not recorded on the bus, so they are not shown (the sink's
``/health`` endpoint reports them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from pipeline.bus.base import CONTROL_PARTITIONS, CONTROL_TOPIC, DATA_TOPICS, EVENTS_TOPIC, Bus
from pipeline.bus.factory import open_bus
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.clock import SYSTEM_CLOCK
from pipeline.config.model import PipelineConfig
from pipeline.sources.base import source_plugins, status_key

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
        workspaces = [_workspace(sid, state, members, bus, now) for sid in sorted(ids)]
        groups = await _lags(cfg, bus)
    return {"at": now, "bus": bus.name, "workspaces": workspaces, "groups": groups}


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


def _workspace(sid: str, state: dict[str, bytes], members: dict[int, str] | None, bus: Bus, now: float) -> JSON:
    status = _doc(state.get(status_key(sid)))
    owner_doc = _doc(state.get(f"owner/{sid}"))
    row: JSON = {"source_id": sid}
    if members is None:
        row["owner"] = "this process (embedded bus: one process polls every workspace)"
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
    row["last_poll"] = (
        ("failed: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
        if failures
        else ("ok" if status else "never")
    )
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


async def _lags(cfg: PipelineConfig, bus: Bus) -> list[JSON]:
    """Lag (end offset - committed, summed over partitions) of the rules group and each enabled sink's group."""
    from pipeline.delivery.batches import TOPICS

    groups: list[tuple[str, list[str]]] = [("rules", [EVENTS_TOPIC])]
    groups += [
        (f"sink-{sid}", [TOPICS[t] for t in dict.fromkeys(s.topics)]) for sid, s in cfg.sinks.items() if s.enabled
    ]
    async with bus.consumer(list(DATA_TOPICS), start="latest") as consumer:
        ends = await consumer.end_offsets()
    out: list[JSON] = []
    for group, topics in groups:
        per_topic: JSON = {}
        for topic in topics:
            committed = await bus.committed(group, topic)
            per_topic[topic] = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items() if tp.topic == topic)
        out.append({"group": group, "lag": sum(per_topic.values()), "topics": per_topic})
    return out


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
    lines += ["", "GROUP  LAG"]
    lines += [f"{g['group']}  {g['lag']}" for g in doc["groups"]]
    return "\n".join(lines)
