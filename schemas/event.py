"""Event v1: one normalized fact about a workspace (see ``event.v1.json``).

Events are immutable dataclasses serialised with orjson. ``Event.build`` computes the
deterministic id from the natural key, so callers never invent ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from schemas.ids import deterministic_id

SCHEMA = "instantly.event.v1"
SourceKind = Literal["audit_log", "snapshot", "webhook", "pipeline"]
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
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
        if not TYPE_PATTERN.match(type):
            raise ValueError(f"event type {type!r} is not dotted lower_snake (e.g. 'api_key.created')")
        event_id = deterministic_id(workspace.id, source.stream, *natural_key)
        return cls(
            id=event_id,
            type=type,
            time=time,
            observed_at=observed_at,
            workspace=workspace,
            source=source,
            actor=actor,
            target=target,
            change=change,
            attributes=attributes or {},
            raw=raw,
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
