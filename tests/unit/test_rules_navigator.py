"""The Navigator layer scores only techniques whose claiming, enabled rule has an emulation."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pipeline.cli.main import main
from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config
from pipeline.rules.navigator import SCHEMA_PATH, Emulation, build_layer, read_emulations


def test_only_emulated_claims_of_enabled_rules_are_scored() -> None:
    """An emulation must name a rule that claims the technique and runs; others stay out of the layer."""
    ruleset = parse_rules_config({"auth.recovery_code_used": {"enabled": False}})
    emus = [
        Emulation("T1556.006", "auth.mfa_disabled", "mfa"),
        Emulation("T1078", "auth.recovery_code_used", "recovery"),  # rule disabled
        Emulation("T1485", "auth.mfa_disabled", "wrong-rule"),  # rule does not claim T1485
        Emulation("T9999", "auth.mfa_disabled", "unclaimed"),
    ]
    cov = build_layer(ruleset.rules, emus)
    jsonschema.validate(cov.layer, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    assert [(t["techniqueID"], t["score"]) for t in cov.layer["techniques"]] == [("T1556.006", 1)]
    assert "T1485" in cov.unproven and "T1078" not in cov.proven and "T9999" not in cov.unproven


def test_an_emulation_that_proves_nothing_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An emulation naming a rule id with a typo, a disabled rule, or a rule that does not claim its technique
    counts for nothing; ``rules coverage`` printed no word of it (a user's new emulation just did not show)."""
    ruleset = parse_rules_config({"auth.recovery_code_used": {"enabled": False}})
    emus = [
        Emulation("T1556.006", "auth.mfa_disabled", "mfa"),
        Emulation("T1078", "auth.recovery_code_used", "recovery"),
        Emulation("T1485", "auth.mfa_disabld", "typo"),
        Emulation("T1136.003", "auth.mfa_disabled", "wrong-technique"),
    ]
    assert build_layer(ruleset.rules, emus).ignored == [
        "recovery: rule auth.recovery_code_used is disabled",
        "typo: no rule auth.mfa_disabld (did you mean auth.mfa_disabled?)",
        "wrong-technique: rule auth.mfa_disabled does not claim T1136.003 (its attack: T1556.006)",
    ]
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "typo.yaml").write_text("emulation: {technique: T1485, rule: auth.mfa_disabld}\n")
    layer, emu = str(tmp_path / "l.json"), str(tmp_path / "emu")
    assert main(["rules", "coverage", "--navigator", layer, "--emulations", emu]) == 0
    out = capsys.readouterr().out
    assert "  emulation ignored: typo: no rule auth.mfa_disabld (did you mean auth.mfa_disabled?)" in out


def test_read_emulations_checks_the_block(tmp_path: Path) -> None:
    """Files without a block are ignored; a malformed technique id is a config error."""
    (tmp_path / "plain.yaml").write_text("name: x\nsteps: []\n", encoding="utf-8")
    (tmp_path / "ok.yaml").write_text("emulation: {technique: T1110, rule: auth.mfa_attack}\n", encoding="utf-8")
    assert read_emulations([tmp_path]) == [Emulation("T1110", "auth.mfa_attack", "ok")]
    (tmp_path / "bad.yaml").write_text("emulation: {technique: '1110', rule: auth.mfa_attack}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="technique: T####"):
        read_emulations([tmp_path])


def test_layer_shows_scored_sub_techniques_and_its_schema_accepts_the_spec_example() -> None:
    """layerformat.md v4.5: sub-techniques are collapsed by default; the parent opens on them and the layout
    expands annotated ones. The shipped schema accepts the format's own example (8-digit colours, links,
    metadata dividers, filters, layout)."""
    ruleset = parse_rules_config({})
    emus = [Emulation("T1078", "auth.recovery_code_used", "a"), Emulation("T1078.004", "auth.login_new_ip", "b")]
    layer = build_layer(ruleset.rules, emus).layer
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.validate(layer, schema)
    by_id = {t["techniqueID"]: t for t in layer["techniques"]}
    assert by_id["T1078"]["showSubtechniques"] is True and "showSubtechniques" not in by_id["T1078.004"]
    assert layer["layout"]["expandedSubtechniques"] == "annotated"
    assert layer["gradient"]["maxValue"] > layer["gradient"]["minValue"]
    example = {
        "name": "example layer", "versions": {"attack": "13", "navigator": "5.1.0", "layer": "4.5"},
        "domain": "enterprise-attack", "filters": {"platforms": ["Windows", "macOS"]}, "sorting": 2,
        "layout": {"layout": "side", "showAggregateScores": True, "aggregateFunction": "average",
                   "expandedSubtechniques": "annotated"},
        "techniques": [
            {"techniqueID": "T1110", "score": 0, "color": "#fd8d3c", "showSubtechniques": True},
            {"techniqueID": "T1134", "tactic": "defense-evasion", "score": 75,
             "links": [{"label": "Navigator GitHub", "url": "https://github.com/mitre-attack/attack-navigator"}]},
            {"techniqueID": "T1053", "tactic": "privilege-escalation",
             "metadata": [{"name": "m", "value": "v"}, {"divider": True}]},
        ],
        "gradient": {"colors": ["#ff6666ff", "#ffe766ff", "#8ec843ff"], "minValue": 0, "maxValue": 100},
        "legendItems": [{"label": "Legend Item Label", "color": "#FF00FF"}],
        "metadata": [{"name": "layer metadata 1", "value": "layer metadata 1 value"}, {"divider": True}],
        "showTacticRowBackground": False, "tacticRowBackground": "#dddddd", "selectVisibleTechniques": False,
    }  # fmt: skip
    jsonschema.validate(example, schema)
