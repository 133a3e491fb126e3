"""Rule lifecycle: metadata, the version lock, in-file and beside-the-rule cases, the test minimum."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.rules import cli
from pipeline.rules.config import parse_rules_config

RULE: dict[str, object] = {
    "id": "custom.ip_login",
    "title": "Login from a watched IP",
    "severity": "medium",
    "status": "test",
    "author": "sec team",
    "references": ["https://example.org/runbook"],
    "falsepositives": ["VPN exits"],
    "related": [{"id": "auth.login_new_ip", "type": "similar"}],
    "types": ["audit.*"],
    "detection": {"sel": {"actor.ip": "203.0.113.9"}},
}
POS: dict[str, object] = {
    "name": "watched IP alerts",
    "events": [{"type": "audit.user_login", "actor": {"ip": "203.0.113.9"}}],
    "expect": [{"severity": "medium"}],
}
NEG: dict[str, object] = {
    "name": "other IP is quiet",
    "events": [{"type": "audit.user_login", "actor": {"ip": "198.51.100.1"}}],
    "expect": [],
}


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="instantly-audit")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _user_rules(tmp_path: Path, rule: dict[str, object], cases: list[dict[str, object]] | None = None) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "login.yaml").write_text(yaml.safe_dump(rule))
    if cases is not None:
        (d / "login.cases.yaml").write_text(yaml.safe_dump({"rule": rule["id"], "cases": cases}))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"files": ["rules/"]}}))
    return cfg


def test_yaml_rules_carry_lifecycle_metadata(tmp_path: Path) -> None:
    """status, author, references, falsepositives and related reach RuleMeta."""
    rs = parse_rules_config({"custom": [RULE]})
    m = rs.get("custom.ip_login")
    assert m is not None
    meta = m.meta
    assert (meta.status, meta.author, meta.references, meta.falsepositives, meta.related) == (
        "test",
        "sec team",
        ("https://example.org/runbook",),
        ("VPN exits",),
        ("auth.login_new_ip",),
    )


def test_an_unknown_status_names_its_path() -> None:
    """A status outside the four names is a config error naming the key."""
    with pytest.raises(ConfigError, match=r"rules.custom.0 \(custom.ip_login\).status"):
        parse_rules_config({"custom": [dict(RULE, status="beta")]})


def test_the_shipped_pack_matches_its_lock(capsys: pytest.CaptureFixture[str]) -> None:
    """`rules lock --check` passes for the built-in pack (CI fails when a rule changes without a bump)."""
    assert _run("rules", "lock", "--check") == 0, capsys.readouterr().err


def test_a_changed_rule_needs_a_version_bump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Lock, change the rule: --check and lock both fail; bump the version: lock and --check pass."""
    cfg = _user_rules(tmp_path, RULE)
    lock = tmp_path / "rules.lock.json"
    assert _run("rules", "lock", "--rules", str(cfg)) == 0 and lock.exists()
    assert _run("rules", "lock", "--check", "--rules", str(cfg)) == 0
    _user_rules(tmp_path, dict(RULE, title="Login from a watched address"))
    before = lock.read_text()
    assert _run("rules", "lock", "--check", "--rules", str(cfg)) == 1
    assert _run("rules", "lock", "--rules", str(cfg)) == 1 and lock.read_text() == before
    assert "custom.ip_login: changed without a version bump" in capsys.readouterr().err
    _user_rules(tmp_path, dict(RULE, title="Login from a watched address", version=2))
    assert _run("rules", "lock", "--check", "--rules", str(cfg)) == 1  # bumped but not yet recorded
    assert _run("rules", "lock", "--rules", str(cfg)) == 0
    assert _run("rules", "lock", "--check", "--rules", str(cfg)) == 0


