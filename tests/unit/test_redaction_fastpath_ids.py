"""The fast path's fresh-id test: a stream's new time and record id, checked without remembering them.

The common case (:func:`pipeline.redaction.fast._common_case`) accepts a time and record id it has
never seen when every byte is an id/time character and neither is a registered value; it counts
them as known only while it tests ``raw`` (which repeats them). These tests plant what that test
must not let through — a registered value made of id characters, in an identity field or in
``raw`` beside fresh ids; a non-ASCII digit — and check the fast path gives what the full walk
gives, and that the ids are not left in the memo.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import connectors.instantly.redact  # noqa: F401 - registers the Instantly key shape, as the connector does
from pipeline.redaction import GateRejected, encode_event, register_secret
from pipeline.redaction.fast import event_unchanged
from pipeline.redaction.gate import encode_event_full
from pipeline.redaction.memo import MEMO, reset
from schemas.event import Actor, Event, Source, Target, WorkspaceRef

HEX_SECRET = "c0ffee00d15ea5e0"  # a planted value made of id characters only
register_secret(HEX_SECRET)


def audit_event(record_id: str, time: str, raw_extra: dict[str, Any] | None = None) -> Event:
    raw = {"id": record_id, "timestamp": time, "user_id": "019a7d3e-0000-7000-8000-000000000016",
           "user_agent": "Mozilla/5.0 (X11; Linux x86_64)", "audit_metadata": {}, **(raw_extra or {})}  # fmt: skip
    return Event.build(
        type="audit.user_login",
        time=time,
        observed_at="2026-11-27T12:00:00.000Z",
        workspace=WorkspaceRef("019a4219-ba36-7280-ba65-d965cf873b40", "Acme"),
        source=Source("audit_log", "audit_logs", record_id),
        natural_key=(record_id,),
        actor=Actor("019a7d3e-0000-7000-8000-000000000016", "Sam Ortiz", None, "203.0.113.19", "Mozilla/5.0"),
        target=Target("user", "019a7d3e-0000-7000-8000-000000000016", "Sam Ortiz"),
        attributes={"activity_code": 1, "activity_label": "User login", "audit_metadata": {}},
        raw=raw,
    )


def outcome(encode: Any, event: Event) -> bytes | str:
    try:
        return encode(event)  # type: ignore[no-any-return]
    except GateRejected as err:
        return err.reason
    except Exception as err:  # whatever the full walk raises, the fast path must raise too
        return type(err).__name__


def warm() -> None:
    """Teach the memo the stream's repeated values, as the events before would."""
    reset()
    encode_event(audit_event("01a24e00-5276-7c01-89f1-4cd57804fe29", "2026-11-27T11:00:00.000Z"))


def test_fresh_ids_take_the_fast_path_and_are_not_remembered() -> None:
    warm()
    ev = audit_event("01a24e00-5276-7c01-89f1-4cd57804fe30", "2026-11-27T11:59:59.999Z")
    assert event_unchanged(ev)
    assert encode_event(ev) == ev.to_json() == encode_event_full(ev)
    assert ev.source.record_id not in MEMO and ev.time not in MEMO


@pytest.mark.parametrize(
    ("record_id", "time"),
    [
        (HEX_SECRET, "2026-11-27T11:59:59.999Z"),  # a registered value as the record id
        ("01a24e00-5276-7c01-89f1-4cd57804fe31", HEX_SECRET),  # ... as the time
    ],
)
def test_a_registered_value_as_an_identity_is_refused_by_both_paths(record_id: str, time: str) -> None:
    warm()
    ev = audit_event(record_id, time)
    assert not event_unchanged(ev)
    assert outcome(encode_event, ev) == outcome(encode_event_full, ev) == "secret_in_identity"


@pytest.mark.parametrize(
    ("record_id", "time"),
    [
        ("01a24e00-5276-7c01-89f1-4cd57804fe3\u0663", "2026-11-27T11:59:59.999Z"),  # an Arabic-Indic digit
        ("01a24e00-5276-7c01-89f1-4cd57804fe32", "2026-11-27T11:59:59.999Z\u00a0"),  # a no-break space
        ("01a24e00-5276-7c01-89f1-4cd57804fe33", "Bearer abc123def456ghi"),  # a credential shape as the time
        ("01a24e00-5276-7c01-89f1-4cd57804fe36", "2026-11-27T11:59:59.999Z\ud800"),  # a lone surrogate
    ],
)
def test_an_identity_outside_the_id_characters_leaves_the_id_test(record_id: str, time: str) -> None:
    warm()
    ev = audit_event(record_id, time)
    assert outcome(encode_event, ev) == outcome(encode_event_full, ev)


def test_a_registered_value_in_raw_beside_fresh_ids_is_fingerprinted() -> None:
    warm()
    ev = audit_event("01a24e00-5276-7c01-89f1-4cd57804fe35", "2026-11-27T11:59:59.999Z", {"note": HEX_SECRET})
    assert not event_unchanged(ev)
    data = encode_event(ev)
    assert data == encode_event_full(ev)
    assert HEX_SECRET.encode() not in data


def test_an_id_repeated_in_raw_under_a_secret_name_is_still_refused_or_redacted() -> None:
    """``raw`` repeats the record id; under a secret name it must be redacted, fresh or not."""
    warm()
    rid = "01a24e00-5276-7c01-89f1-4cd57804fe34"
    ev = audit_event(rid, "2026-11-27T11:59:59.999Z", {"api_key": rid})
    assert not event_unchanged(ev)
    assert outcome(encode_event, ev) == outcome(encode_event_full, ev)


SHORT_SECRET = "q9z!"  # a planted value shorter than 6 characters
register_secret(SHORT_SECRET)


@pytest.mark.parametrize(
    "where",
    [
        {"attributes": {"activity_code": 1, "ref": f"aa-{HEX_SECRET}-01", "audit_metadata": {}}},
        {"raw_extra": {"ref": f"{HEX_SECRET} 2026-11-27T11:00:00.000Z"}},
        {"actor": Actor(f"{HEX_SECRET}-0001", "Sam Ortiz", None, "203.0.113.19", "Mozilla/5.0")},
        {"attributes": {"activity_code": 1, "short": f"x{SHORT_SECRET}", "audit_metadata": {}}},
    ],
)
def test_a_registered_value_inside_an_id_shaped_or_short_string_is_fingerprinted(where: dict[str, Any]) -> None:
    """An id-shaped string (hex, digits, ``-:.TZ+``) can hold a registered value made of the same characters."""
    warm()
    ev = audit_event("01a24e00-5276-7c01-89f1-4cd57804fe37", "2026-11-27T11:59:59.999Z", where.get("raw_extra"))
    ev = msgspec.structs.replace(ev, **{k: v for k, v in where.items() if k != "raw_extra"})
    assert not event_unchanged(ev)
    data = encode_event(ev)
    assert data == encode_event_full(ev)
    assert HEX_SECRET.encode() not in data and SHORT_SECRET.encode() not in data


def test_a_registered_value_inside_an_id_shaped_identity_is_refused() -> None:
    warm()
    ev = audit_event(f"01a24e00-{HEX_SECRET}", "2026-11-27T11:59:59.999Z")
    assert not event_unchanged(ev)
    assert outcome(encode_event, ev) == outcome(encode_event_full, ev) == "secret_in_identity"
