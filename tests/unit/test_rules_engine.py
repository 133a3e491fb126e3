"""The pure rules engine: dedup, suppression, resolution, state, isolation and bounds."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.rules.engine import MAX_EVENT_IDS, Evaluation, RulesEngine, dedup_key
from pipeline.rules.state import main_key, tracks_key
from pipeline.rules.testing import make_event
from schemas.alert import Alert
from schemas.event import Event
from schemas.validate import schema_errors

T0 = parse_time("2026-03-01T00:00:00Z")
HOUR = 3600.0


def engine(cfg: dict[str, Any] | None = None, start: float = T0) -> RulesEngine:
    return RulesEngine.from_config(cfg or {}, clock=FakeClock(start))


def valid(result: Evaluation) -> list[Alert]:
    assert not result.failures, result.failures
    for a in result.alerts:
        assert schema_errors("alert", a.to_dict()) == [], a.to_dict()
    return list(result.alerts)


def of(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule.id == rule]


def key_event(kind: str, t: float, kid: str = "k1", scopes: tuple[str, ...] = ("all:all",), **kw: Any) -> Event:
    attrs = {"scopes": list(scopes), "name": "ci", **kw}
    return make_event(f"api_key.{kind}", time=t, target={"kind": "api_key", "id": kid, "name": "ci"}, attributes=attrs)


def login(t: float, user: str = "u1", ip: str = "192.0.2.1", ws: str = "ws-1") -> Event:
    return make_event("audit.user_login", time=t, workspace=ws, actor={"user_id": user, "user_name": user, "ip": ip})


def test_condition_alerts_once_per_suppression_window() -> None:
    """A condition seen again inside the window only counts; after it, it alerts again with the same dedup key."""
    e = engine()
    first = of(valid(e.evaluate([key_event("baseline", T0)])), "api_key.all_scope")
    second = of(valid(e.evaluate([key_event("baseline", T0 + HOUR)])), "api_key.all_scope")
    third = of(valid(e.evaluate([key_event("baseline", T0 + 25 * HOUR)])), "api_key.all_scope")
    assert len(first) == 1 and second == [] and len(third) == 1
    assert first[0].dedup_key == third[0].dedup_key == "api_key.all_scope:ws-1:key:k1"
    assert first[0].id != third[0].id
    assert third[0].count == 3 and third[0].first_seen == first[0].first_seen


def test_suppression_window_is_configurable() -> None:
    """suppress_secs: 0 makes every match an alert."""
    e = engine({"api_key.all_scope": {"suppress_secs": 0}})
    alerts = [
        a for t in (T0, T0 + 1, T0 + 2) for a in of(valid(e.evaluate([key_event("baseline", t)])), "api_key.all_scope")
    ]
    assert len(alerts) == 3 and len({a.id for a in alerts}) == 3


def test_matches_in_one_batch_make_one_alert() -> None:
    """Several matches of one condition in a batch fold into one alert with their count and event ids."""
    evs = [make_event("audit.mfa_recovery_code_used", time=T0 + i, actor={"user_id": "u1"}) for i in range(3)]
    [alert] = of(valid(engine().evaluate(evs)), "auth.recovery_code_used")
    assert alert.count == 3 and alert.event_ids == tuple(e.id for e in evs)
    assert alert.first_seen == "2026-03-01T00:00:00.000Z" and alert.last_seen == "2026-03-01T00:00:02.000Z"


def test_alerts_of_one_condition_built_in_one_batch_are_independent_snapshots() -> None:
    """Two alerts with one dedup key in one batch (the severity rose) each keep the figures they had
    when built: the first is not rewritten with the later count and last_seen."""
    e = engine({"allowlists": {"webhook_hosts": ["crm.acme.com"]}})
    hook = {"kind": "webhook", "id": "h1"}
    batch = [
        make_event("webhook.created", time=T0, target=hook,
                   attributes={"target_hook_url": "https://x.example/h", "url_scheme": "https"}),
        make_event("webhook.updated", time=T0 + 60, target=hook,
                   attributes={"target_hook_url": "http://x.example/h", "url_scheme": "http"}),
    ]  # fmt: skip
    alerts = [a for a in valid(e.evaluate(batch)) if a.entities and a.dedup_key.endswith("h1")]
    by_key: dict[str, list[Alert]] = {}
    for a in alerts:
        by_key.setdefault(a.dedup_key, []).append(a)
    [(first, second)] = [pair for pair in by_key.values() if len(pair) == 2]
    assert (first.count, first.last_seen) == (1, "2026-03-01T00:00:00.000Z")
    assert (second.count, second.last_seen) == (2, "2026-03-01T00:01:00.000Z")
    assert first.first_seen == second.first_seen and first.id != second.id


def test_event_ids_per_alert_are_capped() -> None:
    """An alert carries at most MAX_EVENT_IDS event ids however many events folded into it."""
    evs = [make_event("audit.mfa_recovery_code_used", time=T0 + i, actor={"user_id": "u1"}) for i in range(80)]
    [alert] = of(valid(engine().evaluate(evs)), "auth.recovery_code_used")
    assert alert.count == 80 and len(alert.event_ids) == MAX_EVENT_IDS


def test_higher_severity_alerts_inside_the_window() -> None:
    """A condition escalating (unknown host → plain http) alerts again at once with the higher severity."""
    e = engine({"allowlists": {"webhook_hosts": ["crm.acme.com"]}})
    hook = {"kind": "webhook", "id": "h1"}
    a1 = valid(
        e.evaluate(
            [
                make_event(
                    "webhook.created",
                    time=T0,
                    target=hook,
                    attributes={"target_hook_url": "https://x.example/h", "url_scheme": "https"},
                )
            ]
        )
    )
    a2 = valid(
        e.evaluate(
            [
                make_event(
                    "webhook.updated",
                    time=T0 + 60,
                    target=hook,
                    attributes={"target_hook_url": "http://x.example/h", "url_scheme": "http"},
                )
            ]
        )
    )
    assert [a.rule.severity for a in of(a1 + a2, "webhook.insecure_target")] == ["medium", "high"]


def test_resolution_needs_an_open_condition() -> None:
    """Deleting a key that never alerted emits nothing; deleting an alerted one emits 'resolved' with the same key."""
    e = engine()
    assert of(valid(e.evaluate([key_event("deleted", T0, kid="k9")])), "api_key.all_scope") == []
    opened = of(valid(e.evaluate([key_event("created", T0)])), "api_key.all_scope")
    [res] = of(valid(e.evaluate([key_event("deleted", T0 + 60)])), "api_key.all_scope")
    assert res.status == "resolved" and res.dedup_key == opened[0].dedup_key and res.rule.severity == "critical"
    assert res.first_seen == opened[0].first_seen and res.last_seen == "2026-03-01T00:01:00.000Z"


def test_reopening_after_resolution_is_a_new_alert() -> None:
    """Open → resolved → open again gives three alerts with distinct ids and the same dedup key."""
    e = engine()
    alerts = []
    for kind, t in (("created", T0), ("deleted", T0 + 1), ("created", T0 + 2)):
        alerts += of(valid(e.evaluate([key_event(kind, t)])), "api_key.all_scope")
    assert [a.status for a in alerts] == ["open", "resolved", "open"]
    assert len({a.id for a in alerts}) == 3 and len({a.dedup_key for a in alerts}) == 1


def test_alert_ids_are_the_same_on_replay() -> None:
    """Two engines fed the same events build identical alerts (ids included)."""
    evs = [key_event("baseline", T0), login(T0 + 1), key_event("deleted", T0 + 2)]
    a = valid(engine().evaluate(evs))
    b = valid(engine().evaluate(evs))
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b] and a


class CountingClock(FakeClock):
    """A FakeClock that counts its now() reads."""

    def __init__(self, start: float):
        super().__init__(start)
        self.reads = 0

    def now(self) -> float:
        self.reads += 1
        return super().now()


def test_alerts_carry_their_emission_and_when_the_engine_raised_them() -> None:
    """emission: the n-th alert of the condition since it opened (a first alert folding two matches is 1, the
    next after the window 2, the resolution carries the last: 2); raised_at: the injected clock at that
    evaluate/tick call, not the events' time (first_seen/last_seen)."""
    clock = FakeClock(T0 + 30 * HOUR)
    e = RulesEngine.from_config({}, clock=clock)
    [first] = of(valid(e.evaluate([key_event("baseline", T0), key_event("baseline", T0 + 1)])), "api_key.all_scope")
    clock.advance(60)
    assert of(valid(e.evaluate([key_event("baseline", T0 + HOUR)])), "api_key.all_scope") == []
    clock.advance(60)
    [second] = of(valid(e.evaluate([key_event("baseline", T0 + 25 * HOUR)])), "api_key.all_scope")
    clock.advance(60)
    [resolved] = of(valid(e.evaluate([key_event("deleted", T0 + 26 * HOUR)])), "api_key.all_scope")
    assert (first.count, first.emission, first.raised_at) == (2, 1, format_time(T0 + 30 * HOUR))
    assert first.first_seen == format_time(T0) != first.raised_at
    assert (second.emission, second.raised_at) == (2, format_time(T0 + 30 * HOUR + 120))
    assert (resolved.status, resolved.emission) == ("resolved", 2)
    assert resolved.raised_at == format_time(T0 + 30 * HOUR + 180)
    ticked = RulesEngine.from_config({}, clock=FakeClock(T0 + 5))
    valid(ticked.evaluate([key_event("created", T0, scopes=("leads:read",), created_at="2026-03-01T00:00:00Z")]))
    [stale] = valid(ticked.tick(T0 + 91 * 86_400))  # tick(now): raised_at is still the injected clock
    assert (stale.rule.id, stale.emission, stale.raised_at) == ("api_key.stale", 1, format_time(T0 + 5))