@pytest.mark.parametrize("flag", ["--rules", "-c"])
def test_the_lock_check_hint_repeats_the_rules_file(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rules lock --check --rules FILE`` tells to run ``rules lock --rules FILE`` (with ``--output``
    when given): a bare ``rules lock`` would lock the installed packs, not the user's rules."""
    cfg = _user_rules(tmp_path, RULE)
    assert _run("rules", "lock", "--check", flag, str(cfg)) == 1
    err = capsys.readouterr().err
    assert (
        f"custom.ip_login: not in the lock (run `instantly-audit rules lock --rules {shlex.quote(str(cfg))}` to update"
        in err
    )
    out = tmp_path / "my lock.json"
    assert _run("rules", "lock", "--check", flag, str(cfg), "--output", str(out)) == 1
    assert (
        f"(run `instantly-audit rules lock --rules {shlex.quote(str(cfg))} --output '{out}'` to update {out})"
        in capsys.readouterr().err
    )
    from pipeline.rules.lock import Locked, check

    assert "(run `instantly-audit rules lock` to update" in check({"r": Locked(1, "h")}, {}, tmp_path)[0]


def test_cases_beside_the_rule_run_and_are_not_loaded_as_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A case file in the rules directory is a test, not a rule; `rules test DIR` runs it."""
    cfg = _user_rules(tmp_path, RULE, [POS, NEG])
    rs = parse_rules_config({"files": [str(tmp_path / "rules")]})
    assert rs.get("custom.ip_login") is not None
    assert _run("rules", "test", str(tmp_path / "rules"), "--rules", str(cfg)) == 0
    out = capsys.readouterr().out
    assert "custom.ip_login" in out and "2 cases: 2 passed" in out


def test_in_file_tests_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tests:` inside the rule count like a case file; a wrong expectation fails."""
    cfg = _user_rules(tmp_path, dict(RULE, tests=[POS, NEG]))
    assert _run("rules", "test", str(tmp_path / "rules"), "--rules", str(cfg)) == 0
    wrong = dict(POS, expect=[{"severity": "high"}])
    _user_rules(tmp_path, dict(RULE, tests=[wrong, NEG]))
    assert _run("rules", "test", str(tmp_path / "rules"), "--rules", str(cfg)) == 1
    assert "severity 'medium' != 'high'" in capsys.readouterr().out


def test_a_rule_without_a_negative_case_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The test minimum: one positive and one negative case per rule, or a clear failing line."""
    cfg = _user_rules(tmp_path, dict(RULE, tests=[POS]))
    assert _run("rules", "test", str(tmp_path / "rules"), "--rules", str(cfg)) == 1
    out = capsys.readouterr().out
    assert "rule custom.ip_login has 1 positive and 0 negative test cases" in out


PIPELINE_CONFIG_WITHOUT_RULES = """\
bus: {type: sqlite, path: data/bus.db}
workspaces:
  acme: {api_key: "${INSTANTLY_KEY}"}
webhook:
  sources:
    acme: {workspace_id: 019cc043-e2f1-7def-8b07-0aab88328dad, secrets: ["${HOOK_SECRET}"]}
"""


@pytest.mark.parametrize("flag", ["--rules", "--config", "-c"])
def test_a_pipeline_config_without_rules_has_an_empty_rules_section(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file with pipeline sections but no ``rules:`` is a pipeline config (docs/rules.md), not a
    rules section whose keys would be ``bus``, ``workspaces``…; ``-c/--config`` reads it as ``--rules``."""
    from pipeline.rules.rules_file import read_rules_file

    cfg = tmp_path / "config.yaml"
    cfg.write_text(PIPELINE_CONFIG_WITHOUT_RULES)
    assert read_rules_file(str(cfg)) == ({}, tmp_path.resolve())
    assert _run("rules", "lock", "--check", flag, str(cfg)) == 0
    assert _run("rules", "list", flag, str(cfg)) == 0
    assert "unknown key" not in capsys.readouterr().err


def test_a_bare_rules_section_is_still_read_as_one(tmp_path: Path) -> None:
    """A file of rule settings alone (no pipeline section) is the rules section itself."""
    from pipeline.rules.rules_file import read_rules_file

    f = tmp_path / "rules.yaml"
    f.write_text("protected_domains: [acme.example]\n")
    assert read_rules_file(str(f))[0] == {"protected_domains": ["acme.example"]}
