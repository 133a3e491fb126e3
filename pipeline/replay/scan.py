"""Replay: read a range of a topic, filter it, and hand it to an output (terminal, JSONL, a sink, the rules).

Replay never joins a consumer group, so it never moves the running pipeline's offsets;
on the embedded bus it opens the file read-only. The range is fixed when replay starts
(the end offsets at that moment), so a replay while the pipeline writes reads a
consistent snapshot and finishes.

Time selection is by the *event* time: the scan starts at the first record published at
or after ``since`` (a record is always published after its event happened, so nothing in
range is skipped) and each record's event time is then checked against ``since``/``until``.

Offset selection: a partition the topic does not have is a usage error (:class:`ConfigError`,
naming the partition and the topic's partition count). A start below the first retained
offset (records deleted by retention, or Kafka's ``deleteRecords``) starts at that offset and
is reported (:attr:`ReplayStats.deleted`), never passed over in silence.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, Bus, Consumer, Record, TopicPartition
from pipeline.clock import Clock, parse_time
from pipeline.errors import ConfigError, UsageError
from schemas.alert import severity_rank
from schemas.codec import decode_document
from schemas.deadletter import from_legacy, is_legacy
from schemas.errors import RecordError

TOPICS = {"events": EVENTS_TOPIC, "alerts": ALERTS_TOPIC, "deadletter": DEADLETTER_TOPIC}
_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EPOCH = re.compile(r"^(\d{9,10}|\d{12,13})(?:\.\d+)?$")


WHEN_FORMS = (
    "2026-11-01T21:00Z, 2026-11-01T21:00+02:00, 2026-11-01, epoch seconds or milliseconds (1793566800), now "
    "or a relative 7d/12h/30m; without Z or an offset, UTC"
)
"""The forms ``--since``/``--until`` take (their help and the error say it)."""


def parse_when(text: str, clock: Clock, flag: str | None = None) -> float:
    """Parse ``2026-11-01T00:00Z``, ``2026-11-01``, epoch seconds (``1793566800``, a fraction allowed)
    or milliseconds (13 digits, as Splunk, Elastic and browsers print them), ``now``, or a relative
    ``7d``/``12h``/``30m`` (before now).

    A time without ``Z`` or an offset (``2026-12-07 21:00``) is UTC, whatever the local zone.

    Raises:
        UsageError: the text is neither (naming ``flag``, the argument it came from, when given).
    """
    t = text.strip()
    m = _REL.match(t)
    if m:
        return clock.now() - float(m.group(1)) * _UNIT[m.group(2)]
    if t.lower() == "now":
        return clock.now()
    m = _EPOCH.match(t)
    if m:  # 9-10 digits: seconds (2001-2286); 12-13: milliseconds. A bare year or 20261201 is not one.
        return float(t) / (1000.0 if len(m.group(1)) >= 12 else 1.0)
    try:
        if re.match(r"^\d{4}-\d{2}-\d{2}$", t):
            t += "T00:00:00Z"
        if re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})?$", t):
            t = t.replace("Z", ":00Z") if t.endswith("Z") else t[:16] + ":00" + t[16:]
        return parse_time(t)
    except ValueError:
        where = f"argument {flag}: " if flag else ""
        raise UsageError(f"{where}'{text}' is not a time: use {WHEN_FORMS}") from None


def parse_offsets(spec: str, topic: str) -> dict[TopicPartition, int]:
    """Parse ``0:120,1:80`` (partition:offset) or a bare ``120`` (every partition).

    Raises:
        ConfigError: malformed, or a negative partition or offset.
    """
    out: dict[TopicPartition, int] = {}
    try:
        if ":" not in spec:
            out[TopicPartition(topic, -1)] = int(spec)
        else:
            for part in spec.split(","):
                p, o = part.split(":")
                if int(p) < 0:
                    raise ValueError(p)
                out[TopicPartition(topic, int(p))] = int(o)
        if any(o < 0 for o in out.values()):
            raise ValueError(spec)
    except ValueError:
        raise ConfigError(f"'{spec}' is not an offset spec: use OFFSET or PARTITION:OFFSET[,...]") from None
    return out


_SCHEMA_FIELDS: dict[str, tuple[str, frozenset[str]]] = {}


def _top_fields(topic: str) -> tuple[str, frozenset[str]]:
    """The contract a topic carries and its top-level fields (from the JSON Schema files)."""
    if not _SCHEMA_FIELDS:
        import schemas

        here = Path(schemas.__file__).parent
        for t, name, title in ((EVENTS_TOPIC, "event", "Event v1"), (ALERTS_TOPIC, "alert", "Alert v1"),
                               (DEADLETTER_TOPIC, "deadletter", "DeadLetter v1")):  # fmt: skip
            doc = orjson.loads((here / f"{name}.v1.json").read_bytes())
            _SCHEMA_FIELDS[t] = (title, frozenset(doc.get("properties") or {}))
    return _SCHEMA_FIELDS.get(topic, ("record", frozenset()))


@dataclass(frozen=True)
class Where:
    """One ``--where PATH=VALUE`` (or ``PATH!=VALUE``) clause on a record's fields."""

    text: str
    path: tuple[str, ...]
    value: str
    negate: bool = False

    def matches(self, body: dict[str, Any]) -> bool:
        """True when a value at the path equals (or, with ``*?[``, glob-matches) the value; ``!=`` inverts."""
        found = field_values(body, self.path)
        glob = any(c in self.value for c in "*?[")
        hit = found is not None and any(
            fnmatch.fnmatchcase(t, self.value) if glob else t == self.value for t in map(_as_text, found)
        )
        return hit != self.negate


