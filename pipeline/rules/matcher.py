"""YAML matching rules in the spirit of Sigma, compiled once into plain Python closures.

A rule file holds one rule, a list of rules, or ``{rules: [...]}``::

    id: custom.login_outside_office       # dotted, unique
    title: Login from outside the office network
    severity: medium                      # info | low | medium | high | critical
    attack: [T1078]
    basic: Audit logs reviewed periodically
    types: [audit.*]                      # event types routed to the rule (globs allowed)
    activity_codes: [1]                   # optional: audit activity codes
    detection:
      selection:
        actor.ip|cidr: [0.0.0.0/0]
      office:
        actor.ip|cidr: [203.0.113.0/24]
      condition: selection and not office
    resolve: {...}                        # optional: same shape; a match clears the open condition
    resolve_types: [audit.*]              # optional: the types the resolve block sees (default: types and
                                          # the ``type`` values its selections name)
    group_by: [actor.user_id]             # the condition key (dedup); empty: one per workspace
    summary: "{actor.user_name|actor.user_id} logged in from {actor.ip}"
    entities: [{kind: user, id: "{actor.user_id}", name: "{actor.user_name}"}]
    fields: [actor.ip, actor.user_agent]  # copied into the alert's attributes
    suppress_secs: 3600

Detection semantics (as in Sigma): a selection is a mapping (all fields must match) or a list
of mappings (any). A list of values means any of them (``|all``: every one). Strings compare
case-insensitively unless ``|cased``. A field that holds a list matches when any element does.
``null`` matches a missing field. ``|exists`` tests presence: a key under ``attributes``, ``raw`` or
``change.before/after`` exists even with the value null; a fixed Event v1 field (``actor.ip``) exists
when not null. Field paths start at an Event v1 field: ``type``, ``time``,
``workspace.id``, ``source.kind``, ``actor.ip``, ``target.id``, ``change.after.role``,
``attributes.<name>``, ``raw.<name>``. Modifiers: ``contains startswith endswith re cidr
gt gte lt lte exists in all cased`` (``re`` also takes ``i``, ``m``, ``s``). Conditions use
``and``, ``or``, ``not``, parentheses, ``1 of <pattern>``, ``all of <pattern>`` and ``them``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from pipeline.config.base import Model
from pipeline.rules.base import ATTACK_PATTERN, RULE_ID_PATTERN, Finding, RuleContext, RuleMeta, RuleParams, resolved
from pipeline.rules.conditions import ConditionParser
from pipeline.rules.lifecycle import LifecycleSpec
from pipeline.rules.reach import default_types as default_types
from pipeline.rules.reach import plain_values as plain_values
from pipeline.rules.reach import type_matches as type_matches
from pipeline.rules.reach import unreachable as unreachable
from pipeline.rules.syntax import NEVER, NO_TEXT, NOTHING, Problems, Template
from pipeline.rules.syntax import Getter as Getter
from pipeline.rules.syntax import Pred as Pred
from pipeline.rules.syntax import RuleSyntaxError as RuleSyntaxError  # re-exported: the rule language's error
from schemas.alert import Entity, Severity
from schemas.event import Event

_SUBFIELDS: dict[str, frozenset[str] | None] = {
    "id": frozenset(), "type": frozenset(), "time": frozenset(), "observed_at": frozenset(), "schema": frozenset(),
    "workspace": frozenset({"id", "name"}),
    "source": frozenset({"kind", "stream", "record_id"}),
    "actor": frozenset({"user_id", "user_name", "api_key_id", "ip", "user_agent", "via_api"}),
    "target": frozenset({"kind", "id", "name"}),
    "change": frozenset({"before", "after", "fields"}),
    "attributes": None, "raw": None,
}  # fmt: skip
_MODIFIERS = frozenset({"contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte", "exists",
                        "in", "all", "cased", "eq", "i", "m", "s"})  # fmt: skip
BOOLEAN_FIELDS = frozenset({"actor.via_api"})
"""The fixed Event v1 fields that hold a JSON boolean (a string value there can never match)."""
_KINDS = ("contains", "startswith", "endswith", "re", "cidr", "gt", "gte", "lt", "lte", "exists", "eq")


# ---- field access ----------------------------------------------------------------------------
def getter(path: str, where: str = "field") -> Getter:
    """Compile a dotted Event v1 path into a function returning the value (None when absent).

    Raises:
        RuleSyntaxError: the path does not start at an Event v1 field.
    """
    segs = path.split(".")
    head, rest = segs[0], segs[1:]
    if head not in _SUBFIELDS or any(not s for s in segs):
        raise RuleSyntaxError(where, f"unknown field {path!r} (starts with one of: {', '.join(_SUBFIELDS)})")
    allowed = _SUBFIELDS[head]
    if allowed is not None and rest and rest[0] not in allowed:
        raise RuleSyntaxError(where, f"unknown field {path!r} ({head} has: {', '.join(sorted(allowed))})")
    if not rest:
        return lambda ev: getattr(ev, head)
    if len(rest) == 1 and head not in ("attributes", "raw"):
        sub = rest[0]
        return lambda ev: getattr(getattr(ev, head), sub, None)  # None-safe: getattr(None, x, None)

    def get(ev: Event) -> Any:
        v: Any = getattr(ev, head)
        for s in rest:
            if v is None:
                return None
            v = v.get(s) if isinstance(v, dict) else getattr(v, s, None)
        return v

    return get


def _presence(path: str) -> Callable[[Event], bool]:
    """Whether ``path`` is present: a key of a mapping (``attributes``, ``raw``, ``change.after``...) is
    present even when its value is null (modifiers appendix: ``exists`` "only verifies the presence of a
    field, not its value, be it empty or null"); a fixed Event v1 field is present when not null."""
    head, *rest = path.split(".")
    if not rest:
        return lambda ev: getattr(ev, head) is not None

    def present(ev: Event) -> bool:
        v: Any = getattr(ev, head)
        for s in rest[:-1]:
            if v is None:
                return False
            v = v.get(s) if isinstance(v, dict) else getattr(v, s, None)
        if isinstance(v, dict):
            return rest[-1] in v
        return getattr(v, rest[-1], None) is not None

    return present


# ---- value predicates ------------------------------------------------------------------------
def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _text(v: Any, cased: bool) -> str | None:
    if isinstance(v, str):
        return v if cased else v.lower()
    if _num(v):
        return str(v)
    return None


def _value_pred(kind: str, expected: Any, mods: set[str], where: str) -> Callable[[Any], bool]:
    cased = "cased" in mods
    if kind in ("gt", "gte", "lt", "lte"):
        if not _num(expected):
            raise RuleSyntaxError(where, f"|{kind} needs a number, got {expected!r}")
        e = float(expected)
        cmp = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__}[kind]
        return lambda v: _num(v) and cmp(float(v), e)
    if kind == "cidr":
        try:
            net = ipaddress.ip_network(str(expected), strict=False)
        except ValueError as err:
            raise RuleSyntaxError(where, f"|cidr: {err}") from None

        def in_net(v: Any) -> bool:
            try:
                return isinstance(v, str) and ipaddress.ip_address(v) in net
            except ValueError:
                return False

        return in_net
    if kind == "re":
        if not isinstance(expected, str):
            raise RuleSyntaxError(where, "|re needs a string pattern")
        flags = (re.IGNORECASE if "i" in mods else 0) | (re.MULTILINE if "m" in mods else 0)
        flags |= re.DOTALL if "s" in mods else 0
        try:
            rx = re.compile(expected, flags)
        except re.error as err:
            raise RuleSyntaxError(where, f"|re: invalid pattern: {err}") from None
        # numbers as their string form, as the string modifiers read them (Sigma values are strings)
        return lambda v: (t := _text(v, True)) is not None and rx.search(t) is not None
    if expected is None:
        if kind != "eq":
            raise RuleSyntaxError(where, f"|{kind} cannot compare with null")
        return lambda v: v is None
    if isinstance(expected, bool):
        if kind != "eq":
            raise RuleSyntaxError(where, f"|{kind} cannot compare with a boolean")
        return lambda v: v is expected
    if not isinstance(expected, str | int | float):
        raise RuleSyntaxError(where, f"values must be strings, numbers, booleans or null, got {expected!r}")
    if kind == "eq" and _num(expected):
        num = float(expected)
        return lambda v: (_num(v) and float(v) == num) or (isinstance(v, str) and v == str(expected))
    e_text = str(expected) if cased else str(expected).lower()
    if kind == "eq":
        return lambda v: _text(v, cased) == e_text
    if kind == "contains":
        return lambda v: (t := _text(v, cased)) is not None and e_text in t
    if kind == "startswith":
        return lambda v: (t := _text(v, cased)) is not None and t.startswith(e_text)
    return lambda v: (t := _text(v, cased)) is not None and t.endswith(e_text)  # endswith


