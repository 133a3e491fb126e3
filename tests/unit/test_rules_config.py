"""The rules config section: validation errors name the key path; YAML rule files and inline rules load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.instantly.rules.api_keys import StaleParams
from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"api_key.stale": {"key_max_age_days": -1}},
            "rules.api_key.stale.key_max_age_days: Input should be greater than 0",
        ),
        ({"api_key.stale": {"max_age": 30}}, "rules.api_key.stale.max_age: unknown key"),
        ({"api_key.stal": {}}, "rules.api_key.stal: unknown rule (did you mean 'api_key.stale'?)"),
        ({"allowlist": {}}, "rules.allowlist: unknown key (did you mean 'allowlists'?)"),
        ({"auth.mfa_attack": {"severity": "urgent"}}, "rules.auth.mfa_attack.severity: Input should be"),
        ({"auth.mfa_attack": {"failures_threshold": 0}}, "rules.auth.mfa_attack.failures_threshold"),
        ({"auth.mfa_attack": "off"}, "rules.auth.mfa_attack: must be a mapping"),
        ({"allowlists": {"member_emails": ["not-an-email"]}}, "rules.allowlists.member_emails: "),
        ({"allowlists": {"ip_networks": ["10.0.0.0/33"]}}, "rules.allowlists.ip_networks.0"),
        ({"defaults": {"suppress_secs": -5}}, "rules.defaults.suppress_secs"),
        ({"tick_interval_secs": 0}, "rules.tick_interval_secs"),
        (
            {"custom": [{"id": "nodot", "title": "x", "severity": "low", "detection": {"s": {"type": "x"}}}]},
            "rules.custom.0 (nodot).id: String should match pattern",
        ),
        (
            {"custom": [{"id": "c.x", "title": "x", "severity": "low", "detection": {"s": {"actor.ip|nope": 1}}}]},
            "rules.custom.0 (c.x).detection.s.actor.ip|nope: unknown modifier 'nope'",
        ),
        (
            {
                "custom": [
                    {
                        "id": "c.x",
                        "title": "x",
                        "severity": "low",
                        "attack": ["1098"],
                        "detection": {"s": {"type": "x"}},
                    }
                ]
            },
            "rules.custom.0 (c.x).attack.0: String should match pattern",
        ),
        (
            {"custom": [{"id": "api_key.stale", "title": "x", "severity": "low", "detection": {"s": {"type": "x"}}}]},
            "rules.custom.0.id: rule id 'api_key.stale' is already used by built-in",
        ),
        ({"files": ["does/not/exist.yaml"]}, "rules.files.0: rule file"),
    ],
)
def test_bad_config_names_the_key_path(cfg: dict[str, Any], message: str, tmp_path: Path) -> None:
    """Every invalid value or unknown key raises ConfigError naming its path under 'rules.'."""
    with pytest.raises(ConfigError) as info:
        parse_rules_config(cfg, base_dir=tmp_path)
    assert message in str(info.value)


def test_all_problems_are_reported_together() -> None:
    """Several problems give one ConfigError with one line each."""
    with pytest.raises(ConfigError) as info:
        parse_rules_config({"allowlists": {"member_emails": ["x"]}, "api_key.stale": {"key_max_age_days": 0}})
    assert len(str(info.value).splitlines()) == 2


def test_empty_config_enables_every_built_in_rule() -> None:
    """No config: the 37 built-in rules (Python, YAML and correlation) run with their defaults."""
    rs = parse_rules_config(None)
    assert len(rs.enabled) == 39 and {r.meta.kind for r in rs.rules} == {"python", "yaml"}
    stale = rs.get("api_key.stale")
    assert stale is not None and isinstance(stale.params, StaleParams) and stale.params.key_max_age_days == 90


def test_thresholds_and_overrides_apply() -> None:
    """Rule blocks set thresholds, severity and suppression; allowlists are normalised."""
    rs = parse_rules_config({
        "api_key.stale": {"key_max_age_days": 30, "severity": "high", "suppress_secs": 60},
        "allowlists": {"member_domains": ["@ACME.com."], "webhook_hosts": ["Hooks.Example.com"]},
        "protected_domains": ["Rival.IO"],
    })  # fmt: skip
    stale = rs.get("api_key.stale")
    assert stale is not None and stale.params.severity == "high" and stale.params.suppress_secs == 60
    assert rs.lists.member_domains == ("acme.com",) and rs.lists.webhook_hosts == ("hooks.example.com",)
    assert rs.lists.protected_domains == ("rival.io",) and rs.lists.member_allowed("Bob@acme.com")
    assert not rs.lists.member_allowed("bob@acme.com.evil.io")


def test_rule_files_and_directories_load(tmp_path: Path) -> None:
    """files: accepts YAML files (one rule, a list, or {rules: [...]}) and directories, relative to base_dir."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "one.yaml").write_text("id: c.one\ntitle: One\nseverity: low\ndetection: {s: {type: audit.user_login}}\n")
    (d / "two.yml").write_text(
        "rules:\n  - {id: c.two, title: Two, severity: low, enabled: false, detection: {s: {type: x.y}}}\n"
    )
    rs = parse_rules_config({"files": ["rules"], "c.two": {"enabled": True}}, base_dir=tmp_path)
    assert {"c.one", "c.two"} <= {r.meta.id for r in rs.enabled}


