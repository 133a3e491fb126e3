"""The ``webhook:`` config section: defaults, validation errors naming their path, secret rules."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.instantly.webhook_normalize import DEFAULT_KEPT_FIELDS
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.errors import ConfigError
from pipeline.sources.webhook.config import parse_webhook_config
from tests.unit.test_webhook_support import SECRET_A, SECRET_B, WS


def block(**source: Any) -> dict[str, Any]:
    src: dict[str, Any] = {"workspace_id": WS, "secrets": [EnvValue(SECRET_A)]}
    src.update(source)
    return {"sources": {"crm": src}}


def error_of(b: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_webhook_config(b)
    return str(info.value)


def test_defaults() -> None:
    """Defaults: 127.0.0.1:8088, 1 MiB, /hooks/<name>, X-Webhook-Secret, the documented kept fields."""
    cfg = parse_webhook_config(block())
    assert (cfg.host, cfg.port, cfg.max_body_bytes) == ("127.0.0.1", 8088, 16 << 20)
    assert cfg.source_path("crm") == "/hooks/crm"
    src = cfg.sources["crm"]
    assert src.header_name == "X-Webhook-Secret"
    assert src.options.kept_fields() == frozenset(DEFAULT_KEPT_FIELDS)
    assert cfg.allow_ips is None and cfg.trusted_proxies == []


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("instantly-audit-webhook-7d9f8c6b5d-x2kz9", "webhook-instantly-audit-webhook-7d9f8c6b5d-x2kz9"),
        ("web 1/a", "webhook-web-1-a"),
        ("---", "webhook"),
    ],
)
def test_writer_id_defaults_to_the_host_name(monkeypatch: pytest.MonkeyPatch, host: str, expect: str) -> None:
    """Each replica its own writer id (Kubernetes sets HOSTNAME to the pod name); an explicit one wins."""
    monkeypatch.setenv("HOSTNAME", host)
    assert parse_webhook_config(block()).writer_id == expect
    assert parse_webhook_config({**block(), "writer_id": "edge-1"}).writer_id == "edge-1"


def test_writer_id_from_a_long_host_name_stays_valid_and_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = set()
    for tail in ("a", "b"):
        monkeypatch.setenv("HOSTNAME", "x" * 70 + tail)
        ids.add(parse_webhook_config(block()).writer_id)
    assert len(ids) == 2 and all(len(i) == 64 and i.startswith("webhook-xxx") for i in ids)


def test_from_yaml_with_env_references() -> None:
    """A YAML file with ${ENV} secrets parses; the PipelineConfig keeps the block for this module."""
    text = """
webhook:
  port: 9000
  allow_ips: [203.0.113.0/24]
  trusted_proxies: ["10.0.0.0/8"]
  sources:
    crm:
      path: /hooks/instantly-crm
      workspace_id: ws-1
      secrets: ["${HOOK_A}", "${HOOK_B}"]
      keep_lead_fields: [company_name, email_subject]
      drop_fields: [lead_email]
