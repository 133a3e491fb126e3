"""The contracts: Event v1, Alert v1, DeadLetter v1 (JSON Schemas beside this module), their models, the codec."""

from schemas.alert import Alert, Entity, RuleRef, Severity
from schemas.deadletter import DeadLetter
from schemas.errors import RecordError
from schemas.event import Actor, Change, Event, Source, SourceKind, Target, WorkspaceRef
from schemas.ids import deterministic_id, fingerprint_secret

__all__ = [
    "Actor",
    "Alert",
    "Change",
    "DeadLetter",
    "Entity",
    "Event",
    "RecordError",
    "RuleRef",
    "Severity",
    "Source",
    "SourceKind",
    "Target",
    "WorkspaceRef",
    "deterministic_id",
    "fingerprint_secret",
]
