"""The gate's fast path gives exactly what the full walk gives: the same bytes, or the same refusal.

Hypothesis builds events whose strings, keys and nesting mix clean values (ids, times, labels) with
planted secrets: registered values (raw and URL-encoded, alone or inside text), ``Bearer``/``token=``
values, JWTs, Instantly-shaped keys, URLs with credentials, secret-named and ``headers`` keys,
already-redacted values, str and dict subclasses and nesting past the depth limit. For each, the
fast path (:func:`encode_event`) and the full walk (:func:`encode_event_full`) must agree byte for
byte — whichever runs first, with the memo cold or warm — and when the fast path says "unchanged"
the full gate must return the very same event.
"""

from __future__ import annotations

import base64
import enum
import string
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors.instantly.redact  # noqa: F401 - registers the Instantly key shape, as the connector does
from pipeline.redaction import GateRejected, encode_event, register_secret, set_url_path_hosts
from pipeline.redaction.check import MAX_DEPTH
from pipeline.redaction.fast import event_unchanged
from pipeline.redaction.gate import encode_event_full, gate_event
from pipeline.redaction.memo import reset
from schemas.event import Actor, Change, Event, Source, Target, WorkspaceRef

REGISTERED = ("fastpath-Secret+Value/0123456789", "deadbeef00112233", "s3cr")
for _value in REGISTERED:
    register_secret(_value)
INSTANTLY_KEY = base64.b64encode(b"019a41ff-4c08-7280-ba65-d965cf873b40:AbCdEf123456").decode()
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"


class Color(enum.StrEnum):
    RED = "red"
    LEAK = "Bearer abc123def456ghi"


CLEAN = st.sampled_from(
    [
        "019a4219-ba36-7280-ba65-d965cf873b40",
        "2026-11-27T12:00:00.000Z",
        "203.0.113.7",
        "User login",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "Sam Ortiz",
        "audit_log",
        "",
        "ok",
        "<redacted>",
        "sha256:0a1b2c3d",
        "https://hooks.example.com/sha256:0a1b2c3d",
        "https://hooks.example.com",
        "a key id 019a4219-ba36-7280-ba65-d965cf873b40",
    ]
)
PLANTED = st.sampled_from(
    [
        *REGISTERED,
        "fastpath-Secret%2BValue%2F0123456789",
        f"quoted {REGISTERED[0]} in text",
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
        "HTTPS://Example.COM/a/b",
        "https://example.com:0443/",
        "see http://example.com/p;x=1 now",
        "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----",
        "sha256:0a1b2c3d\n",
    ]
)
TEXT = st.one_of(CLEAN, PLANTED, st.text(alphabet=string.printable, max_size=24))
KEYS = st.sampled_from(
    ["id", "note", "user_agent", "api_key_id", "monkey", "token_count", "password", "accessToken", "x-api-key",
     "secret_key", "headers", "Headers", "credentials", "auth", "url", REGISTERED[0], "Bearer abc123def456ghi"]
)  # fmt: skip
SCALARS = st.one_of(TEXT, st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False))


def _subclassed(value: Any) -> Any:
    if isinstance(value, dict):
        return OrderedDict(value)
    return Color.LEAK if value == "Bearer abc123def456ghi" else value


JSONISH = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), kids, max_size=5),
        st.dictionaries(KEYS, kids, max_size=3).map(_subclassed),
    ),
    max_leaves=16,
)
MAPS = st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), JSONISH, max_size=6)
OPT_TEXT = st.one_of(st.none(), TEXT)


@st.composite
def events(draw: st.DrawFn) -> Event:
    actor = draw(st.one_of(st.none(), st.builds(Actor, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT)))
    target = draw(st.one_of(st.none(), st.builds(Target, TEXT, OPT_TEXT, OPT_TEXT)))
    change = draw(st.one_of(st.none(), st.builds(Change, st.one_of(st.none(), MAPS), st.one_of(st.none(), MAPS),
                                                 st.lists(TEXT, max_size=3).map(tuple))))  # fmt: skip
    identity = st.one_of(CLEAN, PLANTED) if draw(st.booleans()) else CLEAN
    return Event.build(
        type="audit.fast_path",
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


def outcome(encode: Any, event: Event) -> bytes | tuple[str, str]:
    try:
        return encode(event)  # type: ignore[no-any-return]
    except GateRejected as err:
        return ("rejected", err.reason)
    except Exception as err:  # whatever the full walk raises, the fast path must raise too
        return ("error", type(err).__name__)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev=events(), cold=st.booleans(), fast_first=st.booleans())
