"""Alert v1: a rule's finding (see ``alert.v1.json``), as immutable msgspec structs.

``dedup_key`` is stable for one condition (rule + workspace + entity), so replays and
retries never page twice; ``id`` hashes the dedup key, the status and the occurrence (the
first event that raised it, or the engine's open time and emission number).

``emission`` (the n-th alert raised for the condition since it opened; a resolved alert
carries the last one) and ``raised_at`` (when the rules engine raised it, by its clock) are
optional: records written before they existed decode with ``None`` and are written back
without them, byte for byte. Neither enters ``id``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from schemas.errors import decode_error
from schemas.event import WorkspaceRef
from schemas.ids import deterministic_id

SCHEMA: Literal["instantly.alert.v1"] = "instantly.alert.v1"
Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")


def severity_rank(severity: str) -> int:
    """Order severities: info=0 … critical=4; unknown text ranks lowest.

    Raises:
        nothing; an unknown severity ranks -1.
    """
    try:
        return list(SEVERITIES).index(severity)  # type: ignore[arg-type]
    except ValueError:
        return -1


class RuleRef(msgspec.Struct, frozen=True, gc=False):
    """The rule that raised an alert."""

    id: str
    version: int
    title: str
    severity: Severity
    runbook: str = ""
    attack: tuple[str, ...] = ()
    basic: str = ""


class Entity(msgspec.Struct, frozen=True, gc=False):
    """Something an alert is about: a user, key, member, webhook, domain, IP…"""

    kind: str
    id: str | None = None
    name: str | None = None


class Alert(msgspec.Struct, frozen=True, gc=False):
    """One alert. Build with :meth:`Alert.build`."""

    id: str
    status: Literal["open", "resolved"]
    rule: RuleRef
    workspace: WorkspaceRef
    summary: str
    dedup_key: str
    event_ids: tuple[str, ...]
    entities: tuple[Entity, ...]
    first_seen: str
    last_seen: str
    count: int = 1
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    emission: Annotated[int, msgspec.Meta(ge=1)] | None = None
    raised_at: str | None = None
    schema: Literal["instantly.alert.v1"] = SCHEMA

    @classmethod
    def build(
        cls,
        *,
        rule: RuleRef,
        workspace: WorkspaceRef,
        summary: str,
        dedup_key: str,
        event_ids: tuple[str, ...],
        entities: tuple[Entity, ...],
        first_seen: str,
        last_seen: str,
        count: int = 1,
        status: Literal["open", "resolved"] = "open",
        attributes: dict[str, Any] | None = None,
        occurrence: str = "",
        emission: int | None = None,
        raised_at: str | None = None,
    ) -> Alert:
        """Build an alert whose id hashes the dedup key, the status and ``occurrence``.

        ``occurrence`` separates distinct firings of one condition (e.g. the period of a
        stale-key reminder); the first event id is used when it is empty. ``emission`` and
        ``raised_at`` (RFC 3339 UTC) are carried as given and never change the id.
        """
        occ = occurrence or (event_ids[0] if event_ids else first_seen)
        return cls(
            id=deterministic_id("alert", dedup_key, status, occ),
            status=status,
            rule=rule,
            workspace=workspace,
            summary=summary,
            dedup_key=dedup_key,
            event_ids=event_ids,
            entities=entities,
            first_seen=first_seen,
            last_seen=last_seen,
            count=count,
            attributes=attributes or {},
            emission=emission,
            raised_at=raised_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested dicts are shared, not copied); ``emission``/``raised_at`` only when set."""
        r = self.rule
        d: dict[str, Any] = {
            "schema": self.schema,
            "id": self.id,
            "status": self.status,
            "rule": {
                "id": r.id,
                "version": r.version,
                "title": r.title,
                "severity": r.severity,
                "runbook": r.runbook,
                "attack": list(r.attack),
                "basic": r.basic,
            },
            "workspace": {"id": self.workspace.id, "name": self.workspace.name},
            "summary": self.summary,
            "dedup_key": self.dedup_key,
            "event_ids": list(self.event_ids),
            "entities": [{"kind": e.kind, "id": e.id, "name": e.name} for e in self.entities],
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "attributes": self.attributes,
        }
        if self.emission is not None:
            d["emission"] = self.emission
        if self.raised_at is not None:
            d["raised_at"] = self.raised_at
        return d

    def to_json(self) -> bytes:
        """Serialise to the bus bytes: orjson, fields in declaration order (``schema`` last), an unset
        ``emission``/``raised_at`` left out (so an alert without them is written as before they existed).

        Raises:
            orjson.JSONEncodeError: ``attributes`` hold a value JSON cannot represent.
        """
        return orjson.dumps(self, default=_asdict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Rebuild from dict form, checking every field's type (``runbook``, ``attack``, ``basic`` optional).

        Raises:
            RecordError: a required field is missing or a field has the wrong type.
        """
        try:
            return msgspec.convert(d, cls)
        except msgspec.ValidationError as err:
            raise decode_error("an Alert v1", err) from None

    @classmethod
    def from_json(cls, data: bytes) -> Alert:
        """Parse bytes from the bus (decoded and type-checked in one pass, in C).

        Raises:
            RecordError: not JSON, or not an Alert v1 (the message names the field).
        """
        try:
            return ALERT_DECODER.decode(data) if cls is Alert else msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as err:
            raise decode_error("an Alert v1", err) from None


def _asdict(obj: Any) -> dict[str, Any]:
    """orjson's ``default``: a struct as a dict; an Alert without its unset optional fields."""
    d = msgspec.structs.asdict(obj)
    if obj.__class__ is Alert:
        if d["emission"] is None:
            del d["emission"]
        if d["raised_at"] is None:
            del d["raised_at"]
    return d


ALERT_DECODER = msgspec.json.Decoder(Alert)
"""Bytes to a type-checked :class:`Alert`."""
