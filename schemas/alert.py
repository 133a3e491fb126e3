"""Alert v1: a rule's finding (see ``alert.v1.json``).

``dedup_key`` is stable for one condition (rule + workspace + entity), so replays and
retries never page twice; ``id`` hashes the dedup key and the first event that raised it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from schemas.event import WorkspaceRef
from schemas.ids import deterministic_id

SCHEMA = "instantly.alert.v1"
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


@dataclass(frozen=True, slots=True)
class RuleRef:
    """The rule that raised an alert."""

    id: str
    version: int
    title: str
    severity: Severity
    runbook: str = ""
    attack: tuple[str, ...] = ()
    basic: str = ""


@dataclass(frozen=True, slots=True)
class Entity:
    """Something an alert is about: a user, key, member, webhook, domain, IP…"""

    kind: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
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
    attributes: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

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
    ) -> Alert:
        """Build an alert whose id hashes the dedup key, the status and ``occurrence``.

        ``occurrence`` separates distinct firings of one condition (e.g. the period of a
        stale-key reminder); the first event id is used when it is empty.
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
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested dicts are shared, not copied)."""
        r = self.rule
        return {
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

    def to_json(self) -> bytes:
        """Serialise with orjson (native dataclass support)."""
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Rebuild from dict form.

        Raises:
            KeyError: a required field is missing.
        """
        r = d["rule"]
        return cls(
            id=d["id"],
            status=d["status"],
            rule=RuleRef(
                id=r["id"],
                version=r["version"],
                title=r["title"],
                severity=r["severity"],
                runbook=r.get("runbook", ""),
                attack=tuple(r.get("attack", ())),
                basic=r.get("basic", ""),
            ),
            workspace=WorkspaceRef(**d["workspace"]),
            summary=d["summary"],
            dedup_key=d["dedup_key"],
            event_ids=tuple(d["event_ids"]),
            entities=tuple(Entity(**e) for e in d["entities"]),
            first_seen=d["first_seen"],
            last_seen=d["last_seen"],
            count=d["count"],
            attributes=d.get("attributes") or {},
            schema=d.get("schema", SCHEMA),
        )

    @classmethod
    def from_json(cls, data: bytes) -> Alert:
        """Parse bytes from the bus.

        Raises:
            orjson.JSONDecodeError: not JSON.
        """
        return cls.from_dict(orjson.loads(data))
