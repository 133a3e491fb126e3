"""Correlation rules: compile errors name their path; state is bounded, expires and survives a restart."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.clock import FakeClock, parse_time
from pipeline.errors import ConfigError
from pipeline.rules.engine import RulesEngine
from pipeline.rules.testing import make_event

T0 = parse_time("2026-01-01T00:00:00Z")


def _rule(corr: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "custom.corr", "title": "Correlation", "severity": "high", "correlation": corr, **extra}


def _engine(*rules: dict[str, Any]) -> RulesEngine:
    return RulesEngine.from_config({"defaults": {"enabled": False}, "custom": list(rules)}, clock=FakeClock(T0))


COUNT: dict[str, Any] = {
    "type": "event_count", "rules": [{"types": ["audit.*"], "detection": {"s": {"actor.ip|exists": True}}}],
    "group-by": ["actor.user_id"], "timespan": "10m", "condition": {"gte": 3},
}  # fmt: skip
ABSENCE: dict[str, Any] = {
    "type": "absence", "group-by": ["actor.user_id"], "timespan": "1h", "grace": "5m",
    "rules": [{"types": ["audit.*"], "detection": {"s": {"attributes.activity_code": 26}}},
              {"types": ["audit.*"], "detection": {"s": {"attributes.activity_code": 23}}}],
}  # fmt: skip


@pytest.mark.parametrize(
    ("corr", "message"),
    [
        (dict(COUNT, condition={"more": 3}), "correlation.condition: unknown operator 'more'"),
        (dict(COUNT, timespan="ten minutes"), "correlation.timespan: 'ten minutes' is not a duration"),
        (dict(COUNT, type="value_count"), "correlation.field: value_count needs the field"),
        (dict(ABSENCE, rules=ABSENCE["rules"][:1]), "correlation.rules: absence needs at least 2 entries"),
        (dict(COUNT, rules=["custom.nope"]), "correlation.rules.0: unknown YAML rule 'custom.nope'"),
        (dict(COUNT, rules=[{"types": ["audit.*"]}]), "correlation.rules.0: an entry needs either rule"),
        (dict(COUNT, **{"group-by": ["actor.mail"]}), "correlation.rules.0.group-by.0: unknown field 'actor.mail'"),
        (dict(COUNT, type="sequence"), "correlation.type"),
        (
            dict(COUNT, rules=[dict(COUNT["rules"][0], opens=True)]),
            "correlation.rules.0.opens: only an absence correlation has opening entries",
        ),
        (
            dict(ABSENCE, rules=[dict(r, opens=True) for r in ABSENCE["rules"]]),
            "correlation.rules: absence needs an entry that closes the window",
        ),
        # a condition where it means nothing here was ignored: Sigma's temporal {gte: 2} is "2 of the rules"
        (dict(ABSENCE, type="temporal", condition={"gte": 1}),
         "correlation.condition: temporal takes no condition here: every entry must match (only {gte: 2}"),
        (dict(ABSENCE, condition={"gte": 2}), "correlation.condition: absence takes no condition here"),
        # the match rules' spelling: the hint named the same wrong key ("did you mean 'group_by'?")
        ({**{k: v for k, v in COUNT.items() if k != "group-by"}, "group_by": ["actor.user_id"]},
         "correlation.group_by: unknown key (did you mean 'group-by'?)"),
        (dict(COUNT, rules=[{"types": ["audit.*"], "detection": {"s": {"type": "x"}}, "group_by": ["actor.ip"]}]),
         "(custom.corr).correlation.rules.0.group_by: unknown key (did you mean 'group-by'?)"),
        # a count without a threshold alerted on every single match (the default was gte: 1)
        ({k: v for k, v in COUNT.items() if k != "condition"},
         "correlation.condition: event_count needs a threshold, e.g. condition: {gte: 5}"),
        ({**{k: v for k, v in COUNT.items() if k != "condition"}, "type": "value_count", "field": "actor.ip"},
         "correlation.condition: value_count needs a threshold"),
        # an inline entry's selection on a type (or audit code) its own types (codes) never route to it
        (dict(COUNT, rules=[{"types": ["audit.user_login"], "detection": {"s": {"type": "audit.user_logn"}}}]),
         "correlation.rules.0.detection.s.type: 'audit.user_logn' never reaches the rule: its types are "
         "audit.user_login"),
        (dict(COUNT, rules=[{"types": ["audit.*"], "activity_codes": [26],
                             "detection": {"s": {"attributes.activity_code": 23}}}]),
         "correlation.rules.0.detection.s.attributes.activity_code: 23 never reaches the rule: its "
         "activity_codes are 26"),
    ],
)  # fmt: skip
def test_compile_errors_name_the_path(corr: dict[str, Any], message: str) -> None:
    """Each mistake is one ConfigError line starting with the rule's location and key path."""
    with pytest.raises(ConfigError) as info:
        _engine(_rule(corr))
    assert "rules.custom.0 (custom.corr)" in str(info.value) and message in str(info.value)
    assert ".EntrySpec." not in str(info.value) and ".str: Input should be a valid string" not in str(info.value)