def parse_where(text: str, topics: Sequence[str]) -> Where:
    """Parse ``actor.ip=185.220.101.47`` / ``source.kind!=snapshot`` for records of ``topics``.

    Raises:
        UsageError: no ``=``, an empty path, or a first segment that is not a field of the topics' contract.
    """
    path_text, sep, value = text.partition("=")
    negate = path_text.strip().endswith("!")
    path = where_path(text)
    if not sep or not all(path):
        raise UsageError(f"argument --where: '{text}' is not FIELD=VALUE (e.g. actor.ip=203.0.113.7, a dotted path)")
    known = [_top_fields(t) for t in topics]
    if not any(path[0] in fields for _, fields in known):
        titles = " / ".join(title for title, _ in known)
        names = ", ".join(sorted(set().union(*(f for _, f in known))))
        raise UsageError(f"argument --where: '{path[0]}' is not a field of {titles} (fields: {names})")
    return Where(text, path, value.strip(), negate)  # "actor.ip = 1.2.3.4" as typed in a SIEM


def where_path(text: str) -> tuple[str, ...]:
    """The dotted path of a ``--where`` clause (``actor.ip`` of ``actor.ip != 1.2.3.4``)."""
    return tuple(p.strip() for p in text.partition("=")[0].strip().rstrip("!").split("."))


def field_values(body: Any, path: Sequence[str]) -> list[Any] | None:
    """The values at a dotted path (a list on the way is searched element by element and a list at
    the end gives its elements); ``None`` when no object on the way has the last key."""
    cur: list[Any] = [body]
    for i, seg in enumerate(path):
        nxt: list[Any] = []
        present = False
        for c in cur:
            if isinstance(c, dict) and seg in c:
                present = True
                v = c[seg]
                nxt.extend(v if isinstance(v, list) else [v])
        if not present:
            return None
        cur = nxt if i == len(path) - 1 else [x for x in nxt if isinstance(x, (dict, list))]
    return cur


def _as_text(v: Any) -> str:
    """A field value as the analyst types it: strings as they are, JSON for the rest (true, null, 34)."""
    return v if isinstance(v, str) else orjson.dumps(v).decode()


