"""Sink registry: entry points, extra registrations, config validation errors that name the path."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.elasticsearch import ElasticsearchSink
from connectors.jsonl import JsonlSink
from connectors.splunk_hec import SplunkHecSink
from connectors.webhook_sink import SignedWebhookSink
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.delivery import registry
from pipeline.delivery.base import Sink, SinkConfig
from pipeline.errors import ConfigError

CONNECTORS: dict[str, type[Any]] = {
    "splunk_hec": SplunkHecSink,
    "elasticsearch": ElasticsearchSink,
    "webhook": SignedWebhookSink,
}
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.fixture(autouse=True)
def connectors() -> Iterator[None]:
    """Register the connector sinks (their entry points may not be installed yet)."""
    for name, cls in CONNECTORS.items():
        registry.register_sink(name, cls)
    yield
    for name in CONNECTORS:
        registry.unregister_sink(name)


def test_every_entry_point_loads_and_is_a_sink() -> None:
    """Each declared entry point imports, has a SinkConfig 'Config' and builds a Sink."""
    from importlib.metadata import entry_points

    eps = list(entry_points(group=registry.GROUP))
    assert "jsonl" in {ep.name for ep in eps}
    for ep in eps:
        cls = ep.load()
        assert issubclass(cls.Config, SinkConfig)


def test_jsonl_comes_from_its_entry_point(tmp_path: Path) -> None:
    """The jsonl type resolves through importlib.metadata, not a hard-coded import."""
    sink = registry.build_sink("file", {"type": "jsonl", "path": str(tmp_path / "out.jsonl")})
    assert isinstance(sink, JsonlSink)
    assert isinstance(sink, Sink)
    assert sink.sink_id == "file"


@pytest.mark.parametrize(
    ("type_name", "block"),
    [
        ("splunk_hec", {"url": "https://splunk:8088", "token": EnvValue("t0k")}),
        ("elasticsearch", {"url": "https://es:9200", "api_key": EnvValue("k3y")}),
        ("webhook", {"url": "https://hooks.example.com/in", "secret": EnvValue(WHSEC)}),
    ],
)
def test_connector_sinks_build_and_satisfy_the_protocol(type_name: str, block: dict[str, Any]) -> None:
    """Each connector sink validates its block and is a runtime Sink."""
    sink: object = registry.build_sink("x", {"type": type_name, **block})
    assert isinstance(sink, Sink)
    assert isinstance(sink, CONNECTORS[type_name])


def test_unknown_type_lists_known_types() -> None:
    """An unknown type is a ConfigError naming the sink and every known type."""
    with pytest.raises(ConfigError) as info:
        registry.build_sink("siem", {"type": "splunk"})
    msg = str(info.value)
    assert msg.startswith("sinks.siem.type: unknown sink type 'splunk'")
    for name in ("jsonl", "splunk_hec", "elasticsearch", "webhook"):
        assert name in msg


def test_missing_type_is_reported() -> None:
    """A block without a type names the path."""
    with pytest.raises(ConfigError, match=r"sinks\.siem\.type: required"):
        registry.build_sink("siem", {"url": "x"})


def test_invalid_block_names_the_key_path() -> None:
    """Unknown keys and bad values are reported as sinks.<id>.<key>."""
    with pytest.raises(ConfigError) as info:
        registry.build_sink("siem", {"type": "splunk_hec", "url": "ftp://x", "tokn": "a"})
    msg = str(info.value)
    assert "sinks.siem.tokn: unknown key (did you mean 'token'?)" in msg
    assert "sinks.siem.url:" in msg
    assert "sinks.siem.token: required key is missing" in msg


def test_literal_secret_is_refused_without_echoing_it() -> None:
    """A token written literally in the file is refused and the message does not repeat it."""
    with pytest.raises(ConfigError) as info:
        registry.build_sink("siem", {"type": "splunk_hec", "url": "https://s:8088", "token": "LITERAL-CANARY"})
    assert "sinks.siem.token" in str(info.value) and "LITERAL-CANARY" not in str(info.value)


def test_blocks_from_parse_config_build(tmp_path: Path) -> None:
    """Blocks from a parsed YAML file (with ${ENV} secrets) build every sink type."""
    text = f"""
sinks:
  splunk: {{type: splunk_hec, url: "https://splunk:8088", token: "${{HEC_TOKEN}}", index: audit, ack: true}}
  elastic: {{type: elasticsearch, url: "https://es:9200", index: "audit-{{yyyy.MM.dd}}", username: elastic,
             password: "${{ES_PASSWORD}}"}}
  hooks: {{type: webhook, url: "https://soar.example.com/in", secret: "${{WH_SECRET}}", batch_as_array: true}}
  file: {{type: jsonl, path: "{tmp_path / "audit.jsonl"}", rotate_bytes: 10485760, keep: 3}}
"""
    cfg = parse_config(text, env={"HEC_TOKEN": "a", "ES_PASSWORD": "b", "WH_SECRET": WHSEC})
    built = {sid: registry.build_sink(sid, block) for sid, block in cfg.sinks.items()}
    assert {type(s).__name__ for s in built.values()} == {
        "SplunkHecSink", "ElasticsearchSink", "SignedWebhookSink", "JsonlSink"}  # fmt: skip


def test_register_rejects_non_sinks() -> None:
    """Only classes with a SinkConfig Config and the sink methods can be registered."""
    with pytest.raises(ConfigError):
        registry.register_sink("bad", object)


def test_validate_sink_returns_the_model() -> None:
    """validate_sink gives the class and the frozen config model."""
    cls, config = registry.validate_sink("s", {"type": "jsonl", "batch_max_records": 10})
    assert cls is JsonlSink and config.batch_max_records == 10 and config.type == "jsonl"


def test_elasticsearch_auth_options_are_exclusive() -> None:
    """api_key and username/password cannot both be given; username needs a password."""
    with pytest.raises(ConfigError, match="either api_key or username"):
        registry.build_sink("es", {"type": "elasticsearch", "url": "https://es:9200", "api_key": EnvValue("k"),
                                   "username": "u", "password": EnvValue("p")})  # fmt: skip
    with pytest.raises(ConfigError, match="go together"):
        registry.build_sink("es", {"type": "elasticsearch", "url": "https://es:9200", "username": "u"})


@pytest.mark.parametrize("index", ["Audit", "audit-{yyyy.MM.dd", "audit-{yyyy.QQ}", "-x", "a b"])
def test_elasticsearch_rejects_bad_index_names(index: str) -> None:
    """Index names must be lowercase and date parts may only use yyyy yy MM dd HH."""
    with pytest.raises(ConfigError, match=r"sinks\.es\.index"):
        registry.build_sink("es", {"type": "elasticsearch", "url": "https://es:9200", "index": index})


@pytest.mark.parametrize("secret", ["nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_webhook_secret_format_is_checked(secret: str) -> None:
    """The webhook secret must be whsec_ + base64 of at least 16 bytes; the error never shows it."""
    with pytest.raises(ConfigError) as info:
        registry.build_sink("h", {"type": "webhook", "url": "https://x/in", "secret": EnvValue(secret)})
    assert "sinks.h.secret" in str(info.value) and secret not in str(info.value)
