"""What a ``resolved`` alert tells its receiver: the entities and the summary of the condition it closes.

A receiver (Slack, a SIEM, an analyst reading PagerDuty's log) sees the resolved alert alone; it
must name the user, key or IP whose condition cleared without looking up the open alert. The
engine remembers them in the condition's track (bounded) and still reads tracks written before
it did (8 values), so an upgrade loses no open condition.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.clock import FakeClock, parse_time
from pipeline.rules.base import MAX_TRACK_ENTITIES, MAX_TRACK_ENTITY_TEXT, MAX_TRACK_SUMMARY, AlertTrack
from pipeline.rules.engine import Evaluation, RulesEngine
from pipeline.rules.state import tracks_key
from pipeline.rules.testing import make_event
from schemas.alert import Alert, Entity
from schemas.event import Event
from schemas.validate import schema_errors

T0 = parse_time("2026-03-01T00:00:00Z")
HOUR = 3600.0
RULE = "custom.outside_login"
OUTSIDE_LOGIN: dict[str, Any] = {
    "id": RULE,
    "title": "Login from outside the office",
    "severity": "medium",
    "types": ["audit.user_login"],
    "resolve_types": ["audit.mfa_totp_enabled"],
    "detection": {"sel": {"type": "audit.user_login"}},
    "resolve": {"sel": {"type": "audit.mfa_totp_enabled"}},
    "group_by": ["actor.user_id"],
    "summary": "{actor.user_name|actor.user_id} logged in from {actor.ip}",
    "entities": [
        {"kind": "user", "id": "{actor.user_id}", "name": "{actor.user_name}"},
        {"kind": "ip", "id": "{actor.ip}"},
    ],
}
CONFIG: dict[str, Any] = {"custom": [OUTSIDE_LOGIN], "defaults": {"enabled": False}}


def engine(cfg: dict[str, Any] | None = None) -> RulesEngine:
    return RulesEngine.from_config(CONFIG if cfg is None else cfg, clock=FakeClock(T0))


def alerts(result: Evaluation, rule: str = RULE) -> list[Alert]:
    assert not result.failures, result.failures
    for a in result.alerts:
        assert schema_errors("alert", a.to_dict()) == [], a.to_dict()
    return [a for a in result.alerts if a.rule.id == rule]


def login(t: float, ip: str = "198.51.100.7", user: str = "u1", name: str | None = "Ann") -> Event:
    actor = {"user_id": user, "ip": ip} | ({"user_name": name} if name else {})
    return make_event("audit.user_login", time=t, actor=actor)


def enabled(t: float, user: str = "u1") -> Event:
    return make_event("audit.mfa_totp_enabled", time=t, actor={"user_id": user})


def test_a_resolved_alert_names_what_the_open_one_named() -> None:
    """The resolving event names nobody useful; the resolved alert still carries the user and IP and says what
    it closes."""
    e = engine()
    [opened] = alerts(e.evaluate([login(T0)]))
    [res] = alerts(e.evaluate([enabled(T0 + 60)]))
    assert res.status == "resolved" and res.dedup_key == opened.dedup_key
    assert res.entities == opened.entities == (Entity("user", "u1", "Ann"), Entity("ip", "198.51.100.7", None))
    assert res.summary == "Cleared: Login from outside the office — it closes: Ann logged in from 198.51.100.7"


def test_the_resolving_findings_own_entities_win() -> None:
    """A rule that names entities when it resolves (the deleted API key) keeps them."""
    e = RulesEngine.from_config({}, clock=FakeClock(T0))
    key = {"kind": "api_key", "id": "k1", "name": "ci"}
    e.evaluate([make_event("api_key.created", time=T0, target=key, attributes={"scopes": ["all:all"], "name": "ci"})])
    ev = make_event("api_key.deleted", time=T0 + 60, target=key, attributes={"scopes": ["all:all"], "name": "ci"})
    [res] = alerts(e.evaluate([ev]), "api_key.all_scope")
    assert res.status == "resolved" and Entity("api_key", "k1", "ci") in res.entities
    assert "was deleted — it closes: " in res.summary


def test_later_alerts_of_the_condition_add_their_entities_up_to_the_bound() -> None:
    """Each alert of a condition (suppress_secs 0) adds its new entities; the track keeps the first ones."""
    cfg = {"custom": [OUTSIDE_LOGIN | {"suppress_secs": 0}], "defaults": {"enabled": False}}
    e = engine(cfg)
    for i in range(MAX_TRACK_ENTITIES + 5):
        alerts(e.evaluate([login(T0 + i, ip=f"192.0.2.{i}")]))
    [res] = alerts(e.evaluate([enabled(T0 + HOUR)]))
    assert len(res.entities) == MAX_TRACK_ENTITIES
    assert res.entities[:3] == (Entity("user", "u1", "Ann"), Entity("ip", "192.0.2.0", None),
                                Entity("ip", "192.0.2.1", None))  # fmt: skip
    assert res.summary.endswith("it closes: Ann logged in from 192.0.2.0")  # the opening alert's


def test_folded_matches_add_nothing() -> None:
    """A match folded into the open alert (inside the window) was never shown: it is not remembered."""
    e = engine()
    alerts(e.evaluate([login(T0)]))
    assert alerts(e.evaluate([login(T0 + 60, ip="203.0.113.5")])) == []
    [res] = alerts(e.evaluate([enabled(T0 + 120)]))
    assert Entity("ip", "203.0.113.5", None) not in res.entities


def test_the_remembered_summary_is_bounded() -> None:
    """A long opening summary is kept to MAX_TRACK_SUMMARY characters."""
    e = engine()
    alerts(e.evaluate([login(T0, name="N" * 2000)]))
    [tr] = e._store.states[(RULE, "ws-1")].tracks.values()
    assert len(tr.summary) == MAX_TRACK_SUMMARY
    [res] = alerts(e.evaluate([enabled(T0 + 60)]))
    assert len(res.summary) <= 1024


def test_a_restarted_engine_still_knows_what_it_resolves() -> None:
    """Entities and summary are stored with the track: a worker loaded from the state resolves with them."""
    one = engine()
    [opened] = alerts(one.evaluate([login(T0)]))
    two = engine()
    assert two.load_state(one.state_items()) == []
    [res] = alerts(two.evaluate([enabled(T0 + 60)]))
    assert res.entities == opened.entities and "it closes: Ann logged in" in res.summary


def test_tracks_written_before_entities_were_kept_still_load_and_resolve() -> None:
    """An 8-value track (the format before this change) loads: the open condition is not lost and resolves."""
    one = engine()
    alerts(one.evaluate([login(T0)]))
    items = one.state_items()
    doc = orjson.loads(items[tracks_key(RULE, "ws-1")])
    [stored] = doc["a"].values()
    assert len(stored) == 10
    old = {"v": 1, "a": {k: v[:8] for k, v in doc["a"].items()}}
    items[tracks_key(RULE, "ws-1")] = orjson.dumps(old)
    two = engine()
    assert two.load_state(items) == []
    [res] = alerts(two.evaluate([enabled(T0 + 60)]))
    assert res.status == "resolved" and res.dedup_key == f"{RULE}:ws-1:u1"
    assert res.summary == "Cleared: Login from outside the office" and res.entities == ()
    assert res.first_seen == "2026-03-01T00:00:00.000Z"


def test_conditions_that_cannot_resolve_keep_the_8_value_form() -> None:
    """Only resolvable conditions pay for what a resolved alert needs: the others stay 8 values."""
    e = RulesEngine.from_config({}, clock=FakeClock(T0))
    ev = make_event("audit.mfa_recovery_code_used", time=T0, actor={"user_id": "u1", "user_name": "Ann"})
    assert alerts(e.evaluate([ev]), "auth.recovery_code_used")
    doc = orjson.loads(e.state_items()[tracks_key("auth.recovery_code_used", "ws-1")])
    assert [len(v) for v in doc["a"].values()] == [8]


@pytest.mark.parametrize(
    "value",
    [
        [0, 0, 0, 1, None, 1, 1, "high", [], 5],
        [0, 0, 0, 1, None, 1, 1, "high", {}, ""],
        [0, 0, 0, 1, None, 1, 1, "high", [["user", "u1"]], ""],
        [0, 0, 0, 1, None, 1, 1, "high", [[1, "u1", None]], ""],
        [0, 0, 0, 1, None, 1, 1, "high", []],
    ],
)
def test_malformed_tracks_are_refused(value: list[Any]) -> None:
    """A track of another shape is a load problem (reported), not a crash or a wrong entity."""
    with pytest.raises(ValueError):
        AlertTrack.from_list(value)


def test_track_round_trip() -> None:
    """to_list/from_list keep entities (None ids and names too) and the summary."""
    tr = AlertTrack(1.0, 1.0, 2.0, 2, 1.5, 1, True, "high", (Entity("user", "u1", None), Entity("ip", None, "x")), "s")
    assert AlertTrack.from_list(orjson.loads(orjson.dumps(tr.to_list()))) == tr


def test_remembered_entities_are_bounded_in_size() -> None:
    """A long name is cut; an entity whose id (or kind) is too long to keep whole is not remembered at all."""
    n = MAX_TRACK_ENTITY_TEXT
    tr = AlertTrack(0.0, 0.0, 0.0, resolvable=True)
    tr.remember((Entity("user", "u1", "N" * (n + 50)), Entity("webhook", "h" * (n + 1), None),
                 Entity("k" * (n + 1), "x", None), Entity("ip", "192.0.2.1", None)), "s")  # fmt: skip
    assert tr.entities == (Entity("user", "u1", "N" * n), Entity("ip", "192.0.2.1", None))
    tr.remember((Entity("user", "u1", "N" * (n + 50)),), "later")  # the same entity, cut the same way: no repeat
    assert tr.entities == (Entity("user", "u1", "N" * n), Entity("ip", "192.0.2.1", None))
    assert tr.summary == "s"


def test_an_upgraded_condition_remembers_its_first_match_after_the_upgrade() -> None:
    """An 8-value track has nothing to say; a match folded into it after the upgrade fills it in."""
    one = engine()
    alerts(one.evaluate([login(T0)]))
    items = one.state_items()
    doc = orjson.loads(items[tracks_key(RULE, "ws-1")])
    items[tracks_key(RULE, "ws-1")] = orjson.dumps({"v": 1, "a": {k: v[:8] for k, v in doc["a"].items()}})
    two = engine()
    two.load_state(items)
    assert alerts(two.evaluate([login(T0 + 60, ip="203.0.113.5")])) == []  # folded: inside the window
    [res] = alerts(two.evaluate([enabled(T0 + 120)]))
    assert res.entities == (Entity("user", "u1", "Ann"), Entity("ip", "203.0.113.5", None))
    assert res.summary.endswith("it closes: Ann logged in from 203.0.113.5")
