"""Readiness facts reported by components, judged at ``/readyz``.

Components report what they observe; the registry turns it into checks when asked, so a
stream that stops succeeding becomes stale without anyone reporting the absence:

* ``bus`` — the last bus operation succeeded (``bus_ok``) or failed (``bus_error``).
  Not ready until the first success; not ready while the last operation failed.
* ``stream:<workspace>/<stream>`` — registered with a staleness threshold; ready while the
  last success (or the registration, for a grace period) is younger than the threshold.
* ``sink:<id>`` — the sink's circuit: ``open`` is not ready; ``closed``/``half_open`` are.
* any named check set with :meth:`HealthRegistry.set_check` (e.g. the webhook listener).

``/healthz`` does not consult the registry: a process that answers is alive. Circuit
changes are mirrored to the ``pipeline.sink.circuit.open`` gauge of the registry's telemetry
(given at construction; default: the process's current one).

Components take the registry at construction (``health=``, default: :func:`get_health` read
once) and keep it; :func:`set_health` is for the composition root and tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.observability.logs import redact_text
from pipeline.observability.telemetry import Telemetry, get_telemetry

CircuitStateName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check and why it passes or fails."""

    name: str
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every check; ready when all pass."""

    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        """True when every check passes (and vacuously when there are none)."""
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> tuple[Check, ...]:
        """The checks that fail."""
        return tuple(c for c in self.checks if not c.ok)

    def to_dict(self) -> dict[str, Any]:
        """The ``/readyz`` body."""
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": [{"name": c.name, "ok": c.ok, "reason": c.reason} for c in self.checks],
        }


@dataclass(slots=True)
class _Stream:
    stale_after_secs: float
    registered_at: float
    last_ok: float | None = None
    last_error: str | None = None


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s ago"


def _error_text(error: str | BaseException) -> str:
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return error


class HealthRegistry:
    """Where components report readiness facts; thread-safe, cheap to call on every operation."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, *, telemetry: Telemetry | None = None) -> None:
        self._clock = clock
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self._lock = threading.Lock()
        self._bus_expected = False
        self._bus_ok: float | None = None
        self._bus_error: str | None = None
        self._bus_error_at: float | None = None
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._circuits: dict[str, tuple[CircuitStateName, str | None]] = {}
        self._checks: dict[str, Check] = {}

    # -------------------------------------------------------------------------------- bus
    def expect_bus(self) -> None:
        """Declare that this process needs the bus: not ready until the first success."""
        with self._lock:
            self._bus_expected = True

    def bus_ok(self) -> None:
        """A bus operation succeeded."""
        with self._lock:
            self._bus_expected = True
            self._bus_ok = self._clock.now()
            self._bus_error = None

    def bus_error(self, error: str | BaseException) -> None:
        """A bus operation failed (the process is not ready until the next success)."""
        with self._lock:
            self._bus_expected = True
            self._bus_error = _error_text(error)
            self._bus_error_at = self._clock.now()

    # ---------------------------------------------------------------------------- streams
    def watch_stream(self, workspace: str, stream: str, *, stale_after_secs: float) -> None:
        """Expect ``stream`` to succeed at least every ``stale_after_secs`` (counted from now).

        Watching a stream watched already (its poller restarted after a crash) keeps its first
        registration time: a poller crashing before its first success (a full disk under the bus)
        would otherwise get a fresh grace period at every restart and stay ready for ever.
        :meth:`forget_stream` ends the watch (the workspace moved away); a later watch starts anew.
        """
        with self._lock:
            prev = self._streams.get((workspace, stream))
            self._streams[(workspace, stream)] = _Stream(
                stale_after_secs,
                prev.registered_at if prev else self._clock.now(),
                prev.last_ok if prev else None,
                prev.last_error if prev else None,
            )

    def stream_ok(self, workspace: str, stream: str) -> None:
        """A poll of ``stream`` completed."""
        with self._lock:
            s = self._streams.get((workspace, stream))
            if s is None:
                return
            s.last_ok = self._clock.now()
            s.last_error = None

    def stream_error(self, workspace: str, stream: str, error: str | BaseException) -> None:
        """A poll of ``stream`` failed (shown in the reason once the stream is stale)."""
        with self._lock:
            s = self._streams.get((workspace, stream))
            if s is not None:
                s.last_error = _error_text(error)

    def forget_stream(self, workspace: str, stream: str) -> None:
        """Stop watching a stream."""
        with self._lock:
            self._streams.pop((workspace, stream), None)

    # ------------------------------------------------------------------------------ sinks
    def circuit(self, sink: str, state: str, *, reason: str | None = None) -> None:
        """Report a sink's circuit state (``closed``, ``open``, ``half_open``; a StrEnum works).

        Raises:
            ValueError: ``state`` is not a circuit state.
        """
        name = str(state)
        if name not in ("closed", "open", "half_open"):
            raise ValueError(f"unknown circuit state {name!r}")
        with self._lock:
            self._circuits[sink] = (cast(CircuitStateName, name), reason)
        self.telemetry.sink_circuit(sink, name == "open")

    def forget_sink(self, sink: str) -> None:
        """Stop reporting a sink."""
        with self._lock:
            self._circuits.pop(sink, None)

    # ----------------------------------------------------------------------------- custom
    def set_check(self, name: str, ok: bool, reason: str) -> None:
        """Set a named check (e.g. ``webhook``: listening or not)."""
        with self._lock:
            self._checks[name] = Check(name, ok, reason)

    def remove_check(self, name: str) -> None:
        """Remove a named check."""
        with self._lock:
            self._checks.pop(name, None)

    # ----------------------------------------------------------------------------- report
    def report(self) -> HealthReport:
        """Judge every check now."""
        now = self._clock.now()
        with self._lock:
            checks = list(self._bus_check(now))
            checks += [self._stream_check(ws, st, s, now) for (ws, st), s in sorted(self._streams.items())]
            for sink, (state, why) in sorted(self._circuits.items()):
                detail = f": {why}" if why else ""
                checks.append(Check(f"sink:{sink}", state != "open", f"circuit {state}{detail}"))
            checks += [self._checks[k] for k in sorted(self._checks)]
        # Reasons quote upstream error bodies (a sink echoing its token, an API echoing the key):
        # every reason goes through the same redaction as the logs, at read time, so a secret
        # registered after the error was reported is removed too.
        return HealthReport(tuple(Check(c.name, c.ok, redact_text(c.reason)) for c in checks))

    def _bus_check(self, now: float) -> Iterator[Check]:
        if not self._bus_expected:
            return
        if self._bus_error is not None:
            last = f"; last success {_ago(now - self._bus_ok)}" if self._bus_ok is not None else "; never reached"
            yield Check("bus", False, f"bus unreachable: {self._bus_error}{last}")
        elif self._bus_ok is None:
            yield Check("bus", False, "bus not reached yet")
        else:
            yield Check("bus", True, f"last success {_ago(now - self._bus_ok)}")

    @staticmethod
    def _stream_check(workspace: str, stream: str, s: _Stream, now: float) -> Check:
        name = f"stream:{workspace}/{stream}"
        err = f"; last error: {s.last_error}" if s.last_error else ""
        if s.last_ok is None:
            waited = now - s.registered_at
            if waited <= s.stale_after_secs:
                return Check(name, True, f"waiting for the first poll ({waited:.0f}s of {s.stale_after_secs:.0f}s)")
            return Check(name, False, f"no successful poll in {waited:.0f}s (threshold {s.stale_after_secs:.0f}s){err}")
        age = now - s.last_ok
        if age > s.stale_after_secs:
            return Check(name, False, f"stale: last success {_ago(age)} (threshold {s.stale_after_secs:.0f}s){err}")
        return Check(name, True, f"last success {_ago(age)}")


_current = HealthRegistry()


def get_health() -> HealthRegistry:
    """The process's health registry (components report here without it being passed)."""
    return _current


def set_health(registry: HealthRegistry | None) -> HealthRegistry:
    """Make ``registry`` the process's registry (``None``: a fresh one); return the previous."""
    global _current
    previous = _current
    _current = registry if registry is not None else HealthRegistry()
    return previous