def test_fast_path_and_full_walk_agree_byte_for_byte(ev: Event, cold: bool, fast_first: bool) -> None:
    if cold:
        reset()
    if fast_first:
        fast, full = outcome(encode_event, ev), outcome(encode_event_full, ev)
    else:
        full, fast = outcome(encode_event_full, ev), outcome(encode_event, ev)
    assert fast == full


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev=events())
def test_unchanged_means_the_gate_returns_the_same_event(ev: Event) -> None:
    if event_unchanged(ev):
        assert gate_event(ev) is ev


def clean_event(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "type": "audit.user_login", "time": "2026-11-27T12:00:00.000Z", "observed_at": "2026-11-27T12:00:00.000Z",
        "workspace": WorkspaceRef("019a4219-ba36-7280-ba65-d965cf873b40", "Acme"),
        "source": Source("audit_log", "audit_logs", "01a24e00-5276-7c01-89f1-4cd57804fe29"), "natural_key": ("r",),
        "actor": Actor("019a7d3e-0000-7000-8000-000000000016", "Sam Ortiz", None, "203.0.113.19", "Mozilla/5.0"),
        "attributes": {"activity_code": 1, "activity_label": "User login", "audit_metadata": {}},
    }  # fmt: skip
    return Event.build(**{**base, **kw})


def test_a_clean_audit_event_takes_the_fast_path() -> None:
    reset()
    ev = clean_event()
    assert event_unchanged(ev) and encode_event(ev) == ev.to_json()


@pytest.mark.parametrize(
    "attributes",
    [
        {"note": "Bearer abc123def456ghi"},
        {"accessToken": "x"},
        {"headers": {"X-Custom": "plain"}},
        {"list": [{"secret_key": "c3"}]},
        {"url": "https://u@h.example/p/tok"},
        {"quote": f"the key {REGISTERED[0]}"},
        {"enum": Color.LEAK},
        {"ordered": OrderedDict(note="token=hunter22")},
    ],
)
def test_anything_to_redact_leaves_the_fast_path(attributes: dict[str, Any]) -> None:
    reset()
    ev = clean_event(attributes=attributes)
    assert not event_unchanged(ev)
    data = encode_event(ev)
    assert data == encode_event_full(ev) and data != ev.to_json()


def test_a_headers_key_once_seen_without_a_map_does_not_make_later_header_maps_plain() -> None:
    """A ``headers`` key is never remembered as a plain name: its maps always keep names only."""
    reset()
    encode_event(clean_event(attributes={"headers": None}))
    data = encode_event(clean_event(attributes={"headers": {"X-Custom": "plain-looking-value"}}))
    assert b"plain-looking-value" not in data and b'"X-Custom":"<redacted>"' in data


def test_changing_the_url_allowlist_forgets_what_was_clean_under_the_old_one() -> None:
    url = "https://api.allowed.example/v1/things"
    try:
        set_url_path_hosts(["api.allowed.example"])
        assert b"/v1/things" in encode_event(clean_event(attributes={"url": url}))
        set_url_path_hosts([])
        assert b"/v1/things" not in encode_event(clean_event(attributes={"url": url}))
    finally:
        set_url_path_hosts([])


def test_lists_past_the_depth_limit_are_refused_like_maps() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(MAX_DEPTH + 5):
        node.append([])
        node = node[0]
    with pytest.raises(GateRejected, match="too_deep"):
        encode_event(clean_event(attributes={"deep": deep}))


def test_a_value_registered_after_it_was_found_clean_is_redacted_from_then_on() -> None:
    """Registering a secret forgets the memo: a string the fast path knew as clean is checked again."""
    value = "later-registered-0123456789"
    ev = clean_event(attributes={"note": f"uses {value}"})
    assert encode_event(ev) == ev.to_json()
    register_secret(value)
    assert value.encode() not in encode_event(ev)


def test_an_id_shaped_registered_value_in_a_fresh_record_id_is_refused() -> None:
    """The fresh-id check of the fast path knows id-shaped registered values (here ``deadbeef00112233``)."""
    reset()
    ev = clean_event(source=Source("audit_log", "audit_logs", REGISTERED[1]))
    assert not event_unchanged(ev)
    with pytest.raises(GateRejected, match="secret_in_identity"):
        encode_event(ev)
