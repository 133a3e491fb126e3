"""The pure rules engine: events (or a tick) + rule state in, Alert v1 records + state changes out.

No I/O and no wall clock: time comes from each event's ``time`` and from the ``now`` given to
:meth:`RulesEngine.tick` (the injected clock when omitted); an alert's ``raised_at`` is the injected
clock, read once per ``evaluate``/``tick`` call. The worker
(:mod:`pipeline.rules.worker`) wraps it with the bus; replay reuses it as is.

Alert semantics, owned here so every rule gets them alike:

* **dedup key** ``<rule>:<workspace>:<finding key>`` (hashed when longer than 255 characters),
  stable for one condition, so PagerDuty folds repeats and resolves by it;
* **suppression**: a condition alerts once per window (``suppress_secs``); matches inside the
  window only raise ``count`` and ``last_seen``. Several matches in one batch make one alert.
  A higher severity than the last alert (e.g. a webhook target going from unknown host to
  ``http://``) alerts at once;
* **count / first_seen / last_seen** cover the condition since it opened;
* **resolution**: a resolvable condition stays tracked until the rule reports it cleared, then
  a ``resolved`` alert with the same dedup key goes out; other conditions are forgotten after
  a quiet window. The resolved alert names the condition's entities (those its alerts named,
  remembered in the track, bounded; the resolving finding's own when it names any) and its
  summary says what cleared and what it closes (``<what cleared> — it closes: <opening summary>``),
  so a receiver needs no other record to know what went away;
* **alert ids** hash (dedup key, status, open time, n-th alert), so a retried or replayed batch
  builds the same ids;
* **emission / raised_at**: each alert carries its emission number (the n-th alert of the
  condition since it opened; a resolved alert the last one) and when the engine raised it, the
  injected clock read once per :meth:`RulesEngine.evaluate` / :meth:`RulesEngine.tick` call;
  neither enters the id.

A rule that raises is reported in :attr:`Evaluation.failures`; the other rules still run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pipeline.clock import Clock, format_time, parse_time
from pipeline.rules.base import AlertTrack, Finding, Rule, RuleContext, RuleState
from pipeline.rules.config import RuleSet, parse_rules_config
from pipeline.rules.matcher import type_matches
from pipeline.rules.state import StateProblem, StateReset, StateStore
from schemas.alert import Alert, RuleRef, Severity, severity_rank
from schemas.codec import decode_event as decode_event  # re-exported: the rules decode with the codec
from schemas.event import Event, WorkspaceRef
from schemas.ids import deterministic_id

MAX_TRACKS = 10_000
"""Alert conditions remembered per rule and workspace (least recently updated dropped first)."""
MAX_EVENT_IDS = 50
"""Event ids carried by one alert."""
MAX_SUMMARY = 1024
"""PagerDuty's summary limit."""
RESOLVED_JOIN = "— it closes:"
"""Joins a resolved alert's summary (what cleared) to the opening alert's (what it was)."""
_ROUTE_CACHE = 4096
_PLAN_CACHE = 16_384
_EMPTY: tuple[()] = ()
_NEVER = float("inf")
_fromisoformat = datetime.fromisoformat


def event_time(text: str) -> float:
    """:func:`~pipeline.clock.parse_time` with a fast path for the RFC 3339 times events carry.

    ``datetime.fromisoformat`` reads ``2026-03-05T23:09:47.337Z`` directly (Python 3.11+); any
    text it refuses or reads as a naive time goes through ``parse_time`` itself, so results and
    errors are the same.

    Raises:
        ValueError, TypeError, AttributeError: as ``parse_time``.
    """
    try:
        dt = _fromisoformat(text)
    except (ValueError, TypeError):
        return parse_time(text)
    if dt.tzinfo is None:
        return parse_time(text)
    return dt.timestamp()


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """A rule raised on an event (or the event itself was unusable when ``rule_id`` is None)."""

    rule_id: str | None
    event_id: str | None
    workspace_id: str | None
    error: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one :meth:`RulesEngine.evaluate` or :meth:`RulesEngine.tick` produced."""

    alerts: tuple[Alert, ...] = ()
    state: Mapping[str, bytes | None] = field(default_factory=dict)
    failures: tuple[RuleFailure, ...] = ()
    suppressed: int = 0
    events: int = 0


def dedup_key(rule_id: str, workspace_id: str, key: str) -> str:
    """``<rule>:<workspace>:<key>``, hashed down when it would exceed PagerDuty's 255 characters."""
    dk = f"{rule_id}:{workspace_id}:{key}"
    if len(dk) <= 255:
        return dk
    dk = f"{rule_id}:{workspace_id}:h:{deterministic_id(key)}"
    return dk if len(dk) <= 255 else f"{rule_id}:h:{deterministic_id(workspace_id, key)}"


