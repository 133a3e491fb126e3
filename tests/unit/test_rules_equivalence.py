"""The engine's fast paths give exactly what the plain evaluation loop gives.

``RulesEngine.evaluate`` runs each event through a cached plan per (workspace, type, activity
code), adds the plan's states to the touched set once per batch, re-checks workspace names only
when one may have changed, skips YAML rules that can only resolve while nothing is open, and
parses times with ``datetime.fromisoformat``. :func:`reference_evaluate` is the loop those
replace — route the event, look up or create each routed rule's context, update its workspace,
call it — run on a second engine over the same batches, ticks and restarts. That engine also
keeps its state in :class:`ReferenceStore`, the state store's loading and flushing as they were
before entity hashes moved into each state (``sub_written``) and the flush loop was unrolled.
Alerts, state changes, failures and suppression counts must be identical, and so must the whole
state. Decoding (the record codec) and ``event_time`` are checked against their
general paths too.
"""

from __future__ import annotations

import copy
import itertools
import pickle
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import unquote

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.rules.base import AlertTrack, Finding, RuleContext, RuleMeta, RuleParams, RuleState
from pipeline.rules.config import RuleSet, parse_rules_config
from pipeline.rules.engine import Evaluation, RuleFailure, RulesEngine, _Batch, decode_event, event_time
from pipeline.rules.matcher import type_matches
from pipeline.rules.state import FORMAT, PREFIX, StateProblem, StateStore, main_key, sub_key, tracks_key
from pipeline.rules.testing import make_event
from schemas.errors import RecordError
from schemas.event import SCHEMA, Actor, Change, Event, Source, Target, WorkspaceRef

T0 = parse_time("2026-03-01T00:00:00Z")
DAY = 86_400.0
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tuned": {
        "allowlists": {"member_domains": ["acme.com"], "webhook_hosts": ["ok.example"]},
        "protected_domains": ["acme.com", "rival.io"],
        "auth.mfa_attack": {"failures_threshold": 2},
        "auth.login_new_ip": {"learning_days": 1, "alert_on_new_user": True, "max_ips_per_user": 2, "max_users": 2},
        "data.lead_export": {"threshold": 100},
        "data.mass_deletion": {"leads_threshold": 3, "campaigns_threshold": 2},
        "api_key.stale": {"key_max_age_days": 30},
        "api_key.rotation_incomplete": {"grace_period_days": 1},
        "pipeline.source_silent": {"min_samples": 2, "min_silence_secs": 60},
        "pipeline.untracked_change": {"window_secs": 600},
    },
}
RULESETS = {name: parse_rules_config(cfg) for name, cfg in CONFIGS.items()}
WORKSPACES = [
    WorkspaceRef("ws-1", "Acme"),
    WorkspaceRef("ws-1", "Acme Renamed"),
    WorkspaceRef("ws-1", None),
    WorkspaceRef("ws-2", "Beta"),
    WorkspaceRef("ws 3/x", None),
]
USERS = st.sampled_from(
    [
        {"user_id": "u1", "user_name": "One", "ip": "192.0.2.1"},
        {"user_id": "u1", "ip": "192.0.2.2"},
        {"user_id": "u2", "ip": "198.51.100.7"},
        {"user_name": "Three", "ip": "203.0.113.3"},
        {"api_key_id": "kx"},
        {"ip": "10.0.0.1"},
    ]
)
AUDIT = [
    "audit.user_login",
    "audit.mfa_challenge_failed",
    "audit.mfa_challenge_failed_too_many",
    "audit.mfa_totp_disabled",
    "audit.mfa_totp_enabled",
    "audit.mfa_recovery_code_used",
    "audit.lead_exported",
    "audit.lead_deleted",
    "audit.campaign_deleted",
    "audit.api_key_created",
    "audit.api_key_deleted",
    "audit.webhook_marked_error",
    "audit.webhook_resumed",
    "audit.activity_99",
    "audit.mfa_login_succeeded",
]
SCOPES = st.sampled_from(
    [["all:all"], ["leads:read"], ["all:read"], ["webhooks:all", "leads:read"], ["api_keys:create"]]
)
URLS = st.sampled_from(["https://ok.example/h", "http://ok.example/h", "https://bad.example/h", "not a url"])
EMAILS = st.sampled_from(["a@acme.com", "b@gmail.com", "C@Acme.com ", ""])


