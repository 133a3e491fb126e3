"""The engine's dispatch index gives exactly what calling every routed rule gives.

``RulesEngine`` asks a rule with ``handler_for(type, code)`` (the correlation rules) for the
handler of each (event type, activity code) once per plan, so an event only reaches the entries
its type and code can match; it encodes each alert track once until it changes
(:func:`pipeline.rules.state.tracks_blob`) and skips an expiry scan that cannot remove anything.
:func:`tests.unit.test_rules_equivalence.reference_evaluate` is the plain loop — every routed
rule's ``on_event``, the stored documents encoded whole — and the engines must agree batch by
batch (alerts, state changes, failures, suppression) over the shipped rule pack's own test
cases, every kind of record the normalizers emit and the benchmark's simulated audit log.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmarks.bench_rules import CONFIG, generate
from connectors.instantly.rules import PACK
from pipeline.clock import parse_time
from pipeline.rules.base import AlertTrack, RuleState
from pipeline.rules.config import parse_rules_config
from pipeline.rules.correlation import CorrelationRule
from pipeline.rules.engine import _expire, decode_event
from pipeline.rules.matcher import _SUBFIELDS, compile_detection, getter
from pipeline.rules.state import FORMAT, tracks_blob
from pipeline.rules.testing import _event, case_files, load_case_file, make_event, merge
from schemas.event import Event, WorkspaceRef
from tests.event_corpus import fixture_events, webhook_events
from tests.unit.test_rules_equivalence import (
    _summary,
    fast_engine,
    reference_engine,
    reference_evaluate,
    run_both,
)

assert PACK.cases_dir is not None
CASE_FILES = case_files(PACK.cases_dir)
_ruleset = functools.lru_cache(maxsize=None)(lambda cfg: parse_rules_config(orjson.loads(cfg)))
"""The rule set of a case's config (JSON text): parsing the pack once per config keeps this quick."""


def _script(path: Any) -> list[tuple[str, list[Event | float]]]:
    """Each case of a shipped case file as (config, events and ticks), as ``rules test`` plays it."""
    cf = load_case_file(path)
    w = cf.workspace
    ws = WorkspaceRef(w) if isinstance(w, str) else WorkspaceRef(w.id, w.name)
    out = []
    for case in cf.cases:
        t = parse_time(cf.start) - 1.0
        script: list[Event | float] = []
        for i, raw in enumerate(case.events):
            if set(raw) == {"tick"}:
                t = parse_time(str(raw["tick"]))
                script.append(t)
            else:
                t = parse_time(str(raw["time"])) if "time" in raw else t + 1.0
                script.append(_event(raw, ws, t, f"events.{i}"))
        out.append((orjson.dumps(merge(cf.config, case.config)).decode(), script))
    return out


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_shipped_cases_alert_alike(path: Any) -> None:
    """Every shipped case, one event per batch (as ``rules test`` runs it): the same results step by step."""
    for cfg, script in _script(path):
        run_both(_ruleset(cfg), script, set(range(len(script))), set())


def test_the_shipped_cases_reach_every_correlation() -> None:
    """The cases above are not vacuous for the dispatch index: every correlation rule alerts in them."""
    alerted: Counter[str] = Counter()
    for path in CASE_FILES:
        for cfg, script in _script(path):
            engine = fast_engine(_ruleset(cfg))
            for item in script:
                got = engine.tick(item) if isinstance(item, float) else engine.evaluate([item])
                alerted.update(a.rule.id for a in got.alerts)
    corr = [r.meta.id for r in parse_rules_config({}).enabled if isinstance(r, CorrelationRule)]
    assert len(corr) >= 5 and all(alerted[rid] for rid in corr), alerted


def test_every_normalized_record_alerts_alike() -> None:
    """Every audit code, snapshot stream and webhook kind the normalizers emit, with restarts between batches."""
    events: list[Event | float] = [*fixture_events(), *webhook_events()]
    seen = run_both(parse_rules_config(CONFIG), events, set(range(0, len(events), 7)), {14, 70})
    assert seen["alerts"] > 0, seen