class _Bound:
    """A rule with its effective options."""

    __slots__ = ("codes", "id", "refs", "rule", "severity", "suppress", "ticks", "types")

    def __init__(self, rule: Rule, default_suppress: float):
        m, p = rule.meta, rule.params
        self.rule = rule
        self.id = m.id
        self.types = m.event_types or ("*",)
        self.codes = m.activity_codes
        self.ticks = m.ticks
        self.severity: Severity | None = p.severity
        self.suppress = next(s for s in (p.suppress_secs, m.suppress_secs, default_suppress) if s is not None)
        self.refs: dict[str, RuleRef] = {}

    def ref(self, severity: Severity) -> RuleRef:
        r = self.refs.get(severity)
        if r is None:
            m = self.rule.meta
            r = self.refs[severity] = RuleRef(m.id, m.version, m.title, severity, m.runbook, m.attack, m.basic)
        return r


Handler = Callable[[RuleContext, Event], Iterable[Finding]]
"""What a step calls for an event: the rule's ``on_event``, or what its ``handler_for(type, code)`` gave."""
_Step = tuple[_Bound, RuleContext, Handler, bool]


class _Plan:
    """What one (workspace, event type, activity code) runs: the routed rules with their contexts.

    Each step is (bound rule, context, handler, open-only). The handler is the rule's
    ``on_event``, or, for a rule with ``handler_for(type, code)`` (correlation rules), the
    handler it built for this pair: the dispatch index, chosen once per plan, so an event only
    reaches the parts of a rule (a correlation's entries) that its type and code can match. An
    open-only rule can only clear an open condition for this event type (a YAML rule's resolve
    block), so it is skipped while its state tracks nothing. ``name``/``name_gen`` remember that
    every state here carried the workspace name ``name`` at the engine's rename generation
    ``name_gen``; ``serial`` is the last evaluation whose touched set received ``states``.
    """

    __slots__ = ("name", "name_gen", "serial", "states", "steps")

    def __init__(self, steps: tuple[_Step, ...]):
        self.steps = steps
        self.states = tuple(ctx.state for _, ctx, _, _ in steps)
        self.name: str | None = None
        self.name_gen = -1
        self.serial = -1


class _Pending:
    """An open alert being assembled during one batch.

    ``count``/``first``/``last`` are a snapshot of the track taken when a match was folded in, so a
    later emission of the same condition in the batch (a severity rise) or its resolution does not
    rewrite this alert's figures: alerts built in one batch are independent.
    """

    __slots__ = ("attributes", "bound", "count", "emission", "entities", "event_ids", "first", "key", "last",
                 "severity", "state", "summary", "track")  # fmt: skip

    def __init__(self, b: _Bound, st: RuleState, f: Finding, tr: AlertTrack, severity: Severity):
        self.bound, self.state, self.key, self.track = b, st, f.key, tr
        self.summary = f.summary
        self.entities = f.entities
        self.attributes = dict(f.attributes)
        self.severity = severity
        self.emission = tr.emissions
        self.event_ids: list[str] = []
        self.add(f)

    def add(self, f: Finding) -> None:
        """Fold a match of the same emission into this alert (its event id, the track's figures now)."""
        if f.event_id and len(self.event_ids) < MAX_EVENT_IDS and f.event_id not in self.event_ids:
            self.event_ids.append(f.event_id)
        tr = self.track
        self.count, self.first, self.last = tr.count, tr.first, tr.last

    def build(self, raised_at: str) -> Alert:
        tr, st = self.track, self.state
        return Alert.build(
            rule=self.bound.ref(self.severity), workspace=st.workspace, summary=self.summary[:MAX_SUMMARY],
            dedup_key=dedup_key(self.bound.id, st.workspace.id, self.key), event_ids=tuple(self.event_ids),
            entities=self.entities, first_seen=format_time(self.first), last_seen=format_time(self.last),
            count=self.count, attributes=self.attributes, occurrence=f"{round(tr.opened * 1000)}:{self.emission}",
            emission=self.emission if self.emission >= 1 else None, raised_at=raised_at,
        )  # fmt: skip