@st.composite
def one_event(draw: st.DrawFn, t: float) -> Event:
    """Any event a rule reads, with the odd shapes (bool/text activity codes, bad times) mixed in."""
    ws = draw(st.sampled_from(WORKSPACES))
    kind = draw(
        st.sampled_from(
            ["audit", "audit", "audit", "key", "hook", "member", "owner", "block", "group", "pipeline", "odd"]
        )
    )
    actor = draw(USERS)
    if kind == "audit":
        etype = draw(st.sampled_from(AUDIT))
        attrs: dict[str, Any] = {"affected_count": draw(st.sampled_from([1, 60, 400, 2000, None, True]))}
        target = draw(st.sampled_from([None, {"kind": "webhook", "id": "h1"}, {"kind": "user", "id": "u1"}]))
        return make_event(etype, time=t, workspace=ws, actor=actor, target=target, attributes=attrs)
    if kind == "key":
        kid = draw(st.sampled_from(["k1", "k2", "k3"]))
        change = draw(st.sampled_from(["baseline", "created", "deleted", "scopes_changed", "renamed"]))
        attrs = {
            "scopes": draw(SCOPES),
            "name": f"n-{kid}",
            "created_at": draw(st.sampled_from(["2025-12-01T00:00:00Z", format_time(t), "bad"])),
        }
        return make_event(
            f"api_key.{change}",
            time=t,
            workspace=ws,
            actor=actor,
            target={"kind": "api_key", "id": kid},
            attributes=attrs,
        )
    if kind == "hook":
        url = draw(URLS)
        attrs = {
            "target_hook_url": url,
            "url_scheme": url.split(":")[0],
            "has_auth_header": draw(st.booleans()),
            "status": draw(st.sampled_from([1, -1, "1", 0])),
        }
        change = draw(st.sampled_from(["baseline", "created", "updated", "deleted", "status_changed"]))
        return make_event(
            f"webhook.{change}", time=t, workspace=ws, target={"kind": "webhook", "id": "h1"}, attributes=attrs
        )
    if kind == "member":
        change = draw(
            st.sampled_from(["baseline", "invited", "accepted", "removed", "role_changed", "permissions_changed"])
        )
        before, after = draw(st.sampled_from([("editor", "admin"), ("admin", "owner"), (None, "view")]))
        perms = draw(st.sampled_from([[], ["organization.manage"], ["agency.manage", "x"]]))
        return make_event(
            f"member.{change}",
            time=t,
            workspace=ws,
            actor=actor,
            target={"kind": "member", "id": draw(st.sampled_from(["m1", "m2"]))},
            attributes={"email": draw(EMAILS), "role": after},
            change={"before": {"role": before, "permissions": []}, "after": {"role": after, "permissions": perms}},
        )
    if kind == "owner":
        return make_event(
            "workspace.owner_changed",
            time=t,
            workspace=ws,
            change={"before": {"owner": "u1"}, "after": {"owner": draw(st.sampled_from(["u2", "u3"]))}},
        )
    if kind == "block":
        v = draw(st.sampled_from(["acme.com", "rival.io", "x@acme.com", "spam.biz"]))
        change = draw(st.sampled_from(["entry_baseline", "entry_added", "entry_removed"]))
        return make_event(
            f"block_list.{change}", time=t, workspace=ws, attributes={"value": v, "is_domain": "@" not in v}
        )
    if kind == "group":
        change = draw(st.sampled_from(["member_added", "member_removed", "member_status_changed"]))
        return make_event(
            f"workspace_group.{change}",
            time=t,
            workspace=ws,
            attributes={"admin_workspace_id": "wa", "sub_workspace_id": "wb", "status": 1},
        )
    if kind == "pipeline":
        etype = draw(st.sampled_from(["pipeline.poller_unauthorized", "pipeline.audit_log_unavailable"]))
        return make_event(etype, time=t, workspace=ws, attributes={"status": 401})
    ev = make_event("audit.user_login", time=t, workspace=ws, actor=actor)
    odd = draw(st.sampled_from(["bool code", "text code", "no code", "bad time", "naive time", "offset time"]))
    if odd == "bool code":
        return msgspec.structs.replace(ev, attributes={"activity_code": True})
    if odd == "text code":
        return msgspec.structs.replace(ev, attributes={"activity_code": "1"})
    if odd == "no code":
        return msgspec.structs.replace(ev, attributes={})
    if odd == "bad time":
        return msgspec.structs.replace(ev, time="yesterday")
    if odd == "naive time":
        return msgspec.structs.replace(ev, time=ev.time.removesuffix("Z"))
    return msgspec.structs.replace(ev, time=ev.time.replace("Z", "+02:00"))