def _field_pred(spec: str, expected: Any, where: str) -> Pred:
    path, *mod_list = spec.split("|")
    mods = set(mod_list)
    problems = Problems()
    get = problems.check(getter, path, where, fallback=NOTHING)
    for bad in sorted(mods - _MODIFIERS):
        problems.found.append(
            RuleSyntaxError(where, f"unknown modifier {bad!r} (known: {', '.join(sorted(_MODIFIERS))})")
        )
    kinds = [m for m in mod_list if m in _KINDS]
    if len(kinds) > 1:
        problems.found.append(RuleSyntaxError(where, f"modifiers {kinds} cannot be combined"))
    problems.raise_any()
    kind = kinds[0] if kinds else "eq"
    if kind == "exists":
        if not isinstance(expected, bool):
            raise RuleSyntaxError(where, "|exists needs true or false")
        head, _, sub = path.partition(".")
        if sub and "." not in sub and head not in ("attributes", "raw"):  # getter's two-step form, inlined
            # a fixed Event v1 field (actor.ip): absent and null are the same thing there
            if expected:
                return lambda ev: getattr(getattr(ev, head), sub, None) is not None
            return lambda ev: getattr(getattr(ev, head), sub, None) is None
        present = _presence(path)
        return lambda ev: present(ev) is expected
    values = list(expected) if isinstance(expected, list) else [expected]
    if kind == "eq" and path in BOOLEAN_FIELDS and (text := next((v for v in values if isinstance(v, str)), None)):
        # Event v1 writes it as a JSON boolean, which no string equals: the selection would never match
        raise RuleSyntaxError(where, f"{path} is a boolean: write true or false, unquoted (got {text!r})")
    if kind == "eq" and (star := next((v for v in values if _sigma_star(v)), None)) is not None:
        raise RuleSyntaxError(where, _star_hint(path, mods, star))
    if "in" in mods and not isinstance(expected, list):
        raise RuleSyntaxError(where, "|in needs a list of values")
    if not values:
        raise RuleSyntaxError(where, "the list of values is empty")
    preds = [_value_pred(kind, v, mods, where) for v in values]

    def one(v: Any, p: Callable[[Any], bool]) -> bool:
        if isinstance(v, list | tuple):
            return any(p(x) for x in v)
        return p(v)

    if "all" in mods:
        return lambda ev: all(one(get(ev), p) for p in preds)
    if len(preds) == 1:
        p0 = preds[0]
        return lambda ev: one(get(ev), p0)
    return lambda ev: any(one(v, p) for v in (get(ev),) for p in preds)


