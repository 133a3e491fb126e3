"""A missing environment variable or secret file does not hide the file's other problems: the
loader reports every problem in one pass (docs/configuration.md, "All problems are reported at once")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main
from pipeline.config.loader import load_config, parse_config
from pipeline.errors import ConfigError

LITERAL = "live_literal_token_9876543210"
TEXT = f"""
workspaces:
  acme:
    api_key: ${{INSTANTLY_API_KEY}}
    poll_intervall_secs: 5
  beta:
    api_key: {LITERAL}
    request_timeout_secs: soon
"""


def _lines(text: str, env: dict[str, str], base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, env=env, base_dir=base)
    return str(ei.value).splitlines()


def test_missing_variable_is_reported_with_the_other_problems() -> None:
    """The unset variable, the typo'd key, the bad number and the literal token: all in one error."""
    lines = _lines(TEXT, env={})
    assert lines[0] == "workspaces.acme.api_key: environment variable INSTANTLY_API_KEY is not set"
    assert any(line.startswith("workspaces.acme.poll_intervall_secs: unknown key") for line in lines)
    assert any(line.startswith("workspaces.beta.request_timeout_secs:") for line in lines)
    assert any(line.startswith("workspaces.beta.api_key: a literal secret") for line in lines)
    assert len(lines) == 4
    assert all(LITERAL not in line for line in lines)


def test_two_unset_variables_and_a_missing_secret_file_in_one_pass(tmp_path: Path) -> None:
    """Each reference that cannot be read is its own line, and the placeholder left in its place
    is not reported again (no 'required key is missing', no 'literal secret')."""
    text = (
        "workspaces:\n  a:\n    api_key: ${A_KEY}\n  b:\n    api_key: ${B_KEY}\n"
        "  c:\n    api_key_file: missing.key\n"
        "service:\n  port: ${PORT}\n"
    )
    lines = _lines(text, env={}, base=tmp_path)
    assert lines == [
        "workspaces.a.api_key: environment variable A_KEY is not set",
        "workspaces.b.api_key: environment variable B_KEY is not set",
        f"workspaces.c.api_key_file: secret file {tmp_path / 'missing.key'} does not exist",
        "service.port: environment variable PORT is not set",
    ]


def test_every_unset_variable_inside_one_string_is_named() -> None:
    """``${A}:${B}`` with both unset names both."""
    lines = _lines("bus:\n  type: sqlite\n  path: ${DIR_A}/${DIR_B}/bus.db\n", env={})
    assert lines == [
        "bus.path: environment variable DIR_A is not set",
        "bus.path: environment variable DIR_B is not set",
    ]


def test_secret_file_given_both_ways_and_a_missing_one_together(tmp_path: Path) -> None:
    """'give either X or X_file' no longer stops the load before the other problems."""
    text = "workspaces:\n  a:\n    api_key: ${K}\n    api_key_file: k\n  b:\n    api_key_file: ${KEY_PATH}\n"
    lines = _lines(text, env={"K": "abcd1234abcd"}, base=tmp_path)
    assert lines == [
        "workspaces.a.api_key_file: give either api_key or api_key_file, not both",
        "workspaces.b.api_key_file: environment variable KEY_PATH is not set",
    ]


def test_unset_vault_token_skips_vault_and_keeps_the_other_problems() -> None:
    """With the Vault token's variable unset, Vault is not contacted (no misleading 403), and the
    reference's syntax and the rest of the file are still checked."""
    text = (
        "secret_managers:\n  vault:\n    url: https://vault.example:8200\n    token: ${VAULT_TOKEN}\n"
        "workspaces:\n  a:\n    api_key_vault: not-a-reference\n  b:\n    api_key_vault: secret/x#k\n"
        "    poll_interval_secs: soon\n"
    )
    lines = _lines(text, env={})
    assert lines[0] == "secret_managers.vault.token: environment variable VAULT_TOKEN is not set"
    assert lines[1].startswith("workspaces.a.api_key_vault: ")
    assert lines[2].startswith("workspaces.b.poll_interval_secs: ")
    assert len(lines) == 3


def test_config_validate_json_lists_them_all(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``config validate --format json`` lists every problem, the missing variables included."""
    monkeypatch.delenv("INSTANTLY_API_KEY", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(TEXT)
    assert main(["config", "validate", str(path), "--format", "json"]) == Exit.USAGE
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and len(doc["errors"]) == 4
    assert doc["errors"][0] == "workspaces.acme.api_key: environment variable INSTANTLY_API_KEY is not set"
    assert LITERAL not in json.dumps(doc)


def test_a_variable_set_later_is_read_normally(tmp_path: Path) -> None:
    """The one-pass collection changes nothing for a valid file."""
    path = tmp_path / "c.yaml"
    path.write_text("workspaces:\n  acme:\n    api_key: ${INSTANTLY_API_KEY}\n")
    cfg = load_config(path, env={"INSTANTLY_API_KEY": "abcd1234abcd"})
    assert cfg.sections["workspaces"].root["acme"].api_key.get_secret_value() == "abcd1234abcd"