@st.composite
def scripts(draw: st.DrawFn) -> list[Event | float]:
    """Events in time order with ticks (floats) between them."""
    t = T0
    out: list[Event | float] = []
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from([0, 1, 30, 600, 3600, 6 * 3600, DAY, 8 * DAY]))
        if draw(st.integers(0, 9)) == 0:
            out.append(t)
        else:
            out.append(draw(one_event(t)))
    return out


def reference_evaluate(engine: RulesEngine, events: Iterable[Event]) -> Evaluation:
    """The plain loop the plans replace (the engine's ``evaluate`` before them)."""
    batch = _Batch(engine._clock.now())
    n = 0
    touched = engine._store.touched
    for ev in events:
        n += 1
        try:
            t = parse_time(ev.time)
        except (ValueError, TypeError, AttributeError) as err:
            batch.failures.append(RuleFailure(None, ev.id, ev.workspace.id, f"invalid time {ev.time!r}: {err}"))
            continue
        code: int | None = None
        if ev.source.kind == "audit_log":
            c = ev.attributes.get("activity_code")
            code = c if isinstance(c, int) and not isinstance(c, bool) else -1
        routed = [
            b
            for b in engine._bound
            if type_matches(b.types, ev.type) and (code is None or b.codes is None or code in b.codes)
        ]
        ws = ev.workspace
        ctxs = engine._ctxs.setdefault(ws.id, {})
        for b in routed:
            ctx = ctxs.get(b.id)
            if ctx is None:
                ctx = ctxs[b.id] = RuleContext(engine._store.get(b.id, ws), engine._clock, suppress_secs=b.suppress)
            else:
                state = ctx.state
                if ws.name is not None and ws.name != state.workspace.name:
                    state.workspace = ws
                    state.data_touched = True
                touched.add(state)
            ctx.now = t
            try:
                for f in b.rule.on_event(ctx, ev):
                    engine._apply(b, ctx, f, batch)
            except Exception as err:
                batch.failures.append(RuleFailure(b.id, ev.id, ev.workspace.id, f"{type(err).__name__}: {err}"))
    return engine._finish(batch, n)


