"""The gate's C accelerator (``pipeline/redaction/_fastgate.c``) never says "unchanged" wrongly.

Its only answer that matters is True: the publisher then sends the plain encoding as the gated one.
Hypothesis builds events that mix clean values (ids, times, labels, user agents) with planted
secrets (registered values, raw and URL-encoded, alone or inside text; ``Bearer``/``token=``
values; JWTs; Instantly-shaped keys; URLs with credentials; secret-named and ``headers`` keys;
str and dict subclasses; nesting), with the memo cold or warmed by earlier events. Whenever the
accelerator says True, the full gate must return the very same event and the published bytes must
equal what the full walk publishes; and every event the Python common case decides, the
accelerator decides too (it is never the slower path).

The registry is swapped for this module's secrets (none id-shaped or short, the case the
accelerator answers for) and restored afterwards.
"""

from __future__ import annotations

import base64
import os
import string
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.instantly.redact  # noqa: F401 - registers the Instantly key shape, as the connector does
from pipeline.redaction import encode_event, fast, register_secret, registry
from pipeline.redaction.fast import PURE_PYTHON_ENV, event_unchanged
from pipeline.redaction.gate import encode_event_full, gate_event
from pipeline.redaction.memo import MEMO, NAMES, RISKY_FORMS, reset, sync
from schemas.event import Actor, Change, Event, Source, Target, WorkspaceRef

REGISTERED = ("native-Secret+Value/0123456789", "pk_live_Zx9Zx9Zx9Zx9", "hunter2-is-my-password")
INSTANTLY_KEY = base64.b64encode(b"019a41ff-4c08-7280-ba65-d965cf873b40:AbCdEf123456").decode()
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def registry_of_this_module() -> Iterator[None]:
    saved = [s.forms[0] for s in registry.known_secrets()]
    registry.forget_secrets()
    for value in REGISTERED:
        register_secret(value)
    sync()
    assert not RISKY_FORMS, "this module's secrets must be neither id-shaped nor short"
    yield
    registry.forget_secrets()
    for value in saved:
        register_secret(value)


def native() -> Any:
    if fast.native_common_case is None:
        pytest.fail(
            "the C accelerator is not built: run `make` (it compiles at install with a C compiler), "
            f"or set {PURE_PYTHON_ENV}=1 to run without it"
        )
    return fast.native_common_case


pytestmark = pytest.mark.skipif(
    os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"), reason=f"{PURE_PYTHON_ENV} switches the accelerator off"
)

CLEAN = st.sampled_from(
    [
        "019a4219-ba36-7280-ba65-d965cf873b40",
        "2026-11-27T12:00:00.000Z",
        "203.0.113.7",
        "2001:db8::1",
        "User login",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "Sam Ortiz",
        "audit_log",
        "",
        "ok",
        "<redacted>",
        "sha256:0a1b2c3d",
        "https://hooks.example.com",
        "a key id 019a4219-ba36-7280-ba65-d965cf873b40",
    ]
)
PLANTED = st.sampled_from(
    [
        *REGISTERED,
        "native-Secret%2BValue%2F0123456789",
        f"quoted {REGISTERED[0]} in text",
        f"{REGISTERED[1]}",
        "Bearer abc123def456ghi",
        "basic dXNlcjpwYXNz",
        "token=hunter22",
        '"api_key": "k-987654321"',
        "my secret is Zx9Zx9Zx9Zx9Zx9Zx9",
        JWT,
        INSTANTLY_KEY,
        f"key {INSTANTLY_KEY} here",
        "https://user:pass@hooks.slack.com/services/T0/B0/xyz?sig=1#frag",
        "https://TOKEN@example.com/",
        "see http://example.com/p;x=1 now",
        "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----",
        "sha256:0a1b2c3d\n",
        "ünïcödé-Bearer-\u017fecret",  # the long s folds onto s under (?i)
    ]
)
TEXT = st.one_of(CLEAN, PLANTED, st.text(alphabet=string.printable, max_size=24), st.text(max_size=12))
KEYS = st.sampled_from(
    ["id", "note", "user_agent", "api_key_id", "monkey", "token_count", "password", "accessToken", "x-api-key",
     "secret_key", "headers", "Headers", "credentials", "auth", "url", REGISTERED[0], "Bearer abc123def456ghi"]
)  # fmt: skip
SCALARS = st.one_of(TEXT, st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False))


