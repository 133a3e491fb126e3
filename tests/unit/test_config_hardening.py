"""Config and file hardening: no default for a secret, bounded YAML aliases, TLS paths, insecure
transports refused unless allowed (then warned), the JSONL sink's file modes and symlink refusal."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.jsonl import JsonlConfig, JsonlSink
from pipeline.config.base import EnvValue
from pipeline.config.loader import MAX_NODES, PATH_FIELDS, parse_config
from pipeline.config.vault import vault_settings
from pipeline.delivery.http import HttpSinkConfig
from pipeline.delivery.registry import build_sink, validate_sink
from pipeline.errors import ConfigError, SinkError
from tests.fakes import make_event
from tests.fakes.rsyslog import make_certs

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_secret_with_a_default_is_refused_with_a_clear_message() -> None:
    text = "workspaces:\n  acme:\n    api_key: ${UNSET_KEY:-literal-secret-value}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, env={})
    assert "default value" in str(err.value) and "literal-secret-value" not in str(err.value)
    with pytest.raises(ConfigError, match="default value"):
        parse_config(text, env={"UNSET_KEY": "set-anyway-0123456789"})
    assert parse_config("workspaces:\n  acme:\n    api_key: ${KEY}\n", env={"KEY": "k" * 40}).sections
    assert parse_config("service: {host: '${HOST:-127.0.0.1}'}\n", env={}).service.host == "127.0.0.1"


def test_a_yaml_alias_bomb_fails_fast_with_a_config_error() -> None:
    assert len(BOMB.encode()) < 400
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} nodes"):
        parse_config(BOMB)
    assert time.perf_counter() - t < 5
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_config("a: &a [*a]\n")
    cfg = parse_config("service: &svc {host: 127.0.0.1, port: 9000}\n", env={})  # ordinary anchors still load
    assert cfg.service.port == 9000


def test_tls_path_fields_are_paths_not_secret_files(tmp_path: Path) -> None:
    """ca_file / client_cert_file / client_key_file are kept as paths (checked and loaded as PEM at load,
    tests/unit/test_config_tls_files.py; never read as a secret)."""
    assert {"ca_file", "client_cert_file", "client_key_file"} == PATH_FIELDS
    block = {"type": "splunk_hec", "url": "https://splunk.example:8088", "token": EnvValue("t" * 20),
             "ca_file": "/etc/ssl/private-ca.pem", "client_cert_file": "/etc/ssl/me.pem",
             "client_key_file": "/etc/ssl/me.key"}  # fmt: skip
    _, cfg = validate_sink("hec", block)
    assert isinstance(cfg, HttpSinkConfig)
    assert str(cfg.ca_file) == "/etc/ssl/private-ca.pem" and str(cfg.client_key_file) == "/etc/ssl/me.key"
    doc = (
        "sinks:\n  hec:\n    type: splunk_hec\n    url: https://splunk.example:8088\n"
        "    token_file: tok\n    ca_file: ca.pem\n"
    )
    (tmp_path / "tok").write_text("hec-token-0000\n")
    (tmp_path / "ca.pem").write_bytes(make_certs(tmp_path / "pki")[0].read_bytes())
    loaded = parse_config(doc, base_dir=tmp_path)
    hec = loaded.sinks["hec"]
    assert isinstance(hec, HttpSinkConfig)
    assert hec.ca_file == tmp_path / "ca.pem"  # a path, anchored at the config's directory
    assert hec.token.get_secret_value() == "hec-token-0000"  # type: ignore[attr-defined]
    vault = vault_settings({"vault": {"url": "https://vault.example:8200", "token": EnvValue("v" * 20),
                                      "ca_file": "/etc/ssl/vault-ca.pem"}})  # fmt: skip
    assert str(vault.ca_file) == "/etc/ssl/vault-ca.pem"


INSECURE: list[tuple[str, dict[str, Any]]] = [
    ("hec over http", {"type": "splunk_hec", "url": "http://splunk.example:8088", "token": EnvValue("t" * 20)}),
    ("hec tls_verify off", {"type": "splunk_hec", "url": "https://splunk.example", "token": EnvValue("t" * 20),
                            "tls_verify": False}),
    ("es with auth over http", {"type": "elasticsearch", "url": "http://es.example:9200",
                                "api_key": EnvValue("k" * 20)}),
    ("webhook over http", {"type": "webhook", "url": "http://hooks.example/x",
                           "secret": EnvValue("whsec_" + "c2VjcmV0" * 4)}),
    ("pagerduty custom http", {"type": "pagerduty", "url": "http://pd.example", "routing_key": EnvValue("r" * 32)}),
    ("slack over http", {"type": "slack", "webhook_url": EnvValue("http://hooks.slack.example/services/T/B/x")}),
    ("syslog without tls", {"type": "syslog", "host": "siem.example", "port": 514}),
    ("syslog tls unverified", {"type": "syslog", "host": "siem.example", "port": 6514, "tls": {"verify": False}}),
]  # fmt: skip


@pytest.mark.parametrize(("what", "block"), INSECURE, ids=[w for w, _ in INSECURE])
def test_insecure_transports_are_refused_unless_allowed_then_warned(
    what: str, block: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"insecure transport refused.*allow_insecure: true"):
        validate_sink("s", block)
    caplog.set_level(logging.WARNING)
    build_sink("s", {**block, "allow_insecure": True})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "INSECURE TRANSPORT" in r.getMessage()]
    assert warnings, what


def test_secure_and_loopback_transports_pass_silently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    build_sink("a", {"type": "splunk_hec", "url": "https://splunk.example:8088", "token": EnvValue("t" * 20)})
    build_sink("b", {"type": "splunk_hec", "url": "http://127.0.0.1:8088", "token": EnvValue("t" * 20)})
    build_sink("c", {"type": "elasticsearch", "url": "http://es.example:9200"})  # no credential on the wire
    build_sink("d", {"type": "syslog", "host": "localhost", "port": 514})
    assert not [r for r in caplog.records if "INSECURE" in r.getMessage()]


def test_vault_over_http_is_refused_unless_allowed() -> None:
    block = {"url": "http://vault.example:8200", "token": EnvValue("v" * 20)}
    with pytest.raises(ConfigError, match="insecure transport refused"):
        vault_settings({"vault": block})
    assert vault_settings({"vault": {**block, "allow_insecure": True}}).allow_insecure


async def _write(path: Path) -> None:
    from pipeline.bus.base import EVENTS_TOPIC, Record
    from pipeline.delivery.batches import decode

    d = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"k", make_event(1).to_json()))
    assert not isinstance(d, str)
    async with JsonlSink("file", JsonlConfig.model_validate({"type": "jsonl", "path": str(path)})) as sink:
        await sink.send([d])


async def test_jsonl_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "events.jsonl"
    old = os.umask(0o022)
    try:
        await _write(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loose = tmp_path / "loose.jsonl"
    loose.write_text("")
    loose.chmod(0o644)
    await _write(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


async def test_jsonl_refuses_a_symlink_at_its_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(SinkError, match="symbolic link"):
        await _write(link)
    assert target.read_text() == "keep me\n"