class ReferenceStore(StateStore):
    """``StateStore.load`` and ``flush`` as they were: one ``hashes`` table for every key."""

    def load(self, items: Mapping[str, bytes]) -> list[StateProblem]:
        self.states.clear()
        self.hashes.clear()
        self.touched.clear()
        problems: list[StateProblem] = []
        stale: set[RuleState] = set()
        subs: list[tuple[str, RuleState, str, dict[str, Any], float]] = []
        tracks: list[tuple[str, RuleState, bytes]] = []
        for key in sorted(items, key=lambda k: k.count("/")):
            if not key.startswith(PREFIX) or key.startswith(PREFIX + "_"):
                continue
            parts = key[len(PREFIX) :].split("/")
            rule_id = parts[0]
            if rule_id not in self.versions:
                continue
            value = items[key]
            try:
                ws_id = unquote(parts[1])
                if len(parts) == 2:
                    if not self._load_main(rule_id, ws_id, value):
                        stale.add(self.states[(rule_id, ws_id)])
                else:
                    state = self.states.get((rule_id, ws_id)) or self._new(rule_id, ws_id, None)
                    if len(parts) == 3 and parts[2] == "alerts":
                        tracks.append((key, state, value))
                    elif len(parts) == 4 and parts[2] == "s":
                        doc = orjson.loads(value)
                        if not isinstance(doc.get("d"), dict):
                            raise ValueError("entity document is not an object")
                        subs.append((key, state, unquote(parts[3]), doc["d"], float(doc["t"])))
                    else:
                        raise ValueError("unknown key layout")
            except (ValueError, KeyError, TypeError, IndexError) as err:
                problems.append(StateProblem(key, f"{type(err).__name__}: {err}"))
                continue
            self.hashes[key] = hash(value)
        for key, state, value in tracks:
            try:
                doc = orjson.loads(value)
                state.tracks = {k: AlertTrack.from_list(v) for k, v in doc["a"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                problems.append(StateProblem(key, f"{type(err).__name__}: {err}"))
                self.hashes.pop(key, None)
        for _key, state, name, doc, t in sorted(subs, key=lambda x: x[4]):
            if state in stale:
                state.subs_removed.add(name)
                continue
            state.subs[name] = doc
            state.sub_time[name] = t
        for state in stale:
            state.data_touched = True
            self.touched.add(state)
        return problems

    def flush(self) -> tuple[dict[str, bytes | None], list[tuple[str, str]]]:
        changes: dict[str, bytes | None] = {}
        failures: list[tuple[str, str]] = []
        for state in self.touched:
            if not state.dirty:
                continue
            rid, ws = state.rule_id, state.workspace.id
            if state.data_touched:
                doc = {"v": FORMAT, "rv": self.versions.get(rid, 1), "wn": state.workspace.name, "d": state.data}
                self._put(changes, failures, rid, main_key(rid, ws), doc)
            if state.tracks_dirty:
                key = tracks_key(rid, ws)
                if state.tracks:
                    doc = {"v": FORMAT, "a": {k: tr.to_list() for k, tr in state.tracks.items()}}
                    self._put(changes, failures, rid, key, doc)
                elif key in self.hashes:
                    changes[key] = None
                    del self.hashes[key]
            for name in state.subs_touched:
                sdoc = state.subs.get(name)
                if sdoc is not None:
                    t = state.sub_time[name]
                    self._put(changes, failures, rid, sub_key(rid, ws, name), {"t": t - t % 3600.0, "d": sdoc})
            for name in state.subs_removed:
                key = sub_key(rid, ws, name)
                if key in self.hashes:
                    changes[key] = None
                    del self.hashes[key]
            state.data_touched = state.tracks_dirty = False
            state.subs_touched.clear()
            state.subs_removed.clear()
        self.touched.clear()
        return changes, failures


def reference_engine(ruleset: RuleSet, versions: Mapping[str, int] | None = None) -> RulesEngine:
    """An engine whose state lives in a :class:`ReferenceStore` (evaluate it with :func:`reference_evaluate`)."""
    engine = RulesEngine(ruleset, clock=FakeClock(T0))
    engine._store = ReferenceStore({**engine._store.versions, **(versions or {})})
    return engine


def fast_engine(ruleset: RuleSet, versions: Mapping[str, int] | None = None) -> RulesEngine:
    """The engine as shipped (rule versions optionally overridden, as after a rule's format change)."""
    engine = RulesEngine(ruleset, clock=FakeClock(T0))
    engine._store.versions = {**engine._store.versions, **(versions or {})}
    return engine


def _parts(script: list[Event | float], cuts: set[int]) -> Iterator[tuple[int, list[Event] | float]]:
    bounds = sorted({0, len(script), *(c for c in cuts if 0 < c < len(script))})
    for lo, hi in itertools.pairwise(bounds):
        chunk = script[lo:hi]
        evs: list[Event] = []
        for item in chunk:
            if isinstance(item, float):
                if evs:
                    yield lo, evs
                    evs = []
                yield lo, item
            else:
                evs.append(item)
        if evs:
            yield lo, evs


def _summary(result: Evaluation) -> tuple[Any, ...]:
    return ([a.to_dict() for a in result.alerts], dict(result.state), result.failures, result.suppressed, result.events)


def run_both(
    ruleset: RuleSet,
    script: list[Event | float],
    cuts: set[int],
    restarts: set[int],
    bumps: Mapping[int, Mapping[str, int]] | None = None,
) -> Counter[str]:
    """Run the engine and the reference side by side; assert each step matches; count what they produced.

    At each index in ``restarts`` both are rebuilt from the state written so far (with the rule
    versions in ``bumps[index]``, if any: a rule whose format changed starts over).
    """
    fast, ref = fast_engine(ruleset), reference_engine(ruleset)
    bus: dict[str, bytes] = {}
    seen: Counter[str] = Counter()
    for lo, part in _parts(script, cuts):
        if lo in restarts:
            versions = (bumps or {}).get(lo)
            fast, ref = fast_engine(ruleset, versions), reference_engine(ruleset, versions)
            assert fast.load_state(bus) == ref.load_state(bus)
        if isinstance(part, float):
            got, want = fast.tick(part), ref.tick(part)
        else:
            got, want = fast.evaluate(part), reference_evaluate(ref, part)
        assert _summary(got) == _summary(want)
        for k, v in got.state.items():
            if v is None:
                bus.pop(k, None)
            else:
                bus[k] = v
            seen[("deleted " if v is None else "written ") + ("entity" if "/s/" in k else "document")] += 1
        seen["alerts"] += len(got.alerts)
        seen["failures"] += len(got.failures)
    assert fast.state_items() == ref.state_items()
    return seen


@pytest.mark.parametrize("config", sorted(CONFIGS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(), cuts=st.sets(st.integers(0, 60)), restarts=st.sets(st.integers(0, 60)))
def test_plans_give_what_the_plain_loop_gives(
    config: str, script: list[Event | float], cuts: set[int], restarts: set[int]
) -> None:
    """Same alerts, state changes, failures and suppression counts, batch by batch, across ticks and restarts."""
    restarts &= cuts
    bumps = {i: {"auth.login_new_ip": 2, "pipeline.source_silent": 3} for i in sorted(restarts)[1::2]}
    run_both(RULESETS[config], script, cuts, restarts, bumps)


def test_the_property_exercises_the_rules() -> None:
    """A fixed long script raises alerts from many rules, so the equivalence above is not vacuous."""
    events: list[Event | float] = []
    t = T0
    for i in range(400):
        t += (i % 7) * 900
        ws = WORKSPACES[i % len(WORKSPACES)]
        user = {"user_id": f"u{i % 5}", "ip": f"192.0.2.{i % 9}"}
        events.append(
            make_event(AUDIT[i % len(AUDIT)], time=t, workspace=ws, actor=user, attributes={"affected_count": 700})
        )
        if i % 13 == 0:
            events.append(
                make_event(
                    "api_key.created",
                    time=t,
                    workspace=ws,
                    target={"kind": "api_key", "id": f"k{i % 3}"},
                    attributes={"scopes": ["all:all"], "created_at": "2025-12-01T00:00:00Z"},
                )
            )
        if i % 17 == 0:
            events.append(make_event("pipeline.poller_unauthorized", time=t, workspace=ws, attributes={"status": 401}))
        if i % 50 == 0:
            events.append(t + 40 * DAY)
    seen = run_both(RULESETS["tuned"], events, set(range(0, 500, 37)), {74, 222, 333}, {222: {"auth.login_new_ip": 5}})
    assert seen["alerts"] > 50 and seen["written entity"] > 10, seen


def test_entity_documents_are_rewritten_and_deleted_like_before() -> None:
    """Unchanged, changed, trimmed, re-created and version-reset entity documents: the same writes and deletes."""
    hour = T0 - T0 % 3600

    def login(t: float, user: str, ip: str = "192.0.2.1") -> Event:
        return make_event("audit.user_login", time=t, actor={"user_id": user, "ip": ip})

    script: list[Event | float] = [
        login(hour, "u1"),
        login(hour + 1, "u2"),  # 0-1: both written
        login(hour + 60, "u1"),  # 2: known IP, same hour: touched, bytes unchanged
        login(hour + 120, "u3"),  # 3: a third user: u2 (least recently used) is trimmed and deleted
        login(hour + 180, "u2"),  # 4: re-created
        login(hour + 2 * DAY, "u1", "192.0.2.9"),  # 5: after a restart: a new IP, an alert
        login(hour + 2 * DAY + 60, "u3"),  # 6: after a restart with a new rule version: entities start over
        hour + 3 * DAY,  # 7: a tick
        login(hour + 3 * DAY, "u4", "192.0.2.7"),
    ]
    seen = run_both(RULESETS["tuned"], script, {2, 3, 4, 5, 6, 7}, {5, 6}, {6: {"auth.login_new_ip": 2}})
    assert seen["deleted entity"] >= 2 and seen["written entity"] >= 5 and seen["alerts"] >= 1, seen


def test_state_with_odd_keys_loads_and_flushes_like_before() -> None:
    """Entity keys that are not in canonical form, broken blobs and foreign keys load and flush as before."""
    ruleset = RULESETS["tuned"]
    script = [
        make_event("audit.user_login", time=T0 + i, actor={"user_id": f"u {i % 4}/é", "ip": f"192.0.2.{i}"})
        for i in range(12)
    ]
    fast, ref = fast_engine(ruleset), reference_engine(ruleset)
    first = fast.evaluate(script[:6])
    assert first.state == reference_evaluate(ref, script[:6]).state
    bus = {k: v for k, v in first.state.items() if v is not None}
    key = next(k for k in bus if "/s/" in k)
    bus[key.replace("%20", "%2520") + "x"] = bus[key]  # a different (non-canonical) entity name
    bus[key.lower()] = bus[key]  # lower-case escapes: the same name, not the key the store writes
    bus[key.rsplit("/", 1)[0] + "/broken"] = b"{not json"
    bus["rules/auth.login_new_ip/ws-1/s/"] = b'{"t": 0, "d": []}'
    bus["rules/_worker/commit"] = b"x"
    for versions in (None, {"auth.login_new_ip": 9}):
        fast, ref = fast_engine(ruleset, versions), reference_engine(ruleset, versions)
        assert fast.load_state(bus) == ref.load_state(bus)
        got, want = fast.evaluate(script[6:]), reference_evaluate(ref, script[6:])
        assert _summary(got) == _summary(want)
        assert fast.state_items() == ref.state_items()


class _Odd:
    """A rule that misbehaves in every way the engine must survive like the plain loop does."""

    def __init__(self, rid: str, types: tuple[str, ...], mode: str):
        self.meta = RuleMeta(id=rid, title=rid, severity="low", event_types=types)
        self.params = RuleParams()
        self.mode = mode

    def on_event(self, ctx: RuleContext, event: Event) -> Any:
        if self.mode == "raise":
            raise RuntimeError(f"boom on {event.type}")
        if self.mode == "none":
            return None
        if self.mode == "generator":
            return (Finding(f"k:{event.type}", "gen") for _ in range(2))
        if self.mode == "raise later":
            return self._later(event)
        return [Finding("k", "list", event_id=event.id)]

    def _later(self, event: Event) -> Iterator[Finding]:
        yield Finding("first", "first")
        raise ValueError(event.id)

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        return ()


def test_faulty_rules_fail_the_same_way() -> None:
    """Raising, returning None, generators (even ones raising half-way) and lists behave as in the plain loop."""
    base = RULESETS["defaults"]
    odd = tuple(
        _Odd(f"test.{m.replace(' ', '_')}", types, m)
        for m, types in [
            ("raise", ("audit.*",)),
            ("none", ("*",)),
            ("generator", ("api_key.*",)),
            ("raise later", ("*",)),
            ("list", ("audit.user_login",)),
        ]
    )
    ruleset = RuleSet(tuple(sorted((*base.rules, *odd), key=lambda r: r.meta.id)), base.settings, base.lists)
    script: list[Event | float] = [
        make_event(t, time=T0 + i, actor={"user_id": "u1", "ip": "192.0.2.1"})
        for i, t in enumerate(["audit.user_login", "api_key.created", "webhook.updated"] * 3)
    ]
    seen = run_both(ruleset, script, {2, 5}, {5})
    assert seen["failures"] >= 9 and seen["alerts"] > 0, seen


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(timezones=st.sampled_from([None, *(timezone(timedelta(minutes=m)) for m in (0, 90, -300))])),
    spec=st.sampled_from(["auto", "milliseconds", "seconds", "microseconds", "minutes"]),
    z=st.booleans(),
    pad=st.sampled_from(["", " ", "\n"]),
)
def test_event_time_matches_parse_time(when: Any, spec: str, z: bool, pad: str) -> None:
    """The fast time parser returns what parse_time returns, and fails where it fails."""
    text = when.isoformat(timespec=spec)
    if z and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    text = pad + text + pad
    try:
        want: Any = parse_time(text)
    except Exception as err:
        want = type(err)
    try:
        got: Any = event_time(text)
    except Exception as err:
        got = type(err)
    assert got == want


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T00:00:00.000Z",
        "2026-03-01T00:00:00z",
        "2026-03-01 00:00:00Z",
        "2026-03-01",
        "20260301T000000Z",
        "yesterday",
        "",
        "2026-03-01T00:00:00+01:00Z",
        "2026-03-01T24:00:00Z",
        17,
        None,
    ],
)
def test_event_time_edge_cases(text: Any) -> None:
    """Odd texts (and non-strings) give parse_time's result or its exception type."""
    outcomes: list[Any] = []
    for parse in (parse_time, event_time):
        try:
            outcomes.append(parse(text))
        except Exception as err:
            outcomes.append(type(err))
    assert outcomes[0] == outcomes[1]


