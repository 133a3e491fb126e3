"""Streaming correlation rules in YAML, shaped after Sigma correlations (see ``docs/rules.md``).

::

    id: api_key.all_scope_not_deleted
    title: all:all API key not deleted within 1 h
    severity: high
    correlation:
      type: absence              # event_count | value_count | temporal | temporal_ordered | absence | new_terms
      rules:                     # rule ids of YAML match rules, or inline selections
        - name: created
          types: [api_key.created]
          detection: {sel: {attributes.scopes: "all:all"}, condition: sel}
        - name: deleted
          types: [api_key.deleted]
          detection: {sel: {type: api_key.deleted}, condition: sel}
      group-by: [target.id]      # per entry too (Sigma's aliases): {group-by: [actor.api_key_id]}
      timespan: 1h
      condition: {gte: 3}        # event_count / value_count: gt or gte (both may be given)
      field: attributes.list_id  # value_count / new_terms: the field whose values count
      grace: 10m                 # late events accepted this long after a window closes
      max_groups: 10000          # per rule and workspace; least recently active dropped beyond

Semantics, all at event time:

* ``event_count`` / ``value_count``: events (distinct ``field`` values) of any entry within
  ``timespan`` of the current event, per group; fires when ``condition`` holds, then restarts.
* ``temporal``: every entry matched within ``timespan`` (any order); ``temporal_ordered``: in the
  listed order (a repeated first step starts another chain; the chains in progress stay). Fires once
  per completed set, then restarts.
* ``absence``: the first entry (or every entry with ``opens: true``) opens a window of
  ``timespan``; any other entry matching in the window (by event time) closes it. A window still
  open fires on the first tick at or after ``window end + grace`` (the alert's time is the window end).
* ``new_terms``: fires when ``field`` has a value not seen for the group within ``timespan``.
  An entry may also carry ``new_terms: <field>``: it then matches only events whose value is new
  for the workspace within ``history`` (default 30 d); every matching event feeds that history.

State is the rule's ordinary per-entity state (``rules/<rule>/<workspace>/s/<group>``), so it
is saved with the alerts and offsets, and a restarted or second worker continues.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config.base import Model
from pipeline.rules.base import RULE_ID_PATTERN, Finding, RuleContext, RuleMeta, RuleParams
from pipeline.rules.lifecycle import LifecycleSpec, parse_duration
from pipeline.rules.matcher import (
    AttackId,
    EntitySpec,
    Getter,
    MatchRuleSpec,
    Pred,
    RuleSyntaxError,
    compile_detection,
    compile_template,
    default_types,
    effective_types,
    getter,
    type_matches,
    unreachable,
)
from schemas.alert import Entity, Severity
from schemas.event import Event

CorrelationType = Literal["event_count", "value_count", "temporal", "temporal_ordered", "absence", "new_terms"]
_OPS = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__, "eq": float.__eq__,
        "neq": float.__ne__}  # fmt: skip
UPPER_BOUND_OPS = frozenset({"lt", "lte", "eq", "neq"})
"""Conditions with an upper bound: only the count over a whole window decides them (Sigma backends count
the window), while the stream fires as soon as the count holds, so they are refused."""
UPPER_BOUND_REASON = (
    "conditions with an upper bound (lt, lte, eq, neq) are not supported: they need the count "
    "over the whole window, and a streaming correlation fires as soon as the count first holds"
)
MAX_TERMS = 5000
"""Terms remembered per new-terms history (the least recently seen are forgotten first)."""
MAX_CHAINS = 32
"""Chains in progress remembered per temporal_ordered step and group (those that started last are kept)."""
MAX_ENTRIES = 1000
"""Matches remembered per event_count / value_count group (the oldest are forgotten first)."""


Handler = Callable[[RuleContext, Event], Iterable[Finding]]


def _nothing(ctx: RuleContext, event: Event) -> Iterable[Finding]:
    return ()


def _time(entry: list[Any]) -> float:
    return float(entry[0])


def _last_match(doc: Mapping[str, Any], default: float) -> float:
    """The latest match time a group document holds (its stored last-use time is rounded to the hour)."""
    times = [float(x[0]) for x in doc.get("e") or ()]
    times += [float(v) for key in ("s", "h") for v in (doc.get(key) or {}).values()]
    times += [float(c[1]) for cs in (doc.get("q") or {}).values() for c in cs]
    return max(times, default=default)


class EntrySpec(Model):
    """An inline selection of a correlation (or a reference: ``{rule: <id>}``)."""

    name: str = ""
    rule: str | None = None
    types: list[str] | None = None
    activity_codes: list[int] | None = None
    detection: dict[str, Any] | None = None
    group_by: list[str] | None = Field(None, alias="group-by")
    new_terms: str | None = None
    opens: bool = False
    """absence only: this entry opens a window (default: the first entry alone opens)."""


class CorrelationBody(Model):
    """The ``correlation`` block."""

    type: CorrelationType
    rules: list[str | EntrySpec] = Field(min_length=1)
    group_by: list[str] = Field(default_factory=list, alias="group-by")
    timespan: str | float
    condition: dict[str, float] = Field(default_factory=lambda: {"gte": 1.0})
    field: str | None = None
    grace: str | float = "10m"
    history: str | float = "30d"
    max_groups: int = Field(10_000, ge=1, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _sigma_condition_field(cls, data: Any) -> Any:
        """``condition: {gte: 3, field: actor.ip}``, where a Sigma correlation names the field of a
        ``value_count``, is ``field: actor.ip`` beside the condition here (the same field in both is fine)."""
        if not isinstance(data, Mapping) or not isinstance(cond := data.get("condition"), Mapping):
            return data
        if "field" not in cond:
            return data
        out = {**data, "condition": {k: v for k, v in cond.items() if k != "field"}}
        if data.get("field", cond["field"]) != cond["field"]:
            raise ValueError(f"condition.field {cond['field']!r} and field {data['field']!r} differ: give one")
        out["field"] = cond["field"]
        return out


class CorrelationSpec(LifecycleSpec):
    """A YAML correlation rule as written by a user."""

    id: str = Field(pattern=RULE_ID_PATTERN, max_length=100)
    title: str = Field(min_length=1)
    severity: Severity
    version: int = Field(1, ge=1)
    description: str = ""
    runbook: str = ""
    attack: list[AttackId] = Field(default_factory=list)
    basic: str = ""
    correlation: CorrelationBody
    summary: str = ""
    entities: list[EntitySpec] = Field(default_factory=list)
    enabled: bool = True
    suppress_secs: float | None = Field(None, ge=0)


class _Entry:
    """One compiled entry: routing, predicate, group key, optional new-terms field."""

    __slots__ = ("codes", "detect", "group", "index", "name", "nt_field", "opens", "types")

    def __init__(self, index: int, name: str, types: tuple[str, ...], codes: frozenset[int] | None, detect: Pred,
                 group: list[Getter], nt_field: Getter | None):  # fmt: skip
        self.index, self.name, self.types, self.codes, self.detect = index, name, types, codes, detect
        self.group, self.nt_field = group, nt_field
        self.opens = False  # absence: whether a match opens a window (else it closes one)

    def key(self, ev: Event) -> str | None:
        """The group key (None when a group-by field is missing: the event cannot correlate)."""
        vals = []
        for g in self.group:
            v = g(ev)
            if v is None or v == "":
                return None
            vals.append(str(v))
        return "g:" + "|".join(vals)


def _entry(raw: str | EntrySpec, i: int, body: CorrelationBody, refs: Mapping[str, MatchRuleSpec]) -> _Entry:
    where = f"correlation.rules.{i}"
    spec = EntrySpec(rule=raw) if isinstance(raw, str) else raw
    if spec.rule is not None:
        ref = refs.get(spec.rule)
        if ref is None:
            raise RuleSyntaxError(f"{where}", f"unknown YAML rule {spec.rule!r} (correlations reference match rules)")
        types, codes, detection = tuple(effective_types(ref)), ref.activity_codes, ref.detection
        name = spec.name or spec.rule
    else:
        if spec.detection is None:
            raise RuleSyntaxError(where, "an entry needs either rule: <id> or detection: {...}")
        types, codes, detection = (
            tuple(default_types(spec.types, spec.activity_codes)),
            spec.activity_codes,
            spec.detection,
        )
        name = spec.name or f"rule{i}"
    detect = compile_detection(detection, f"{where}.detection")
    if spec.rule is None and (found := unreachable(detection, f"{where}.detection", types, codes, "types")):
        raise RuleSyntaxError(found[0].where, found[0].message, found)  # (a referenced rule was checked itself)
    group_paths = spec.group_by if spec.group_by is not None else body.group_by
    group = [getter(g, f"{where}.group-by.{j}") for j, g in enumerate(group_paths)]
    nt = getter(spec.new_terms, f"{where}.new_terms") if spec.new_terms else None
    return _Entry(i, name, types, frozenset(codes) if codes is not None else None, detect, group, nt)


class CorrelationRule:
    """A compiled correlation rule; implements :class:`pipeline.rules.base.Rule`."""

    def __init__(self, spec: CorrelationSpec, params: RuleParams, refs: Mapping[str, MatchRuleSpec]):
        body = spec.correlation
        self.spec, self.params, self.kind = spec, params, body.type
        try:
            self.timespan = parse_duration(body.timespan, "correlation.timespan")
            self.grace = parse_duration(body.grace, "correlation.grace")
            self.history = parse_duration(body.history, "correlation.history")
        except ValueError as err:
            raise RuleSyntaxError(str(err).split(":", 1)[0], str(err).split(": ", 1)[1]) from None
        if self.timespan <= 0:
            raise RuleSyntaxError("correlation.timespan", "must be greater than 0")
        self.entries = [_entry(r, i, body, refs) for i, r in enumerate(body.rules)]
        need = {"absence": 2, "temporal": 2, "temporal_ordered": 2}.get(body.type, 1)
        if len(self.entries) < need:
            raise RuleSyntaxError("correlation.rules", f"{body.type} needs at least {need} entries")
        opens = [i for i, r in enumerate(body.rules) if isinstance(r, EntrySpec) and r.opens]
        if opens and body.type != "absence":
            raise RuleSyntaxError(
                f"correlation.rules.{opens[0]}.opens", "only an absence correlation has opening entries"
            )
        for i in opens or [0]:
            self.entries[i].opens = body.type == "absence"
        if body.type == "absence" and len(opens) == len(self.entries):
            raise RuleSyntaxError(
                "correlation.rules", "absence needs an entry that closes the window (not opens: true)"
            )
        if body.type in ("event_count", "value_count") and "condition" not in body.model_fields_set:
            # (Sigma requires one for these; the {gte: 1} default made every single match an alert)
            raise RuleSyntaxError("correlation.condition", f"{body.type} needs a threshold, e.g. condition: {{gte: 5}}")
        bad = sorted(set(body.condition) - set(_OPS))
        if bad:
            raise RuleSyntaxError("correlation.condition", f"unknown operator {bad[0]!r} (known: {', '.join(_OPS)})")
        if upper := sorted(set(body.condition) & UPPER_BOUND_OPS):
            raise RuleSyntaxError(f"correlation.condition.{upper[0]}", UPPER_BOUND_REASON)
        every = {"gte": float(len(self.entries))}
        if (
            body.type not in ("event_count", "value_count")
            and "condition" in body.model_fields_set
            and (body.type not in ("temporal", "temporal_ordered") or body.condition != every)
        ):  # it was ignored: a temporal's {gte: 2} of 3 entries (Sigma: 2 different rules) needed all 3
            what = (f"every entry must match (only {{gte: {len(self.entries)}}}, all of them, is supported)"
                    if body.type in ("temporal", "temporal_ordered") else "it has no count")  # fmt: skip
            raise RuleSyntaxError("correlation.condition", f"{body.type} takes no condition here: {what}")
        self.condition = [(_OPS[k], float(v)) for k, v in body.condition.items()]
        if body.type in ("value_count", "new_terms") and not body.field:
            raise RuleSyntaxError("correlation.field", f"{body.type} needs the field whose values count")
        self.field = getter(body.field, "correlation.field") if body.field else None
        self.max_groups = body.max_groups
        self._routes: dict[str, tuple[_Entry, ...]] = {}
        self._summary = compile_template(spec.summary or spec.title, "summary")
        self._entities = [
            (e.kind, compile_template(e.id, f"entities.{i}.id") if e.id else None,
             compile_template(e.name, f"entities.{i}.name") if e.name else None)
            for i, e in enumerate(spec.entities)
        ]  # fmt: skip
        types = tuple(dict.fromkeys(t for e in self.entries for t in e.types))
        codes: frozenset[int] | None = frozenset()
        for e in self.entries:
            codes = None if codes is None or e.codes is None else codes | e.codes
        self.meta = RuleMeta(
            id=spec.id, title=spec.title, severity=spec.severity, version=spec.version, runbook=spec.runbook,
            attack=tuple(spec.attack), basic=spec.basic, description=spec.description, event_types=types,
            activity_codes=codes, ticks=True, suppress_secs=spec.suppress_secs, kind="yaml",
            status=spec.status, author=spec.author, references=tuple(spec.references),
            falsepositives=tuple(spec.falsepositives), related=tuple(r.id for r in spec.related),
        )  # fmt: skip

    # ---- rendering -------------------------------------------------------------------------
    def _render(self, ev: Event) -> tuple[str, list[list[str | None]]]:
        ents: list[list[str | None]] = []
        for kind, id_t, name_t in self._entities:
            eid = id_t(ev) if id_t else ("", False)
            name = name_t(ev) if name_t else ("", False)
            if eid[1] or name[1]:
                ents.append([kind, eid[0] if eid[1] else None, name[0] if name[1] else None])
        return self._summary(ev)[0], ents

    def _finding(self, key: str, ev: Event, time: float | None = None, **attrs: Any) -> Finding:
        summary, ents = self._render(ev)
        return self._stored_finding(key, summary, ents, ev.id, time, attrs)

    @staticmethod
    def _stored_finding(key: str, summary: str, ents: list[list[str | None]], eid: str | None, time: float | None,
                        attrs: Mapping[str, Any]) -> Finding:  # fmt: skip
        entities = tuple(Entity(str(k), i, n) for k, i, n in ents)
        return Finding(key=key[2:] or "all", summary=summary, entities=entities, event_id=eid,
                       attributes=dict(attrs), time=time)  # fmt: skip

    # ---- state -----------------------------------------------------------------------------
    def _group(self, ctx: RuleContext, key: str) -> dict[str, Any]:
        doc = ctx.sub(key)
        if doc is None:
            doc = ctx.new_sub(key)
            ctx.trim_subs(self.max_groups)
        return doc

    def _is_new_term(self, ctx: RuleContext, i: int, value: Any) -> bool:
        """Record ``value`` in entry ``i``'s workspace history; True when it was not seen within history."""
        if value is None or value == "":
            return False
        name = f"nt:{i}"
        doc = ctx.sub(name)
        if doc is None:
            doc = ctx.new_sub(name)
        terms: dict[str, float] = doc.setdefault("h", {})
        v = str(value)
        last = terms.pop(v, None)
        terms[v] = max(ctx.now, last or ctx.now)
        while len(terms) > MAX_TERMS:
            del terms[next(iter(terms))]
        return last is None or ctx.now - last > self.history

    def _window_count(self, entries: list[list[Any]], t: float, distinct: bool) -> int:
        """The largest count (of distinct values) in a ``timespan`` window holding the event at ``t``.

        In order, that is the window ending at ``t``; a late event may complete a window that ends
        at a later event already seen, so each of those is tried as the window's end.
        """
        best = 0
        for end in {x[0] for x in entries if t <= x[0] <= t + self.timespan}:
            inside = [x for x in entries if end - self.timespan <= x[0] <= end]
            best = max(best, len({x[1] for x in inside}) if distinct else len(inside))
        return best

    def _holds(self, n: float) -> bool:
        return all(op(n, v) for op, v in self.condition)

    # ---- evaluation ------------------------------------------------------------------------
    def _routed(self, event: Event) -> tuple[_Entry, ...]:
        """The entries (last first) an event's type routes to; cached per type."""
        r = self._routes.get(event.type)
        if r is None:
            r = tuple(e for e in reversed(self.entries) if type_matches(e.types, event.type))
            if len(self._routes) < 1024:
                self._routes[event.type] = r
        return r

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Feed the event to every entry it matches (last entry first, so it advances a sequence once)."""
        routed = self._routed(event)
        if not routed:
            return ()
        return self._feed(ctx, event, routed, True)

    def handler_for(self, event_type: str, code: int | None) -> Handler:
        """:meth:`on_event` for events of one (type, engine activity code), the entries chosen once.

        ``code`` is the engine's: None off the audit log, the ``activity_code`` when it is a JSON
        int, else -1 (also a literal -1), so only then is each entry's code list checked per event.
        An entry whose types or codes exclude the pair is left out; with a single entry left and
        no code check, the handler tests its selection before anything else.
        """
        routed = tuple(e for e in reversed(self.entries) if type_matches(e.types, event_type))
        check = code == -1
        if code is not None and not check:
            routed = tuple(e for e in routed if e.codes is None or code in e.codes)
        if not routed:
            return _nothing
        if len(routed) == 1 and not check:
            entry = routed[0]
            detect, matched = entry.detect, self._matched

            def one(ctx: RuleContext, event: Event) -> Iterable[Finding]:
                if not detect(event):
                    return ()
                f = matched(ctx, event, entry)
                return () if f is None else [f]

            return one
        feed = self._feed
        return lambda ctx, event: feed(ctx, event, routed, check)

    def _feed(self, ctx: RuleContext, event: Event, routed: tuple[_Entry, ...], check: bool) -> Iterable[Finding]:
        """The entries ``routed`` (last first) that match, advanced; ``check``: test entries' activity codes."""
        out: list[Finding] = []
        code = event.attributes.get("activity_code") if check and event.source.kind == "audit_log" else None
        for e in routed:
            if (code is not None and e.codes is not None and code not in e.codes) or not e.detect(event):
                continue
            f = self._matched(ctx, event, e)
            if f is not None:
                out.append(f)
        return out or ()

    def _matched(self, ctx: RuleContext, event: Event, e: _Entry) -> Finding | None:
        """Advance the correlation with an event entry ``e``'s selection matched."""
        if e.nt_field is not None and not self._is_new_term(ctx, e.index, e.nt_field(event)):
            return None
        key = e.key(event)
        if key is None:
            return None
        return self._step(ctx, e.index, key, event)

    def _step(self, ctx: RuleContext, i: int, key: str, ev: Event) -> Finding | None:
        t, k = ctx.now, self.kind
        span = self.timespan
        if k == "absence":
            if self.entries[i].opens:
                doc = self._group(ctx, key)
                if "open" not in doc:
                    s, ents = self._render(ev)
                    doc["open"] = [t, ev.id, s, ents]
                return None
            pending = ctx.peek_sub(key)
            if pending is not None and "open" in pending and pending["open"][0] <= t <= pending["open"][0] + span:
                ctx.drop_sub(key)
            return None
        if k == "new_terms":
            assert self.field is not None
            v = self.field(ev)
            if v is None or v == "":
                return None
            doc = self._group(ctx, key)
            terms: dict[str, float] = doc.setdefault("h", {})
            last = terms.pop(str(v), None)
            terms[str(v)] = max(t, last or t)
            while len(terms) > MAX_TERMS:
                del terms[next(iter(terms))]
            if last is None or t - last > span:
                return self._finding(key, ev, term=str(v))
            return None
        doc = self._group(ctx, key)
        if k in ("event_count", "value_count"):
            v = None
            if k == "value_count":
                assert self.field is not None
                v = self.field(ev)
                if v is None or v == "":
                    return None
            entries: list[list[Any]] = doc.setdefault("e", [])
            entries.append([t, None if v is None else str(v)])
            latest = max(x[0] for x in entries)
            entries[:] = sorted((x for x in entries if latest - x[0] <= span + self.grace), key=_time)[-MAX_ENTRIES:]
            n = self._window_count(entries, t, k == "value_count")
            if self._holds(float(n)):
                doc["e"] = []
                return self._finding(key, ev, count=n)
            return None
        if k == "temporal":
            seen: dict[str, float] = doc.setdefault("s", {})
            seen[str(i)] = max(t, seen.get(str(i), t))
            latest = max(seen.values())
            for name in [n for n, ts in seen.items() if latest - ts > span]:
                del seen[name]
            if len(seen) == len(self.entries):
                doc["s"] = {}
                return self._finding(key, ev)
            return None
        return self._ordered(ctx, doc, i, key, ev)

    def _ordered(self, ctx: RuleContext, doc: dict[str, Any], i: int, key: str, ev: Event) -> Finding | None:
        """temporal_ordered: ``q`` maps each step to the chains that reached it, as ``[start, time]`` pairs.

        A first step adds a chain start and leaves the chains in progress alone (a repeated first step
        used to throw away a chain already at step 2). Step ``i`` extends, among the chains at step
        ``i - 1`` reached at or before its time, the one that started last, if the event is within
        ``timespan`` of that start. Each step keeps the :data:`MAX_CHAINS` chains that started last.
        """
        t, span = ctx.now, self.timespan
        q: dict[str, list[list[float]]] = doc.get("q") or {}
        if "s" in doc:  # state written before q: one chain, each step's time, the start at "0"
            old = doc.pop("s")
            q = {k: [[float(old["0"]), float(v)]] for k, v in old.items()} if "0" in old else q
        doc["q"] = q
        if i == 0:
            q.setdefault("0", []).append([t, t])
        else:
            starts = [c[0] for c in q.get(str(i - 1), ()) if c[1] <= t and t - c[0] <= span]
            if not starts:
                return None
            if i == len(self.entries) - 1:
                doc["q"] = {}
                return self._finding(key, ev)
            q.setdefault(str(i), []).append([max(starts), t])
        latest = max(c[1] for cs in q.values() for c in cs)
        for step, cs in list(q.items()):
            kept = sorted((c for c in cs if latest - c[0] <= span + self.grace), key=lambda c: (c[0], -c[1]))
            if kept:
                q[step] = kept[-MAX_CHAINS:]
            else:
                del q[step]
        return None

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Fire absence windows closed for ``grace``; forget groups quiet for longer than they matter."""
        now, st = ctx.now, ctx.state
        keep = (self.history if self.kind == "new_terms" else self.timespan) + self.grace
        out: list[Finding] = []
        for name in list(st.subs):
            doc = st.subs[name]
            if name.startswith("nt:"):
                if now - st.sub_time.get(name, now) > self.history + self.grace:
                    ctx.drop_sub(name)
                continue
            opened = doc.get("open")
            if opened is not None:
                end = float(opened[0]) + self.timespan
                if now >= end + self.grace:
                    out.append(self._stored_finding(name, opened[2], opened[3], opened[1], end, {"window_end": end}))
                    ctx.drop_sub(name)
                continue
            if now - _last_match(doc, st.sub_time.get(name, now)) > keep:
                ctx.drop_sub(name)
        return out


def compile_correlation(
    spec: CorrelationSpec, params: RuleParams, refs: Mapping[str, MatchRuleSpec]
) -> CorrelationRule:
    """Compile a validated correlation spec; ``refs`` are the YAML match rules entries may name.

    Raises:
        RuleSyntaxError: an entry, duration, condition, field or template is invalid.
    """
    return CorrelationRule(spec, params, refs)
