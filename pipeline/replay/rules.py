"""``replay --rules``: re-run the rules over a range and compare with what was recorded then.

The rules run in a fresh, isolated engine (empty state, no consumer group, nothing written
to the bus). Its clock follows the replayed events (the latest event time seen), so time
windows behave as they did live; after each batch the engine ticks at that time, so absence
correlations and other time-based rules fire once the replayed events pass their deadline (a
window still open at the end of the range is not reported: live, a later tick closed it).
Nothing is paged: alert sinks receive the alerts only with ``--deliver``. The report lists
the alerts that would be raised and the difference from the alerts recorded on
``instantly.alerts.v1`` for the same events:

* ``same``    — raised now and recorded then (matched by rule, dedup key and status);
* ``new``     — raised now, not recorded (a new or changed rule would have caught it);
* ``missing`` — recorded then, not raised now (a rule was disabled or relaxed).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Bus, Record
from pipeline.clock import parse_time
from pipeline.config.yaml_load import safe_load
from pipeline.errors import ConfigError
from pipeline.replay.scan import ReplayStats, Selection, scan
from pipeline.rules.engine import RulesEngine, decode_event
from schemas.alert import Alert


class EventClock:
    """A clock that reads the latest replayed event time (rules must not see the wall clock)."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        """Latest event time seen."""
        return self.t

    def monotonic(self) -> float:
        """Same as :meth:`now`."""
        return self.t

    def observe(self, when: str) -> None:
        """Move forward to ``when`` (never back)."""
        with contextlib.suppress(ValueError):
            self.t = max(self.t, parse_time(when))


def load_rules_file(path: str) -> tuple[dict[str, Any], Path]:
    """Read a pinned rules config (the ``rules:`` section, or a whole config file with one); return it
    with the directory its relative paths (``files``) are read against: the file's own.

    Raises:
        ConfigError: unreadable or not a mapping.
    """
    try:
        doc = safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--rules-file {path}: cannot read it ({type(err).__name__}: {err})") from None
    base = Path(path).resolve().parent
    if doc is None:
        return {}, base
    if not isinstance(doc, dict):
        raise ConfigError(f"--rules-file {path}: expected a mapping")
    inner = doc.get("rules")
    return (inner if isinstance(inner, dict) else doc), base


def _key(a: dict[str, Any]) -> tuple[str, str, str]:
    return (str((a.get("rule") or {}).get("id")), str(a.get("dedup_key")), str(a.get("status")))


async def rerun(
    bus: Bus,
    rules_config: dict[str, Any],
    sel: Selection,
    stats: ReplayStats,
    progress: Callable[[int, int], None] | None = None,
    base_dir: Path | None = None,
) -> tuple[list[Alert], set[str], int]:
    """Evaluate the rules over the selection; return (alerts, replayed event ids, rule failures).

    ``base_dir`` is what relative ``files`` are read against, as the rules worker reads them (the
    config file's directory), never the working directory.
    """
    clock = EventClock()
    engine = RulesEngine.from_config(rules_config, clock=clock, base_dir=base_dir)
    alerts: list[Alert] = []
    ids: set[str] = set()
    failures = 0
    async for batch in scan(bus, sel, stats, progress=progress, decode=False):  # decode_event below decodes
        events = []
        for rec, _body in batch:
            try:
                ev = decode_event(rec.value)
            except ValueError:
                stats.undecodable += 1
                continue
            clock.observe(ev.time)
            ids.add(ev.id)
            events.append(ev)
        result = engine.evaluate(events)
        alerts.extend(result.alerts)
        failures += len(result.failures)
        if clock.t:  # time-based rules (absence windows, stale keys) at the replayed event time
            ticked = engine.tick(clock.t)
            alerts.extend(ticked.alerts)
            failures += len(ticked.failures)
    return alerts, ids, failures


async def recorded_alerts(bus: Bus, event_ids: set[str]) -> list[dict[str, Any]]:
    """Alerts on the alerts topic that were raised by any of ``event_ids``."""
    out: list[dict[str, Any]] = []
    scratch = ReplayStats()
    async for batch in scan(bus, Selection(topic=ALERTS_TOPIC), scratch):
        for _, body in batch:
            if event_ids.intersection(body.get("event_ids") or ()):
                out.append(body)
    return out


def diff(now: list[dict[str, Any]], then: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Split into same / new / missing by (rule, dedup key, status)."""
    then_keys = {_key(a) for a in then}
    now_keys = {_key(a) for a in now}
    return {
        "same": [a for a in now if _key(a) in then_keys],
        "new": [a for a in now if _key(a) not in then_keys],
        "missing": [a for a in then if _key(a) not in now_keys],
    }


async def replay_rules(
    bus: Bus,
    cfg: Any,
    sel: Selection,
    stats: ReplayStats,
    args: argparse.Namespace,
    progress: Callable[[int, int], None] | None = None,
    out: IO[bytes] | None = None,
) -> int:
    """The ``replay --rules`` command body; returns the exit code.

    The diff goes to ``out`` (``--output``'s file; default stdout) as JSON Lines, or to the
    terminal as tables when stdout is one and neither ``--output`` nor ``--format jsonl`` is given.
    """
    if sel.topic != EVENTS_TOPIC:
        raise ConfigError("--rules replays events: use --topic events")
    if args.rules_file:
        rules_config, base_dir = load_rules_file(args.rules_file)
    else:  # relative rule files are the config file's, as the live rules worker reads them
        rules_config, base_dir = dict(cfg.rules), cfg.config_dir
    alerts, ids, failures = await rerun(bus, rules_config, sel, stats, progress, base_dir)
    now = [a.to_dict() for a in alerts]
    then = await recorded_alerts(bus, ids)
    d = diff(now, then)
    if args.deliver:
        await _deliver(cfg, alerts)
    dest = sys.stdout.buffer if out is None else out
    if args.format == "jsonl" or (args.format == "auto" and (out is not None or not sys.stdout.isatty())):
        for kind in ("same", "new", "missing"):
            for a in d[kind]:
                dest.write(orjson.dumps({"diff": kind, "alert": a}) + b"\n")
    else:
        from pipeline.replay.table import print_table

        for kind, title in (
            ("same", "raised now and then"),
            ("new", "NEW: raised now only"),
            ("missing", "MISSING: recorded then, not raised now"),
        ):
            print(f"\n{title}: {len(d[kind])}")
            if d[kind]:
                fake = Record(ALERTS_TOPIC, 0, 0, 0, None, b"")
                print_table([(fake, a) for a in d[kind]], ALERTS_TOPIC)
    print(
        f"replay --rules: {len(ids)} events, {len(now)} alerts now, {len(then)} recorded; "
        f"same {len(d['same'])}, new {len(d['new'])}, missing {len(d['missing'])}, rule errors {failures}"
        + ("" if args.deliver else " (not delivered; add --deliver to send them to alert sinks)")
        + stats.deleted_note(),
        file=sys.stderr,
    )
    return 0


async def _deliver(cfg: Any, alerts: list[Alert]) -> None:
    """Send re-run alerts to the sinks that subscribe to alerts (only with --deliver)."""
    from pipeline.delivery.base import Delivery
    from pipeline.delivery.registry import build_sink
    from pipeline.delivery.runner import decode

    for sid, scfg in cfg.sinks.items():
        if "alerts" not in scfg.topics or not scfg.enabled:
            continue
        deliveries = []
        for a in alerts:
            d = decode(Record(ALERTS_TOPIC, 0, 0, 0, a.workspace.id.encode(), a.to_json()))
            if isinstance(d, Delivery):
                deliveries.append(d)
        async with build_sink(sid, scfg) as sink:
            result = await sink.send(deliveries)
        print(f"replay --rules --deliver: {sid}: {len(deliveries) - len(result.failures)} delivered", file=sys.stderr)


__all__ = ["diff", "recorded_alerts", "replay_rules", "rerun"]
