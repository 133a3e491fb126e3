"""Event v1: one normalized fact about a workspace (see ``event.v1.json``).

Events are immutable dataclasses serialised with orjson. ``Event.build`` computes the
deterministic id from the natural key, so callers never invent ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, cast

import orjson

from schemas.ids import deterministic_id

SCHEMA = "instantly.event.v1"
SourceKind = Literal["audit_log", "snapshot", "webhook", "pipeline"]
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_VALID_TYPES: set[str] = set()
"""Event types ``Event.build`` already checked against ``TYPE_PATTERN`` (a bounded few in practice)."""
_MAX_VALID_TYPES = 4096
_SLUG = re.compile(r"[^a-z0-9_]+")


def slug(text: str) -> str:
    """Turn free text (a custom webhook label) into a type segment: ``Hot Lead!`` → ``hot_lead``."""
    s = _SLUG.sub("_", text.strip().lower()).strip("_")
    if not s:
        return "unnamed"
    if not s[0].isalpha():
        s = "x" + s
    return s[:64]


@dataclass(frozen=True, slots=True)
class WorkspaceRef:
    """The workspace an event or alert belongs to."""

    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event came from: the kind, the stream and the source record's id."""

    kind: SourceKind
    stream: str
    record_id: str | None = None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, as far as the source tells."""

    user_id: str | None = None
    user_name: str | None = None
    api_key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    via_api: bool | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What it was done to."""

    kind: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A snapshot difference: the redacted state before and after, and the fields that changed."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One normalized fact. Build with :meth:`Event.build` so the id is deterministic."""

    id: str
    type: str
    time: str
    observed_at: str
    workspace: WorkspaceRef
    source: Source
    actor: Actor | None = None
    target: Target | None = None
    change: Change | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    schema: str = SCHEMA

    @classmethod
    def build(
        cls,
        *,
        type: str,
        time: str,
        observed_at: str,
        workspace: WorkspaceRef,
        source: Source,
        natural_key: tuple[Any, ...],
        actor: Actor | None = None,
        target: Target | None = None,
        change: Change | None = None,
        attributes: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> Event:
        """Build an event whose id hashes (workspace id, source stream, *natural_key).

        Raises:
            ValueError: ``type`` does not match the dotted type format.
        """
        if type not in _VALID_TYPES:
            if not TYPE_PATTERN.match(type):
                raise ValueError(f"event type {type!r} is not dotted lower_snake (e.g. 'api_key.created')")
            if len(_VALID_TYPES) < _MAX_VALID_TYPES:
                _VALID_TYPES.add(type)
        event_id = deterministic_id(workspace.id, source.stream, *natural_key)
        make = new_event if cls is Event else cls
        return make(
            event_id, type, time, observed_at, workspace, source, actor, target, change, attributes or {}, raw, SCHEMA
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (nested dicts are shared, not copied: do not mutate them)."""
        a, t, c = self.actor, self.target, self.change
        return {
            "schema": self.schema,
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "observed_at": self.observed_at,
            "workspace": {"id": self.workspace.id, "name": self.workspace.name},
            "source": {"kind": self.source.kind, "stream": self.source.stream, "record_id": self.source.record_id},
            "actor": None
            if a is None
            else {
                "user_id": a.user_id,
                "user_name": a.user_name,
                "api_key_id": a.api_key_id,
                "ip": a.ip,
                "user_agent": a.user_agent,
                "via_api": a.via_api,
            },
            "target": None if t is None else {"kind": t.kind, "id": t.id, "name": t.name},
            "change": None if c is None else {"before": c.before, "after": c.after, "fields": list(c.fields)},
            "attributes": self.attributes,
            "raw": self.raw,
        }

    def to_json(self) -> bytes:
        """Serialise with orjson (UTF-8 bytes); orjson walks the dataclasses natively."""
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Rebuild an event from its dict form (as read from the bus).

        Raises:
            KeyError: a required field is missing.
            TypeError: a field has the wrong shape.
        """
        if cls is Event and type(d) is dict:
            try:
                ev = _from_full_dict(d)
            except (KeyError, TypeError):
                ev = None  # the general path below raises the documented error
            if ev is not None:
                return ev
        actor = d.get("actor")
        target = d.get("target")
        change = d.get("change")
        return cls(
            id=d["id"],
            type=d["type"],
            time=d["time"],
            observed_at=d["observed_at"],
            workspace=WorkspaceRef(**d["workspace"]),
            source=Source(**d["source"]),
            actor=Actor(**actor) if actor else None,
            target=Target(**target) if target else None,
            change=Change(change["before"], change["after"], tuple(change["fields"])) if change else None,
            attributes=d.get("attributes") or {},
            raw=d.get("raw"),
            schema=d.get("schema", SCHEMA),
        )

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Parse bytes from the bus.

        Raises:
            orjson.JSONDecodeError: not JSON.
            KeyError: a required field is missing.
        """
        return cls.from_dict(orjson.loads(data))


# ---- construction fast path ------------------------------------------------------------------
# Every consumer of the bus rebuilds an Event per record, so decoding is on the hot path of the
# rules, the sinks and replay (and building one is on the poller's). A frozen dataclass's
# ``__init__`` assigns each field through ``object.__setattr__`` (about 0.1 us a field); the
# constructors below build the very same objects several times faster. ``from_dict`` uses them
# for the exact shape ``to_json`` writes (every key present), leaving any other shape to the
# general path and its errors; ``Event.build`` uses ``new_event``.

_D = TypeVar("_D")


def _fast_constructor(cls: type[_D]) -> Callable[..., _D]:
    """A positional constructor for the frozen, slotted dataclass ``cls`` that skips the frozen ``__init__``.

    It fills an instance of a plain class with the same ``__slots__`` (so the same memory layout)
    and then sets its ``__class__`` to ``cls``, which CPython allows between layout-compatible
    classes: the result is an ordinary, immutable ``cls`` instance, equal to ``cls(*args)``.
    Falls back to ``cls`` itself if the interpreter refuses the switch or the probe differs.
    """
    names = tuple(f.name for f in fields(cast(Any, cls)))
    if getattr(cls, "__slots__", None) != names or {"o", "new", "twin", "cls"} & set(names):
        return cls
    twin = type(f"_{cls.__name__}Slots", (), {"__slots__": names, "__module__": __name__})
    body = "".join(f"    o.{n} = {n}\n" for n in names)
    src = f"def make({', '.join(names)}):\n    o = new(twin)\n{body}    o.__class__ = cls\n    return o\n"
    namespace: dict[str, Any] = {"new": object.__new__, "twin": twin, "cls": cls}
    exec(src, namespace)  # noqa: S102 - generated from the dataclass's own field names, as dataclasses does
    make = cast(Callable[..., _D], namespace["make"])
    probe = tuple(f"probe-{i}" for i in range(len(names)))
    try:
        built = make(*probe)
    except TypeError:
        return cls
    return make if type(built) is cls and built == cls(*probe) else cls


# Positional constructors, equal to calling the class (fields in declaration order), for hot
# paths: decoding here, and normalizing audit records (``connectors.instantly.normalize``).
new_event = _fast_constructor(Event)
new_source = _fast_constructor(Source)
new_actor = _fast_constructor(Actor)
new_target = _fast_constructor(Target)
new_change = _fast_constructor(Change)
_WORKSPACES: dict[str, WorkspaceRef] = {}
"""Decoded workspace refs by id: a handful of workspaces, shared by every event (they are immutable)."""
_MAX_WORKSPACES = 4096


def _workspace(w: dict[str, Any]) -> WorkspaceRef | None:
    wid, name = w["id"], w["name"]
    if type(wid) is not str or (name is not None and type(name) is not str):
        return None
    ref = _WORKSPACES.get(wid)
    if ref is None or ref.name != name:
        if len(_WORKSPACES) >= _MAX_WORKSPACES:
            _WORKSPACES.clear()
        ref = _WORKSPACES[wid] = WorkspaceRef(wid, name)
    return ref


def _from_full_dict(d: dict[str, Any]) -> Event | None:
    """``Event.from_dict`` for the shape ``to_json`` writes; None for any other shape.

    Raises:
        KeyError, TypeError: the dict is malformed (the caller then takes the general path).
    """
    w, s, a, t, c = d["workspace"], d["source"], d.get("actor"), d.get("target"), d.get("change")
    if type(w) is not dict or len(w) != 2 or type(s) is not dict or len(s) != 3:
        return None
    ws = _workspace(w)
    if ws is None:
        return None
    if a:
        if type(a) is not dict or len(a) != 6:
            return None
        actor: Actor | None = new_actor(a["user_id"], a["user_name"], a["api_key_id"], a["ip"], a["user_agent"],
                                         a["via_api"])  # fmt: skip
    else:
        actor = None
    if t:
        if type(t) is not dict or len(t) != 3:
            return None
        target: Target | None = new_target(t["kind"], t["id"], t["name"])
    else:
        target = None
    change = new_change(c["before"], c["after"], tuple(c["fields"])) if c else None
    source = new_source(s["kind"], s["stream"], s["record_id"])
    return new_event(d["id"], d["type"], d["time"], d["observed_at"], ws, source, actor, target, change,
                      d.get("attributes") or {}, d.get("raw"), d.get("schema", SCHEMA))  # fmt: skip
