"""Test doubles for the delivery stage: fake destinations speaking each real protocol, and helpers.

* :class:`FakeServer` runs an aiohttp app on 127.0.0.1 and can be stopped and restarted on
  the same port (a destination that dies and comes back).
* :class:`Faults` are the knobs every fake shares: a fraction of requests refused before
  processing, a fraction processed and then answered 500 (the client retries, so a
  destination without de-duplication sees duplicates), ``down`` (every request answers
  503), ``hang`` (requests never answer: a slow sink), latency and ``Retry-After``.
* Events, alerts, a fake sleep that advances a :class:`FakeClock`, and a ledger that counts
  lost / duplicated / phantom ids the way Jepsen's checkers do.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from aiohttp import web

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Bus, OutRecord
from pipeline.clock import FakeClock, format_time
from schemas.alert import Alert, Entity, RuleRef, Severity
from schemas.event import Actor, Event, Source, Target, WorkspaceRef

BASE_TIME = 1_780_000_000.0


@dataclass
class Faults:
    """Failure knobs shared by the fake destinations."""

    fail_rate: float = 0.0
    fail_after_rate: float = 0.0
    down: bool = False
    hang: bool = False
    latency_secs: float = 0.0
    retry_after: float | None = None
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def roll(self) -> Literal["ok", "before", "after"]:
        """Decide the fate of one request."""
        x = self.rng.random()
        if x < self.fail_rate:
            return "before"
        if x < self.fail_rate + self.fail_after_rate:
            return "after"
        return "ok"

    def headers(self) -> dict[str, str]:
        """``Retry-After`` when configured."""
        return {"Retry-After": f"{self.retry_after:g}"} if self.retry_after is not None else {}

    async def delay(self) -> None:
        """Apply latency, or hang until the request is cancelled."""
        if self.hang:
            await asyncio.Event().wait()
        if self.latency_secs:
            await asyncio.sleep(self.latency_secs)


class FakeServer:
    """An aiohttp application on 127.0.0.1 that can stop and restart on the same port."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.port = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The application (subclasses add routes)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the previous port after a stop)."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every connection (a destination that dies)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def eventually(condition: Callable[[], bool], limit_secs: float = 10.0, step: float = 0.005) -> bool:
    """Poll ``condition`` until it holds or ``limit_secs`` pass; return whether it held."""
    for _ in range(max(1, int(limit_secs / step))):
        if condition():
            return True
        await asyncio.sleep(step)
    return condition()


class FakeSleep:
    """An injectable sleep that records each delay and advances a fake clock."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        await asyncio.sleep(0)


def make_event(i: int, *, workspace: str = "ws-1", type: str = "api_key.created", pad: int = 0) -> Event:
    """A distinct event (its id is deterministic in ``i`` and ``workspace``)."""
    t = format_time(BASE_TIME + i)
    return Event.build(
        type=type,
        time=t,
        observed_at=t,
        workspace=WorkspaceRef(workspace, "Acme"),
        source=Source("snapshot", "api_keys", f"key-{i}"),
        natural_key=(f"key-{i}", "created"),
        actor=Actor(user_id="u-1", user_name="Ada", ip="203.0.113.7", via_api=True),
        target=Target("api_key", f"key-{i}", f"key {i}"),
        attributes={"scopes": ["all:all"], "n": i, **({"pad": "x" * pad} if pad else {})},
    )


def make_alert(i: int, *, severity: Severity = "high", rule: str = "all_scope_key", workspace: str = "ws-1") -> Alert:
    """A distinct alert."""
    t = format_time(BASE_TIME + i)
    return Alert.build(
        rule=RuleRef(rule, 1, "API key with all scopes", severity, runbook="docs/runbooks/x.md"),
        workspace=WorkspaceRef(workspace, "Acme"),
        summary=f"Key {i} has all scopes",
        dedup_key=f"instantly:{workspace}:{rule}:key-{i}",
        event_ids=(f"e{i}",),
        entities=(Entity("api_key", f"key-{i}"),),
        first_seen=t,
        last_seen=t,
    )


async def publish(bus: Bus, items: Sequence[Event | Alert], *, chunk: int = 1000) -> list[str]:
    """Publish events/alerts to their topics (key = workspace id); return their ids in order."""
    for start in range(0, len(items), chunk):
        recs = [
            OutRecord(EVENTS_TOPIC if isinstance(x, Event) else ALERTS_TOPIC, x.to_json(), key=x.workspace.id.encode(),
                      headers=(("type", (x.type if isinstance(x, Event) else x.rule.id).encode()),))
            for x in items[start : start + chunk]
        ]  # fmt: skip
        await bus.publish(recs)
    return [x.id for x in items]


@dataclass
class Ledger:
    """What was expected against what arrived: lost, duplicated and phantom ids."""

    lost: set[str]
    duplicated: dict[str, int]
    phantom: set[str]

    @classmethod
    def check(cls, expected: Iterable[str], received: Iterable[str]) -> Ledger:
        """Compare expected ids with the ids the destination holds (with repetitions)."""
        want = set(expected)
        got = Counter(received)
        return cls(
            lost=want - set(got),
            duplicated={k: n for k, n in got.items() if n > 1},
            phantom=set(got) - want,
        )

    @property
    def extra_copies(self) -> int:
        """Copies beyond the first, summed over every duplicated id."""
        return sum(n - 1 for n in self.duplicated.values())


def json_error(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response."""
    return web.json_response(body, status=status, headers=headers)
