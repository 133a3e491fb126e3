"""The Navigator layer scores only techniques whose claiming, enabled rule has an emulation."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

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


def test_read_emulations_checks_the_block(tmp_path: Path) -> None:
    """Files without a block are ignored; a malformed technique id is a config error."""
    (tmp_path / "plain.yaml").write_text("name: x\nsteps: []\n", encoding="utf-8")
    (tmp_path / "ok.yaml").write_text("emulation: {technique: T1110, rule: auth.mfa_attack}\n", encoding="utf-8")
    assert read_emulations([tmp_path]) == [Emulation("T1110", "auth.mfa_attack", "ok")]
    (tmp_path / "bad.yaml").write_text("emulation: {technique: '1110', rule: auth.mfa_attack}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="technique: T####"):
        read_emulations([tmp_path])