def test_the_clock_is_read_once_per_call() -> None:
    """evaluate() and tick() read the injected clock once each, however many alerts they raise."""
    clock = CountingClock(T0)
    e = RulesEngine.from_config({}, clock=clock)
    alerts = valid(e.evaluate([key_event("baseline", T0, kid=f"k{i}") for i in range(5)]))
    assert len(alerts) >= 5 and {a.raised_at for a in alerts} == {format_time(T0)} and clock.reads == 1
    e.tick()
    assert clock.reads == 2


def test_alert_ids_do_not_depend_on_when_they_were_raised() -> None:
    """The same events on engines whose clocks differ: the same ids, other raised_at (ids hash the dedup key,
    status and occurrence only); Alert.build gives one id with or without emission and raised_at."""
    evs = [key_event("baseline", T0), login(T0 + 1), key_event("deleted", T0 + 2)]
    a = valid(engine(start=T0).evaluate(evs))
    b = valid(engine(start=T0 + 7 * HOUR).evaluate(evs))
    assert [x.id for x in a] == [x.id for x in b] and a
    assert all(x.raised_at != y.raised_at for x, y in zip(a, b, strict=True))
    plain = msgspec.structs.replace(a[0], emission=None, raised_at=None)
    kw = {k: getattr(plain, k) for k in ("rule", "workspace", "summary", "dedup_key", "event_ids", "entities",
                                         "first_seen", "last_seen", "count", "status", "attributes")}  # fmt: skip
    bare = Alert.build(**kw, occurrence="1:1")
    assert Alert.build(**kw, occurrence="1:1", emission=3, raised_at="2030-01-01T00:00:00.000Z").id == bare.id