# ---- decoding ------------------------------------------------------------------------------
def general_from_dict(d: Mapping[str, Any]) -> Event:
    """``Event.from_dict`` as it was before the codec (plain constructors, no type checks)."""
    actor, target, change = d.get("actor"), d.get("target"), d.get("change")
    return Event(
        id=d["id"],
        type=d["type"],
        time=d["time"],
        observed_at=d["observed_at"],
        workspace=WorkspaceRef(**d["workspace"]),
        source=Source(**d["source"]),
        actor=Actor(**actor) if actor else None,
        target=Target(**target) if target else None,
        change=Change(change["before"], change["after"], tuple(change["fields"])) if change else None,
        attributes=d.get("attributes") or {},
        raw=d.get("raw"),
        schema=d.get("schema", SCHEMA),
    )


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
MAYBE = st.one_of(st.none(), st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), st.booleans())


def _shape(keys: list[str]) -> st.SearchStrategy[Any]:
    full = st.fixed_dictionaries({k: MAYBE for k in keys})
    partial = st.dictionaries(st.sampled_from([*keys, "extra"]), MAYBE, max_size=len(keys) + 1)
    return st.one_of(full, full, partial, st.none(), JSONISH)


@st.composite
def event_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Event dicts of the exact serialized shape most of the time, and every kind of broken one."""
    d: dict[str, Any] = {
        "id": draw(MAYBE),
        "type": draw(MAYBE),
        "time": draw(MAYBE),
        "observed_at": draw(MAYBE),
        "workspace": draw(_shape(["id", "name"])),
        "source": draw(_shape(["kind", "stream", "record_id"])),
        "actor": draw(_shape(["user_id", "user_name", "api_key_id", "ip", "user_agent", "via_api"])),
        "target": draw(_shape(["kind", "id", "name"])),
        "change": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"before": JSONISH, "after": JSONISH, "fields": st.lists(st.text(max_size=3))}),
                JSONISH,
            )
        ),
        "attributes": draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=4), JSONISH, max_size=3))),
        "raw": draw(st.one_of(st.none(), JSONISH)),
        "schema": draw(st.sampled_from([SCHEMA, "other"])),
    }
    for k in draw(st.sets(st.sampled_from(sorted(d)), max_size=2)):
        del d[k]
    return d


TEXT = st.text(max_size=6)
OPT_TEXT = st.none() | TEXT
OBJECT = st.dictionaries(TEXT, JSONISH, max_size=3)
ACTOR_KEYS = ["user_id", "user_name", "api_key_id", "ip", "user_agent"]


@st.composite
def typed_event_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Event dicts whose every field has its declared type (optional ones sometimes left out)."""
    actor = st.fixed_dictionaries({**{k: OPT_TEXT for k in ACTOR_KEYS}, "via_api": st.none() | st.booleans()})
    d: dict[str, Any] = {
        "id": draw(TEXT),
        "type": draw(TEXT),
        "time": draw(TEXT),
        "observed_at": draw(TEXT),
        "workspace": {"id": draw(TEXT), "name": draw(OPT_TEXT)},
        "source": {
            "kind": draw(st.sampled_from(["audit_log", "snapshot", "webhook", "pipeline"])),
            "stream": draw(TEXT),
            "record_id": draw(OPT_TEXT),
        },
        "actor": draw(st.none() | actor),
        "target": draw(st.none() | st.fixed_dictionaries({"kind": TEXT, "id": OPT_TEXT, "name": OPT_TEXT})),
        "change": draw(
            st.none()
            | st.fixed_dictionaries(
                {"before": st.none() | OBJECT, "after": st.none() | OBJECT, "fields": st.lists(TEXT, max_size=3)}
            )
        ),
        "attributes": draw(OBJECT),
        "raw": draw(st.none() | OBJECT),
        "schema": SCHEMA,
    }
    for k in draw(st.sets(st.sampled_from(["actor", "target", "change", "attributes", "raw", "schema"]), max_size=2)):
        del d[k]
    return d