def _sigma_star(v: Any) -> bool:
    """A plain value shaped like a Sigma wildcard (``*curl*``, ``adm*``, ``*.ru``): here it is literal text."""
    return isinstance(v, str) and v.strip("*") != "" and (v.startswith("*") or v.endswith("*"))


def _star_hint(path: str, mods: set[str], value: str) -> str:
    inner = value.strip("*")
    kind = {(True, True): "contains", (False, True): "startswith"}.get(
        (value.startswith("*"), value.endswith("*")), "endswith")  # fmt: skip
    extra = "".join(f"|{m}" for m in sorted(mods & {"all", "cased", "in"}))
    return (
        f"{value!r}: * is not a wildcard here (a value is literal text, which Sigma's is not); write "
        f"{path}|{kind}{extra}: {inner!r} (`rules import` converts Sigma wildcards)"
    )


def _selection(body: Any, where: str) -> Pred:
    if isinstance(body, Mapping):
        if not body:
            raise RuleSyntaxError(where, "a selection needs at least one field")
        problems = Problems()
        preds = [problems.check(_field_pred, str(k), v, f"{where}.{k}", fallback=NEVER) for k, v in body.items()]
        problems.raise_any()
        if len(preds) == 1:
            return preds[0]
        return lambda ev: all(p(ev) for p in preds)
    if isinstance(body, list) and body and all(isinstance(b, Mapping) for b in body):
        problems = Problems()
        alts = [problems.check(_selection, b, f"{where}.{i}", fallback=NEVER) for i, b in enumerate(body)]
        problems.raise_any()
        return lambda ev: any(p(ev) for p in alts)
    raise RuleSyntaxError(where, "a selection is a mapping of field: value, or a list of such mappings")


