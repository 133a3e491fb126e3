"""Event v1: one normalized fact about a workspace (see ``event.v1.json``).

Events are immutable msgspec ``Struct``s. ``Event.build`` computes the deterministic id from the
natural key, so callers never invent ids. Decoding from the bus (``schemas.codec``) builds and
type-checks them in C; ``to_json`` writes them with orjson, byte for byte as the dataclasses that
preceded the structs did (field order, ``null``s written, ``schema`` last).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
import orjson

from schemas.errors import decode_error
from schemas.ids import deterministic_id

SCHEMA: Literal["instantly.event.v1"] = "instantly.event.v1"
SourceKind = Literal["audit_log", "snapshot", "webhook", "pipeline"]
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_VALID_TYPES: set[str] = set()
"""Event types ``Event.build`` already checked against ``TYPE_PATTERN`` (a bounded few in practice)."""
_MAX_VALID_TYPES = 4096
_SLUG = re.compile(r"[^a-z0-9_]+")
_asdict = msgspec.structs.asdict


def slug(text: str) -> str:
    """Turn free text (a custom webhook label) into a type segment: ``Hot Lead!`` → ``hot_lead``."""
    s = _SLUG.sub("_", text.strip().lower()).strip("_")
    if not s:
        return "unnamed"
    if not s[0].isalpha():
        s = "x" + s
    return s[:64]


# Every struct here holds JSON data only (strings, numbers, tuples, dicts parsed from JSON), which
# cannot point back at the struct, so none can be part of a reference cycle: ``gc=False`` keeps
# the collector from tracking (and re-scanning) the hundreds of thousands a consumer decodes.


class WorkspaceRef(msgspec.Struct, frozen=True, gc=False):
    """The workspace an event or alert belongs to."""

    id: str
    name: str | None = None


class Source(msgspec.Struct, frozen=True, gc=False):
    """Where an event came from: the kind, the stream and the source record's id."""

    kind: SourceKind
    stream: str
    record_id: str | None = None


class Actor(msgspec.Struct, frozen=True, gc=False):
    """Who did it, as far as the source tells."""

    user_id: str | None = None
    user_name: str | None = None
    api_key_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    via_api: bool | None = None


class Target(msgspec.Struct, frozen=True, gc=False):
    """What it was done to."""

    kind: str
    id: str | None = None
    name: str | None = None


class Change(msgspec.Struct, frozen=True, gc=False):
    """A snapshot difference: the redacted state before and after, and the fields that changed."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    fields: tuple[str, ...] = ()


class Event(msgspec.Struct, frozen=True, gc=False):
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
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    raw: dict[str, Any] | None = None
    schema: Literal["instantly.event.v1"] = SCHEMA

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
        return cls(event_id, type, time, observed_at, workspace, source, actor, target, change, attributes or {}, raw)

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
        """Serialise to the bus bytes with orjson, each struct written as an object of its fields in order.

        orjson does not know msgspec structs; ``msgspec.structs.asdict`` (C, shallow) hands it each
        one as a dict, so nested structs, tuples and dicts come out exactly as orjson wrote the
        dataclasses before (msgspec's own encoder would write ``1e16`` where orjson writes ``1e+16``).

        Raises:
            orjson.JSONEncodeError: ``attributes`` or ``raw`` hold a value JSON cannot represent.
        """
        return orjson.dumps(self, default=_asdict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Rebuild an event from its dict form, checking every field's type.

        Missing optional fields take their defaults; unknown fields are ignored.

        Raises:
            RecordError: a required field is missing or a field has the wrong type.
        """
        try:
            return msgspec.convert(d, cls)
        except msgspec.ValidationError as err:
            raise decode_error("an Event v1", err) from None

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Parse bytes from the bus (decoded and type-checked in one pass, in C).

        Raises:
            RecordError: not JSON, or not an Event v1 (the message names the field).
        """
        try:
            return EVENT_DECODER.decode(data) if cls is Event else msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as err:
            raise decode_error("an Event v1", err) from None


EVENT_DECODER = msgspec.json.Decoder(Event)
"""Bytes to a type-checked :class:`Event` (one decoder, built once: it caches the type's layout)."""
