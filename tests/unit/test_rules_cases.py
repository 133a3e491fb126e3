"""Rules as data: shipped cases pass, each rule has positive and negative cases, the runner and CLI fail right."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from connectors.instantly.rules import PACK
from pipeline.errors import ConfigError
from pipeline.rules import cli, testing
from pipeline.rules.config import parse_rules_config
from pipeline.rules.testing import load_case_file, run_case, run_cases

assert PACK.cases_dir is not None
CASES = PACK.cases_dir
SHIPPED = [(f, c) for f in sorted(CASES.glob("*.yaml")) for c in load_case_file(f).cases]


@pytest.mark.parametrize(("path", "case"), SHIPPED, ids=[f"{p.stem}::{c.name}" for p, c in SHIPPED])
def test_shipped_case(path: Path, case: object) -> None:
    """Each shipped case of a built-in rule produces exactly its expected alerts (valid Alert v1)."""
    cf = load_case_file(path)
    result = run_case(cf, case, {}, file=str(path))  # type: ignore[arg-type]
    assert result.passed, "\n".join(result.problems)


def test_every_built_in_rule_has_positive_and_negative_cases() -> None:
    """Every built-in rule ships a case expecting an alert and a case expecting none."""
    seen: dict[str, set[bool]] = {}
    for path, case in SHIPPED:
        seen.setdefault(load_case_file(path).rule, set()).add(bool(case.expect))
    assert {r.meta.id for r in parse_rules_config(None).rules} == set(seen)
    assert all(v == {True, False} for v in seen.values()), {k: v for k, v in seen.items() if v != {True, False}}


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="instantly-audit")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_passes_the_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """`rules test pipeline/rules/cases` exits 0 and reports per rule."""
    assert _run("rules", "test", str(CASES)) == 0
    out = capsys.readouterr().out
    assert "api_key.all_scope" in out and "0 failed" in out


def test_cli_fails_on_a_wrong_expectation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A case whose expectation is wrong makes `rules test` exit 1 and explain the mismatch."""
    doc = yaml.safe_load((CASES / "api_key.all_scope.yaml").read_text())
    doc["cases"][0]["expect"][0]["severity"] = "low"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(doc))
    assert _run("rules", "test", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "FAIL api_key.all_scope" in out and "severity 'critical' != 'low'" in out


def test_runner_reports_unexpected_alerts(tmp_path: Path) -> None:
    """An alert no expectation asked for fails the case."""
    doc = yaml.safe_load((CASES / "webhook.failing.yaml").read_text())
    doc["cases"] = [dict(doc["cases"][0], expect=[])]
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(doc))
    [res] = run_cases(tmp_path).results
    assert not res.passed and res.problems[0].startswith("unexpected alert: webhook.failing medium open")


def test_runner_uses_the_rules_file(tmp_path: Path) -> None:
    """--rules FILE tunes the rules under test (here: a threshold that silences the positive case)."""
    (tmp_path / "rules.yaml").write_text("rules:\n  data.lead_export: {threshold: 100000}\n")
    assert _run("rules", "test", str(CASES / "data.lead_export.yaml"), "--rules", str(tmp_path / "rules.yaml")) == 1


def test_a_case_event_gets_the_activity_code_the_connector_gives_its_type(tmp_path: Path) -> None:
    """Case events of every named ``audit.*`` type carry the code the connector writes (docs/rules.md:
    "the activity code from a named audit.* type"): 15 of the 33 (``audit.lead_added``, 9 …) had none, so a
    rule on ``activity_codes: [9]`` failed ``rules test`` with a case it matches live."""
    from connectors.instantly.audit_codes import AUDIT_CODES

    assert {c.type: c.code for c in AUDIT_CODES.values()} == testing.AUDIT_CODES
    rule = {"id": "custom.lead_added_via_api", "title": "Leads added through the API", "severity": "low",
            "types": ["audit.*"], "activity_codes": [9], "detection": {"api": {"actor.via_api": True}}}  # fmt: skip
    doc = {"rule": rule["id"], "cases": [
        {"name": "api", "events": [{"type": "audit.lead_added", "actor": {"via_api": True}}], "expect": [{}]},
        {"name": "ui", "events": [{"type": "audit.lead_added", "actor": {"via_api": False}}], "expect": []},
    ]}  # fmt: skip
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(doc))
    cf = load_case_file(tmp_path / "cases.yaml")
    results = [run_case(cf, case, {"custom": [rule]}, file="cases.yaml") for case in cf.cases]
    assert [r.problems for r in results] == [[], []]


