"""What a rule is and what it sees: :class:`Rule`, :class:`RuleMeta`, :class:`Finding`, :class:`RuleContext`.

A rule is a pure function of (event or tick, its own state): it returns :class:`Finding`
objects and never builds alerts, reads the clock or does I/O. The engine
(:mod:`pipeline.rules.engine`) turns findings into Alert v1 records: it owns the dedup key,
the suppression window, counts, first/last seen and resolution.

State a rule keeps lives in a :class:`RuleState`, one per rule and workspace:

* ``data`` — one small JSON document (thresholds, windows, inventories);
* ``subs`` — optional per-entity documents (one per user for ``auth.login_new_ip``), stored as
  separate state keys so a batch rewrites only the entities it touched; the engine keeps them
  in least-recently-used order and :meth:`RuleContext.trim_subs` bounds their number;
* ``tracks`` — the engine's bookkeeping of open alert conditions (not for rules to edit);
* ``cache`` — whatever a rule derives from the above to go faster (never persisted, empty after
  a reload, so it must be rebuildable from the state).

Built-in stateful rules subclass :class:`CatalogRule` and register with :func:`register`;
YAML rules (:mod:`pipeline.rules.matcher`) implement the same :class:`Rule` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast, runtime_checkable

from pydantic import Field

from pipeline.clock import Clock
from pipeline.config.base import Model
from pipeline.rules.lists import SharedLists
from schemas.alert import Entity, Severity
from schemas.event import Event, WorkspaceRef

Status = Literal["open", "resolved"]
RULE_ID_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
ATTACK_PATTERN = r"^T\d{4}(\.\d{3})?$"
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class RuleMeta:
    """A rule's identity and routing.

    ``event_types`` are exact types or globs (``api_key.*``, ``*``); ``activity_codes``, when
    set, narrows audit-log events to those codes (matched on ``attributes.activity_code``,
    so it works whether the connector named the code or emitted ``audit.activity_<n>``).
    ``ticks`` asks for :meth:`Rule.on_tick` calls; ``suppress_secs`` is the rule's default
    suppression window (``None``: the config's ``defaults.suppress_secs``). ``status``,
    ``author``, ``references``, ``falsepositives`` and ``related`` (rule ids) are the rule's
    lifecycle (as in Sigma; see :mod:`pipeline.rules.lifecycle`).
    """

    id: str
    title: str
    severity: Severity
    version: int = 1
    runbook: str = ""
    attack: tuple[str, ...] = ()
    basic: str = ""
    description: str = ""
    event_types: tuple[str, ...] = ()
    activity_codes: frozenset[int] | None = None
    ticks: bool = False
    suppress_secs: float | None = None
    kind: Literal["python", "yaml"] = "python"
    status: Literal["experimental", "test", "stable", "deprecated"] = "experimental"
    author: str = ""
    references: tuple[str, ...] = ()
    falsepositives: tuple[str, ...] = ()
    related: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule reports; the engine turns it into an alert (or folds it into an open one).

    ``key`` names the condition within the rule and workspace (``key:<id>``); the dedup key
    is ``<rule>:<workspace>:<key>``. A ``resolvable`` condition stays open until a finding
    with ``status="resolved"`` and the same key clears it; other findings are events whose
    bookkeeping expires after the suppression window. ``count`` is how many matches the
    finding stands for; a re-check of a persisting condition (a stale key seen again on a tick)
    uses 0 so it does not inflate the alert's count. ``time`` defaults to the context's now.
    """

    key: str
    summary: str
    entities: tuple[Entity, ...] = ()
    event_id: str | None = None
    status: Status = "open"
    severity: Severity | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    resolvable: bool = False
    count: int = 1
    time: float | None = None


def resolved(key: str, summary: str, *, event_id: str | None = None, entities: tuple[Entity, ...] = ()) -> Finding:
    """A finding that clears the open condition ``key`` (ignored when nothing is open).

    ``summary`` says what cleared; the engine appends what it closes (the opening alert's summary)
    and, when ``entities`` is empty, gives the resolved alert the entities the condition's alerts named.
    """
    return Finding(key=key, summary=summary, entities=entities, event_id=event_id, status="resolved")


class RuleParams(Model):
    """Options every rule accepts in ``rules.<rule_id>``; catalog rules subclass it with their own."""

    enabled: bool = True
    severity: Severity | None = Field(None, description="replace the rule's severity for every alert")
    suppress_secs: float | None = Field(
        None, ge=0, le=90 * DAY, description="one alert per condition per window (default: the rule's)"
    )


MAX_TRACK_ENTITIES = 10
"""Entities a resolvable condition remembers for its resolved alert (the first ones its alerts named)."""
MAX_TRACK_SUMMARY = 300
"""Characters of the opening alert's summary a resolvable condition remembers for its resolved alert."""
MAX_TRACK_ENTITY_TEXT = 256
"""Longest entity kind, id or name a condition remembers: a longer name is cut, an entity with a longer id
or kind is not remembered (a cut id would name something else)."""


@dataclass(slots=True)
class AlertTrack:
    """The engine's record of one alert condition (open or recently alerted).

    A resolvable condition also remembers what its alerts were about, so the ``resolved`` alert
    can say what cleared even when the resolving finding names nothing: ``entities`` (the first
    :data:`MAX_TRACK_ENTITIES` its alerts named, the opening alert's first) and ``summary`` (the
    opening alert's, cut to :data:`MAX_TRACK_SUMMARY` characters). Other conditions keep neither.
    """

    opened: float
    first: float
    last: float
    count: int = 0
    emitted: float | None = None
    emissions: int = 0
    resolvable: bool = False
    severity: str = ""
    entities: tuple[Entity, ...] = ()
    summary: str = ""
    enc: bytes | None = field(default=None, compare=False, repr=False)
    """The engine's cache of this track's encoded ``"<key>":[...]`` member of the tracks document
    (:meth:`pipeline.rules.state.StateStore.flush`); the engine clears it whenever it changes the track."""

    def remember(self, entities: tuple[Entity, ...], summary: str) -> None:
        """Keep an alert's entities (bounded, no repeats) and, the first time, its summary."""
        if not self.summary:
            self.summary = summary[:MAX_TRACK_SUMMARY]
        if entities and len(self.entities) < MAX_TRACK_ENTITIES:
            have = self.entities
            new = tuple(b for e in dict.fromkeys(entities) if (b := _bounded(e)) is not None and b not in have)
            if new:
                self.entities = (have + new)[:MAX_TRACK_ENTITIES]

    def to_list(self) -> list[Any]:
        """Compact JSON form: 8 values, plus entities and summary (10) when the track remembers any."""
        v: list[Any] = [
            self.opened, self.first, self.last, self.count, self.emitted, self.emissions,
            int(self.resolvable), self.severity,
        ]  # fmt: skip
        if self.entities or self.summary:
            v.append([[e.kind, e.id, e.name] for e in self.entities])
            v.append(self.summary)
        return v

    @classmethod
    def from_list(cls, v: Any) -> AlertTrack:
        """Inverse of :meth:`to_list`; reads the 8-value form written before entities were kept.

        Raises:
            ValueError: the list has the wrong shape.
        """
        if not isinstance(v, list) or len(v) not in (8, 10):
            raise ValueError("alert track must be a list of 8 or 10 values")
        tr = cls(float(v[0]), float(v[1]), float(v[2]), int(v[3]),
                 None if v[4] is None else float(v[4]), int(v[5]), bool(v[6]), str(v[7]))  # fmt: skip
        if len(v) == 10:
            ents, summary = v[8], v[9]
            if not isinstance(ents, list) or not isinstance(summary, str):
                raise ValueError("alert track entities must be a list and its summary a string")
            tr.entities = tuple(_entity(e) for e in ents[:MAX_TRACK_ENTITIES])
            tr.summary = summary[:MAX_TRACK_SUMMARY]
        return tr


def _bounded(e: Entity) -> Entity | None:
    """``e`` with its name cut to :data:`MAX_TRACK_ENTITY_TEXT`; None when its kind or id is longer."""
    n = MAX_TRACK_ENTITY_TEXT
    if len(e.kind) > n or (e.id is not None and len(e.id) > n):
        return None
    return e if e.name is None or len(e.name) <= n else Entity(e.kind, e.id, e.name[:n])


def _entity(v: Any) -> Entity:
    """An entity stored as ``[kind, id, name]``.

    Raises:
        ValueError: not that shape.
    """
    if (
        not isinstance(v, list) or len(v) != 3 or not isinstance(v[0], str)
        or not all(x is None or isinstance(x, str) for x in v[1:])
    ):  # fmt: skip
        raise ValueError("alert track entity must be [kind, id, name]")
    return Entity(v[0], v[1], v[2])


class RuleState:
    """Everything one rule keeps about one workspace (see the module docstring)."""

    __slots__ = (
        "cache",
        "data",
        "data_touched",
        "expire_block",
        "rule_id",
        "sub_time",
        "sub_written",
        "subs",
        "subs_removed",
        "subs_touched",
        "tracks",
        "tracks_dirty",
        "workspace",
    )  # fmt: skip

    def __init__(self, rule_id: str, workspace: WorkspaceRef):
        self.rule_id = rule_id
        self.workspace = workspace
        self.data: dict[str, Any] = {}
        self.subs: dict[str, dict[str, Any]] = {}
        self.sub_time: dict[str, float] = {}
        self.sub_written: dict[str, tuple[str, int]] = {}  # the store's: bus key and hash of the stored bytes
        self.tracks: dict[str, AlertTrack] = {}
        self.data_touched = False
        self.subs_touched: set[str] = set()
        self.subs_removed: set[str] = set()
        self.tracks_dirty = False
        self.expire_block: float | None = None
        """The engine's: ``last`` of the condition that stopped its last expiry scan (inf: none was
        left to expire; None: unknown). Cleared whenever the engine changes the tracks."""
        self.cache: dict[Any, Any] = {}
        """Whatever the rule derives from its state to go faster: never persisted, empty after a reload."""

    @property
    def dirty(self) -> bool:
        """Whether anything may have changed since the last flush."""
        return self.data_touched or self.tracks_dirty or bool(self.subs_touched) or bool(self.subs_removed)


class RuleContext:
    """The view a rule gets for one workspace: time, its parameters and its state.

    ``now`` is the event's time (or the tick's), never the wall clock; ``clock`` is the
    injected clock, for rules that need to know when the engine runs (rare).
    """

    __slots__ = ("clock", "now", "state", "suppress_secs")

    def __init__(self, state: RuleState, clock: Clock, now: float = 0.0, suppress_secs: float = 0.0):
        self.state = state
        self.clock = clock
        self.now = now
        self.suppress_secs = suppress_secs

    @property
    def workspace(self) -> WorkspaceRef:
        """The workspace this context is about."""
        return self.state.workspace

    @property
    def data(self) -> dict[str, Any]:
        """The rule's persisted document for this workspace (JSON values, string keys)."""
        self.state.data_touched = True
        return self.state.data

    def peek_sub(self, name: str) -> dict[str, Any] | None:
        """A per-entity document (None when absent) to read only: not marked used or changed.

        A rule that then changes the document must call :meth:`sub` (which marks it) first.
        """
        return self.state.subs.get(name)

    def sub(self, name: str) -> dict[str, Any] | None:
        """A per-entity document (None when absent); marks it recently used (and to be persisted)."""
        st = self.state
        doc = st.subs.pop(name, None)
        if doc is None:
            return None
        st.subs[name] = doc  # re-insert: dict order is least- to most-recently used
        st.sub_time[name] = self.now
        st.subs_touched.add(name)
        return doc

    def new_sub(self, name: str) -> dict[str, Any]:
        """Create (or replace) a per-entity document and return it, empty."""
        st = self.state
        st.subs.pop(name, None)
        st.subs_removed.discard(name)
        doc: dict[str, Any] = {}
        st.subs[name] = doc
        st.sub_time[name] = self.now
        st.subs_touched.add(name)
        return doc

    def drop_sub(self, name: str) -> None:
        """Delete a per-entity document."""
        st = self.state
        if st.subs.pop(name, None) is not None:
            st.sub_time.pop(name, None)
            st.subs_touched.discard(name)
            st.subs_removed.add(name)

    def sub_names(self) -> list[str]:
        """Names of the per-entity documents, least recently used first."""
        return list(self.state.subs)

    def trim_subs(self, max_subs: int) -> list[tuple[str, dict[str, Any]]]:
        """Drop the least recently used documents beyond ``max_subs``; return them (name, document)."""
        st = self.state
        extra = len(st.subs) - max_subs
        if extra <= 0:
            return []
        victims = [(name, doc) for (name, doc), _ in zip(st.subs.items(), range(extra), strict=False)]
        for name, _ in victims:
            self.drop_sub(name)
        return victims

    def is_open(self, key: str) -> bool:
        """Whether the condition ``key`` has an alert open (or recently sent)."""
        return key in self.state.tracks

    def due(self, key: str) -> bool:
        """Whether a same-severity finding for ``key`` would alert now (nothing open, or the window passed).

        Rules re-checking persisting conditions (on ticks) skip building findings that are not due:
        the engine would only fold them into the open condition.
        """
        tr = self.state.tracks.get(key)
        return tr is None or tr.emitted is None or self.now - tr.emitted >= self.suppress_secs

    def open_since(self, key: str) -> float | None:
        """When the condition ``key`` opened (epoch seconds), or None."""
        tr = self.state.tracks.get(key)
        return None if tr is None else tr.opened

    def open_keys(self) -> list[str]:
        """The keys of every tracked condition."""
        return list(self.state.tracks)


@runtime_checkable
class Rule(Protocol):
    """A detection rule: built-in (:class:`CatalogRule`) or YAML (:class:`pipeline.rules.matcher.MatchRule`)."""

    @property
    def meta(self) -> RuleMeta:
        """Identity, routing and defaults."""
        ...

    @property
    def params(self) -> RuleParams:
        """The validated options from the config (enabled, severity, suppression, thresholds)."""
        ...

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Look at one event routed to this rule (see :class:`RuleMeta`)."""
        ...

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Re-evaluate time-based conditions at ``ctx.now`` (only when ``meta.ticks``)."""
        ...


P = TypeVar("P", bound=RuleParams)


class CatalogRule(Generic[P]):
    """Base of the built-in rules: class-level ``meta`` and ``Params``, instance-level ``params``.

    ``Params`` is the pydantic model of the rule's options; the config loader validates the
    ``rules.<rule_id>`` block with it and passes the result here.
    """

    meta: ClassVar[RuleMeta]
    Params: ClassVar[type[RuleParams]] = RuleParams

    def __init__(self, params: RuleParams, lists: SharedLists):
        self.params: P = cast(P, params)
        self.lists = lists

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Default: nothing."""
        return ()

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Default: nothing."""
        return ()


@dataclass(frozen=True, slots=True)
class RulePack:
    """A connector's rules: its Python rule classes (an explicit tuple), its YAML rule files, its
    test cases and its emulations (scenario files with an ``emulation:`` block, see
    :mod:`pipeline.rules.navigator`). Registered through the ``instantly_audit.rule_packs`` entry point group."""

    name: str
    rules: tuple[type[CatalogRule[Any]], ...] = ()
    yaml_files: tuple[Path, ...] = ()
    cases_dir: Path | None = None
    emulations_dir: Path | None = None
    lock_file: Path | None = None
    """Where ``instantly-audit rules lock`` records the content hash and version of each rule."""
    event_types: tuple[str, ...] | None = None
    """Every event type the pack's connector can emit (globs allowed: ``audit.activity_*``). A YAML rule's
    ``types`` (or ``resolve_types``, or a correlation entry's ``types``) matching none of the loaded packs'
    types is refused at load: a typo would load and never match. ``None``: no catalog (no check from it)."""


# ---- small helpers shared by the catalog ---------------------------------------------------
def attr(event: Event, name: str, default: Any = None) -> Any:
    """``event.attributes[name]`` or ``default``."""
    return event.attributes.get(name, default)


def target_id(event: Event) -> str | None:
    """The event's target id, if any."""
    return event.target.id if event.target is not None else None


def target_name(event: Event) -> str | None:
    """The event's target name, falling back to ``attributes.name``."""
    name = event.target.name if event.target is not None else None
    return name or event.attributes.get("name")


def actor_key(event: Event) -> str:
    """A stable label for whoever acted: user id, else API key id, else IP, else ``unknown``."""
    a = event.actor
    if a is None:
        return "unknown"
    return a.user_id or (f"key:{a.api_key_id}" if a.api_key_id else None) or (f"ip:{a.ip}" if a.ip else "unknown")


def actor_entities(event: Event) -> tuple[Entity, ...]:
    """Entities for the actor: the user, the API key and the IP when known."""
    a = event.actor
    if a is None:
        return ()
    out: list[Entity] = []
    if a.user_id or a.user_name:
        out.append(Entity("user", a.user_id, a.user_name))
    if a.api_key_id:
        out.append(Entity("api_key", a.api_key_id, None))
    if a.ip:
        out.append(Entity("ip", a.ip, None))
    return tuple(out)


def actor_label(event: Event) -> str:
    """A human label for the actor (name, else id, else ``someone``)."""
    a = event.actor
    if a is None:
        return "someone"
    return a.user_name or a.user_id or (f"API key {a.api_key_id}" if a.api_key_id else None) or "someone"


def forget_quiet(by_actor: dict[str, list[Any]], now: float, window: float, cap: int) -> None:
    """Drop actors whose latest entry left the window, and the least recently active beyond ``cap``.

    ``by_actor`` is kept in order of last activity (callers pop and re-insert), so the quiet ones
    are at the front and the loop stops at the first active actor.
    """
    while by_actor:
        first = next(iter(by_actor))
        entries = by_actor[first]
        last = entries[-1] if entries else None
        t = last[0] if isinstance(last, list) else last
        if len(by_actor) < cap and t is not None and now - t < window:
            break
        del by_actor[first]
