"""``pipeline.unseen_creation``: restarts, bounds, the backfill guard and the webhook pairing by id."""

from __future__ import annotations

from typing import Any

import orjson

from connectors.instantly.rules.unseen import MAX_ITEMS
from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.rules.engine import Evaluation, RulesEngine
from pipeline.rules.state import main_key
from pipeline.rules.testing import make_event
from schemas.alert import Alert
from schemas.event import Event
from schemas.validate import schema_errors

RULE = "pipeline.unseen_creation"
T0 = parse_time("2026-03-01T00:00:00Z")
W = 900.0


def engine() -> RulesEngine:
    return RulesEngine.from_config({}, clock=FakeClock(T0))


def mine(result: Evaluation) -> list[Alert]:
    assert not result.failures, result.failures
    for a in result.alerts:
        assert schema_errors("alert", a.to_dict()) == [], a.to_dict()
    return [a for a in result.alerts if a.rule.id == RULE]


def baseline(t: float, stream: str = "api_key", oid: str = "kpoll") -> Event:
    return make_event(f"{stream}.baseline", time=t, target={"kind": stream, "id": oid},
                      attributes={"created_at": "2025-01-01T00:00:00Z"})  # fmt: skip


def audit(code: int, t: float, observed: float | None = None, **kw: Any) -> Event:
    return make_event(f"audit.activity_{code}", time=t, actor={"user_id": "u1", "ip": "203.0.113.5"},
                      observed_at=format_time(observed) if observed is not None else None, **kw)  # fmt: skip


def test_a_restarted_engine_judges_what_the_first_left_pending() -> None:
    """The pending creation lives in the rule state: a second engine loaded from it alerts when the window ends."""
    one = engine()
    assert mine(one.evaluate([baseline(T0), audit(37, T0 + 60), audit(38, T0 + 61)])) == []
    two = engine()
    two.load_state(one.state_items())
    [alert] = mine(two.tick(T0 + 60 + W))
    assert alert.rule.severity == "high" and alert.attributes["deleted_at"] == format_time(T0 + 61)
    assert alert.first_seen == format_time(T0 + 60 + W)
    assert mine(two.tick(T0 + 2 * W)) == []  # judged once


def test_state_stays_bounded_under_a_flood_of_creation_records() -> None:
    """Thousands of unpaired records (with no snapshot seen yet) keep at most MAX_ITEMS pending, then none."""
    e = engine()
    e.evaluate([audit(37, T0 + i) for i in range(3 * MAX_ITEMS)])
    doc = orjson.loads(dict(e.state_items())[main_key(RULE, "ws-1")])
    assert len(doc["d"]["api_key"]["pend"]) == MAX_ITEMS
    assert mine(e.tick(T0 + 10 * W)) == []  # the key stream was never seen: dropped, not judged
    doc = orjson.loads(dict(e.state_items())[main_key(RULE, "ws-1")])
    assert doc["d"]["api_key"]["pend"] == []


def test_backfilled_records_are_not_judged_but_live_ones_are() -> None:
    """Old records read at first start do not alert; the same trace read live does."""
    start = T0 + 86_400
    old = [audit(37, T0 + i, observed=start) for i in range(0, 600, 60)]  # read a day late
    recent = [audit(37, start - 120, observed=start), audit(38, start - 100, observed=start)]  # before the baseline
    e = engine()
    assert mine(e.evaluate([*old, *recent, baseline(start + 1)])) == []
    assert mine(e.tick(start + 4 * W)) == []
    live = mine(e.evaluate([audit(37, start + 5 * W), audit(38, start + 5 * W + 1)]))
    assert live == [] and len(mine(e.tick(start + 6 * W + 1))) == 1


def test_a_webhook_pairs_by_id_not_by_time() -> None:
    """Another webhook created at the same second does not hide the one no list showed."""
    e = engine()
    events = [
        baseline(T0, "webhook", "h1"),
        audit(18, T0 + 60, target={"kind": "webhook", "id": "h9"}, attributes={"webhook_id": "h9"}),
        audit(18, T0 + 60, target={"kind": "webhook", "id": "h8"}, attributes={"webhook_id": "h8"}),
        make_event("webhook.created", time=T0 + 60, target={"kind": "webhook", "id": "h8"}),
    ]
    assert mine(e.evaluate(events)) == []
    [alert] = mine(e.tick(T0 + 60 + W))
    assert alert.rule.severity == "medium" and alert.dedup_key == f"{RULE}:ws-1:webhook:h9"
    assert {(x.kind, x.id) for x in alert.entities} >= {("webhook", "h9"), ("user", "u1"), ("ip", "203.0.113.5")}


def test_a_stream_refused_then_back_is_judged_again() -> None:
    """After a stream_unavailable report, a snapshot event of the stream shows it works: creations after it count."""
    e = engine()
    refused = make_event("pipeline.stream_unavailable", time=T0 + 10, attributes={"stream": "api_keys", "status": 403})
    e.evaluate([baseline(T0), refused, audit(37, T0 + 60)])
    assert mine(e.tick(T0 + 60 + W)) == []
    back = make_event("api_key.created", time=T0 + 2 * W, target={"kind": "api_key", "id": "k5"},
                      attributes={"created_at": format_time(T0 + 2 * W)})  # fmt: skip
    e.evaluate([back, audit(37, T0 + 2 * W), audit(37, T0 + 2 * W + 5)])
    assert len(mine(e.tick(T0 + 3 * W + 5))) == 1