def _login(user: str, t: float, code: int = 1, ip: str = "198.51.100.1", **attrs: Any) -> Any:
    return make_event(f"audit.activity_{code}", time=t, actor={"user_id": user, "ip": ip}, attributes=attrs)


def test_event_count_fires_at_the_threshold_then_restarts() -> None:
    """Three in ten minutes alert once; the next two do not; old ones fall out of the window."""
    e = _engine(_rule(COUNT))
    alerts = e.evaluate([_login("u1", T0 + i * 60) for i in range(5)]).alerts
    assert [a.dedup_key for a in alerts] == ["custom.corr:ws-1:u1"]
    late = e.evaluate([_login("u2", T0), _login("u2", T0 + 400), _login("u2", T0 + 900)]).alerts
    assert late == ()


@pytest.mark.parametrize(
    "cond", [{"neq": 1}, {"gte": 2, "neq": 3}, {"lt": 5}, {"lte": 2}, {"eq": 3}, {"gt": 2, "lte": 4}]
)
def test_upper_bound_conditions_are_refused(cond: dict[str, float]) -> None:
    """An upper bound (lt, lte, eq, neq) is decided by the count over the whole window (Sigma backends count
    the window); the stream fires as soon as the count first holds (``lt: 5`` on the first event), so such a
    rule does not load, with the reason."""
    with pytest.raises(ConfigError) as info:
        _engine(_rule(dict(COUNT, condition=cond)))
    assert "correlation.condition." in str(info.value) and "upper bound" in str(info.value)


def test_a_rule_id_reference_uses_that_rules_detection() -> None:
    """`rules: [<id>]` correlates the matches of a YAML match rule."""
    base = {"id": "custom.mfa_off", "title": "MFA off", "severity": "low", "types": ["audit.*"],
            "detection": {"s": {"attributes.activity_code": 26}}}  # fmt: skip
    e = _engine(base, _rule(dict(COUNT, rules=["custom.mfa_off"])))
    res = e.evaluate([_login("u1", T0 + i, code=26) for i in range(3)] + [_login("u1", T0 + 5, code=1)])
    assert sorted(a.rule.id for a in res.alerts) == ["custom.corr", "custom.mfa_off"]


def test_absence_state_survives_a_restart_and_fires_once() -> None:
    """The open window is rule state: a new engine loaded from it fires after window + grace, once."""
    first = _engine(_rule(ABSENCE))
    first.evaluate([_login("u1", T0, code=26)])
    assert first.tick(T0 + 3600 + 200).alerts == ()  # inside the grace period
    second = _engine(_rule(ABSENCE))
    second.load_state(first.state_items())
    res = second.tick(T0 + 3600 + 301)
    assert [a.dedup_key for a in res.alerts] == ["custom.corr:ws-1:u1"]
    assert res.alerts[0].first_seen == "2026-01-01T01:00:00.000Z"  # the window's end, not the tick
    third = _engine(_rule(ABSENCE))
    third.load_state(second.state_items())
    assert third.tick(T0 + 7200).alerts == ()


def test_groups_are_bounded_and_expire() -> None:
    """max_groups keeps the most recent groups; a tick drops groups quiet for timespan + grace."""
    e = _engine(_rule(dict(COUNT, max_groups=10)))
    e.evaluate([_login(f"u{i}", T0 + i) for i in range(100)])
    subs = [k for k in e.state_items() if "/s/" in k]
    assert len(subs) == 10 and any(k.endswith("/s/g%3Au99") for k in subs)
    e.tick(T0 + 100 + 600 + 601)
    assert [k for k in e.state_items() if "/s/" in k] == []