@dataclass(slots=True)
class _Batch:
    now: float
    """The injected clock, read once for the whole evaluate()/tick() call: the alerts' ``raised_at``."""
    items: list[_Pending | Alert] = field(default_factory=list)
    open: dict[tuple[str, str, str], _Pending] = field(default_factory=dict)
    failures: list[RuleFailure] = field(default_factory=list)
    suppressed: int = 0
    _raised_at: str | None = None

    def raised_at(self) -> str:
        """``now`` as RFC 3339 (formatted once, when the batch raises its first alert)."""
        if self._raised_at is None:
            self._raised_at = format_time(self.now)
        return self._raised_at


def _expire(st: RuleState, window: float, now: float) -> None:
    """Forget non-resolvable conditions quiet for a whole window (tracks are oldest-first).

    The scan stops at the first non-resolvable condition still inside its window and remembers
    its ``last`` in ``expire_block``. Until a non-resolvable track changes, comes or goes (``_apply``
    clears it then; resolvable tracks are skipped here, so adding, moving or resolving them changes
    nothing this scan sees, and a workspace holding thousands of open resolvable conditions does not
    rescan them all for each new one), every earlier
    non-resolvable condition is gone, so a later call would stop at the same one, removing
    nothing, while it is still inside the window: that call returns at once (the same test, so
    the same answer).
    """
    block = st.expire_block
    if block is not None and now - block < window:
        return
    dead = []
    block = _NEVER
    for k, tr in st.tracks.items():
        if tr.resolvable:
            continue
        if now - tr.last < window:
            block = tr.last
            break
        dead.append(k)
    for k in dead:
        del st.tracks[k]
    if dead:
        st.tracks_dirty = True
    st.expire_block = block