@settings(max_examples=300, deadline=None)
@given(d=typed_event_dicts())
def test_well_typed_events_decode_as_the_old_decoder_built_them(d: dict[str, Any]) -> None:
    """Every well-typed event decodes, equal (and byte-identical) to what the pre-codec decoder built."""
    ev = decode_event(orjson.dumps(d))
    assert type(ev) is Event and ev == general_from_dict(d) and ev.to_json() == general_from_dict(d).to_json()
    assert Event.from_dict(d) == ev


@settings(max_examples=500, deadline=None)
@given(d=event_dicts())
def test_decoding_accepts_well_typed_events_and_rejects_the_rest(d: dict[str, Any]) -> None:
    """The codec gives a RecordError (never another exception) or an Event the old decoder agreed on.

    Whatever it accepts, the pre-codec decoder accepted too and built the same event (but for an
    empty ``actor`` object, which it read as no actor), and it re-encodes to bytes that decode to it.
    """
    data = orjson.dumps(d)
    try:
        ev = decode_event(data)
    except RecordError as err:
        assert str(err).startswith(("not an Event v1: ", "not JSON ("))
        return
    assert type(ev) is Event
    old = general_from_dict(d)
    if d.get("actor") == {}:
        old = msgspec.structs.replace(old, actor=Actor())
    assert ev == old and ev.to_json() == old.to_json()
    assert decode_event(ev.to_json()) == ev


def test_decoded_events_are_ordinary_frozen_events() -> None:
    """What the codec decodes is an Event in every respect: immutable, hashable, copyable, JSON-equal."""
    ev = make_event(
        "audit.user_login",
        time=T0,
        workspace=WorkspaceRef("ws-1", "Acme"),
        actor={"user_id": "u1", "ip": "192.0.2.1"},
        target={"kind": "user", "id": "u1"},
        change={"before": {"a": 1}, "after": None, "fields": ["a"]},
    )
    got = decode_event(ev.to_json())
    assert type(got) is Event and type(got.actor) is Actor and type(got.target) is Target
    assert type(got.change) is Change and type(got.source) is Source and type(got.workspace) is WorkspaceRef
    assert got == ev and got.to_json() == ev.to_json() and hash(got.actor) == hash(ev.actor)
    assert msgspec.structs.replace(got, id="x").id == "x"
    assert msgspec.structs.asdict(got) == msgspec.structs.asdict(ev)
    with pytest.raises(AttributeError):
        got.id = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        got.actor.ip = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(got)) == got and copy.deepcopy(got) == got