class Label(str):
    """A str subclass: serialized like its base, walked by the gate as a plain copy."""


JSONISH = st.recursive(
    st.one_of(SCALARS, TEXT.map(Label)),
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.just([]),
        st.just({}),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), kids, max_size=4),
        st.dictionaries(KEYS, kids, max_size=3).map(OrderedDict),
    ),
    max_leaves=10,
)
MAPS = st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), st.one_of(SCALARS, SCALARS, JSONISH), max_size=8)
OPT_TEXT = st.one_of(st.none(), TEXT)


@st.composite
def events(draw: st.DrawFn) -> Event:
    actor = draw(st.one_of(st.none(), st.builds(Actor, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT)))
    target = draw(st.one_of(st.none(), st.builds(Target, TEXT, OPT_TEXT, OPT_TEXT)))
    change = draw(st.one_of(st.none(), st.none(), st.builds(Change, st.one_of(st.none(), MAPS), st.none())))
    identity = st.one_of(CLEAN, PLANTED) if draw(st.booleans()) else CLEAN
    return Event.build(
        type=draw(st.sampled_from(["audit.user_login", "audit.fast_path"])),
        time=draw(identity),
        observed_at="2026-11-27T12:00:00.000Z",
        workspace=WorkspaceRef(draw(CLEAN), draw(OPT_TEXT)),
        source=Source("audit_log", "audit_logs", draw(st.one_of(st.none(), identity))),
        natural_key=(draw(CLEAN),),
        actor=actor,
        target=target,
        change=change,
        attributes=draw(MAPS),
        raw=draw(st.one_of(st.none(), MAPS)),
    )


def published(encode: Any, event: Event) -> bytes | str:
    try:
        return encode(event)  # type: ignore[no-any-return]
    except Exception as err:  # the two paths must fail alike too
        return type(err).__name__


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(warm=st.lists(events(), max_size=3), ev=events(), cold=st.booleans())
def test_true_means_the_gate_leaves_the_event_as_it_is(warm: list[Event], ev: Event, cold: bool) -> None:
    if cold:
        reset()
    for w in warm:  # the memo learns what these hold
        event_unchanged(w)
    if native()(ev):
        assert gate_event(ev) is ev
        assert ev.to_json() == published(encode_event_full, ev)
    assert published(encode_event, ev) == published(encode_event_full, ev)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(warm=st.lists(events(), max_size=3), ev=events())
def test_it_decides_every_event_the_python_common_case_decides(warm: list[Event], ev: Event) -> None:
    for w in warm:
        event_unchanged(w)
    attrs, raw = ev.attributes, ev.raw
    python_says = (
        ev.change is None
        and type(attrs) is dict
        and (raw is None or type(raw) is dict)
        and fast._common_case(ev, attrs, raw)
    )
    if python_says:
        assert native()(ev)


def audit_event(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "type": "audit.user_login", "time": "2026-11-27T12:00:00.000Z", "observed_at": "2026-11-27T12:00:00.000Z",
        "workspace": WorkspaceRef("019a4219-ba36-7280-ba65-d965cf873b40", "Acme"),
        "source": Source("audit_log", "audit_logs", "01a24e00-5276-7c01-89f1-4cd57804fe29"), "natural_key": ("r",),
        "actor": Actor("019a7d3e-0000-7000-8000-000000000016", "Sam Ortiz", None, "203.0.113.19", "Mozilla/5.0"),
        "attributes": {"activity_code": 1, "activity_label": "User login", "audit_metadata": {}},
        "raw": {"id": "01a24e00-5276-7c01-89f1-4cd57804fe29", "ip_address": "203.0.113.19", "from_api": False},
    }  # fmt: skip
    return Event.build(**{**base, **kw})