@dataclass(frozen=True)
class Selection:
    """What to replay."""

    topic: str = EVENTS_TOPIC
    since: float | None = None
    until: float | None = None
    from_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    to_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    workspaces: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    actor: str | None = None
    target: str | None = None
    min_severity: str | None = None
    entity: str | None = None
    aliases: frozenset[str] = frozenset()
    """The entity's other identifiers (``--timeline``: see :mod:`pipeline.replay.identity`)."""
    where: tuple[Where, ...] = ()
    """``--where``: field clauses, all of which must hold."""
    limit: int | None = None
    hours: frozenset[tuple[str, str, int]] | None = None
    """``--gaps`` / ``--hours``: only events whose (workspace id, source stream, event time // 3600)
    is one of these (see :mod:`pipeline.completeness.gaps`)."""

    @property
    def filters_content(self) -> bool:
        """True when records must be decoded to apply the selection (any content or time filter)."""
        return bool(
            self.since is not None
            or self.until is not None
            or self.workspaces
            or self.types
            or self.actor is not None
            or self.target is not None
            or self.min_severity is not None
            or self.entity is not None
            or self.hours is not None
            or bool(self.where)
        )

    def matches(self, body: dict[str, Any]) -> bool:
        """Apply the content filters (they compose with AND)."""
        if self.workspaces and (body.get("workspace") or {}).get("id") not in self.workspaces:
            return False
        kind = record_kind(body)
        if self.types and not any(fnmatch.fnmatchcase(kind, g) for g in self.types):
            return False
        when = event_time(body)
        if self.hours is not None:
            ws, stream = (body.get("workspace") or {}).get("id"), (body.get("source") or {}).get("stream")
            if when is None or (ws, stream, int(when // 3600)) not in self.hours:
                return False
        if self.since is not None and (when is None or when < self.since):
            return False
        if self.until is not None and (when is None or when >= self.until):
            return False
        if self.actor is not None:  # names and emails as people type them: case-insensitive, like --timeline
            a = body.get("actor") or {}
            who = (a.get("user_id"), a.get("user_name"), a.get("ip"), a.get("api_key_id"))
            if self.actor not in who and not _any_casefold(who, self.actor):
                return False
        if self.target is not None:
            t = body.get("target") or {}
            ids = [t.get("id")] + [e.get("id") for e in body.get("entities") or []]
            if self.target not in ids and not _any_casefold(ids, self.target):
                return False
        rule = body.get("rule")
        if self.min_severity is not None and isinstance(rule, dict):  # alerts (a merged timeline keeps events)
            sev = rule.get("severity")
            if sev is None or severity_rank(sev) < severity_rank(self.min_severity):
                return False
        if not all(w.matches(body) for w in self.where):
            return False
        return self.entity is None or touches(body, self.entity, self.aliases)


def _any_casefold(values: Sequence[Any], wanted: str) -> bool:
    """True when a string among ``values`` equals ``wanted`` ignoring case."""
    folded = wanted.casefold()
    return any(isinstance(x, str) and x.casefold() == folded for x in values)


def record_kind(body: dict[str, Any]) -> str:
    """What ``--type`` matches: an event's type, an alert's rule id, a dead letter's rule (a rule id
    string, for a ``rule_error``) or else its reason."""
    rule = body.get("rule")
    kind = body.get("type") or (rule.get("id") if isinstance(rule, dict) else rule) or body.get("reason")
    return str(kind or "")


def event_time(body: dict[str, Any]) -> float | None:
    """When the event happened (alerts: last_seen; dead letters: failed_at, when the stage refused it)."""
    t = body.get("time") or body.get("last_seen") or body.get("failed_at")
    if not isinstance(t, str):
        return None
    try:
        return parse_time(t)
    except ValueError:
        return None


_ENTITY_FIELDS = ("email", "key_fingerprint", "user_email", "value", "sub_workspace_id", "target_hook_url", "name")


def touches(body: dict[str, Any], entity: str, aliases: frozenset[str] = frozenset()) -> bool:
    """True when ``entity`` (a user, key, member, IP, email, fingerprint…) or one of its ``aliases``
    (lower-cased) appears in the event's who/what."""
    names = aliases | {entity.lower()}
    a = body.get("actor") or {}
    t = body.get("target") or {}
    candidates: list[Any] = [a.get("user_id"), a.get("user_name"), a.get("api_key_id"), a.get("ip")]
    candidates += [t.get("id"), t.get("name")]
    attrs = body.get("attributes") or {}
    candidates += [attrs.get(f) for f in _ENTITY_FIELDS]
    candidates += [x.get("id") for x in body.get("entities") or []] + [
        x.get("name") for x in body.get("entities") or []
    ]
    return any(isinstance(c, str) and c.lower() in names for c in candidates)


@dataclass
class ReplayStats:
    """What a replay did."""

    scanned: int = 0
    matched: int = 0
    undecodable: int = 0
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    deleted: dict[TopicPartition, int] = field(default_factory=dict)
    """Partitions where ``--from-offset`` asked for records that no longer exist: the first
    retained offset, where the replay started instead."""
    warn: Callable[[str], None] | None = None
    """Told each warning as it is found (the CLI prints it on stderr)."""
    workspaces_seen: set[str] = field(default_factory=set)
    """With a ``--workspace`` filter: the workspace ids of the records scanned (to tell a typo)."""
    types_seen: set[str] = field(default_factory=set)
    """With a ``--type`` filter: the event types / rule ids of the records scanned (to tell a typo)."""
    paths_seen: set[tuple[str, ...]] = field(default_factory=set)
    """With ``--where``: the clause paths some scanned record has (a path none has is a typo)."""

    @property
    def rate(self) -> float:
        """Records scanned per second."""
        return self.scanned / max(time.monotonic() - self.started, 1e-9)

    def note_deleted(self, tp: TopicPartition, first: int) -> None:
        """Record (and say) that offsets before ``first`` on ``tp`` were deleted."""
        self.deleted[tp] = first
        if self.warn is not None:
            self.warn(
                f"offsets before {first} on partition {tp.partition} of {tp.topic} no longer exist "
                f"(deleted by retention); starting at {first}"
            )

    def deleted_note(self) -> str:
        """For a summary line: where the range began after deleted records ('' when nowhere)."""
        if not self.deleted:
            return ""
        where = ", ".join(f"partition {tp.partition} before {first}" for tp, first in sorted(self.deleted.items()))
        return f"; offsets deleted by retention, not replayed: {where}"


def _check_partitions(sel: Selection, parts: set[TopicPartition]) -> None:
    """Every partition named by ``--from-offset`` / ``--to-offset`` exists.

    Raises:
        ConfigError: one does not (names it and the topic's partition count).
    """
    for flag, offsets in (("--from-offset", sel.from_offsets), ("--to-offset", sel.to_offsets)):
        for tp, off in offsets.items():
            if tp.partition != -1 and tp not in parts:
                n = len(parts)
                raise ConfigError(
                    f"{flag} {tp.partition}:{off}: {tp.topic} has no partition {tp.partition}; "
                    f"it has {n} partition{'s' if n != 1 else ''} ({'0' if n == 1 else f'0-{n - 1}'})"
                )


async def _position(c: Consumer, sel: Selection, stats: ReplayStats) -> tuple[dict[TopicPartition, int], int]:
    """Seek ``c`` to the selection's start; return the end offsets (fixed now) and the record count.

    Raises:
        ConfigError: an offset names a partition the topic does not have.
    """
    parts = c.assignment()
    _check_partitions(sel, parts)
    await c.seek_to_beginning()
    first = c.positions()  # the first retained offsets: what retention left
    if sel.since is not None:
        await c.seek_to_time(int(sel.since * 1000))
    for tp, off in sel.from_offsets.items():
        for t in sorted(parts) if tp.partition == -1 else [tp]:
            start = first.get(t, 0)
            if off < start:  # else the consumer would start at the log start without a word
                stats.note_deleted(t, start)
            await c.seek(t, max(off, start))
    ends = await c.end_offsets()
    for tp, off in sel.to_offsets.items():
        for t in parts if tp.partition == -1 else {tp}:
            ends[t] = min(ends.get(t, 0), off + 1)
    starts = c.positions()
    return ends, sum(max(0, ends[tp] - starts.get(tp, 0)) for tp in ends)


async def scan(
    bus: Bus,
    sel: Selection,
    stats: ReplayStats,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 2000,
    decode: bool = True,
) -> AsyncIterator[list[tuple[Record, dict[str, Any]]]]:
    """Yield batches of (record, decoded body) in the selection, in offset order per partition.

    With ``decode=False`` and no content filter, records are passed through undecoded (body
    ``{}``): the fast path for JSON Lines output, which writes the record bytes as they are.
    """
    needs_decode = decode or sel.filters_content
    legacy_letters = sel.topic == DEADLETTER_TOPIC
    empty: dict[str, Any] = {}
    # An alert that resolves a condition often names no entity (the rule knows only the condition's
    # key): with --target/--timeline it is kept when its dedup key is one of an alert that matched.
    unpaired = (
        replace(sel, entity=None, target=None, aliases=frozenset())
        if sel.topic == ALERTS_TOPIC and (sel.entity is not None or sel.target is not None)
        else None
    )
    paired: set[str] = set()
    async with bus.consumer([sel.topic], start="earliest") as c:
        ends, total = await _position(c, sel, stats)
        while True:
            pos = c.positions()
            if all(pos.get(tp, 0) >= end for tp, end in ends.items()):
                return
            recs = await c.poll(batch, timeout_s=0.5)
            out: list[tuple[Record, dict[str, Any]]] = []
            part, end = -1, 0
            for r in recs:
                if r.partition != part:  # one topic: the partition identifies the end offset
                    part, end = r.partition, ends.get(TopicPartition(r.topic, r.partition), 0)
                if r.offset >= end:
                    continue
                stats.scanned += 1
                body = empty
                if needs_decode:
                    try:
                        body = decode_document(r.value)
                        if legacy_letters and is_legacy(body):  # written by a release up to 2026-11-27
                            body = from_legacy(body, r.headers).to_dict()
                    except RecordError:
                        stats.undecodable += 1
                        continue
                if sel.workspaces:
                    stats.workspaces_seen.add(str((body.get("workspace") or {}).get("id")))
                if sel.types:
                    stats.types_seen.add(record_kind(body))
                for w in sel.where:
                    if w.path not in stats.paths_seen and field_values(body, w.path) is not None:
                        stats.paths_seen.add(w.path)
                if not needs_decode or sel.matches(body):
                    if unpaired is not None and isinstance(body.get("dedup_key"), str):
                        paired.add(body["dedup_key"])
                elif not (unpaired is not None and body.get("dedup_key") in paired and unpaired.matches(body)):
                    continue
                stats.matched += 1
                out.append((r, body))
                if sel.limit is not None and stats.matched >= sel.limit:
                    yield out
                    return
            if progress is not None:
                progress(stats.scanned, total)
            if out:
                yield out


async def scan_values(
    bus: Bus,
    sel: Selection,
    stats: ReplayStats,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 5000,
) -> AsyncIterator[list[bytes]]:
    """Yield record values of an unfiltered selection (offset/topic range only): replay's JSON Lines path.

    Falls back to :func:`scan` when the selection filters content or the consumer has no
    values-only read.
    """
    async with bus.consumer([sel.topic], start="earliest") as c:
        poll_values = getattr(c, "poll_values", None)
        if sel.filters_content or sel.limit is not None or poll_values is None:
            fallback = True
        else:
            fallback = False
            ends, total = await _position(c, sel, stats)
            while True:
                pos = c.positions()
                if all(pos.get(tp, 0) >= end for tp, end in ends.items()):
                    break
                values = await poll_values(batch, ends)
                stats.scanned += len(values)
                stats.matched += len(values)
                if progress is not None:
                    progress(stats.scanned, total)
                if values:
                    yield _current_letters(values) if sel.topic == DEADLETTER_TOPIC else values
    if fallback:
        async for items in scan(bus, sel, stats, progress=progress, decode=False):
            values = [r.value for r, _ in items]
            yield _current_letters(values) if sel.topic == DEADLETTER_TOPIC else values


def _current_letters(values: list[bytes]) -> list[bytes]:
    """Dead letters written by a release up to 2026-11-27 as DeadLetter v1 (the rest unchanged).

    The values-only read has no headers: an upgraded letter then keeps none of the failed record's."""
    out = values
    for i, v in enumerate(values):
        if b'"sink_type":' not in v:  # a key only the old shape has (quotes inside strings are escaped)
            continue
        try:
            doc = orjson.loads(v)
            if is_legacy(doc):
                if out is values:
                    out = list(values)
                out[i] = from_legacy(doc).to_json()
        except (orjson.JSONDecodeError, RecordError):
            continue
    return out


def sort_timeline(items: Sequence[tuple[Record, dict[str, Any]]]) -> list[tuple[Record, dict[str, Any]]]:
    """Order by event time, then publish order — the investigator's first view. At one instant an
    event comes before an alert (which it raised), whatever order the two topics were read in."""
    return sorted(
        items,
        key=lambda it: (
            event_time(it[1]) or 0.0, it[0].topic == ALERTS_TOPIC, it[0].timestamp_ms, it[0].partition, it[0].offset
        ),
    )  # fmt: skip
