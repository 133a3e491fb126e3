"""The redaction gate: the one name rule, the value, shape and URL passes, the secret check, dead letters."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

import connectors.instantly.redact  # noqa: F401 - registers the Instantly key shape, as the connector does
from connectors.instantly.rules.webhooks import host_of
from connectors.instantly.streams import Publisher
from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC
from pipeline.errors import WebhookRejected
from pipeline.redaction import (
    GateRejected,
    encode_alert,
    encode_event,
    is_secret_name,
    redact_text,
    redact_url,
    register_secret,
    set_url_path_hosts,
)
from pipeline.redaction.gate import MAX_DEPTH, gate_alert, gated_event_bytes, redact_tree, secret_problems
from schemas.deadletter import DeadLetter
from schemas.event import Actor, Event, Source, WorkspaceRef
from schemas.ids import fingerprint_secret
from schemas.secret_names import SECRET_NAME_PATTERN
from tests.fakes import make_alert

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
WS = WorkspaceRef("ws-1", "Acme")
SECRET_NAMES = ["api_key", "apiKey", "API-KEY", "x-api-key", "accessToken", "clientSecret", "refresh_token",
                "secret_key", "private_key", "privateKey", "aws_secret_access_key", "credentials", "credential",
                "passphrase", "password", "userPassword", "cookie", "Set-Cookie", "authorization",
                "Proxy-Authorization", "key", "token", "sec", "auth", "session token", "webhook.secret"]  # fmt: skip
PLAIN_NAMES = ["api_key_id", "public_key", "dedup_key", "idempotency_key", "partition_key", "monkey", "user_agent",
               "keys", "token_count", "headers", "description", "event_type", "publicKey"]  # fmt: skip


def event(**kw: Any) -> Event:
    base: dict[str, Any] = {"type": "audit.api_key_created", "time": "2026-01-01T00:00:00.000Z",
                            "observed_at": "2026-01-01T00:00:00.000Z", "workspace": WS,
                            "source": Source("audit_log", "audit_logs", "r-1"), "natural_key": ("r-1",)}  # fmt: skip
    return Event.build(**{**base, **kw})


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_match_whatever_the_case_and_separator(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names_do_not_match(name: str) -> None:
    assert not is_secret_name(name)


def test_every_json_schema_carries_the_one_name_rule() -> None:
    """The name rule lives in schemas/secret_names.py; the JSON Schemas hold exactly that pattern, no other."""
    for name in ("event", "deadletter"):
        text = (SCHEMAS / f"{name}.v1.json").read_text()
        assert json.dumps(SECRET_NAME_PATTERN) in text, name
        assert "api_?key|key|secret" not in text
    for path in (
        "connectors/instantly/redact.py",
        "connectors/instantly/webhook_normalize.py",
        "schemas/deadletter.py",
    ):
        assert ".*_secret|password" not in (SCHEMAS.parent / path).read_text(), path


def test_registered_values_are_fingerprinted_anywhere_raw_or_url_encoded() -> None:
    secret = "own+key/with=signs-0123456789"
    register_secret(secret)
    fp = fingerprint_secret(secret)
    text = f"quoted {secret} and in a URL ?k=own%2Bkey%2Fwith%3Dsigns-0123456789 done"
    assert redact_text(text, fingerprint=True) == f"quoted {fp} and in a URL ?k={fp} done"
    assert secret not in redact_text(text) and "<redacted>" in redact_text(text)


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("curl -H 'Authorization: Bearer abc123def456ghi'", "abc123def456ghi"),
        ("basic dXNlcjpwYXNzd29yZA== sent", "dXNlcjpwYXNzd29yZA=="),
        ("Token 9f8e7d6c5b4a3210 here", "9f8e7d6c5b4a3210"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end", "eyJzdWIiOiIxIn0"),
        ('{"clientSecret": "s3cr3t-v4lue"}', "s3cr3t-v4lue"),
        ("the api key is Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"),
        ("password=hunter22 next", "hunter22"),
    ],
)
def test_shapes_are_removed_from_free_text(text: str, gone: str) -> None:
    out = redact_text(text)
    assert gone not in out and "<redacted>" in out


def test_key_ids_in_free_text_stay_readable() -> None:
    """A uuid after "key" is an id, not a secret: descriptions keep naming the key."""
    text = "API key 019a41ff-4c08-7280-ba65-d965cf873b40 was created"
    assert redact_text(text) == text


def test_alert_dedup_keys_keep_the_key_id() -> None:
    """``<rule>:<workspace>:key:<uuid>`` names a key by its id: redacting it merged two keys' alerts into
    one PagerDuty incident (and resolving one resolved the other). A bare ``key:`` before anything
    but a whole uuid, and ``api_key:``/``token=`` before a uuid, are still redacted."""
    ids = ("019a41ff-4c08-7280-ba65-d965cf873b40", "019a41ff-4c08-7280-ba65-d965cf873b41")
    alerts = [
        msgspec.structs.replace(make_alert(i), dedup_key=f"api_key.all_scope:ws-1:key:{kid}")
        for i, kid in enumerate(ids)
    ]
    gated = [gate_alert(a) for a in alerts]
    assert [a.dedup_key for a in gated] == [f"api_key.all_scope:ws-1:key:{kid}" for kid in ids]
    assert redact_text(f"key: {ids[0]}") == f"key: {ids[0]}"
    assert redact_text(f"key:{ids[0]}x9") == "key:<redacted>"
    assert redact_text(f"api_key: {ids[0]}") == "api_key: <redacted>"
    assert redact_text(f"token={ids[0]}") == "token=<redacted>"


def test_the_connector_contributes_the_instantly_key_shape() -> None:
    """An Instantly-shaped key nobody registered still becomes its fingerprint (the shape came from the connector)."""
    key = base64.b64encode(b"019a41ff-4c08-7280-ba65-d965cf873b40:unregisteredToken42").decode()
    assert redact_text(f"leaked {key} today", fingerprint=True) == f"leaked {fingerprint_secret(key)} today"
    assert redact_text("plain words stay plain") == "plain words stay plain"


def test_urls_keep_scheme_host_port_and_fingerprint_the_rest() -> None:
    url = "https://TOKEN@hooks.slack.com:8443/services/T/B/xyz;p=1?sig2=a&X-Amz-Signature=b#frag"
    out = redact_url(url)
    assert out == "https://hooks.slack.com:8443/" + fingerprint_secret("/services/T/B/xyz;p=1?sig2=a&X-Amz-Signature=b")
    for part in ("TOKEN", "xyz", "p=1", "sig2", "Signature", "frag"):
        assert part not in out
    assert redact_url("https://u:pw@h.example/") == "https://h.example/"


def test_fixed_paths_the_pipeline_builds_stay_readable() -> None:
    """/_bulk, /healthz, the HEC endpoints… carry no credential: an operator reads `POST http://es:9201/_bulk
    failed`, not a fingerprint; with a query, or under another path, they are fingerprinted as before."""
    for path in ("/_bulk", "/healthz", "/services/collector/event", "/services/collector/health", "/v2/enqueue"):
        assert redact_url(f"http://127.0.0.1:9201{path}") == f"http://127.0.0.1:9201{path}"
        assert redact_text(f"POST http://es.internal:9201{path} failed") == f"POST http://es.internal:9201{path} failed"
    assert redact_url("http://es:9201/_bulk?token=x") == "http://es:9201/" + fingerprint_secret("/_bulk?token=x")
    assert redact_url("https://hooks.example/abc/_bulk") == "https://hooks.example/" + fingerprint_secret("/abc/_bulk")
    slack = "https://hooks.slack.com/services/T0/B0/secretpart"
    assert "secretpart" not in redact_url(slack)


def test_allowlisted_hosts_keep_their_paths_but_not_their_queries() -> None:
    set_url_path_hosts(["api.example.com", "*.internal.example"])
    try:
        assert redact_url("https://api.example.com/v1/hook?token=x#f") == (
            "https://api.example.com/v1/hook/" + fingerprint_secret("?token=x")
        )
        assert redact_url("http://a.b.internal.example/p").endswith("/p")
        assert redact_url("https://evil.example/v1/hook") != "https://evil.example/v1/hook"
    finally:
        set_url_path_hosts([])
    with pytest.raises(ValueError, match="bare host"):
        set_url_path_hosts(["https://api.example.com/x"])


def test_webhook_rules_still_read_scheme_and_host() -> None:
    """``webhook.insecure_target`` / ``unauthenticated`` read scheme and host: the gate keeps both."""
    ev = event(type="webhook.created", attributes={"target_hook_url": "http://t0k3n@attacker.example/x?a=1"})
    gated = Event.from_json(encode_event(ev))
    assert host_of(gated) == ("http", "attacker.example")
    assert "t0k3n" not in gated.attributes["target_hook_url"]


def test_gate_redacts_names_values_shapes_and_urls_in_the_whole_event() -> None:
    register_secret("OWNKEY-0123456789abcdef")
    ev = event(
        actor=Actor(user_agent="sdk Bearer abc123def456", user_name="uses OWNKEY-0123456789abcdef"),
        attributes={"audit_metadata": {"accessToken": "a1",
                                       "nested": {"x-api-key": "b2", "list": [{"secret_key": "c3"}]},
                                       "headers": {"Authorization": "Basic zzz"}, "url": "https://u@h.example/p/tok"}},
        raw={"credentials": {"user": "u", "password": "p"}, "note": "password=hunter22"},
    )  # fmt: skip
    data = encode_event(ev)
    for leak in (b"abc123def456", b"OWNKEY", b'"a1"', b'"b2"', b'"c3"', b"zzz", b"/p/tok", b"hunter22", b'"p"'):
        assert leak not in data
    doc = orjson.loads(data)
    assert doc["attributes"]["audit_metadata"]["headers"] == {"Authorization": "<redacted>"}
    assert doc["actor"]["user_name"] == f"uses {fingerprint_secret('OWNKEY-0123456789abcdef')}"
    assert secret_problems(doc["attributes"]) == [] and secret_problems(doc["raw"]) == []
    assert Event.from_json(encode_event(Event.from_json(data))).to_json() == data  # idempotent


def test_a_clean_event_passes_unchanged() -> None:
    ev = event(attributes={"activity_label": "API key created", "affected_count": 3, "api_key_id": "k-1"})
    assert encode_event(ev) == ev.to_json()


def test_a_secret_in_an_identity_field_goes_to_the_dead_letters_without_the_value() -> None:
    """The gate never rewrites ids; a registered secret there is refused, and the poller dead-letters it."""
    register_secret("IDSECRET-9876543210")
    ev = event(source=Source("audit_log", "audit_logs", "IDSECRET-9876543210"), natural_key=("x",))
    with pytest.raises(GateRejected) as err:
        encode_event(ev)
    assert err.value.reason == "secret_in_identity" and err.value.path == "source.record_id"
    pub = Publisher(None, "t", "acme", WS)  # type: ignore[arg-type]  # record() does not touch the bus
    topic, value, _key, headers = pub.record(ev, ())
    assert topic == DEADLETTER_TOPIC and ("error", b"secret_rejected") in headers
    letter = DeadLetter.from_json(value)
    assert letter.reason == "secret_rejected" and letter.original.value is None and letter.record_id == ev.id
    assert b"IDSECRET" not in value
    assert pub.record(event(), ())[0] == EVENTS_TOPIC
    with pytest.raises(WebhookRejected) as rej:
        gated_event_bytes(ev)
    assert rej.value.status == 422 and "IDSECRET" not in str(rej.value)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_DEPTH + 5):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(GateRejected, match="too_deep"):
        redact_tree(deep)


def test_alerts_pass_the_gate() -> None:
    register_secret("ALERTSECRET-55555555")
    alert = make_alert(1)
    alert = msgspec.structs.replace(
        alert, summary="key ALERTSECRET-55555555 used", attributes={"clientSecret": "x", "url": "https://t@h.example/a"}
    )
    data = encode_alert(alert)
    assert b"ALERTSECRET" not in data and b'"x"' not in data and b"t@h" not in data
    assert orjson.loads(data)["rule"] == orjson.loads(alert.to_json())["rule"]
