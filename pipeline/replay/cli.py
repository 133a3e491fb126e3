"""``instantly-audit replay``: select a range of a topic and look at it, re-deliver it, or re-run the rules."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import fnmatch
import signal
import sys
import time
from dataclasses import replace
from typing import IO, Any

import orjson

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.cli import terminate
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.clock import SYSTEM_CLOCK, format_time
from pipeline.errors import ConfigError, UsageError
from pipeline.replay.identity import IdentityIndex
from pipeline.replay.scan import (
    TOPICS,
    WHEN_FORMS,
    ReplayStats,
    Selection,
    parse_offsets,
    parse_when,
    parse_where,
    scan,
    scan_values,
    sort_timeline,
    where_path,
)
from pipeline.replay.table import print_table
from pipeline.sources.base import configured_workspace_ids, source_plugins


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` command."""
    p = sub.add_parser(
        "replay",
        help="replay a range of a topic: look at it, re-deliver it to a sink, or re-run the rules",
        description=(
            "Replay what the bus holds. Never moves the running pipeline's consumer offsets. "
            "Time filters use the event time; --since also accepts 7d, 12h, 30m; a time without Z or an "
            "offset is UTC."
        ),
    )
    p.add_argument("--config", "-c", help=f"the pipeline's YAML config (for the bus and sinks); {CONFIG_HELP}")
    p.add_argument(
        "--topic", choices=sorted(TOPICS),
        help="the topic to read (default events; --timeline without --topic reads events and alerts, merged)",
    )  # fmt: skip
    p.add_argument("--since", help=f"start time (event time): {WHEN_FORMS}")
    p.add_argument("--until", help="end time (exclusive), same forms as --since")
    p.add_argument("--from-offset", help="OFFSET or PARTITION:OFFSET[,...] to start at")
    p.add_argument("--to-offset", help="OFFSET or PARTITION:OFFSET[,...] to stop at (inclusive)")
    p.add_argument(
        "--workspace", action="append", default=[], metavar="ALIAS|ID",
        help="workspace: its alias in the config or its id (repeatable)",
    )  # fmt: skip
    p.add_argument("--type", action="append", default=[], help="event type or rule id glob, e.g. 'api_key.*'")
    p.add_argument("--actor", help="actor user id, user name, IP or API key id")
    p.add_argument("--target", help="target id (or alert entity id)")
    p.add_argument(
        "--where", action="append", default=[], metavar="FIELD=VALUE",
        help="a field of the record by dotted path equals VALUE (FIELD!=VALUE: does not; * ? [ glob), e.g. "
        "actor.api_key_id=ID, actor.ip=185.220.*, attributes.activity_code=34, event_ids=ID (repeatable, AND)",
    )  # fmt: skip
    p.add_argument("--severity", choices=["info", "low", "medium", "high", "critical"], help="minimum alert severity")
    p.add_argument(
        "--timeline", metavar="ENTITY", help="everything that touched a user, key, member, IP or email, in order"
    )
    p.add_argument("--limit", type=int, help="stop after N matching records")
    p.add_argument("--format", choices=["auto", "table", "jsonl"], default="auto", help="auto = table on a terminal")
    p.add_argument("--output", "-o", help="write JSON Lines to this file instead of stdout")
    p.add_argument("--to", dest="to_sink", metavar="SINK", help="re-deliver the range into this configured sink")
    p.add_argument("--rules", action="store_true", help="re-run the rules over the range (isolated; pages nobody)")
    p.add_argument("--rules-file", help="with --rules: a pinned rules config (YAML) instead of the config's")
    p.add_argument("--deliver", action="store_true", help="with --rules: also send the alerts to the alert sinks")
    p.add_argument(
        "--gaps", action="store_true",
        help="only the events of the hours 'instantly-audit gaps' lists (within --since/--until, --workspace)",
    )  # fmt: skip
    p.add_argument("--hours", metavar="FILE", help="only the events of the hours in this 'gaps --format json' output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def selection_from_args(args: argparse.Namespace) -> Selection:
    """Build the selection from the command line.

    Raises:
        ConfigError: a bad offset; UsageError: a bad time.
    """
    topic = TOPICS[args.topic or "events"]
    since = parse_when(args.since, SYSTEM_CLOCK, "--since") if args.since else None
    until = parse_when(args.until, SYSTEM_CLOCK, "--until") if args.until else None
    if since is not None and until is not None and until <= since:
        raise UsageError(
            f"argument --until must be after --since ({format_time(until)} is not after {format_time(since)})"
        )
    if args.severity and topic != ALERTS_TOPIC and not merges_alerts(args):
        raise UsageError(
            f"argument --severity: only alerts have a severity, the {args.topic or 'events'} topic has none: "
            "use --topic alerts (or --timeline, which merges the alerts with the events)"
        )
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    return Selection(
        topic=topic,
        since=since,
        until=until,
        from_offsets=parse_offsets(args.from_offset, topic) if args.from_offset else {},
        to_offsets=parse_offsets(args.to_offset, topic) if args.to_offset else {},
        workspaces=tuple(args.workspace),
        types=tuple(args.type),
        actor=args.actor,
        target=args.target,
        min_severity=args.severity,
        where=tuple(parse_where(w, [topic, ALERTS_TOPIC] if merges_alerts(args) else [topic]) for w in args.where),
        entity=args.timeline,
        limit=args.limit,
    )


def merges_alerts(args: argparse.Namespace) -> bool:
    """``--timeline`` without ``--topic`` (nor offsets, which name one topic's positions) shows the
    alerts too, merged with the events in time order: what happened and what it raised, in one view."""
    return bool(
        args.timeline and args.topic is None and not (args.from_offset or args.to_offset or args.gaps or args.hours)
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of the command."""
    from pipeline.config.loader import load_config, resolve_under

    # Replay reads the bus and, with --to or --rules --deliver, sinks: it reads no other secret.
    wanted: list[tuple[str, ...]] = [("bus",)]
    if args.to_sink:
        wanted.append(("sinks", args.to_sink))
    if args.deliver:
        wanted.append(("sinks",))
    cfg = load_config(config_path(args.config), resolve=resolve_under(*wanted))
    sel = selection_from_args(args)
    if args.deliver and not args.rules:
        raise ConfigError("--deliver only applies with --rules")
    if args.gaps and args.hours:
        raise ConfigError("--gaps and --hours are alternatives: give one")
    if (args.gaps or args.hours) and sel.topic != EVENTS_TOPIC:
        raise ConfigError("--gaps / --hours select events: use them with --topic events")
    if args.hours:
        from pipeline.completeness.gaps import hours_from_json

        with open(args.hours, "rb") if args.hours != "-" else contextlib.nullcontext(sys.stdin.buffer) as f:
            sel = narrow_to_hours(sel, hours_from_json(f.read()))
    if args.to_sink and args.to_sink not in cfg.sinks:
        known = ", ".join(sorted(cfg.sinks)) or "none configured"
        raise ConfigError(f"--to {args.to_sink}: no such sink (known: {known})")
    return asyncio.run(_run(args, cfg, sel))


async def _run(args: argparse.Namespace, cfg: Any, sel: Selection) -> int:
    from pipeline.bus.factory import open_bus

    stats = ReplayStats(warn=lambda line: print(f"replay: warning: {line}", file=sys.stderr))
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, lambda: task.cancel() if task else None)

    def on_sigterm() -> None:
        terminate.mark_terminated()  # the CLI then says "terminated" and exits 143
        if task:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    out: IO[bytes] = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115, ASYNC230 - opened once before the loop
    table = args.format == "table" or (args.format == "auto" and not args.output and sys.stdout.isatty())
    progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())
    collected: list[tuple[Record, dict[str, Any]]] = []
    try:
        async with open_bus(cfg.bus, read_only=True) as bus:
            if sel.workspaces:
                sel = replace(
                    sel, workspaces=resolve_workspaces(sel.workspaces, await configured_workspace_ids(cfg, bus))
                )
            if args.gaps:
                from pipeline.completeness.gaps import find_gaps, hour_keys, read_receipts

                since = sel.since // 3600 * 3600 if sel.since is not None else None  # the hour holding it
                found = await read_receipts(bus, since=since, until=sel.until, workspaces=sel.workspaces)
                sel = narrow_to_hours(sel, hour_keys(find_gaps(found.receipts)))
                print(f"replay --gaps: {len(sel.hours or ())} hour(s) with gaps", file=sys.stderr)
            if args.rules:
                from pipeline.replay.rules import replay_rules

                code = await replay_rules(bus, cfg, sel, stats, args, progress.update, out if args.output else None)
                _unmatched_workspaces(args.workspace, cfg, stats)
                _unmatched_filters(args, stats)
                return code
            if args.to_sink:
                from pipeline.replay.deliver import redeliver

                code = await redeliver(bus, cfg, sel, stats, args.to_sink, progress.update)
                _unmatched_workspaces(args.workspace, cfg, stats)
                _unmatched_filters(args, stats)
                return code
            if args.timeline:
                sel = replace(sel, aliases=await identity_aliases(bus, args.timeline))
            merged, limit = merges_alerts(args), sel.limit
            if merged:  # the limit is then the first N in time order, applied once both topics are read
                sel = replace(sel, limit=None)
                async for batch in scan(bus, replace(sel, topic=ALERTS_TOPIC), stats, progress=progress.update):
                    collected.extend(batch)
            if not (table or args.timeline):
                async for values in scan_values(bus, sel, stats, progress=progress.update):
                    out.write(b"\n".join(values) + b"\n")
            else:
                async for batch in scan(bus, sel, stats, progress=progress.update):
                    collected.extend(batch)
            if args.timeline:
                collected = sort_timeline(collected)
            if merged and limit is not None and len(collected) > limit:
                collected = collected[:limit]
                stats.matched = limit
            if table:
                print_table(collected, "timeline" if merged else sel.topic)
            elif collected:
                out.write(b"".join(orjson.dumps(b) + b"\n" for _, b in collected))
    except asyncio.CancelledError:
        stats.interrupted = True
    finally:
        progress.close()
        if args.output:
            out.close()
        else:
            sys.stdout.flush()
    _summary(stats, sel)
    if not stats.interrupted:
        _unmatched_workspaces(args.workspace, cfg, stats)
        _unmatched_filters(args, stats)
    return 130 if stats.interrupted else 0


def narrow_to_hours(sel: Selection, hours: frozenset[tuple[str, str, int]]) -> Selection:
    """Select only the events of ``hours`` (and start the scan at the first of them)."""
    since = sel.since
    if hours:
        first = min(h for _w, _s, h in hours) * 3600.0
        since = first if since is None else max(since, first)
    return replace(sel, hours=hours, since=since)


def resolve_workspaces(names: tuple[str, ...], ids: dict[str, str]) -> tuple[str, ...]:
    """The workspace ids ``--workspace`` names: an alias becomes its id (``ids``: alias → id, from the
    bus) and stays as given too (a poller that had not read its workspace's id yet filed events under
    the alias); anything else is taken as an id."""
    out: list[str] = []
    for name in names:
        out += [ids[name], name] if name in ids else [name]
    return tuple(dict.fromkeys(out))


async def identity_aliases(bus: Any, entity: str) -> frozenset[str]:
    """Every identifier the events link to ``entity`` (one pass over the events topic)."""
    index = IdentityIndex()
    async for batch in scan(bus, Selection(topic=EVENTS_TOPIC), ReplayStats()):
        for _, body in batch:
            index.learn(body)
    return index.aliases(entity)


def _unmatched_filters(args: argparse.Namespace, stats: ReplayStats) -> None:
    """Nothing matched: say which ``--type`` glob or ``--where`` field no scanned record has (a typo
    such as ``api_key.create`` or ``actor.ip_address`` otherwise reads as "the key did nothing")."""
    if stats.matched or not stats.scanned:
        return
    for glob in args.type:
        if not any(fnmatch.fnmatchcase(t, glob) for t in stats.types_seen):
            close = difflib.get_close_matches(glob, sorted(stats.types_seen), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            seen = ", ".join(sorted(stats.types_seen)[:12]) + (", …" if len(stats.types_seen) > 12 else "")
            print(f"replay: --type {glob!r}: no record in the scanned range has such a type{hint} (seen: {seen})",
                  file=sys.stderr)  # fmt: skip
    for clause in getattr(args, "where", []):
        path = where_path(clause)
        if path not in stats.paths_seen:
            print(f"replay: --where {clause!r}: no record in the scanned range has the field {'.'.join(path)}",
                  file=sys.stderr)  # fmt: skip


def _unmatched_workspaces(names: list[str], cfg: Any, stats: ReplayStats) -> None:
    """Nothing matched: say which ``--workspace`` values are neither an alias of the config nor a
    workspace id in the scanned range (a typo; ``check`` refuses those, replay also takes the id of a
    sub-workspace the config does not name, so it says so and goes on)."""
    if stats.matched or not names:
        return
    aliases = configured_aliases(cfg)
    unknown = [n for n in names if n not in aliases and n not in stats.workspaces_seen]
    if unknown:
        known = ", ".join(sorted(aliases)) or "none"
        print(
            f"replay: --workspace {', '.join(map(repr, unknown))}: not a workspace of the config (known: {known}) "
            "nor a workspace id in the scanned range",
            file=sys.stderr,
        )


def configured_aliases(cfg: Any) -> set[str]:
    """The workspace aliases the config names (the keys of every source plugin's sections)."""
    out: set[str] = set()
    for plugin in source_plugins().values():
        for key in plugin.sections:
            section = getattr(cfg, "sections", {}).get(key)
            names = getattr(section, "root", section)
            if isinstance(names, dict):
                out |= set(names)
    return out


def _summary(stats: ReplayStats, sel: Selection | None = None) -> None:
    word = "interrupted" if stats.interrupted else "done"
    extra = f", {stats.undecodable} undecodable" if stats.undecodable else ""
    span = ""
    if sel is not None and (sel.since is not None or sel.until is not None):
        start = format_time(sel.since) if sel.since is not None else "the start"
        end = format_time(sel.until) if sel.until is not None else "now"
        span = f"; event time {start} to {end} (UTC, end excluded)"
    print(
        f"replay {word}: {stats.matched} matched of {stats.scanned} scanned ({stats.rate:,.0f} records/s){extra}{span}"
        + stats.deleted_note(),
        file=sys.stderr,
    )


class _Progress:
    """A rich progress bar on stderr with rate and ETA (only on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._t0 = 0.0

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total < 5000:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("replay"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.completed:,} records {task.description}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=total)
            self._t0 = time.monotonic()
        rate = done / max(time.monotonic() - self._t0, 1e-9)
        self._bar.update(self._task, completed=done, description=f"{rate:,.0f}/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