def test_temporal_and_new_terms() -> None:
    """temporal wants every entry within the span in any order; new_terms fires on a first value."""
    temporal = dict(ABSENCE, type="temporal")
    e = _engine(_rule(temporal))
    assert len(e.evaluate([_login("u1", T0, code=23), _login("u1", T0 + 60, code=26)]).alerts) == 1
    assert e.evaluate([_login("u2", T0, code=23), _login("u2", T0 + 7200, code=26)]).alerts == ()
    nt = {"type": "new_terms", "rules": COUNT["rules"], "group-by": ["actor.user_id"], "field": "actor.ip",
          "timespan": "30d"}  # fmt: skip
    e = _engine(_rule(nt, suppress_secs=0))
    ips = ["198.51.100.1", "198.51.100.1", "198.51.100.2", "198.51.100.1"]
    res = e.evaluate([_login("u1", T0 + i, ip=ip) for i, ip in enumerate(ips)])
    assert [a.attributes.get("term") for a in res.alerts] == ["198.51.100.1", "198.51.100.2"]


def test_late_events_complete_a_window_by_their_own_time() -> None:
    """A match arriving late (after a later one) still counts in the window its time falls in,
    and temporal entries far apart in event time never complete, whatever the arrival order."""
    e = _engine(_rule(COUNT))
    assert e.evaluate([_login("u1", T0 + 300), _login("u1", T0 + 500)]).alerts == ()
    assert len(e.evaluate([_login("u1", T0 + 100)]).alerts) == 1  # late, but within 10 min of both
    assert e.evaluate([_login("u2", T0 + 900), _login("u2", T0 + 1000), _login("u2", T0)]).alerts == ()
    t = _engine(_rule(dict(ABSENCE, type="temporal")))
    assert t.evaluate([_login("u1", T0 + 7200, code=23), _login("u1", T0, code=26)]).alerts == ()


def test_simultaneous_matches_count() -> None:
    """Matches with the same event time all count (event_count keeps no value to compare)."""
    e = _engine(_rule(COUNT))
    assert len(e.evaluate([_login("u1", T0), _login("u1", T0), _login("u1", T0)]).alerts) == 1


def test_a_restart_keeps_a_window_in_progress_across_ticks() -> None:
    """After a reload (stored last-use times are coarse), a tick keeps a group whose matches are recent."""
    first = _engine(_rule(COUNT))
    first.evaluate([_login("u1", T0 + 3000), _login("u1", T0 + 3100)])
    second = _engine(_rule(COUNT))
    second.load_state(first.state_items())
    second.tick(T0 + 3500)
    assert [a.dedup_key for a in second.evaluate([_login("u1", T0 + 3550)]).alerts] == ["custom.corr:ws-1:u1"]


STEP_C = {"types": ["audit.*"], "detection": {"s": {"attributes.activity_code": 5}}}
ORDERED = dict(ABSENCE, type="temporal_ordered", timespan="10m", rules=[*ABSENCE["rules"], STEP_C])


def test_temporal_ordered_keeps_a_chain_when_its_first_step_repeats() -> None:
    """A→A→B→C, A→B→A→C: a repeated first step starts another chain without throwing away the one already
    past it (the second sequence raised nothing); the chain that started last is extended."""
    for codes in ([26, 26, 23, 5], [26, 23, 26, 5], [26, 23, 23, 5]):
        e = _engine(_rule(ORDERED))
        res = e.evaluate([_login("u1", T0 + 60 * n, code=c) for n, c in enumerate(codes)])
        assert [a.dedup_key for a in res.alerts] == ["custom.corr:ws-1:u1"], codes
    e = _engine(_rule(ORDERED))
    assert e.evaluate([_login("u1", T0 + 60 * n, code=c) for n, c in enumerate([23, 26, 5, 5])]).alerts == ()
    # B then C more than 10 min after the first A but within 10 min of a later A: that later A's chain
    e = _engine(_rule(ORDERED))
    res = e.evaluate([_login("u1", T0, code=26), _login("u1", T0 + 300, code=23), _login("u1", T0 + 500, code=26),
                      _login("u1", T0 + 700, code=23), _login("u1", T0 + 1000, code=5)])  # fmt: skip
    assert len(res.alerts) == 1
    e = _engine(_rule(ORDERED))  # only the first A reached B; C is 11 min after it
    assert e.evaluate([_login("u1", T0, code=26), _login("u1", T0 + 300, code=23), _login("u1", T0 + 500, code=26),
                       _login("u1", T0 + 660, code=5)]).alerts == ()  # fmt: skip


