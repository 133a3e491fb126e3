"""Config: YAML → frozen models; env/file secrets; every bad input is one clear line naming the key path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.instantly.config import workspaces
from pipeline.config.loader import load_config, parse_config
from pipeline.config.model import PipelineConfig, SqliteBusConfig
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {"INSTANTLY_API_KEY": "canary-key-0000", "HOOK_SECRET_A": "hook-secret-canary-0123456789"}


def _err(text: str, env: dict[str, str] | None = None, base: Path | None = None) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, env=ENV if env is None else env, base_dir=base)
    return str(ei.value)


def test_defaults_are_the_embedded_bus() -> None:
    """An empty file is valid and selects the embedded SQLite bus."""
    cfg = parse_config("", env={})
    assert isinstance(cfg.bus, SqliteBusConfig)
    assert workspaces(cfg) == {}


def test_env_secret_resolved_and_hidden() -> None:
    """A ${ENV} secret is resolved and never shown by repr/str."""
    cfg = parse_config("workspaces:\n  acme:\n    api_key: ${INSTANTLY_API_KEY}\n", env=ENV)
    key = workspaces(cfg)["acme"].api_key
    assert key.get_secret_value() == "canary-key-0000"
    assert "canary" not in repr(cfg) and "canary" not in str(cfg)


def test_file_secret(tmp_path: Path) -> None:
    """A <field>_file path is read (trailing newline stripped), relative to the config file."""
    (tmp_path / "key").write_text("file-key-1234\n")
    (tmp_path / "c.yaml").write_text("workspaces:\n  acme:\n    api_key_file: key\n")
    cfg = load_config(tmp_path / "c.yaml", env={})
    assert workspaces(cfg)["acme"].api_key.get_secret_value() == "file-key-1234"


def test_literal_secret_refused() -> None:
    """A secret written literally in the file is refused, and the error does not echo it."""
    msg = _err("workspaces:\n  acme:\n    api_key: live_abcdef123456\n")
    assert "workspaces.acme.api_key" in msg and "literal secret" in msg
    assert "live_abcdef123456" not in msg


def test_missing_env_var() -> None:
    """A missing environment variable names the key path and the variable."""
    msg = _err("workspaces:\n  acme:\n    api_key: ${NOPE_KEY}\n", env={})
    assert msg == "workspaces.acme.api_key: environment variable NOPE_KEY is not set"


def test_env_default_and_escape() -> None:
    """${VAR:-default} falls back, and $${ stays literal."""
    cfg = parse_config(
        "bus:\n  type: sqlite\n  path: ${DIR:-/tmp/x}/bus.db\n"
        "workspaces:\n  a:\n    api_key: ${K}\n    name: $${NAME}\n",
        env={"K": "abcd1234"},
    )
    assert isinstance(cfg.bus, SqliteBusConfig)
    assert str(cfg.bus.path) == "/tmp/x/bus.db"
    assert workspaces(cfg)["a"].name == "${NAME}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus:\n  type: sqlite\n  pathh: x\n", "bus.pathh: unknown key (did you mean 'path'?)"),
        (
            "workspaces:\n  acme:\n    api_key: ${INSTANTLY_API_KEY}\n    poll_interval_secs: soon\n",
            "workspaces.acme.poll_interval_secs: Input should be a valid number",
        ),
        ("workspaces:\n  acme:\n    name: x\n", "workspaces.acme.api_key: required key is missing"),
        ("bus:\n  type: rabbit\n", "bus"),
        ("nonsense: 1\n", "nonsense: unknown key"),
        (
            "workspaces:\n  acme:\n    api_key: ${INSTANTLY_API_KEY}\n    budget:\n      requests_per_second: 500\n",
            "workspaces.acme.budget.requests_per_second: Input should be less than or equal to 100",
        ),
        ("sinks:\n  s1:\n    path: x\n", "sinks.s1.type: required key is missing"),
    ],
)
def test_bad_values_name_the_path(text: str, expected: str) -> None:
    """Unknown keys, wrong types, missing keys and out-of-range values name the key path."""
    assert expected in _err(text)


def test_malformed_yaml_one_line() -> None:
    """Malformed YAML gives one line with the position."""
    msg = _err("bus: [unclosed\n")
    assert msg.startswith("config is not valid YAML at line") and "\n" not in msg


@pytest.mark.parametrize(
    "text",
    [
        "sinks:\n  s: {type: splunk_hec, url: https://splunk:8088, token: ${HEC_TOKEN}}\n",
        "webhook:\n  sources:\n    crm: {workspace_id: w, header_name: X-S, secrets: [${HOOK_SECRET}]}\n",
    ],
)
def test_an_unquoted_reference_in_a_flow_block_says_to_quote_it(text: str) -> None:
    """``{…, token: ${HEC_TOKEN}}`` is not YAML (``{`` opens a mapping inside the flow block); the error
    was ``expected ',' or '}', but got '{'``, which does not say that quoting the reference fixes it."""
    msg = _err(text)
    assert msg.startswith("config is not valid YAML at line") and "\n" not in msg
    assert 'quote the reference: "${' in msg, msg


@pytest.mark.parametrize(
    "value", ["...", "REPLACE_ME", "replace-me-with-the-key", "<your Instantly API key>", "changeme"]
)
def test_a_placeholder_api_key_is_refused_without_echoing_it(value: str, tmp_path: Path) -> None:
    """README's ``export INSTANTLY_API_KEY=...`` and the k8s example's ``REPLACE_ME`` passed ``config
    validate`` ("ok") and every poll then got 401; the example even said "refused at start"."""
    by_env = _err("workspaces:\n  acme: {api_key: '${K}'}\n", env={"K": value})
    (tmp_path / "k").write_text(value + "\n")
    by_file = _err("workspaces:\n  acme: {api_key_file: k}\n", base=tmp_path)
    for msg in (by_env, by_file):
        assert msg.startswith("workspaces.acme.api_key: is a placeholder") and "\n" not in msg, msg
        assert value not in msg.replace("`...`", "").replace("REPLACE_ME,", "")
    parse_config("workspaces:\n  acme: {api_key: '${K}'}\n", env={"K": "MDFhMjJmMjAtNjUxZTpHSUZBZUd0"})


def test_a_repeated_key_is_an_error_naming_both_lines() -> None:
    """YAML requires a mapping's keys to be unique; PyYAML keeps the last one silently. A second
    ``sinks:`` pasted below README's config (every sinks.md example starts with one) dropped the
    first block's sinks, and ``config validate`` said ``ok``."""
    text = (
        "bus: {type: sqlite, path: data/bus.db}\n"
        "sinks:\n  archive: {type: jsonl, path: data/events.jsonl}\n"
        "sinks:\n  copy: {type: jsonl, path: data/copy.jsonl}\n"
    )
    msg = _err(text)
    assert msg == (
        "config is not valid YAML at line 4, column 1: key 'sinks' repeated (first at line 2); "
        "the later one would silently replace it: merge them"
    ), msg
    nested = _err("sinks:\n  a: {type: jsonl, path: a.jsonl}\n  a: {type: jsonl, path: b.jsonl}\n")
    assert "line 3, column 3: key 'a' repeated (first at line 2)" in nested
    # Merge keys and the same key in different mappings are not repeats.
    parse_config("sinks:\n  a: &j {type: jsonl, path: a.jsonl}\n  b: {<<: *j, path: b.jsonl}\n", env=ENV)
    parse_config("sinks:\n  a: {type: jsonl, path: a.jsonl}\n  b: {type: jsonl, path: a2.jsonl}\n", env=ENV)


def test_a_tab_in_the_indentation_says_so() -> None:
    """YAML indents with spaces; the error was ``found character '\\t' that cannot start any token``."""
    msg = _err("workspaces:\n\tacme:\n\t\tapi_key: ${INSTANTLY_API_KEY}\n")
    assert msg.startswith("config is not valid YAML at line 2, column 1:") and "indent with spaces, not tabs" in msg


def test_yaml_nested_thousands_deep_is_one_line_not_a_crash() -> None:
    """PyYAML composes nested collections recursively: 3,000 ``[`` ended ``config validate`` in a
    RecursionError traceback."""
    msg = _err("bus: " + "[" * 3000 + "]" * 3000 + "\n")
    assert msg == "config is not valid YAML: collections nested too deep", msg


def test_an_impossible_date_is_a_value_not_a_crash() -> None:
    """PyYAML builds ``2024-13-45`` as a date and raises ValueError, which is no YAMLError: ``config
    validate`` printed a traceback. The text stays a string and the key's own check names it."""
    msg = _err("bus: {type: sqlite, path: x.db}\nworkspaces: {}\nwhen: 2024-13-45\n")
    assert "when" in msg and "\n" not in msg and "Traceback" not in msg, msg


def test_unreadable_and_missing_secret_files(tmp_path: Path) -> None:
    """Missing, unreadable, empty and directory secret files each get a clear error."""
    assert "does not exist" in _err("workspaces:\n  a:\n    api_key_file: nope\n", base=tmp_path)
    (tmp_path / "empty").write_text("\n")
    assert "is empty" in _err("workspaces:\n  a:\n    api_key_file: empty\n", base=tmp_path)
    assert "is a directory" in _err(f"workspaces:\n  a:\n    api_key_file: {tmp_path}\n", base=tmp_path)
    locked = tmp_path / "locked"
    locked.write_text("k")
    locked.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        assert "not readable" in _err("workspaces:\n  a:\n    api_key_file: locked\n", base=tmp_path)


def test_both_value_and_file_refused(tmp_path: Path) -> None:
    """Giving both a secret and its _file is an error."""
    msg = _err("workspaces:\n  a:\n    api_key: ${INSTANTLY_API_KEY}\n    api_key_file: k\n", base=tmp_path)
    assert "either api_key or api_key_file" in msg


def test_models_are_frozen() -> None:
    """Validated config cannot be mutated at run time."""
    cfg = parse_config("", env={})
    with pytest.raises(ValidationError):
        cfg.service.port = 1  # type: ignore[misc]


def test_example_config_is_valid(tmp_path: Path) -> None:
    """deploy/config/example.yaml validates (its secret file is provided)."""
    text = (ROOT / "deploy/config/example.yaml").read_text()
    secret = tmp_path / "client_b"
    secret.write_text("kkkk-2222\n")
    text = text.replace("/run/secrets/instantly_client_b", str(secret))
    cfg = parse_config(text, env=ENV)
    assert isinstance(cfg, PipelineConfig)
    assert set(workspaces(cfg)) == {"acme", "client-b"}
    assert set(cfg.sinks) and all(s.type for s in cfg.sinks.values())


def _set_apart_from_defaults(model: Any, example: Mapping[str, Any], where: str) -> list[str]:
    """The options ``example`` sets to something other than ``model``'s field default (nested models too)."""
    from pydantic import BaseModel

    out = []
    for key, value in example.items():
        field = type(model).model_fields.get(key)
        if field is None or field.is_required():
            continue
        current = getattr(model, key)
        if isinstance(current, BaseModel) and isinstance(value, Mapping):
            out += _set_apart_from_defaults(current, value, f"{where}.{key}")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel) or current == default or (value in ([], None) and not default):
            continue
        out.append(f"{where}.{key}: {value!r} (default {default!r})")
    return out


def test_example_config_shows_the_defaults_it_does_not_explain(tmp_path: Path) -> None:
    """A newcomer copies deploy/config/example.yaml whole; the values it sets are the defaults
    unless its comment says why. It set ``webhook.max_body_bytes: 1048576`` after the default
    became 16 MiB because a long reply thread got 413 on every retry and Instantly then disables
    the webhook: the copied example brought that failure back."""
    import yaml

    text = (ROOT / "deploy/config/example.yaml").read_text()
    secret = tmp_path / "client_b"
    secret.write_text("kkkk-2222\n")
    cfg = parse_config(text.replace("/run/secrets/instantly_client_b", str(secret)), env=ENV)
    doc = yaml.safe_load(text)
    assert cfg.webhook is not None
    found = _set_apart_from_defaults(cfg.bus, doc["bus"], "bus")
    found += _set_apart_from_defaults(cfg.webhook, doc["webhook"], "webhook")
    found += _set_apart_from_defaults(cfg.service, doc["service"], "service")
    found += _set_apart_from_defaults(workspaces(cfg)["acme"], doc["workspaces"]["acme"], "workspaces.acme")
    deliberate = {"workspaces.acme.name: 'Acme Outreach' (default None)"}  # an example value, not a setting
    assert sorted(set(found) - deliberate) == []


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"protocol": "SASL_PLAINTEXT", "username": "alice"}, "protocol SASL_PLAINTEXT needs password"),
        ({"protocol": "SASL_SSL"}, "protocol SASL_SSL needs username and password"),
        ({"protocol": "SSL", "sasl_mechanism": "SCRAM-SHA-512"}, "sasl_mechanism SCRAM-SHA-512 needs protocol SASL_"),
    ],
)
def test_kafka_sasl_settings_are_checked_at_validate(security: dict[str, str], message: str) -> None:
    """SASL without credentials passed `config validate` and then crashed every command inside aiokafka
    (AttributeError: 'NoneType' object has no attribute 'encode'); a mechanism without SASL was ignored."""
    from pipeline.config.model import KafkaSecurityConfig

    with pytest.raises(ValidationError, match=message):
        KafkaSecurityConfig.model_validate(security)
    from pydantic import SecretStr

    ok = KafkaSecurityConfig.model_validate({"protocol": "SASL_SSL", "username": "u", "password": SecretStr("pw")})
    assert ok.sasl_mechanism is None  # SCRAM-SHA-512 is used when none is named


def test_bus_type_defaults_to_sqlite() -> None:
    """``bus: {path: x}`` is the embedded bus, as documented (it failed: "bus: needs a 'type'"); a
    block with Kafka keys and no type is not guessed."""
    cfg = parse_config("bus: {path: x.db, partitions: 2}\n", env={})
    assert isinstance(cfg.bus, SqliteBusConfig)
    assert (cfg.bus.path.name, cfg.bus.partitions) == ("x.db", 2)
    assert _err("bus: {pathh: x.db}\n") == "bus.pathh: unknown key (did you mean 'path'?)"
    assert _err("bus: {bootstrap_servers: [k:9092]}\n") == "bus: needs a 'type'"
