"""Redaction: key → fingerprint, header values → <redacted>, secret-looking fields at any depth."""

from __future__ import annotations

from typing import Any

import orjson

from connectors.instantly.redact import (
    REDACTED,
    header_names,
    redact_api_key,
    redact_headers,
    redact_record,
    redact_url,
    redact_webhook,
    scrub_text,
    set_header_names,
)
from schemas.event import Event, Source, WorkspaceRef
from schemas.ids import fingerprint_secret
from schemas.validate import schema_errors
from tests.unit.test_instantly_fake_api import load_fixture


def event_with_raw(raw: dict[str, Any]) -> dict[str, Any]:
    ev = Event.build(
        type="test.redaction",
        time="2026-03-05T23:09:47.337Z",
        observed_at="2026-03-05T23:09:47.337Z",
        workspace=WorkspaceRef("ws"),
        source=Source("snapshot", "test"),
        natural_key=("x",),
        raw=raw,
        attributes=raw,
    )
    return ev.to_dict()


def test_api_key_secret_becomes_fingerprint() -> None:
    """The documented APIKey's ``key`` becomes ``sha256:<8 hex>``; the clear value is gone."""
    record = load_fixture("api_keys.list.json")["items"][0]
    out = redact_api_key(record)
    assert out["key"] == fingerprint_secret("a1b2c3d4e5f6g7h8i9j0")
    assert out["key"].startswith("sha256:") and len(out["key"]) == 15
    assert b"a1b2c3d4e5f6g7h8i9j0" not in orjson.dumps(out)
    assert redact_api_key(out) == out  # idempotent: a fingerprint is not hashed again
    assert schema_errors("event", event_with_raw(out)) == []


def test_unredacted_record_fails_the_schema() -> None:
    """The Event v1 schema itself rejects the raw APIKey and raw Webhook (the guard works)."""
    assert schema_errors("event", event_with_raw(load_fixture("api_keys.list.json")["items"][0]))
    assert schema_errors("event", event_with_raw(load_fixture("webhooks.list.json")["items"][0]))


def test_webhook_headers_keep_names_only() -> None:
    """Webhook header values become ``<redacted>``; names are kept for rules."""
    record = load_fixture("webhooks.list.json")["items"][0]
    out = redact_webhook(record)
    assert out["headers"] == {"Authorization": REDACTED}
    assert header_names(out["headers"]) == ["Authorization"]
    assert b"dXNlcm5hbWU6cGFzc3dvcmQ=" not in orjson.dumps(out)
    assert schema_errors("event", event_with_raw(out)) == []


def test_empty_webhook_header_values_become_null() -> None:
    """An empty (or whitespace) header value is the empty string's fingerprint, not ``<redacted>``: the
    snapshot diff sees it emptied, and it is still a redacted value (idempotent)."""
    e = fingerprint_secret("")
    out = redact_headers({"Authorization": "", "X-A": "  ", "X-B": None, "X-C": "s3cret"})
    assert out == {"Authorization": e, "X-A": e, "X-B": e, "X-C": REDACTED}
    assert redact_headers(out) == out and set_header_names(out) == ["X-C"]


def test_secret_fields_at_any_depth() -> None:
    """password, token, sec, *_secret, cookie ... are redacted in nested objects and lists."""
    record = {
        "id": "1",
        "password": "p",
        "meta": {"access_token": "t", "sec": "s", "list": [{"client_secret": "c", "keep": "ok"}], "Cookie": "x"},
        "headers": None,
        "api_key_id": "not-a-secret",
        "token": None,
        "Authorization": 12345,
    }
    out = redact_record(record)
    assert out["password"] == REDACTED and out["token"] is None and out["Authorization"] == REDACTED
    assert out["meta"]["access_token"] == out["meta"]["sec"] == out["meta"]["Cookie"] == REDACTED
    assert out["meta"]["list"] == [{"client_secret": REDACTED, "keep": "ok"}]
    assert out["api_key_id"] == "not-a-secret"
    assert record["password"] == "p"  # the input is not mutated
    assert schema_errors("event", event_with_raw(out)) == []


def test_non_object_headers_become_null() -> None:
    """A headers field that is not an object cannot carry names; it becomes null."""
    assert redact_record({"headers": "Authorization: Bearer x"})["headers"] is None


def test_urls_lose_credentials() -> None:
    """User-info and fragment are dropped; path and query become one fingerprint; scheme, host and port stay."""
    out = redact_url("https://user:pw@example.com:8443/hook;p=1?token=abc&campaign=1#frag")
    assert out == "https://example.com:8443/" + fingerprint_secret("/hook;p=1?token=abc&campaign=1")
    assert redact_url("https://webhook.site/unique-url") == "https://webhook.site/" + fingerprint_secret("/unique-url")
    assert redact_url("https://example.com/") == "https://example.com/"
    assert redact_url(None) is None


def test_urls_keep_the_host_a_whatwg_parser_sends_to() -> None:
    """A backslash ends the host for http(s), tabs and newlines vanish, as in browsers and Node.js:
    the redacted URL (what rules and SIEMs see) names the real destination, not the decoy after it."""
    out = redact_url("https://evil.io\\@hooks.zapier.com/x")
    assert out == "https://evil.io/" + fingerprint_secret("/@hooks.zapier.com/x")
    assert redact_url("https://hooks.za\tpier.com/x").startswith("https://hooks.zapier.com/")
    assert redact_url("mailto-like://a\\@b.example/x").startswith("mailto-like://b.example/")  # not a special scheme


def test_scrub_text_removes_known_secrets_and_bearer_values() -> None:
    """Known secret values and any ``Bearer <token>`` are replaced in free text."""
    text = scrub_text("bad key SECRET-123 in Bearer abc.def", ["SECRET-123"])
    assert "SECRET-123" not in text and "abc.def" not in text


def test_non_string_keys_and_repeated_names() -> None:
    """Non-string keys (YAML fixtures) become strings; the field-name cache gives the same answer every time."""
    record: dict[Any, Any] = {1: "one", "token": "t", "Headers": {"X-Key": "v"}, "nested": [{"Secret": "s"}, 2]}
    for _ in range(3):
        assert redact_record(record) == {
            "1": "one",
            "token": REDACTED,
            "Headers": {"X-Key": REDACTED},
            "nested": [{"Secret": REDACTED}, 2],
        }


def test_scrub_text_removes_every_run_of_12_characters_of_the_key() -> None:
    """A key echoed cut (its first 24 characters, its tail, a piece of its decoded token) loses every
    run of 12 or more of its characters; 11 stay (the stated limit); the key's uuid id stays readable."""
    import base64

    from connectors.instantly.redact import scrub_text

    key_id, token = "019cc043-5eed-7c0d-9a11-cafe00c0ffee", "CANARYtok3nZZ9x8y7w6v5u4t3s2r1q0"
    key = base64.b64encode(f"{key_id}:{token}".encode()).decode()
    text = f"bad key {key[:24]}, tail {key[-12:]}, token {token[3:19]}, id {key_id}, short {key[:11]}"
    out = scrub_text(text, [key])
    assert out == f"bad key <redacted>, tail <redacted>, token <redacted>, id {key_id}, short {key[:11]}"
    assert scrub_text(f"x{key[5:30]}{key[30:45]}y", [key]) == "x<redacted>y"  # adjacent runs: one marker
    assert scrub_text("nothing secret in this sentence at all", [key]) == "nothing secret in this sentence at all"
