"""Properties of the engine: alert identity does not depend on batching or restarts; statuses alternate."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock, parse_time
from pipeline.rules.config import parse_rules_config
from pipeline.rules.engine import RulesEngine
from pipeline.rules.testing import make_event
from schemas.event import Event

T0 = parse_time("2026-03-01T00:00:00Z")
RULESET = parse_rules_config({"allowlists": {"webhook_hosts": ["ok.example"]}})  # rules are stateless: share them

KEY_SCOPES = st.sampled_from([["all:all"], ["leads:read"], ["all:read"], ["webhooks:all", "leads:read"]])
HOOK_URLS = st.sampled_from(["https://ok.example/h", "http://ok.example/h", "https://bad.example/h"])


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    t = T0
    out: list[Event] = []
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0, 1, 600, 3600, 6 * 3600, 86_400, 8 * 86_400]))
        kind = draw(st.sampled_from(["key", "hook", "mfa"]))
        if kind == "key":
            kid = draw(st.sampled_from(["k1", "k2"]))
            change = draw(st.sampled_from(["baseline", "created", "deleted", "scopes_changed"]))
            attrs: dict[str, Any] = {"scopes": draw(KEY_SCOPES), "created_at": "2025-12-01T00:00:00Z"}
            out.append(make_event(f"api_key.{change}", time=t, target={"kind": "api_key", "id": kid}, attributes=attrs))
        elif kind == "hook":
            url = draw(HOOK_URLS)
            attrs = {"target_hook_url": url, "url_scheme": url.split(":")[0], "has_auth_header": draw(st.booleans()),
                     "status": draw(st.sampled_from([1, -1]))}  # fmt: skip
            change = draw(st.sampled_from(["updated", "deleted"]))
            out.append(
                make_event(f"webhook.{change}", time=t, target={"kind": "webhook", "id": "h1"}, attributes=attrs)
            )
        else:
            code = draw(st.sampled_from(["audit.mfa_totp_disabled", "audit.mfa_totp_enabled"]))
            out.append(make_event(code, time=t, actor={"user_id": "u1"}))
    return out


def run_split(evs: list[Event], cuts: set[int], restarts: set[int]) -> list[tuple[str, str, str]]:
    """Evaluate in batches split at ``cuts``; at ``restarts`` rebuild the engine from the persisted changes."""
    bus_state: dict[str, bytes] = {}
    engine = RulesEngine(RULESET, clock=FakeClock(T0))
    out: list[tuple[str, str, str]] = []
    bounds = sorted({0, len(evs), *(c for c in cuts if 0 < c < len(evs))})
    for lo, hi in itertools.pairwise(bounds):
        if lo in restarts:
            engine = RulesEngine(RULESET, clock=FakeClock(T0))
            assert engine.load_state(bus_state) == []
        result = engine.evaluate(evs[lo:hi])
        assert not result.failures
        for k, v in result.state.items():
            if v is None:
                bus_state.pop(k, None)
            else:
                bus_state[k] = v
        out += [(a.dedup_key, a.status, a.id) for a in result.alerts]
    return out


@settings(max_examples=100, deadline=None)
@given(evs=events(), cuts=st.sets(st.integers(0, 40)), restarts=st.sets(st.integers(0, 40)))
def test_alerts_do_not_depend_on_batching_or_restarts(evs: list[Event], cuts: set[int], restarts: set[int]) -> None:
    """The same events give the same alerts (dedup key, status, id) however they are batched and restarted."""
    one_by_one = run_split(evs, set(range(len(evs))), set())
    assert run_split(evs, cuts, restarts & cuts) == one_by_one


@settings(max_examples=100, deadline=None)
@given(evs=events())
def test_resolution_always_follows_an_open_alert(evs: list[Event]) -> None:
    """Per dedup key, a 'resolved' alert always follows an 'open' one and never another 'resolved'."""
    last: dict[str, str] = {}
    for dk, status, _ in run_split(evs, set(range(len(evs))), set()):
        if status == "resolved":
            assert last.get(dk) == "open", dk
        last[dk] = status