def learned(ev: Event) -> Event:
    """``ev`` after the Python path has seen it once (its keys and repeated strings are known)."""
    reset()
    assert event_unchanged(ev)
    return ev


def test_a_clean_audit_event_is_decided_in_c_once_its_keys_are_known() -> None:
    ev = audit_event()
    reset()
    assert not native()(ev)  # keys not known yet: the walk learns them
    learned(ev)
    fresh = audit_event(time="2026-11-28T09:30:00.123Z", source=Source("audit_log", "audit_logs", "01a2-ffff"))
    assert native()(fresh)  # a fresh time and record id need no memo
    assert encode_event(fresh) == fresh.to_json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", "2026-11-28T09:30:00Z Bearer abc123def456ghi"),
        ("record_id", f"r-{REGISTERED[0]}"),
        ("user_agent", "curl token=hunter22"),
        ("user_name", REGISTERED[2]),
        ("ip", "203.0.113.19 \u017f"),
    ],
)
def test_an_unknown_string_with_anything_else_in_it_goes_to_the_walk(field: str, value: str) -> None:
    ev = learned(audit_event())
    if field == "time":
        ev = msgspec.structs.replace(ev, time=value)
    elif field == "record_id":
        ev = msgspec.structs.replace(ev, source=Source("audit_log", "audit_logs", value))
    else:
        assert ev.actor is not None
        ev = msgspec.structs.replace(ev, actor=msgspec.structs.replace(ev.actor, **{field: value}))
    assert not native()(ev)


@pytest.mark.parametrize(
    "attributes",
    [
        {"activity_code": 1, "accessToken": None},  # a key never seen
        {"activity_code": 1, "activity_label": Label("User login")},  # a str subclass
        {"activity_code": 1, "activity_label": OrderedDict()},  # a dict subclass, even empty
        {"activity_code": 1, "activity_label": ["User login"]},  # a non-empty list
        {"activity_code": 1, "activity_label": {"note": "x"}},  # a non-empty map
        {"activity_code": 1, "activity_label": "quoted native-Secret+Value/0123456789 here"},
    ],
)
def test_anything_but_plain_known_values_goes_to_the_walk(attributes: dict[str, Any]) -> None:
    learned(audit_event())
    assert not native()(audit_event(attributes=attributes))


def test_a_change_or_an_event_subclass_goes_to_the_walk() -> None:
    ev = learned(audit_event())
    assert not native()(msgspec.structs.replace(ev, change=Change({}, {}, ())))

    class Special(Event):  # type: ignore[misc]
        pass

    assert not native()(Special(**msgspec.structs.asdict(ev)))


def test_registering_a_secret_makes_it_answer_false_until_the_memo_is_checked_again() -> None:
    value = "later-registered-Zx9Zx9Zx9"
    ev = learned(audit_event(attributes={"activity_code": 1, "note": f"uses {value}"}))
    assert native()(ev) and f"uses {value}" in MEMO
    register_secret(value)
    assert not native()(ev)  # the memo answers for the old registry: Python syncs and walks
    assert value.encode() not in encode_event(ev)


def test_an_id_shaped_registered_value_switches_it_off() -> None:
    ev = learned(audit_event())
    assert native()(ev)
    register_secret("deadbeef00112233")  # made of CLEAN_CHARS alone: an id could be it
    sync()
    assert RISKY_FORMS and not native()(ev)
    hidden = audit_event(source=Source("audit_log", "audit_logs", "deadbeef00112233"))
    assert published(encode_event, hidden) == "GateRejected"


def test_names_forgotten_are_looked_up_again_not_taken_from_a_remembered_key_layout() -> None:
    ev = learned(audit_event())
    assert native()(ev) and native()(ev)  # the second time from the maps' key layouts
    names, memo = set(NAMES) - {"activity_label"}, set(MEMO)
    reset()  # forgets every name (and moves NAMES_EPOCH)
    NAMES.update(names)
    MEMO.update(memo)
    assert not native()(ev)  # activity_label is not known any more
    NAMES.add("activity_label")
    assert native()(ev)