def test_state_round_trip_continues_where_it_stopped() -> None:
    """An engine loaded from another's state behaves as if it had seen the earlier events."""
    one = engine()
    valid(one.evaluate([key_event("baseline", T0)]))
    two = engine()
    two.load_state(one.state_items())
    assert of(valid(two.evaluate([key_event("baseline", T0 + HOUR)])), "api_key.all_scope") == []
    [res] = of(valid(two.evaluate([key_event("deleted", T0 + 2 * HOUR)])), "api_key.all_scope")
    assert res.status == "resolved"


def test_unchanged_state_is_not_rewritten() -> None:
    """A batch that changes nothing returns no state changes."""
    e = engine()
    ev = key_event("baseline", T0, scopes=("leads:read",), created_at="2026-02-01T00:00:00Z")
    assert valid(e.evaluate([ev])) == [] and e.evaluate([ev]).state == {}


def test_state_keys_follow_the_layout() -> None:
    """Changed state is keyed rules/<rule>/<workspace>[/alerts|/s/<entity>]."""
    state = engine().evaluate([key_event("baseline", T0)]).state
    assert main_key("api_key.all_scope", "ws-1") in state and tracks_key("api_key.all_scope", "ws-1") in state
    assert all(k.startswith("rules/") for k in state)


def test_a_failing_rule_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule raising is reported as a failure; the other rules still alert on the same event."""
    e = engine()
    rule = e.ruleset.get("api_key.broad_scope")

    def boom(ctx: object, event: object) -> list[object]:
        raise RuntimeError("bug")

    monkeypatch.setattr(rule, "on_event", boom)
    result = e.evaluate([key_event("baseline", T0)])
    assert [(f.rule_id, f.error) for f in result.failures] == [("api_key.broad_scope", "RuntimeError: bug")]
    assert [a.rule.id for a in result.alerts] == ["api_key.all_scope"]


def test_an_event_with_a_bad_time_is_reported() -> None:
    """An event whose time does not parse is reported (rule_id None) and skipped."""
    ev = make_event("audit.user_login", time=T0)
    bad = msgspec.structs.replace(ev, time="yesterday")
    result = engine().evaluate([bad])
    assert [(f.rule_id, f.event_id) for f in result.failures] == [(None, bad.id)] and result.events == 1


def test_long_dedup_keys_are_hashed_under_255() -> None:
    """Dedup keys stay within PagerDuty's 255 characters."""
    dk = dedup_key("auth.login_new_ip", "ws-1", "user:" + "x" * 400)
    assert len(dk) <= 255 and dk.startswith("auth.login_new_ip:ws-1:h:")
    assert dedup_key("a.b", "w" * 300, "k") != dedup_key("a.b", "w" * 300, "j")


