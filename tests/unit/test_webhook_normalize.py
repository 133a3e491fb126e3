"""Webhook payload → Event v1: types, ids, kept and dropped lead data, redaction, shape checks."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from connectors.instantly.webhook_normalize import (
    DEFAULT_KEPT_FIELDS,
    KNOWN_EVENT_TYPES,
    MAX_EVENT_BYTES,
    FieldPolicy,
    body_digest,
    event_time,
    event_type_for,
    normalize_delivery,
    parse_delivery,
)
from pipeline.errors import WebhookRejected
from schemas.event import WorkspaceRef
from schemas.validate import schema_errors
from tests.unit.test_webhook_support import WS, delivery, make_config

DEFAULT = FieldPolicy(frozenset(DEFAULT_KEPT_FIELDS))


def sha(label: str) -> str:
    """The 8 hex digits a custom label's type ends in when its slug is not the label itself."""
    return hashlib.sha256(label.encode()).hexdigest()[:8]


def norm(body: bytes, policy: FieldPolicy = DEFAULT, source: str = "crm") -> Any:
    return normalize_delivery(
        parse_delivery(body),
        source_name=source,
        workspace=WorkspaceRef(WS, "Acme"),
        digest=body_digest(body),
        body_bytes=len(body),
        observed_at="2026-03-05T23:10:00.000Z",
        policy=policy,
    )


def test_reply_event_keeps_ids_and_drops_bodies() -> None:
    """Default: ids and event facts kept; bodies, subjects, unibox URL and custom variables dropped."""
    body = delivery(
        7,
        event_type="reply_received",
        reply_text="please call me",
        reply_html="<p>please</p>",
        reply_text_snippet="please",
        reply_subject="Re: Quick question",
        unibox_url="https://app.instantly.ai/unibox/x",
        company_name="Initech",
    )
    e = norm(body)
    assert e.type == "webhook_delivery.reply_received"
    assert e.time == "2026-03-05T23:09:47.337Z"
    assert e.source.kind == "webhook" and e.source.stream == "webhook_crm"
    assert e.source.record_id == body_digest(body)
    assert set(e.raw) == set(DEFAULT_KEPT_FIELDS)
    dumped = e.to_json()
    for secret_text in (b"please", b"Quick question", b"Hi there", b"Initech", b"app.instantly.ai"):
        assert secret_text not in dumped
    assert e.attributes["dropped_fields"] == sorted(
        [
            "company_name",
            "email_html",
            "email_subject",
            "email_text",
            "reply_html",
            "reply_subject",
            "reply_text",
            "reply_text_snippet",
            "seq",
            "unibox_url",
        ]
    )
    assert e.attributes["lead_email"] == "lead7@example.com" and e.attributes["step"] == 1
    assert e.target is not None and e.target.kind == "campaign" and e.target.name == "Q1 outreach"
    assert schema_errors("event", e.to_dict()) == []


def test_configured_policy_keeps_and_drops() -> None:
    """keep_lead_fields adds custom variables and subjects; drop_fields removes default ones."""
    cfg = make_config(
        source_extra={"keep_lead_fields": ["company_name", "email_subject"], "drop_fields": ["lead_email"]}
    )
    e = norm(delivery(1, company_name="Initech"), FieldPolicy(cfg.sources["crm"].options.kept_fields()))
    assert e.raw["company_name"] == "Initech" and e.raw["email_subject"] == "Quick question"
    assert "lead_email" not in e.raw and "lead_email" not in e.attributes
    assert "email_text" not in e.raw


def test_id_is_deterministic_from_source_and_body() -> None:
    """Same body, same id; another body or another source, another id."""
    a, b = norm(delivery(1)), norm(delivery(1))
    assert a.id == b.id
    assert norm(delivery(2)).id != a.id
    assert norm(delivery(1), source="ops").id != a.id


@pytest.mark.parametrize(
    ("label", "etype", "custom"),
    [
        ("email_sent", "webhook_delivery.email_sent", False),
        ("link_clicked", "webhook_delivery.link_clicked", False),
        ("auto_reply_received", "webhook_delivery.auto_reply_received", False),
        ("Hot Lead!", f"webhook_delivery.label.hot_lead_{sha('Hot Lead!')}", True),
        ("hot_lead", "webhook_delivery.label.hot_lead", True),
        ("42 Interested", f"webhook_delivery.label.x42_interested_{sha('42 Interested')}", True),
        ("Ünïcode 🔥", f"webhook_delivery.label.n_code_{sha('Ünïcode 🔥')}", True),
        ("!!!", f"webhook_delivery.label.unnamed_{sha('!!!')}", True),
        ("some_future_type", "webhook_delivery.label.some_future_type", True),
    ],
)
def test_event_types_and_custom_labels(label: str, etype: str, custom: bool) -> None:
    """Every label becomes a valid dotted type (custom ones under ``webhook_delivery.label.``, with a
    hash of the label when the slug is not the label itself); the original label is kept."""
    e = norm(delivery(1, event_type=label))
    assert e.type == etype == event_type_for(label)
    assert e.attributes["event_label"] == label and e.attributes["custom_label"] is custom
    assert schema_errors("event", e.to_dict()) == []


