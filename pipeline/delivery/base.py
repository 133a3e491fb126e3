"""The Sink protocol and the options every sink shares.

A sink receives batches of :class:`Delivery` (an event or alert read from the bus, already
decoded) and answers with a :class:`SendResult` listing the deliveries that failed; every
delivery not listed is confirmed by the destination, and only then does the runner commit
the consumer offsets. A failure marked ``retriable`` is retried with backoff; a
non-retriable one (a poison record) goes to ``instantly.deadletter.v1`` with the error and
the sink name.

``format`` names the record format (:mod:`pipeline.formats.registry`); each sink's ``Config``
lists the formats it can carry in ``FORMATS`` and its default in ``DEFAULT_FORMAT``.

A sink may also implement :class:`CollapsingSink` (replays send only the last record of each of
its keys) and :class:`PreparingSink`: ``prepare()`` encodes a batch into its
request bodies (pure CPU, no I/O) and ``send_prepared()`` sends them. The runner then
encodes the next batch while the previous request is in flight; ``send(batch)`` must stay
equivalent to ``send_prepared(await prepare(batch))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

from pydantic import Field, field_validator

from pipeline.bus.base import Record
from pipeline.config.base import Model
from pipeline.formats.registry import format_names

Kind = Literal["event", "alert"]
TopicName = Literal["events", "alerts"]


def _both() -> list[TopicName]:
    return ["events", "alerts"]


class SinkConfig(Model):
    """Options shared by every sink; each sink's ``Config`` extends this model."""

    type: str
    topics: list[TopicName] = Field(default_factory=_both)
    types: list[str] = Field(default_factory=list, description="event/alert type globs to keep (empty = all)")
    min_severity: Literal["info", "low", "medium", "high", "critical"] | None = None
    batch_max_records: int = Field(500, ge=1, le=100_000)
    batch_max_bytes: int = Field(4_000_000, ge=1024)
    batch_max_wait_secs: float = Field(
        0.2, ge=0, description="longest wait to fill a batch after its first record (adds up to this much latency)"
    )
    max_in_flight_bytes: int = Field(32_000_000, ge=1024)
    retry_initial_secs: float = Field(0.5, gt=0)
    retry_max_secs: float = Field(60.0, gt=0)
    circuit_failures: int = Field(5, ge=1, description="consecutive failed batches before the circuit opens")
    circuit_open_secs: float = Field(30.0, gt=0)
    enabled: bool = True
    format: str | None = Field(
        None, validate_default=True, description="record format (native, ecs, ocsf, splunk, cef); default per sink"
    )

    # The formats a sink can carry and the one it uses when ``format`` is not given.
    FORMATS: ClassVar[tuple[str, ...]] = ("native", "ecs", "ocsf", "splunk")
    DEFAULT_FORMAT: ClassVar[str] = "native"

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str:
        if v is None:
            return cls.DEFAULT_FORMAT
        if v not in cls.FORMATS or (v not in format_names() and v != "json"):
            raise ValueError(f"unknown format {v!r} for this sink (known: {', '.join(cls.FORMATS)})")
        return v

    @property
    def record_format(self) -> str:
        """The format records are rendered in (``format`` after defaults)."""
        return self.format or self.DEFAULT_FORMAT


class Delivery(NamedTuple):
    """One record to deliver: where it came from, what it is, and its decoded body.

    A NamedTuple, as :class:`~pipeline.bus.base.Record`: one is built per record delivered,
    and a tuple is built in a fifth of a frozen dataclass's time.
    """

    record: Record
    kind: Kind
    id: str
    type: str
    body: dict[str, Any]
    raw: bytes = b""

    @property
    def severity(self) -> str | None:
        """The alert's severity (None for events)."""
        rule = self.body.get("rule")
        return rule.get("severity") if isinstance(rule, dict) else None


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery the destination did not accept."""

    delivery: Delivery
    error: str
    retriable: bool
    retry_after: float | None = None


@dataclass(slots=True)
class SendResult:
    """The outcome of one batch: the failures (everything else was confirmed)."""

    failures: list[Failure] = field(default_factory=list)
    duplicates: int = 0  # confirmed as already delivered (e.g. Elasticsearch 409)

    @property
    def ok(self) -> bool:
        """True when the whole batch was confirmed."""
        return not self.failures


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch encoded by :meth:`PreparingSink.prepare`: its requests, each with its deliveries and body."""

    deliveries: Sequence[Delivery]
    requests: list[tuple[list[Delivery], bytes]]


@runtime_checkable
class Sink(Protocol):
    """A destination. Constructed as ``cls(sink_id, config)``, used with ``async with``."""

    Config: ClassVar[type[SinkConfig]]
    sink_id: str

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Deliver a batch; return what failed.

        Raises:
            SinkError: the whole batch failed (retriable tells whether to retry it).
        """
        ...

    async def healthcheck(self) -> None:
        """Check the destination is reachable and the credentials work.

        Raises:
            SinkError: with a message saying what is wrong.
        """
        ...


@runtime_checkable
class SettingUpSink(Protocol):
    """A sink whose destination needs a one-off setup (``instantly-audit sinks setup NAME``)."""

    async def setup(self) -> list[str]:
        """Install what the destination needs, idempotently; one line per item saying what was done.

        Raises:
            SinkError: the destination refused.
        """
        ...


@runtime_checkable
class CollapsingSink(Protocol):
    """A sink whose destination keeps one state per key, the latest sent (PagerDuty: one alert per dedup key).

    ``replay --to`` such a sink sends only the last record of each key in the whole range: an
    earlier one (a trigger whose condition the range also resolves) would only reopen what a
    later one closes.
    """

    def collapse_key(self, d: Delivery) -> str | None:
        """The key the destination keeps ``d`` under (None: ``d`` is never superseded)."""
        ...


@runtime_checkable
class PreparingSink(Protocol):
    """A sink that can encode a batch ahead of sending it (see the module docstring)."""

    async def prepare(self, batch: Sequence[Delivery]) -> PreparedBatch:
        """Encode ``batch`` into request bodies (no I/O; compression may run in a thread)."""
        ...

    async def send_prepared(self, prepared: PreparedBatch) -> SendResult:
        """Send what :meth:`prepare` made; the same contract as :meth:`Sink.send`.

        Raises:
            SinkError: the whole batch failed (retriable tells whether to retry it).
        """
        ...