# ---- conditions ----------------------------------------------------------------------------
def compile_detection(detection: Mapping[str, Any], where: str = "detection") -> Pred:
    """Compile a ``detection`` block (named selections + ``condition``) into a predicate.

    Raises:
        RuleSyntaxError: a selection, modifier, value or the condition is invalid.
    """
    if not isinstance(detection, Mapping):
        raise RuleSyntaxError(where, "must be a mapping of selections and a condition")
    cond = detection.get("condition")
    problems = Problems()
    # A selection with a problem still counts as defined, so the condition is checked too.
    sels = {
        str(k): problems.check(_selection, v, f"{where}.{k}", fallback=NEVER)
        for k, v in detection.items()
        if k != "condition"
    }
    if not sels:
        problems.found.append(RuleSyntaxError(where, "needs at least one selection"))
    elif cond is None:
        if len(sels) != 1:
            problems.found.append(
                RuleSyntaxError(f"{where}.condition", "required when there is more than one selection")
            )
    elif not isinstance(cond, str) or not cond.strip():
        problems.found.append(RuleSyntaxError(f"{where}.condition", "must be a non-empty string"))
    else:
        pred = problems.check(lambda: ConditionParser(cond, sels, f"{where}.condition").parse(), fallback=NEVER)
        problems.raise_any()
        return pred
    problems.raise_any()
    return next(iter(sels.values()))


# ---- templates -------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def compile_template(text: str, where: str) -> Template:
    """Compile ``"{actor.user_name|actor.user_id} from {actor.ip}"``; returns (text, all fields found).

    Raises:
        RuleSyntaxError: a placeholder names an unknown field.
    """
    parts: list[str | list[Getter]] = []
    problems = Problems()
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[pos : m.start()])
        if m.group(0) in ("{{", "}}"):
            parts.append(m.group(0)[0])
        else:
            alts = [a.strip() for a in (m.group(1) or "").split("|")]
            parts.append([problems.check(getter, a, where, fallback=NOTHING) for a in alts])
        pos = m.end()
    parts.append(text[pos:])
    problems.raise_any()

    def render(ev: Event) -> tuple[str, bool]:
        out: list[str] = []
        found = True
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            v = next((x for x in (g(ev) for g in part) if x not in (None, "")), None)
            found = found and v is not None
            out.append("unknown" if v is None else str(v))
        return "".join(out), found

    return render


# ---- the rule --------------------------------------------------------------------------------
AttackId = Annotated[str, StringConstraints(pattern=ATTACK_PATTERN)]
"""An ATT&CK technique id such as ``T1098`` or ``T1556.006``."""


class EntitySpec(Model):
    """An entity template of a YAML rule."""

    kind: str = Field(min_length=1)
    id: str | None = None
    name: str | None = None


class MatchRuleSpec(LifecycleSpec):
    """A YAML rule as written by a user (see the module docstring)."""

    id: str = Field(pattern=RULE_ID_PATTERN, max_length=100)
    title: str = Field(min_length=1)
    severity: Severity
    version: int = Field(1, ge=1)
    description: str = ""
    runbook: str = ""
    attack: list[AttackId] = Field(default_factory=list)
    basic: str = ""
    types: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    activity_codes: list[int] | None = None
    detection: dict[str, Any]
    resolve: dict[str, Any] | None = None
    resolve_types: list[str] | None = None
    group_by: list[str] = Field(default_factory=list)
    summary: str = ""
    entities: list[EntitySpec] = Field(default_factory=list)
    fields: list[str] = Field(default_factory=list)
    enabled: bool = True
    suppress_secs: float | None = Field(None, ge=0)