def test_the_simulated_audit_log_alerts_alike() -> None:
    """The benchmark's stream (few users, so correlations fire), in batches, with hourly ticks."""
    ruleset = parse_rules_config(CONFIG)
    fast, ref = fast_engine(ruleset), reference_engine(ruleset)
    raws = list(generate(6000, 40, 2, 3))
    alerted: Counter[str] = Counter()
    for i in range(0, len(raws), 250):
        events = [decode_event(r) for r in raws[i : i + 250]]
        got, want = fast.evaluate(events), reference_evaluate(ref, events)
        assert _summary(got) == _summary(want)
        alerted.update(a.rule.id for a in got.alerts)
        now = parse_time(events[-1].time) + 3600
        got = fast.tick(now)
        assert _summary(got) == _summary(ref.tick(now))
        alerted.update(a.rule.id for a in got.alerts)
    assert fast.state_items() == ref.state_items()
    assert sum(n for rid, n in alerted.items() if rid.startswith("corr.")) > 0, alerted


def test_tracks_blob_is_what_orjson_writes() -> None:
    """Cached members, odd keys, a changed track: the document is orjson's encoding byte for byte."""
    tracks = {
        "user:u1": AlertTrack(1.5, 1.5, 9.25, 3, 9.0, 2, True, "high"),
        'k"é\\/\n': AlertTrack(0.0, 0.0, 0.0),
        "all": AlertTrack(1e12, 1e12, 1e12 + 0.001, 1, None, 0, False, ""),
    }

    def want() -> bytes:
        return orjson.dumps({"v": FORMAT, "a": {k: tr.to_list() for k, tr in tracks.items()}})

    assert tracks_blob(tracks) == want()  # every member encoded
    assert tracks_blob(tracks) == want() and all(tr.enc for tr in tracks.values())  # every member cached
    tr = tracks["user:u1"]
    tr.count, tr.enc = 4, None  # as the engine changes a track
    assert tracks_blob(tracks) == want()  # one member encoded again


def _plain_expire(st: RuleState, window: float, now: float) -> None:
    """``_expire`` without its shortcut (the engine's before it)."""
    dead = []
    for k, tr in st.tracks.items():
        if tr.resolvable:
            continue
        if now - tr.last < window:
            break
        dead.append(k)
    for k in dead:
        del st.tracks[k]
    if dead:
        st.tracks_dirty = True


TRACK = st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.floats(0, 500), st.booleans())
STEP = st.one_of(
    st.tuples(st.just("expire"), st.floats(0, 1000)),
    st.tuples(st.just("touch"), TRACK),
    st.tuples(st.just("resolve"), st.sampled_from(["a", "b", "c", "d", "e"])),
)


@settings(max_examples=300, deadline=None)
@given(tracks=st.lists(TRACK, max_size=6), steps=st.lists(STEP, max_size=20), window=st.sampled_from([0.0, 60.0]))
@example(  # the blocking track resolved: an older-timed one behind it must expire on the next scan
    tracks=[("a", 100.0, False), ("b", 50.0, False)],
    steps=[("expire", 120.0), ("resolve", "a"), ("expire", 130.0)],
    window=60.0,
)
def test_expiry_shortcut_removes_what_the_scan_removes(
    tracks: list[tuple[str, float, bool]], steps: list[tuple[str, Any]], window: float
) -> None:
    """Expiry at any times (also going back), with tracks changed or resolved between as ``_apply`` does it
    (the shortcut is kept when only resolvable tracks change)."""
    fast = RuleState("r.x", WorkspaceRef("ws"))
    for key, last, res in tracks:
        fast.tracks[key] = AlertTrack(last, last, last, resolvable=res)
    plain = copy.deepcopy(fast)
    for what, arg in steps:
        if what == "expire":
            _expire(fast, window, arg)
            _plain_expire(plain, window, arg)
        elif what == "resolve":
            for state in (fast, plain):
                tr = state.tracks.pop(arg, None)
                if tr is not None and not tr.resolvable:
                    state.expire_block = None  # what _apply does when a resolution removes a track
        else:
            key, last, res = arg
            for state in (fast, plain):
                old = state.tracks.pop(key, None)
                tr = old or AlertTrack(last, last, last, resolvable=res)
                if not tr.resolvable:
                    state.expire_block = None  # what _apply does when it changes a non-resolvable track
                tr.last, tr.resolvable = max(tr.last, last), tr.resolvable or res
                state.tracks[key] = tr
        assert list(fast.tracks) == list(plain.tracks)
        assert fast.tracks_dirty == plain.tracks_dirty