def test_a_positive_case_of_a_disabled_rule_says_the_rule_is_off(tmp_path: Path) -> None:
    """A correlation's base rule is usually ``enabled: false`` (Sigma's ``generate: false``); its positive case
    failed with only "no alert left". It now names the cause and the case config that enables it, which
    passes."""
    rule = {"id": "custom.login_any", "title": "Any login", "severity": "info", "enabled": False,
            "types": ["audit.user_login"], "detection": {"login": {"type": "audit.user_login"}}}  # fmt: skip
    case = {"name": "login", "events": [{"type": "audit.user_login", "actor": {"user_id": "u1"}}], "expect": [{}]}
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump({"rule": rule["id"], "cases": [case]}))
    cf = load_case_file(tmp_path / "cases.yaml")
    [problem, hint] = run_case(cf, cf.cases[0], {"custom": [rule]}, file="cases.yaml").problems
    assert "no alert left" in problem
    assert hint.startswith("custom.login_any is disabled here (enabled: false)")
    assert "config: {custom.login_any: {enabled: true}}" in hint
    enabled = cf.cases[0].model_copy(update={"config": {"custom.login_any": {"enabled": True}}})
    assert run_case(cf, enabled, {"custom": [rule]}, file="cases.yaml").problems == []


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"typ": "audit.user_login"}, "events.0.typ: unknown event field (did you mean 'type'?)"),
        # a mistyped key inside actor/target said only "Unexpected keyword argument 'email'", with no path
        ({"type": "audit.user_login", "actor": {"email": "a@b.c"}},
         "events.0.actor.email: unknown event field (fields: user_id, user_name, api_key_id, ip, user_agent, via_api)"),
        ({"type": "member.invited", "target": {"kind": "member", "idd": "m1"}},
         "events.0.target.idd: unknown event field (did you mean 'id'?)"),
    ],
)  # fmt: skip
def test_a_mistyped_case_event_key_is_named_by_its_path(tmp_path: Path, event: dict[str, object], problem: str) -> None:
    """A case event's unknown key names where it is and what was expected."""
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump({"rule": "auth.login_new_ip", "cases": [
        {"name": "x", "events": [event], "expect": []}]}))  # fmt: skip
    cf = load_case_file(tmp_path / "cases.yaml")
    assert run_case(cf, cf.cases[0], {}, file="cases.yaml").problems == [problem]


def test_a_case_for_a_rule_that_is_not_loaded_fails(tmp_path: Path) -> None:
    """A case file whose ``rule:`` has a typo tested nothing, and its negative cases passed; every case of it
    now fails, naming the id and the closest loaded one."""
    case = {"name": "quiet", "events": [{"type": "audit.user_login"}], "expect": []}
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump({"rule": "auth.login_new_iq", "cases": [case]}))
    cf = load_case_file(tmp_path / "cases.yaml")
    [problem] = run_case(cf, cf.cases[0], {}, file="cases.yaml").problems
    assert problem == "no rule 'auth.login_new_iq' is loaded (did you mean 'auth.login_new_ip'?)"
    other = cf.cases[0].model_copy(update={"rules": ["auth.nope"]})
    cf2 = cf.model_copy(update={"rule": "auth.login_new_ip"})
    assert run_case(cf2, other, {}, file="cases.yaml").problems[0].startswith("no rule 'auth.nope' is loaded")


@pytest.mark.parametrize(
    "argv",
    [("rules",), ("rules", "test", "/does/not/exist")],
)
def test_cli_usage_errors_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """A missing subcommand or directory exits 2."""
    assert _run(*argv) == 2


def test_cli_bad_rules_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid --rules file exits 2 naming the key path."""
    (tmp_path / "bad.yaml").write_text("api_key.stale: {key_max_age_days: -1}\n")
    assert _run("rules", "test", str(CASES), "--rules", str(tmp_path / "bad.yaml")) == 2
    assert "rules.api_key.stale.key_max_age_days" in capsys.readouterr().err


def test_a_malformed_case_file_is_a_failure(tmp_path: Path) -> None:
    """A case file that is not valid counts as a failed case naming the problem."""
    (tmp_path / "bad.yaml").write_text("rule: api_key.stale\ncases: [{name: x, events: [], expect: []}]\n")
    [res] = run_cases(tmp_path).results
    assert not res.passed and "cases.0.events" in res.problems[0]


def test_cli_lists_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """`rules list` prints every rule with severity, kind and state."""
    assert _run("rules", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["RULE", "SEVERITY", "KIND", "ENABLED"] and len(lines) == 40


@pytest.mark.parametrize(
    ("start", "expected"),
    [("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000Z"), ("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00.000Z"),
     ("2026-01-01T00:00:00", "2026-01-01T00:00:00.000Z"), ("2026-01-01", "2026-01-01T00:00:00.000Z"),
     ('"2026-01-01T00:00:00Z"', "2026-01-01T00:00:00Z")],
)  # fmt: skip
def test_start_takes_an_unquoted_yaml_time(tmp_path: Path, start: str, expected: str) -> None:
    """YAML makes an unquoted ``start:`` a datetime (or a date): it is taken like ``time:``/``tick:``."""
    f = tmp_path / "c.yaml"
    f.write_text(f"rule: api_key.all_scope\nstart: {start}\ncases: [{{name: n, events: [{{type: x}}], expect: []}}]\n")
    assert load_case_file(f).start == expected


def test_an_impossible_unquoted_start_names_the_key(tmp_path: Path) -> None:
    """``start: 2026-02-30`` made PyYAML raise ValueError (no YAMLError): ``rules test`` crashed with a
    traceback. The text reaches the key's check, which names it."""
    f = tmp_path / "c.yaml"
    f.write_text("rule: api_key.all_scope\nstart: 2026-02-30\ncases: [{name: n, events: [{type: x}], expect: []}]\n")
    with pytest.raises(ConfigError, match=r"start.*not a time: '2026-02-30'"):
        load_case_file(f)


def test_a_start_that_is_not_a_time_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("rule: api_key.all_scope\nstart: soon\ncases: [{name: n, events: [{type: x}], expect: []}]\n")
    with pytest.raises(ConfigError, match=r"start.*not a time: 'soon'"):
        load_case_file(f)
