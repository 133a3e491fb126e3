"""The contracts: Event v1 and Alert v1 (JSON Schema files beside this module) and their Python models."""

from schemas.alert import Alert, Entity, RuleRef, Severity
from schemas.event import Actor, Change, Event, Source, SourceKind, Target, WorkspaceRef
from schemas.ids import deterministic_id, fingerprint_secret

__all__ = [
    "Actor",
    "Alert",
    "Change",
    "Entity",
    "Event",
    "RuleRef",
    "Severity",
    "Source",
    "SourceKind",
    "Target",
    "WorkspaceRef",
    "deterministic_id",
    "fingerprint_secret",
]