@pytest.mark.parametrize("expected", [True, False])
def test_exists_on_struct_fields_matches_the_getter(expected: bool) -> None:
    """``<struct>.<field>|exists`` (inlined) says what the general getter says, also for a missing struct."""
    paths = [f"{h}.{f}" for h, fs in _SUBFIELDS.items() if fs for f in sorted(fs)]
    events = [*fixture_events(), *webhook_events(), make_event("audit.user_login", time=0.0)]
    assert any(ev.actor is None for ev in events) and any(ev.actor is not None for ev in events)
    for path in paths:
        pred, get = compile_detection({"sel": {f"{path}|exists": expected}}), getter(path)
        assert [pred(ev) for ev in events] == [(get(ev) is not None) is expected for ev in events], path


MIXED = [  # entries whose types and codes overlap only in part: handlers for one, several or none
    {"type": "temporal_ordered", "group-by": ["actor.user_id"], "timespan": "1h",
     "rules": [{"types": ["api_key.created"], "detection": {"s": {"type": "api_key.created"}},
                "group-by": ["target.id"]},
               {"types": ["audit.*"], "activity_codes": [26], "detection": {"s": {"actor.ip|exists": True}},
                "group-by": ["actor.api_key_id"], "new_terms": "actor.ip"}]},
    {"type": "event_count", "group-by": ["actor.user_id"], "timespan": "10m", "condition": {"gte": 2},
     "rules": [{"types": ["audit.*"], "activity_codes": [1, -1], "detection": {"s": {"actor.ip|exists": True}}},
               {"types": ["audit.activity_*", "member.*"], "detection": {"s": {"actor.user_id|exists": True}}}]},
]  # fmt: skip
CODED = st.sampled_from([1, 26, -1, 0, True, "1", None, 1.0])


@st.composite
def coded_events(draw: st.DrawFn) -> list[Event | float]:
    """Audit records with any activity code value (also bool, text, float, -1, missing), keys, members, ticks."""
    out: list[Event | float] = []
    t = 1_770_000_000.0
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0, 60, 900, 7200]))
        kind = draw(st.sampled_from(["audit", "audit", "key", "member", "tick"]))
        ws = draw(st.sampled_from([WorkspaceRef("ws-1", "A"), WorkspaceRef("ws-2", None)]))
        actor = draw(st.sampled_from([{"user_id": "u1", "ip": "192.0.2.1"}, {"api_key_id": "k1", "ip": "192.0.2.9"},
                                      {"user_id": "u2"}]))  # fmt: skip
        if kind == "tick":
            out.append(t)
        elif kind == "key":
            out.append(make_event("api_key.created", time=t, workspace=ws, target={"kind": "api_key", "id": "k1"}))
        elif kind == "member":
            out.append(make_event("member.invited", time=t, workspace=ws, actor=actor))
        else:
            ev = make_event("audit.activity_1", time=t, workspace=ws, actor=actor)
            code = draw(CODED)
            attrs = {} if code is None else {"activity_code": code}
            out.append(msgspec.structs.replace(ev, attributes=attrs))
    return out


@settings(max_examples=150, deadline=None)
@given(script=coded_events(), cuts=st.sets(st.integers(0, 40)))
def test_correlation_handlers_give_what_on_event_gives(script: list[Event | float], cuts: set[int]) -> None:
    """Entries routed per (type, code) plan, with odd activity codes: as calling each correlation's on_event."""
    rules = [{"id": f"custom.c{i}", "title": "c", "severity": "low", "correlation": c} for i, c in enumerate(MIXED)]
    run_both(_CUSTOM(orjson.dumps(rules).decode()), script, cuts, set())


_CUSTOM = functools.lru_cache(maxsize=None)(
    lambda rules: parse_rules_config({"defaults": {"enabled": False}, "custom": orjson.loads(rules)})
)