def test_a_broken_rule_file_names_the_file(tmp_path: Path) -> None:
    """A YAML syntax error in a rule file is reported with the file's path."""
    (tmp_path / "bad.yaml").write_text("id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        parse_rules_config({"files": ["bad.yaml"]}, base_dir=tmp_path)


def test_a_repeated_key_in_a_rule_file_is_an_error(tmp_path: Path) -> None:
    """A rule with two ``detection:`` blocks kept only the second (PyYAML's silent last-wins): the
    first block's condition vanished from a rule that still validated and tested green."""
    (tmp_path / "dup.yaml").write_text(
        "id: c.dup\ntitle: Dup\nseverity: low\n"
        "detection: {s: {type: audit.user_login}}\n"
        "detection: {s: {type: audit.lead_exported}}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_rules_config({"files": ["dup.yaml"]}, base_dir=tmp_path)
    assert "dup.yaml: not valid YAML at line 5, column 1: key 'detection' repeated (first at line 4)" in str(info.value)


def test_a_repeated_key_in_a_rules_config_given_with_rules_is_an_error(tmp_path: Path) -> None:
    """``--rules FILE`` (``rules list/test/lock``, ``replay --rules-file``) reads a config or a rules
    section: a repeated ``rules:`` kept only the last one there too."""
    from pipeline.rules.rules_file import read_rules_file

    f = tmp_path / "pinned.yaml"
    f.write_text("rules:\n  tick_interval_secs: 30\nrules:\n  tick_interval_secs: 60\n")
    with pytest.raises(ConfigError, match=r"pinned\.yaml: not valid YAML at line 3, column 1: key 'rules' repeated"):
        read_rules_file(str(f))


def test_an_impossible_date_in_a_rule_file_is_a_value_not_a_crash(tmp_path: Path) -> None:
    """``modified: 2024-02-30`` made PyYAML raise ValueError (no YAMLError): ``rules test`` printed a
    traceback. The text stays a string, and the rule's own check names the key."""
    (tmp_path / "r.yaml").write_text(
        "id: c.one\ntitle: One\nseverity: low\nmodified: 2024-02-30\ndetection: {s: {type: audit.user_login}}\n"
    )
    with pytest.raises(ConfigError, match="modified"):
        parse_rules_config({"files": ["r.yaml"]}, base_dir=tmp_path)


def test_custom_rules_can_be_disabled_and_built_ins_enabled_one_by_one() -> None:
    """defaults.enabled: false leaves only the rules enabled explicitly."""
    rs = parse_rules_config({"defaults": {"enabled": False}, "auth.mfa_disabled": {"enabled": True}})
    assert [r.meta.id for r in rs.enabled] == ["auth.mfa_disabled"]


def test_a_problem_names_the_index_of_its_rule_in_the_file(tmp_path: Path) -> None:
    """``rules[i]`` is the rule's index in the file's list (the docs' ``rules[0] (custom.x)...``): the
    second rule was reported as ``rules[2]``, the third as ``rules[4]``, pointing at the wrong rule."""
    ok = {"title": "T", "severity": "low", "detection": {"s": {"type": "audit.user_login"}}}
    rules = [{**ok, "id": "custom.a"}, {**ok, "id": "custom.b"}, {**ok, "id": "custom.c", "severity": "hgh"}]
    for doc in (rules, {"rules": rules}):
        (tmp_path / "three.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError) as ei:
            parse_rules_config({"files": ["three.yaml"]}, base_dir=tmp_path)
        n = 13 if isinstance(doc, list) else 14  # the line of custom.c's severity key (after the `rules:` line)
        assert str(ei.value).startswith(f"rules.files.0: {tmp_path / 'three.yaml'}:{n}: rules[2] (custom.c).severity:")


def test_sigma_keys_say_how_a_yaml_rule_spells_them(tmp_path: Path) -> None:
    """A Sigma author writes level, tags, logsource: each unknown key says what it is here (``tags`` offered
    "did you mean 'status'?", ``level`` and ``logsource`` only the list of keys)."""
    rule = {"id": "custom.k", "title": "T", "severity": "low", "level": "high", "tags": ["attack.t1078"],
            "logsource": {"product": "instantly"}, "detection": {"s": {"type": "audit.user_login"}}}  # fmt: skip
    (tmp_path / "sigmaish.yaml").write_text(yaml.safe_dump(rule))
    with pytest.raises(ConfigError) as ei:
        parse_rules_config({"files": ["sigmaish.yaml"]}, base_dir=tmp_path)
    text = str(ei.value)
    assert "(custom.k).level: unknown key (Sigma's level is severity here" in text
    assert "(custom.k).tags: unknown key (ATT&CK techniques are attack: [T1078] here" in text
    assert "(custom.k).logsource: unknown key (the events a rule reads are chosen by types: [...]" in text
    assert "did you mean" not in text and text.count("rules import` converts a Sigma rule") == 3
    # a whole Sigma rule dropped among the rule files: one line, naming the command that converts it
    sigma = {"title": "T", "id": "5a2a3c9e-8a52-4b8c-9f6e-2f7b0c3d1e11", "logsource": {"product": "instantly"},
             "detection": {"s": {"type": "audit.user_login"}, "condition": "s"}, "level": "high"}  # fmt: skip
    (tmp_path / "dropped.yml").write_text(yaml.safe_dump(sigma))
    with pytest.raises(ConfigError) as ei:
        parse_rules_config({"files": ["dropped.yml"]}, base_dir=tmp_path)
    assert str(ei.value) == (f"rules.files.0: {tmp_path / 'dropped.yml'}: rules[0]: a Sigma rule (logsource, level), "
                             f"not a rule of this language: convert it with `instantly-audit rules import "
                             f"{tmp_path / 'dropped.yml'} --output FILE`")  # fmt: skip
    corr = {"id": "custom.c", "title": "C", "severity": "low", "generate": False, "name": "c",
            "correlation": {"type": "event_count", "rules": ["custom.k"], "timespan": "1h"}}  # fmt: skip
    (tmp_path / "sigmaish.yaml").write_text(yaml.safe_dump(corr))
    with pytest.raises(ConfigError) as ei:
        parse_rules_config({"files": ["sigmaish.yaml"]}, base_dir=tmp_path)
    assert "(custom.c).generate: unknown key (a rule a correlation uses alerts on its own unless" in str(ei.value)
    assert "(custom.c).name: unknown key (a correlation names the rules it uses by their id here" in str(ei.value)


FIVE_TYPOS = """\
id: custom.export_via_api
title: Lead export through the API
severity: hgh
types: ["audit.*"]
activity_codes: [34]
detection:
  api: {actor.via_api: true, actor.ip|contians: "10."}
  ip: {actor.ipp: 10.0.0.1}
  small: {attributes.affected_count|lt: 100}
  condition: (api or ip) and not smal
group_by: [actor.api_key_idd]
summary: "Key {actor.api_key_id} exported {attributes.affected_count} leads from {actor.ipp}"
"""


def test_every_problem_of_a_rule_file_in_one_run(tmp_path: Path) -> None:
    """A rule with five typos names all five (and the summary's) at once; it took a run per typo, the
    severity's hiding the compile problems and each compile problem the next."""
    (tmp_path / "export.yaml").write_text(FIVE_TYPOS)
    with pytest.raises(ConfigError) as ei:
        parse_rules_config({"files": ["export.yaml"]}, base_dir=tmp_path)
    lines = str(ei.value).splitlines()
    # each line names the file and the line of the key (FIVE_TYPOS: severity on line 3, ...), then the path
    where = [(3, "severity"), (7, "detection.api.actor.ip|contians"), (8, "detection.ip.actor.ipp"),
             (10, "detection.condition"), (11, "group_by.0"), (12, "summary")]  # fmt: skip
    assert len(lines) == len(where)
    file = tmp_path / "export.yaml"
    for line, (n, path) in zip(lines, where, strict=True):
        assert line.startswith(f"rules.files.0: {file}:{n}: rules[0] (custom.export_via_api).{path}:")
    assert "'hgh'" in lines[0] and "'contians'" in lines[1] and "'actor.ipp'" in lines[2]
    assert "'smal'" in lines[3] and "'actor.api_key_idd'" in lines[4] and "'actor.ipp'" in lines[5]
    # Valid but for the compile problems: the same lines, without the severity's.
    (tmp_path / "export.yaml").write_text(FIVE_TYPOS.replace("hgh", "high"))
    with pytest.raises(ConfigError) as ei:
        parse_rules_config({"files": ["export.yaml"]}, base_dir=tmp_path)
    assert str(ei.value).splitlines() == lines[1:]


def test_a_python_rule_with_an_invalid_meta_does_not_load() -> None:
    """RuleMeta is a dataclass: a pack rule with id 'Acme Night', severity 'hgh' or attack 't1567' loaded, and
    every alert it raised failed Alert v1 (dead letters live; in ``rules test`` the failures showed under other
    rules' cases). The pack is refused, naming the class and field."""
    from pipeline.rules.base import CatalogRule, RuleMeta, RulePack, RuleParams

    class NightExport(CatalogRule[RuleParams]):
        meta = RuleMeta(id="Acme Night", title="Lead export at night", severity="hgh", version=0,  # type: ignore[arg-type]
                        event_types=("audit.*",), attack=("t1567", "T1567"))  # fmt: skip

    with pytest.raises(ConfigError) as ei:
        parse_rules_config({}, packs=(RulePack(name="acme", rules=(NightExport,)),))
    assert str(ei.value).splitlines() == [
        "rule packs: acme: NightExport.meta.id: 'Acme Night' is not a dotted lower-case rule id "
        "(like acme.night_export)",
        "rule packs: acme: NightExport.meta.severity: 'hgh' is not one of info, low, medium, high, critical",
        "rule packs: acme: NightExport.meta.version: 0 is not a whole number of 1 or more",
        "rule packs: acme: NightExport.meta.attack: 't1567' is not an ATT&CK technique id (like T1078 or T1556.006)",
    ]