def test_temporal_ordered_reads_the_state_written_before_chains() -> None:
    """State stored by the previous version (``s``: step → time, the start at "0") continues after an upgrade."""
    e = _engine(_rule(ORDERED))
    e.evaluate([_login("u1", T0, code=26)])
    key = next(k for k in e.state_items() if "/s/" in k)
    items = dict(e.state_items())
    items[key] = b'{"t":%.1f,"d":{"s":{"0":%.1f,"1":%.1f}}}' % (T0, T0, T0 + 60)
    e = _engine(_rule(ORDERED))
    e.load_state(items)
    assert len(e.evaluate([_login("u1", T0 + 120, code=5)]).alerts) == 1


def test_absence_entries_marked_opens_each_open_a_window() -> None:
    """``opens: true`` makes an entry open windows too (a disable by an API key, grouped by the key): each group
    fires unless a closing entry of the same group came; an opener matching again does not close it."""
    by_key = {"types": ["audit.*"], "detection": {"s": {"attributes.activity_code": 26, "actor.user_id": None}},
              "group-by": ["actor.api_key_id"], "opens": True}  # fmt: skip
    key_closes = {"types": ["audit.*"], "detection": {"s": {"attributes.activity_code": 23, "actor.user_id": None}},
                  "group-by": ["actor.api_key_id"]}  # fmt: skip
    opener, closer = ABSENCE["rules"]
    corr = dict(ABSENCE, rules=[dict(opener, opens=True), by_key, closer, key_closes])
    e = _engine(_rule(corr))

    def key_event(kid: str, t: float, code: int) -> Any:
        return make_event(f"audit.activity_{code}", time=t, actor={"api_key_id": kid})

    e.evaluate([_login("u1", T0, code=26), key_event("k1", T0, 26), key_event("k2", T0, 26), key_event("k2", T0, 26)])
    e.evaluate([key_event("k2", T0 + 60, 23), _login("u1", T0 + 120, code=26)])
    alerts = e.tick(T0 + 3600 + 301).alerts
    assert sorted(a.dedup_key for a in alerts) == ["custom.corr:ws-1:k1", "custom.corr:ws-1:u1"]


def test_the_lock_hash_covers_opens_only_when_set() -> None:
    """``opens: true`` changes a rule's content hash (a bump is due); an entry without it hashes as before the
    option existed, so adding the option did not change the locked hashes of the other correlations."""
    from pipeline.rules.lock import content_hash

    first, second = ABSENCE["rules"]

    def rule(entries: list[dict[str, Any]]) -> Any:
        r = _engine(_rule(dict(ABSENCE, rules=entries))).ruleset.get("custom.corr")
        assert r is not None
        return r

    plain = rule([first, second])
    explicit = rule([dict(first, opens=False), dict(second, opens=False)])
    marked = rule([first, dict(second, opens=True), dict(second, name="closer")])
    unmarked = rule([first, second, dict(second, name="closer")])
    assert content_hash(plain) == content_hash(explicit)
    assert content_hash(marked) != content_hash(unmarked)


def test_a_value_count_takes_its_field_inside_the_condition_as_sigma_writes_it() -> None:
    """Sigma's value_count names the field in the condition (``condition: {gte: 3, field: actor.ip}``); the block
    "reads like a Sigma correlation" (docs/rules.md), yet that form was refused with "condition.field: Input
    should be a valid number". It now counts as ``field:`` beside the condition does."""
    base = {"type": "value_count", "rules": [{"types": ["audit.*"], "detection": {"s": {"actor.ip|exists": True}}}],
            "group-by": ["actor.user_id"], "timespan": "1h"}  # fmt: skip
    logins = [_login("u1", T0 + i, ip=f"198.51.100.{i % 3}") for i in range(4)]
    sigma = _engine(_rule({**base, "condition": {"gte": 3, "field": "actor.ip"}}))
    native = _engine(_rule({**base, "condition": {"gte": 3}, "field": "actor.ip"}))
    fired = [[a.event_ids for a in e.evaluate(logins).alerts] for e in (sigma, native)]
    assert fired[0] == fired[1] == [(logins[2].id,)]
    with pytest.raises(ConfigError) as info:
        _engine(_rule({**base, "condition": {"gte": 3, "field": "actor.ip"}, "field": "actor.user_agent"}))
    assert "(custom.corr).correlation: condition.field 'actor.ip' and field 'actor.user_agent' differ" in str(
        info.value
    )