class MatchRule:
    """A compiled YAML rule; implements :class:`pipeline.rules.base.Rule`."""

    def __init__(self, spec: MatchRuleSpec, params: RuleParams):
        self.spec = spec
        self.params = params
        # The resolve block sees resolve_types, by default the rule's types and the types its selections
        # name (``resolve: {gone: {type: webhook.deleted}}`` needs no resolve_types to be reached).
        self._types = effective_types(spec)
        # activity_codes select what opens an alert: the engine filters by them only a rule without a resolve
        # block, whose clearing record has another code (TOTP disabled 26, re-enabled 23) and was never routed
        self._codes = frozenset(spec.activity_codes) if spec.activity_codes is not None else None
        named = [v.lower() for _, v in plain_values(spec.resolve, "resolve", "type") if isinstance(v, str)]
        self._resolve_types = tuple(spec.resolve_types or dict.fromkeys([*self._types, *named]))
        self.meta = RuleMeta(
            id=spec.id, title=spec.title, severity=spec.severity, version=spec.version, runbook=spec.runbook,
            attack=tuple(spec.attack), basic=spec.basic, description=spec.description,
            event_types=tuple(dict.fromkeys([*self._types, *self._resolve_types])),
            activity_codes=None if self._codes is None or spec.resolve is not None else self._codes,
            suppress_secs=spec.suppress_secs, kind="yaml", status=spec.status, author=spec.author,
            references=tuple(spec.references), falsepositives=tuple(spec.falsepositives),
            related=tuple(r.id for r in spec.related),
        )  # fmt: skip
        problems = Problems()
        parts = problems.check(
            _compile_parts, spec.detection, spec.resolve, spec.group_by, spec.summary or spec.title,
            [(e.kind, e.id, e.name) for e in spec.entities], spec.fields, fallback=None,
        )  # fmt: skip
        problems.found += unreachable(spec.detection, "detection", self._types, spec.activity_codes, "types")
        problems.found += unreachable(spec.resolve, "resolve", self._resolve_types, None,  # (every code: above)
                                      "resolve_types" if spec.resolve_types else "types")  # fmt: skip
        problems.raise_any()
        assert parts is not None  # (raise_any raised otherwise)
        self._detect, self._resolve, self._group, self._summary, self._entities, self._fields = parts
        self._routes: dict[str, tuple[bool, bool]] = {}  # event type -> (detect?, resolve?)

    def key(self, ev: Event) -> str:
        """The condition key: the ``group_by`` values joined by ``|`` (``all`` without group_by)."""
        if not self._group:
            return "all"
        return "|".join("-" if (v := g(ev)) is None else str(v) for g in self._group)

    def _entities_for(self, ev: Event) -> tuple[Entity, ...]:
        out: list[Entity] = []
        for kind, id_t, name_t in self._entities:
            eid = id_t(ev) if id_t else ("", False)
            name = name_t(ev) if name_t else ("", False)
            if eid[1] or name[1]:
                out.append(Entity(kind, eid[0] if eid[1] else None, name[0] if name[1] else None))
        return tuple(out)

    def _route(self, event_type: str) -> tuple[bool, bool]:
        r = self._routes.get(event_type)
        if r is None:
            r = (type_matches(self._types, event_type), type_matches(self._resolve_types, event_type))
            if len(self._routes) < 1024:
                self._routes[event_type] = r
        return r

    def only_resolves(self, event_type: str) -> bool:
        """Whether, for this event type, the rule can only clear an open condition (detection does not apply).

        :meth:`on_event` then returns nothing while ``ctx.state.tracks`` is empty, so the engine
        skips the call (``pipeline.poller_unauthorized`` sees every audit record this way).
        """
        return not self._route(event_type)[0]

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Match the detection (open) or, when something is open, the resolve block."""
        detect, resolve = self._route(event.type)
        if detect and self._codes is not None and self.meta.activity_codes is None and event.source.kind == "audit_log":
            code = event.attributes.get("activity_code")
            detect = (code if type(code) is int else -1) in self._codes  # as the engine reads the code
        if detect and self._detect(event):
            attrs = {}
            for name, get in self._fields:
                v = get(event)
                if isinstance(v, str | int | float | bool) or v is None or isinstance(v, list):
                    attrs[name] = v
            return (
                Finding(
                    key=self.key(event), summary=self._summary(event)[0], entities=self._entities_for(event),
                    event_id=event.id, attributes=attrs, resolvable=self._resolve is not None,
                ),
            )  # fmt: skip
        if resolve and self._resolve is not None and ctx.state.tracks and self._resolve(event):
            key = self.key(event)
            if ctx.is_open(key):
                return (resolved(key, f"Cleared: {self.meta.title}", event_id=event.id),)
        return ()

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """YAML rules have no time-based conditions."""
        return ()


_Parts = tuple[
    Pred,
    Pred | None,
    list[Getter],
    Template,
    list[tuple[str, Template | None, Template | None]],
    list[tuple[str, Getter]],
]


def _compile_parts(
    detection: Any,
    resolve: Any,
    group_by: Sequence[str],
    summary: str,
    entities: Sequence[tuple[str, str | None, str | None]],
    fields: Sequence[str],
) -> _Parts:
    """Compile every part of a rule (``detection`` None: not compiled), then raise all their problems at once.

    Raises:
        RuleSyntaxError: one part or more is invalid (every problem inside).
    """
    problems = Problems()
    detect = NEVER if detection is None else problems.check(compile_detection, detection, "detection", fallback=NEVER)
    res = None if resolve is None else problems.check(compile_detection, resolve, "resolve", fallback=NEVER)
    group = [problems.check(getter, g, f"group_by.{i}", fallback=NOTHING) for i, g in enumerate(group_by)]
    text = problems.check(compile_template, summary, "summary", fallback=NO_TEXT)
    ents = [
        (kind, problems.check(compile_template, eid, f"entities.{i}.id", fallback=NO_TEXT) if eid else None,
         problems.check(compile_template, name, f"entities.{i}.name", fallback=NO_TEXT) if name else None)
        for i, (kind, eid, name) in enumerate(entities)
    ]  # fmt: skip
    picked = [(f, problems.check(getter, f, f"fields.{i}", fallback=NOTHING)) for i, f in enumerate(fields)]
    problems.raise_any()
    return detect, res, group, text, ents, picked


def rule_problems(raw: Mapping[str, Any]) -> list[RuleSyntaxError]:
    """The compile problems of a raw rule whose spec did not validate: every part of the right
    shape is compiled anyway (the shapes are the spec's errors), so one run names every typo."""

    def strings(key: str) -> list[str]:
        v = raw.get(key)
        return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []

    detection, resolve, listed = raw.get("detection"), raw.get("resolve"), raw.get("entities")
    summary = raw.get("summary") or raw.get("title")
    entities = [
        (str(e.get("kind")), e.get("id") if isinstance(e.get("id"), str) else None,
         e.get("name") if isinstance(e.get("name"), str) else None)
        for e in (listed if isinstance(listed, list) else [])
        if isinstance(e, Mapping)
    ]  # fmt: skip
    try:
        _compile_parts(
            detection if isinstance(detection, Mapping) else None,
            resolve if isinstance(resolve, Mapping) else None,
            strings("group_by"), summary if isinstance(summary, str) else "", entities, strings("fields"),
        )  # fmt: skip
    except RuleSyntaxError as err:
        return list(err.problems)
    return []


def effective_types(spec: MatchRuleSpec) -> list[str]:
    """:func:`default_types` of a YAML match rule (its ``types`` unless not given)."""
    return default_types(spec.types if "types" in spec.model_fields_set else None, spec.activity_codes)


def compile_rule(spec: MatchRuleSpec, params: RuleParams) -> MatchRule:
    """Compile a validated spec.

    Raises:
        RuleSyntaxError: the detection, a template or a field path is invalid.
    """
    return MatchRule(spec, params)