class RulesEngine:
    """Evaluate rules over events and ticks (see the module docstring)."""

    def __init__(self, ruleset: RuleSet, *, clock: Clock, state: Mapping[str, bytes] | None = None):
        self.ruleset = ruleset
        self._clock = clock
        default = ruleset.settings.defaults.suppress_secs
        self._bound = tuple(_Bound(r, default) for r in ruleset.enabled)
        self._by_id = {b.id: b for b in self._bound}
        self._store = StateStore({b.id: b.rule.meta.version for b in self._bound})
        self._ctxs: dict[str, dict[str, RuleContext]] = {}  # workspace id -> rule id -> context
        self._routes: dict[tuple[str, int | None], tuple[_Bound, ...]] = {}
        self._plans: dict[tuple[str, str, int | None], _Plan] = {}  # (workspace id, type, code) -> plan
        self._serial = 0  # evaluations so far
        self._name_gen = 0  # bumped whenever a rule state's workspace (name) is replaced
        self.state_problems: list[StateProblem] = []
        self.state_resets: list[StateReset] = []
        """Rules whose stored state the last :meth:`load_state` started over (their version changed)."""
        if state:
            self.load_state(state)

    @classmethod
    def from_config(
        cls, rules_config: Mapping[str, Any] | None, *, clock: Clock, base_dir: Path | None = None
    ) -> RulesEngine:
        """Build from the raw ``rules`` config section.

        Raises:
            ConfigError: the section is invalid (the message names the key path).
        """
        return cls(parse_rules_config(rules_config, base_dir=base_dir), clock=clock)

    # ---- state ---------------------------------------------------------------------------
    def load_state(self, items: Mapping[str, bytes]) -> list[StateProblem]:
        """Replace the in-memory rule state with ``items`` (``bus.state_items("rules/")``)."""
        self._ctxs.clear()
        self._plans.clear()
        self.state_problems = self._store.load(items)
        self.state_resets = self._store.resets
        return self.state_problems

    def state_items(self) -> dict[str, bytes]:
        """The whole rule state as it would be stored (keys and values)."""
        return self._store.encode_all()

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, events: Iterable[Event]) -> Evaluation:
        """Run every enabled rule over ``events`` in order; return alerts and changed state.

        Each event runs the rules its (workspace, type, activity code) routes to, in rule order,
        through a cached :class:`_Plan`; ``tests/unit/test_rules_equivalence.py`` checks that this
        gives exactly what the plain loop (route, look up the context, call) gives.
        """
        batch = _Batch(self._clock.now())
        failures = batch.failures
        apply = self._apply
        plans = self._plans
        touched = self._store.touched
        self._serial += 1
        serial = self._serial
        n = 0
        fromiso = _fromisoformat
        for ev in events:
            n += 1
            try:  # event_time(ev.time), inlined
                dt = fromiso(ev.time)
                if dt.tzinfo is None:
                    raise ValueError("naive")  # parse_time decides
                t = dt.timestamp()
            except (ValueError, TypeError):
                try:
                    t = parse_time(ev.time)
                except (ValueError, TypeError, AttributeError) as err:
                    failures.append(RuleFailure(None, ev.id, ev.workspace.id, f"invalid time {ev.time!r}: {err}"))
                    continue
            ws = ev.workspace
            code: int | None = None
            if ev.source.kind == "audit_log":
                c = ev.attributes.get("activity_code")
                code = c if type(c) is int else -1  # (JSON ints only: not bool, not float)
            plan = plans.get((ws.id, ev.type, code))
            if plan is None:
                plan = self._plan(ws, ev.type, code)
            if not plan.steps:
                continue
            if plan.serial != serial:
                plan.serial = serial
                touched.update(plan.states)
            if ws.name is not None and (ws.name != plan.name or plan.name_gen != self._name_gen):
                self._rename(plan, ws)
            for b, ctx, handler, open_only in plan.steps:
                if open_only and not ctx.state.tracks:
                    continue
                ctx.now = t
                try:
                    found = handler(ctx, ev)
                    if found is not _EMPTY:
                        for f in found:
                            apply(b, ctx, f, batch)
                except Exception as err:  # noqa: BLE001 - one faulty rule must not stop the others
                    failures.append(RuleFailure(b.id, ev.id, ev.workspace.id, f"{type(err).__name__}: {err}"))
        return self._finish(batch, n)

    def tick(self, now: float | None = None) -> Evaluation:
        """Evaluate time-based conditions at ``now`` (default: the injected clock) for every workspace."""
        clock_now = self._clock.now()  # once per call: the alerts' raised_at, and the tick time by default
        t = clock_now if now is None else now
        batch = _Batch(clock_now)
        by_id, touched = self._by_id, self._store.touched
        for st in list(self._store.states.values()):
            b = by_id.get(st.rule_id)
            if b is None:
                continue
            if st.tracks:
                before = len(st.tracks)
                _expire(st, b.suppress, t)
                if len(st.tracks) != before:
                    touched.add(st)
            if not b.ticks:
                continue
            ctxs = self._ctxs.setdefault(st.workspace.id, {})
            ctx = ctxs.get(b.id)
            if ctx is None:
                ctx = ctxs[b.id] = RuleContext(st, self._clock, suppress_secs=b.suppress)
            ctx.now = t
            touched.add(st)
            try:
                for f in b.rule.on_tick(ctx):
                    self._apply(b, ctx, f, batch)
            except Exception as err:  # noqa: BLE001 - one faulty rule must not stop the others
                batch.failures.append(RuleFailure(b.id, None, st.workspace.id, f"{type(err).__name__}: {err}"))
        return self._finish(batch, 0)

    # ---- internals -----------------------------------------------------------------------
    def _plan(self, ws: WorkspaceRef, etype: str, code: int | None) -> _Plan:
        """Build (and cache) the plan of a (workspace, type, code), creating the rules' contexts."""
        ctxs = self._ctxs.get(ws.id)
        if ctxs is None:
            ctxs = self._ctxs[ws.id] = {}
        steps: list[_Step] = []
        for b in self._route(etype, code):
            ctx = ctxs.get(b.id)
            if ctx is None:
                ctx = ctxs[b.id] = RuleContext(self._store.get(b.id, ws), self._clock, suppress_secs=b.suppress)
            only_resolves = getattr(b.rule, "only_resolves", None)
            open_only = bool(only_resolves(etype)) if callable(only_resolves) else False
            handler_for = getattr(b.rule, "handler_for", None)
            handler = handler_for(etype, code) if callable(handler_for) else b.rule.on_event
            steps.append((b, ctx, handler, open_only))
        plan = _Plan(tuple(steps))
        self._name_gen += 1  # StateStore.get may have renamed a state: every plan re-checks once
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[(ws.id, etype, code)] = plan
        return plan

    def _rename(self, plan: _Plan, ws: WorkspaceRef) -> None:
        """Give the plan's states the event's workspace when its name differs (persisted with the state)."""
        name = ws.name
        renamed = False
        for st in plan.states:
            if name != st.workspace.name:
                st.workspace = ws
                st.data_touched = True
                renamed = True
        if renamed:
            self._name_gen += 1
        plan.name = name
        plan.name_gen = self._name_gen

    def _route(self, etype: str, code: int | None) -> tuple[_Bound, ...]:
        key = (etype, code)
        r = self._routes.get(key)
        if r is None:
            r = tuple(
                b for b in self._bound
                if type_matches(b.types, etype) and (code is None or b.codes is None or code in b.codes)
            )  # fmt: skip
            if len(self._routes) < _ROUTE_CACHE:
                self._routes[key] = r
        return r

    def _apply(self, b: _Bound, ctx: RuleContext, f: Finding, batch: _Batch) -> None:
        st = ctx.state
        t = ctx.now if f.time is None else f.time
        bkey = (b.id, st.workspace.id, f.key)
        tr = st.tracks.get(f.key)
        if f.status == "resolved":
            if tr is None:
                return
            del st.tracks[f.key]
            st.tracks_dirty = True
            if not tr.resolvable:  # (expiry never looks at resolvable tracks: see _expire)
                st.expire_block = None
            batch.open.pop(bkey, None)
            tr.last = max(tr.last, t)
            sev = cast(Severity, tr.severity) if severity_rank(tr.severity) >= 0 else b.rule.meta.severity
            eids = (f.event_id,) if f.event_id else ()
            summary = f.summary
            if tr.summary and tr.summary != summary:
                summary = f"{summary} {RESOLVED_JOIN} {tr.summary}" if summary else tr.summary
            batch.items.append(Alert.build(
                rule=b.ref(sev), workspace=st.workspace, summary=summary[:MAX_SUMMARY],
                dedup_key=dedup_key(b.id, st.workspace.id, f.key), event_ids=eids, entities=f.entities or tr.entities,
                first_seen=format_time(tr.first), last_seen=format_time(t), count=tr.count,
                status="resolved", attributes=dict(f.attributes), occurrence=f"{round(tr.opened * 1000)}",
                emission=tr.emissions if tr.emissions >= 1 else None, raised_at=batch.raised_at(),
            ))  # fmt: skip
            return
        severity: Severity = b.severity or f.severity or b.rule.meta.severity
        if tr is None:
            _expire(st, b.suppress, t)
            while len(st.tracks) >= MAX_TRACKS:
                del st.tracks[next(iter(st.tracks))]
                st.expire_block = None
            tr = AlertTrack(opened=t, first=t, last=t, resolvable=f.resolvable)
        else:
            del st.tracks[f.key]  # re-inserted below: most recently updated last
        st.tracks[f.key] = tr
        st.tracks_dirty = True
        if not tr.resolvable:  # a resolvable track (staying so) leaves expiry's answer as it was
            st.expire_block = None
        tr.enc = None  # changed below: encode it again on the next flush
        tr.count = max(1, tr.count + f.count)
        tr.last = max(tr.last, t)
        tr.resolvable = tr.resolvable or f.resolvable
        # Alert when the window has passed or the severity rose; otherwise fold the match into this
        # batch's alert for the condition (same emission), or count it as suppressed.
        if tr.emitted is None or t - tr.emitted >= b.suppress or severity_rank(severity) > severity_rank(tr.severity):
            if tr.resolvable:  # what its resolved alert will say it closes
                tr.remember(f.entities, f.summary)
            tr.emitted = t
            tr.emissions += 1
            tr.severity = severity
            pending = batch.open[bkey] = _Pending(b, st, f, tr, severity)
            batch.items.append(pending)
            return
        if tr.resolvable and not tr.summary:  # became resolvable without alerting: remember this match
            tr.remember(f.entities, f.summary)
        folded = batch.open.get(bkey)
        if folded is not None and folded.emission == tr.emissions:
            folded.add(f)
        else:
            batch.suppressed += 1

    def _finish(self, batch: _Batch, n: int) -> Evaluation:
        changes, enc_failures = self._store.flush()
        batch.failures.extend(RuleFailure(rid, None, None, msg) for rid, msg in enc_failures)
        alerts = tuple(x.build(batch.raised_at()) if isinstance(x, _Pending) else x for x in batch.items)
        return Evaluation(alerts, changes, tuple(batch.failures), batch.suppressed, n)