def test_disabled_rules_do_not_run() -> None:
    """enabled: false silences a rule; defaults.enabled: false silences every built-in rule."""
    assert of(valid(engine({"api_key.all_scope": {"enabled": False}}).evaluate([key_event("baseline", T0)])),
              "api_key.all_scope") == []  # fmt: skip
    assert valid(engine({"defaults": {"enabled": False}}).evaluate([key_event("baseline", T0)])) == []


def test_severity_override_applies() -> None:
    """rules.<id>.severity replaces the rule's severity."""
    [a] = of(valid(engine({"api_key.all_scope": {"severity": "high"}}).evaluate([key_event("baseline", T0)])),
             "api_key.all_scope")  # fmt: skip
    assert a.rule.severity == "high"


def test_audit_rules_match_the_activity_code_not_the_name() -> None:
    """An audit event the connector could not name (audit.activity_26) still reaches auth.mfa_disabled."""
    ev = make_event("audit.activity_26", time=T0, actor={"user_id": "u1"})
    assert [a.rule.id for a in valid(engine().evaluate([ev]))] == ["auth.mfa_disabled"]


def test_tick_defaults_to_the_injected_clock() -> None:
    """tick() without a time uses the injected clock, never the wall clock."""
    clock = FakeClock(T0)
    e = RulesEngine.from_config({}, clock=clock)
    valid(e.evaluate([key_event("created", T0, scopes=("leads:read",), created_at="2026-03-01T00:00:00Z")]))
    assert valid(e.tick()) == []
    clock.advance(91 * 86_400)
    assert [a.rule.id for a in valid(e.tick())] == ["api_key.stale"]  # (no audit log seen: no untracked_change)


def test_quiet_event_conditions_are_forgotten() -> None:
    """Non-resolvable conditions drop out of the state after a quiet suppression window."""
    e = engine()
    valid(e.evaluate([make_event("audit.mfa_recovery_code_used", time=T0, actor={"user_id": "u1"})]))
    assert tracks_key("auth.recovery_code_used", "ws-1") in e.state_items()
    changes = e.tick(T0 + 2 * HOUR).state
    assert changes[tracks_key("auth.recovery_code_used", "ws-1")] is None
    assert tracks_key("auth.recovery_code_used", "ws-1") not in e.state_items()


def test_login_state_is_bounded() -> None:
    """auth.login_new_ip keeps at most max_users users per workspace and max_ips_per_user IPs each."""
    e = engine({"auth.login_new_ip": {"max_users": 3, "max_ips_per_user": 2}})
    evs = [login(T0 + i, user=f"u{i % 10}", ip=f"10.0.{i % 7}.{i % 5}") for i in range(500)]
    valid(e.evaluate(evs))
    subs = {k: orjson.loads(v) for k, v in e.state_items().items() if k.startswith("rules/auth.login_new_ip/ws-1/s/")}
    assert len(subs) == 3 and all(len(s["d"]["ips"]) <= 2 for s in subs.values())
    assert {k.rsplit("/", 1)[1] for k in subs} == {"u7", "u8", "u9"}  # the most recently active


def test_evicted_users_are_deleted_from_the_bus() -> None:
    """Users dropped by the LRU bound produce state deletions, not stale keys."""
    e = engine({"auth.login_new_ip": {"max_users": 1}})
    valid(e.evaluate([login(T0, user="a")]))
    changes = e.evaluate([login(T0 + 1, user="b")]).state
    assert changes["rules/auth.login_new_ip/ws-1/s/a"] is None and changes["rules/auth.login_new_ip/ws-1/s/b"]


