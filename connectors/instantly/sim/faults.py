"""Deterministic fault injection: 5xx errors, latency, 429 bursts, malformed pages, late 401s.

Calls are numbered from 1 in arrival order. Every random decision for call *n* comes from
a PRNG seeded with ``(seed, n)``, so the same seed and the same call sequence give the same
faults, whatever was configured for earlier calls. Precedence for one call:
``scripted`` → ``unauthorized_after`` → 429 burst → 5xx ``error_rate`` → malformed page.
Latency is added to every faulted-or-not call on the selected paths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

MalformedKind = Literal["invalid_json", "missing_items"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = ("invalid_json", "missing_items")


@dataclass(frozen=True)
class FaultDecision:
    """What to do to one call: delay it, answer ``status`` instead, or mangle a list page."""

    latency: float = 0.0
    status: int | None = None
    malformed: MalformedKind | None = None


@dataclass
class Faults:
    """Fault settings (mutable at run time) and the call counter.

    Attributes:
        seed: seeds every per-call decision.
        error_rate: probability that a call answers one of ``error_statuses``.
        latency_secs / latency_jitter_secs: added delay, plus up to ``jitter`` more.
        burst_rate: probability that a call starts a burst of ``burst_length`` 429s.
        malformed_rate: probability that a successful list page is mangled
            (a kind from ``malformed_kinds``: invalid JSON, or a body without ``items``).
        unauthorized_after: every call after this many calls answers 401.
        scripted: call number → status code or malformed kind, for exact test plans.
        paths: only calls whose path starts with one of these are faulted (empty = all).
        calls: calls counted so far.
    """

    seed: int = 0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    latency_secs: float = 0.0
    latency_jitter_secs: float = 0.0
    burst_rate: float = 0.0
    burst_length: int = 5
    malformed_rate: float = 0.0
    malformed_kinds: tuple[MalformedKind, ...] = MALFORMED_KINDS
    unauthorized_after: int | None = None
    scripted: dict[int, int | MalformedKind] = field(default_factory=dict)
    paths: tuple[str, ...] = ()
    calls: int = 0

    def decide(self, path: str) -> FaultDecision:
        """Count a call to ``path`` and decide its fault."""
        self.calls += 1
        n = self.calls
        if self.paths and not path.startswith(self.paths):
            return FaultDecision()
        _, u_error, u_status, u_malformed, u_kind, u_latency = self._draws(n)
        latency = self.latency_secs + self.latency_jitter_secs * u_latency
        planned = self.scripted.get(n)
        if isinstance(planned, int):
            return FaultDecision(latency, status=planned)
        if planned is not None:
            return FaultDecision(latency, malformed=planned)
        if self.unauthorized_after is not None and n > self.unauthorized_after:
            return FaultDecision(latency, status=401)
        if self._in_burst(n):
            return FaultDecision(latency, status=429)
        if u_error < self.error_rate and self.error_statuses:
            return FaultDecision(latency, status=self.error_statuses[int(u_status * len(self.error_statuses))])
        if u_malformed < self.malformed_rate and self.malformed_kinds:
            return FaultDecision(latency, malformed=self.malformed_kinds[int(u_kind * len(self.malformed_kinds))])
        return FaultDecision(latency)

    def clear(self) -> None:
        """Turn every fault off (the call counter keeps counting)."""
        self.error_rate = self.latency_secs = self.latency_jitter_secs = 0.0
        self.burst_rate = self.malformed_rate = 0.0
        self.unauthorized_after = None
        self.scripted = {}
        self.paths = ()

    def _draws(self, n: int) -> tuple[float, ...]:
        # Fault injection needs reproducibility, not unpredictability.
        rng = random.Random(f"faults:{self.seed}:{n}")  # noqa: S311
        return tuple(rng.random() for _ in range(6))

    def _in_burst(self, n: int) -> bool:
        if self.burst_rate <= 0:
            return False
        first = max(1, n - self.burst_length + 1)
        return any(self._draws(k)[0] < self.burst_rate for k in range(first, n + 1))
