"""Posture check results, vendor-neutral: what one check concluded about one target, and the
exit code a set of results means.

A check that fails on several resources yields one ``fail`` result per resource; a check with
nothing to report yields one ``pass``. Connectors produce these (their ``check`` command); the
renderers in :mod:`pipeline.checks.render` print them as a table, JSON or SARIF 2.1.0.

Exit codes: 0 nothing at or above ``fail_on`` failed; 1 something did; 3 nothing failed but a
check could not run (2 is the CLI's usage/configuration error).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.alert import SEVERITIES, Severity, severity_rank

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3  # = pipeline.cli.exit_codes.Exit
Status = Literal["pass", "fail", "warn", "skip", "error"]
STATUSES: tuple[Status, ...] = ("fail", "error", "warn", "pass", "skip")
FailOn = Literal["info", "low", "medium", "high", "critical", "none"]
FAIL_ON_HELP = "info|low|medium|high|critical|none"


def fail_on_arg(value: str) -> FailOn:
    """``--fail-on`` as argparse reads it (``check`` and ``webhooks check``).

    Raises:
        argparse.ArgumentTypeError: not a severity nor ``none``.
    """
    if value not in (*SEVERITIES, "none"):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join((*SEVERITIES, 'none'))}")
    return value  # type: ignore[return-value]


def at_or_above(severity: str, fail_on: FailOn) -> bool:
    """True when a finding of ``severity`` fails a run with ``--fail-on fail_on``."""
    return fail_on != "none" and severity_rank(severity) >= severity_rank(fail_on)


OTHER = "Other checks"
"""The group of results whose ``checklist`` item is not in the connector's checklist."""


@dataclass(frozen=True, slots=True)
class Resource:
    """Something a result is about: an API key, a member, a webhook, a domain, a file."""

    kind: str
    id: str | None = None
    name: str | None = None

    def label(self) -> str:
        """``name (id)``, the name, or the id."""
        if self.name and self.id and self.name != self.id:
            return f"{self.name} ({self.id})"
        return self.name or self.id or self.kind


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a repository: a path relative to its root, a line, and the commit for history findings."""

    path: str
    line: int | None = None
    commit: str | None = None

    def label(self) -> str:
        """``path:line`` (``@commit`` for history)."""
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}@{self.commit[:12]}" if self.commit else where


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict about one target (a workspace or a repository), or about one offending resource.

    A check that fails on several resources yields one ``fail`` result per resource; a check
    with nothing to report yields one ``pass``. ``severity`` is what a failure of this kind
    weighs (also set on passes, so a dashboard knows what was at stake).
    """

    check_id: str
    title: str
    checklist: str
    severity: Severity
    status: Status
    message: str
    target: str
    resources: tuple[Resource, ...] = ()
    location: Location | None = None
    fingerprint: str | None = None
    remediation: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        loc = self.location
        return {
            "check_id": self.check_id,
            "title": self.title,
            "checklist": self.checklist,
            "severity": self.severity,
            "status": self.status,
            "message": self.message,
            "target": self.target,
            "resources": [{"kind": r.kind, "id": r.id, "name": r.name} for r in self.resources],
            "location": None if loc is None else {"path": loc.path, "line": loc.line, "commit": loc.commit},
            "fingerprint": self.fingerprint,
            "remediation": self.remediation,
            "attributes": self.attributes,
        }


def failing(results: Iterable[CheckResult], fail_on: FailOn) -> list[CheckResult]:
    """The failed results at or above ``fail_on`` (none for ``"none"``)."""
    return [r for r in results if r.status == "fail" and at_or_above(r.severity, fail_on)]


def exit_code(results: Sequence[CheckResult], fail_on: FailOn) -> int:
    """0 clean, 1 a failure at or above ``fail_on``, 3 nothing failed but a check could not run."""
    if failing(results, fail_on):
        return EXIT_FAIL
    if any(r.status == "error" for r in results):
        return EXIT_INCOMPLETE
    return EXIT_OK


def summary(results: Sequence[CheckResult], fail_on: FailOn) -> dict[str, Any]:
    """Counts per status and per failed severity, the exit code and the threshold."""
    counts = {s: sum(1 for r in results if r.status == s) for s in STATUSES}
    by_sev = {s: sum(1 for r in results if r.status == "fail" and r.severity == s) for s in reversed(SEVERITIES)}
    code = exit_code(results, fail_on)
    return {"counts": counts, "failed_by_severity": by_sev, "fail_on": fail_on, "exit_code": code}