def test_a_new_rule_version_starts_its_data_over() -> None:
    """State written by another version of a rule is not loaded; its entity documents are deleted."""
    one = engine({"auth.login_new_ip": {"learning_days": 0}})
    valid(one.evaluate([login(T0)]))
    items = one.state_items()
    items[main_key("auth.login_new_ip", "ws-1")] = orjson.dumps({"v": 1, "rv": 99, "wn": None, "d": {"since": 0}})
    two = engine({"auth.login_new_ip": {"learning_days": 0}})
    two.load_state(items)
    result = two.evaluate([login(T0 + 10, ip="198.51.100.1")])
    assert of(valid(result), "auth.login_new_ip") == []  # u1 is new again: learned silently
    assert result.state["rules/auth.login_new_ip/ws-1/s/u1"] is not None


def test_corrupt_state_entries_are_skipped_and_reported() -> None:
    """A state blob that does not decode is reported and ignored; the rest loads."""
    one = engine()
    valid(one.evaluate([key_event("baseline", T0)]))
    items = one.state_items()
    items["rules/api_key.stale/ws-1"] = b"{not json"
    two = engine()
    problems = two.load_state(items)
    assert [p.key for p in problems] == ["rules/api_key.stale/ws-1"]
    assert of(valid(two.evaluate([key_event("baseline", T0 + 60)])), "api_key.all_scope") == []


def test_workspaces_are_independent() -> None:
    """The same condition in two workspaces gives two alerts with different dedup keys."""
    evs = [
        make_event("audit.mfa_recovery_code_used", time=T0, workspace=w, actor={"user_id": "u1"}) for w in ("a", "b")
    ]
    alerts = valid(engine().evaluate(evs))
    assert sorted(a.dedup_key for a in alerts) == ["auth.recovery_code_used:a:u1", "auth.recovery_code_used:b:u1"]


def test_a_known_ip_is_refreshed_at_most_weekly() -> None:
    """Logins from an IP seen within the week write no state; a week later the user's document is rewritten."""
    e = engine({"auth.login_new_ip": {"learning_days": 0}})
    key = "rules/auth.login_new_ip/ws-1/s/u1"
    assert key in valid_state(e.evaluate([login(T0)]))
    for t in (T0 + HOUR, T0 + 3 * 24 * HOUR, T0 + 7 * 24 * HOUR - 1):
        result = e.evaluate([login(t)])
        assert key not in result.state and of(valid(result), "auth.login_new_ip") == []
    blob = e.evaluate([login(T0 + 7 * 24 * HOUR)]).state[key]
    assert blob is not None and orjson.loads(blob)["d"]["ips"] == {"192.0.2.1": int(T0 + 7 * 24 * HOUR)}


def valid_state(result: Evaluation) -> dict[str, bytes | None]:
    """The state changes of a result whose alerts are valid."""
    valid(result)
    return dict(result.state)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcde"),
            st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1"]),
            st.floats(0, 10 * 24 * HOUR),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_login_fast_path_agrees_with_the_stored_state(steps: list[tuple[str, str, float, bool]]) -> None:
    """auth.login_new_ip's in-memory shortcut never changes what it reports or stores.

    Engine ``a`` keeps its cache across batches; ``b`` reloads its state from the bus form before
    every batch (so it never has one). Same alerts and state changes; and every cached
    (user, IP) time equals the stored one.
    """
    cfg = {"auth.login_new_ip": {"learning_days": 1, "max_users": 3, "max_ips_per_user": 2}}
    a, b = engine(cfg), engine(cfg)
    t = T0
    batch: list[Event] = []
    for user, ip, gap, flush in steps:
        t += gap
        batch.append(login(t, user=user, ip=ip))
        if not flush:
            continue
        ra = a.evaluate(batch)
        b.load_state(b.state_items())
        rb = b.evaluate(batch)
        batch = []
        assert [x.to_json() for x in ra.alerts] == [x.to_json() for x in rb.alerts]
        assert dict(ra.state) == dict(rb.state)
        items = a.state_items()
        for st_ in a._store.for_rule("auth.login_new_ip"):
            for (user_, ip_), seen in st_.cache.items():
                doc = orjson.loads(items[f"rules/auth.login_new_ip/ws-1/s/{user_}"])
                assert doc["d"]["ips"][ip_] == seen