@pytest.mark.parametrize(
    "labels",
    [
        ["Email Sent", "email sent", "EMAIL_SENT", "Email-Sent"],  # custom labels named like a real event
        ["Интерес", "Интересно", "Встреча", "関心あり", "🔥", "!!!"],  # no Latin letter: the slug is empty
        ["Hot Lead", "hot lead", "Hot  Lead", "HOT LEAD!", "hot_lead"],  # one slug, five labels
    ],
)
def test_custom_labels_never_collide_with_each_other_or_with_real_events(labels: list[str]) -> None:
    """A custom label never takes a documented event's type (``Email Sent`` is not ``email_sent``), and
    labels that slug alike keep distinct, stable types; the raw label stays in the attributes."""
    events = [norm(delivery(1, event_type=label)) for label in labels]
    types = [e.type for e in events]
    assert len(set(types)) == len(labels)
    assert all(t.startswith("webhook_delivery.label.") for t in types)
    assert not {t.removeprefix("webhook_delivery.") for t in types} & KNOWN_EVENT_TYPES
    assert types == [norm(delivery(2, event_type=label)).type for label in labels]  # stable
    assert [e.attributes["event_label"] for e in events] == labels
    assert all(e.attributes["custom_label"] is True and schema_errors("event", e.to_dict()) == [] for e in events)
    assert norm(delivery(1, event_type="email_sent")).type == "webhook_delivery.email_sent"


GUIDE_EVENT_TYPES = (
    "email_sent", "email_opened", "reply_received", "auto_reply_received", "link_clicked", "email_bounced",
    "lead_unsubscribed", "account_error", "campaign_completed", "lead_neutral", "lead_interested",
    "lead_not_interested", "lead_meeting_booked", "lead_meeting_completed", "lead_closed", "lead_out_of_office",
    "lead_wrong_person",
)  # fmt: skip
"""The payload ``event_type`` values of developer.instantly.ai, guide "Webhook events"."""


@pytest.mark.parametrize("label", GUIDE_EVENT_TYPES)
def test_documented_event_types_are_standard(label: str) -> None:
    """Each documented delivery type keeps its name as the event type and is not a custom label."""
    e = norm(delivery(1, event_type=label))
    assert e.type == f"webhook_delivery.{label}" and e.attributes["custom_label"] is False


def test_click_is_one_event_type_under_both_names() -> None:
    """Subscribed as ``email_link_clicked`` (webhook enum), delivered as ``link_clicked`` (guide): one type."""
    sub, dlv = norm(delivery(1, event_type="email_link_clicked")), norm(delivery(1, event_type="link_clicked"))
    assert sub.type == dlv.type == "webhook_delivery.link_clicked"
    assert sub.attributes["event_label"] == "email_link_clicked" and sub.attributes["custom_label"] is False
    assert schema_errors("event", sub.to_dict()) == []


def test_secret_looking_kept_fields_are_redacted() -> None:
    """A kept custom field holding secret-like keys is redacted (the event schema would refuse it)."""
    policy = FieldPolicy(frozenset(DEFAULT_KEPT_FIELDS) | {"crm", "api_key"})
    e = norm(
        delivery(1, crm={"token": "tok-123456", "headers": {"Authorization": "Basic abc"}, "x": 1}, api_key="k"), policy
    )
    assert e.raw["crm"] == {"token": "<redacted>", "headers": {"Authorization": "<redacted>"}, "x": 1}
    assert e.raw["api_key"] == "<redacted>"
    assert schema_errors("event", e.to_dict()) == []


def test_oversized_kept_fields_are_left_out() -> None:
    """An event that would exceed the size cap keeps only the core fields and says so."""
    policy = FieldPolicy(frozenset(DEFAULT_KEPT_FIELDS) | {"notes"})
    e = norm(delivery(1, notes="x" * (MAX_EVENT_BYTES + 10)), policy)
    assert e.attributes["raw_truncated"] is True and "notes" not in e.raw
    assert len(e.to_json()) < 16_384


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b"[1,2]", "bad_shape"),
        (b'"x"', "bad_shape"),
        (orjson.dumps({"timestamp": "2026-01-01T00:00:00Z", "workspace": WS}), "bad_shape"),
        (orjson.dumps({"event_type": "", "timestamp": "2026-01-01T00:00:00Z", "workspace": WS}), "bad_shape"),
        (orjson.dumps({"event_type": 5, "timestamp": "2026-01-01T00:00:00Z", "workspace": WS}), "bad_shape"),
        (orjson.dumps({"event_type": "x", "workspace": WS}), "bad_shape"),
        (orjson.dumps({"event_type": "x", "timestamp": "yesterday", "workspace": WS}), "bad_shape"),
        (orjson.dumps({"event_type": "x", "timestamp": "2026-01-01T00:00:00Z"}), "bad_shape"),
        (orjson.dumps({"event_type": "x", "timestamp": "2026-01-01T00:00:00Z", "workspace": 3}), "bad_shape"),
        (b"[" * 2000 + b"]" * 2000, "malformed_json"),
    ],
)
def test_shape_errors(body: bytes, reason: str) -> None:
    """Malformed or incomplete bodies are 400 with a reason, and the message never quotes the body."""
    with pytest.raises(WebhookRejected) as info:
        parse_delivery(body)
    assert info.value.status == 400 and info.value.reason == reason
    assert WS not in info.value.message


def test_event_time_forms() -> None:
    """ISO strings with Z or offsets and epoch seconds/milliseconds are accepted; junk is not."""
    assert event_time("2026-03-05T23:09:47.337Z") == "2026-03-05T23:09:47.337Z"
    assert event_time("2026-03-06T00:09:47+01:00") == "2026-03-05T23:09:47.000Z"
    assert event_time(1772752187) == event_time(1772752187000) == "2026-03-05T23:09:47.000Z"
    junks: list[object] = [None, "", "x", True, -1, float("inf"), "99999-01-01T00:00:00Z", [], {}]
    for junk in junks:
        assert event_time(junk) is None