"""
    cfg = parse_config(text, env={"HOOK_A": SECRET_A, "HOOK_B": SECRET_B})
    assert cfg.webhook is not None
    w = cfg.webhook
    src = w.sources["crm"]
    assert [s.get_secret_value() for s in src.secrets] == [SECRET_A, SECRET_B]
    assert "company_name" in src.options.kept_fields() and "email_subject" in src.options.kept_fields()
    assert "lead_email" not in src.options.kept_fields()
    assert w.source_path("crm") == "/hooks/instantly-crm"


def test_secrets_file_gives_one_secret(tmp_path: Any) -> None:
    """``secrets_file`` (a Kubernetes secret) yields a one-secret list."""
    (tmp_path / "hook").write_text(SECRET_A + "\n")
    text = "webhook:\n  sources:\n    crm:\n      workspace_id: ws-1\n      secrets_file: hook\n"
    cfg = parse_config(text, env={}, base_dir=tmp_path)
    assert cfg.webhook is not None
    w = cfg.webhook
    assert [s.get_secret_value() for s in w.sources["crm"].secrets] == [SECRET_A]


def test_literal_secret_refused_without_echo() -> None:
    """A secret written literally in the file is refused, and the message does not repeat it."""
    msg = error_of(block(secrets=[SECRET_A]))
    assert "webhook.sources.crm.secrets.0" in msg and "literal secret" in msg
    assert SECRET_A not in msg


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ({"header_name": "Content-Type"}, "webhook.sources.crm.header_name:"),
        ({"header_name": "bad header"}, "webhook.sources.crm.header_name:"),
        ({"secrets": []}, "webhook.sources.crm.secrets:"),
        (
            {"secrets": [EnvValue(SECRET_A), EnvValue(SECRET_B), EnvValue(SECRET_A + "x")]},
            "webhook.sources.crm.secrets",
        ),
        ({"secrets": [EnvValue("short")]}, "shorter than 24"),
        ({"secrets": [EnvValue("x" * 23)]}, "shorter than 24"),
        ({"secrets": [EnvValue(SECRET_A), EnvValue(SECRET_A)]}, "identical"),
        ({"secrets": [EnvValue(SECRET_A + "\u00e9")]}, "printable ASCII"),
        ({"keep_lead_fields": ["email_html"]}, "webhook.sources.crm.keep_lead_fields:"),
        ({"drop_fields": ["event_type"]}, "webhook.sources.crm.drop_fields:"),
        ({"path": "/healthz"}, "webhook.sources.crm.path:"),
        ({"path": "hooks"}, "webhook.sources.crm.path:"),
        ({"workspace_id": ""}, "webhook.sources.crm.workspace_id:"),
        ({"colour": "blue"}, "webhook.sources.crm.colour: unknown key"),
        ({"keep_lead_fields": ["company"], "drop_fields": ["company"]}, "webhook.sources.crm.drop_fields:"),
    ],
)
def test_source_errors_name_their_path(source: dict[str, Any], expect: str) -> None:
    """Each invalid source option is an error naming webhook.sources.<name>.<key>."""
    msg = error_of(block(**source))
    assert expect in msg
    assert SECRET_A not in msg and SECRET_B not in msg


@pytest.mark.parametrize(
    ("top", "expect"),
    [
        ({"allow_ips": ["10.0.0.1/8"]}, "webhook.allow_ips.0:"),
        ({"trusted_proxies": ["not-an-ip"]}, "webhook.trusted_proxies.0:"),
        ({"max_body_bytes": 10}, "webhook.max_body_bytes:"),
        ({"port": 70000}, "webhook.port:"),
        ({"sources": {}}, "webhook.sources:"),
        ({"hots": "0.0.0.0"}, "webhook.hots: unknown key (did you mean 'host'?)"),
    ],
)
def test_receiver_errors_name_their_path(top: dict[str, Any], expect: str) -> None:
    """Receiver-level errors name webhook.<key>."""
    b = block()
    b.update(top)
    assert expect in error_of(b)


def test_cross_source_checks() -> None:
    """Two sources may not share a path or a secret; names must be lower_snake_case."""
    b = {
        "sources": {
            "crm": {"workspace_id": WS, "secrets": [EnvValue(SECRET_A)], "path": "/hooks/x"},
            "ops": {"workspace_id": WS, "secrets": [EnvValue(SECRET_A)], "path": "/hooks/x"},
            "Bad-Name": {"workspace_id": WS, "secrets": [EnvValue(SECRET_B)]},
        }
    }
    msg = error_of(b)
    assert "webhook.sources.ops.path: /hooks/x is already used by source 'crm'" in msg
    assert "webhook.sources.ops.secrets.0: the same secret is used by source 'crm'" in msg
    assert "webhook.sources.Bad-Name: source names must be lower_snake_case" in msg
    assert SECRET_A not in msg


def test_not_a_mapping() -> None:
    """A webhook block that is not a mapping is refused."""
    with pytest.raises(ConfigError, match="webhook: expected a mapping"):
        parse_webhook_config(["x"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "placeholder",
    [
        "REPLACE_ME_WITH_32_RANDOM_CHARACTERS",  # what deploy/k8s/secret.yaml shipped
        "replace_me_with_a_real_secret_value",
        "changeme-changeme-changeme-123",
        "ExampleWebhookSecretValue0123",
        "secret-secret-secret-secret-1",
        "Password1234567890123456789",
    ],
)
def test_placeholder_secret_is_refused(placeholder: str) -> None:
    """A secret that is a known placeholder is refused, and the message does not quote it."""
    msg = error_of(block(secrets=[EnvValue(placeholder)]))
    assert "webhook.sources.crm.secrets" in msg and "placeholder" in msg
    assert placeholder not in msg and placeholder[:12] not in msg


def test_secret_of_24_characters_is_accepted() -> None:
    """The minimum length is 24: a random 24-character secret passes."""
    cfg = parse_webhook_config(block(secrets=[EnvValue("k3Q9v_T2mZ8xW1pL6nR4sB0y")]))
    assert len(cfg.sources["crm"].secrets[0].get_secret_value()) == 24


# --------------------------------------------------------------------------------- public_urls
def test_public_urls_name_the_source_a_delivery_url_belongs_to() -> None:
    """``public_urls`` (a string or a list) say which source a delivery log URL is: scheme and host in
    any case, the default port spelled or not, a trailing slash, a query are the same URL; others are not."""
    cfg = parse_webhook_config(block(public_urls="https://Hooks.Example.com/hooks/crm"))
    assert cfg.sources["crm"].public_urls == ["https://Hooks.Example.com/hooks/crm"]
    for same in ("https://hooks.example.com/hooks/crm", "HTTPS://hooks.example.com:443/hooks/crm/",
                 "https://hooks.example.com/hooks/crm?from=instantly"):  # fmt: skip
        assert cfg.source_for_url(same) == "crm", same
    others = ("http://hooks.example.com/hooks/crm", "https://hooks.example.com:8443/hooks/crm",
              "https://hooks.example.com/hooks/crm2", "https://evil.example/hooks/crm", "not a url", "")  # fmt: skip
    for other in others:
        assert cfg.source_for_url(other) is None, other
    assert parse_webhook_config(block()).source_for_url("https://hooks.example.com/hooks/crm") is None


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        (["ftp://hooks.example.com/x"], "must be an http(s) URL"),
        (["https://user:pw@hooks.example.com/x"], "must not carry credentials"),
        (["https://hooks.example.com/x?token=abc"], "must not carry a query string"),
        (["https://hooks.example.com/x", "https://HOOKS.example.com/x/"], "a URL is listed twice"),
    ],
)
def test_bad_public_urls_are_refused_naming_the_key(urls: list[str], expected: str) -> None:
    """Each bad URL is a config error naming ``webhook.sources.<name>.public_urls`` and never quoting it."""
    err = error_of(block(public_urls=urls))
    assert "webhook.sources.crm.public_urls" in err and expected in err
    assert "pw@" not in err and "token=abc" not in err


def test_a_public_url_belongs_to_one_source() -> None:
    """Two sources cannot claim the same URL: the error names the second source's key and the first source."""
    b = block(public_urls=["https://hooks.example.com/hooks/crm"])
    b["sources"]["other"] = {"workspace_id": WS, "secrets": [EnvValue(SECRET_B)],
                             "public_urls": ["https://hooks.example.com/hooks/crm/"]}  # fmt: skip
    err = error_of(b)
    assert "webhook.sources.other.public_urls.0" in err and "'crm'" in err


def test_unknown_source_key_names_every_key_of_a_source() -> None:
    """A misspelt generic key is offered the real one; the allowed list is a source's keys with its
    kind's options (it named the options only: 'allowed: drop_fields, keep_lead_fields')."""
    lines = error_of(block(secret=[EnvValue(SECRET_B)], header="X-A")).splitlines()
    assert "webhook.sources.crm.secret: unknown key (did you mean 'secrets'?)" in lines
    assert "webhook.sources.crm.header: unknown key (did you mean 'header_name'?)" in lines
    [other] = error_of(block(colour="red")).splitlines()
    assert other.startswith("webhook.sources.crm.colour: unknown key (allowed: ")
    for key in ("secrets", "header_name", "workspace_id", "path", "kind", "drop_fields", "keep_lead_fields"):
        assert key in other
