"""The emulation suite: every scripted attack under sim/scenarios/emulation/ makes its rule fire through the
real pipeline (simulator → poller → SQLite bus → rules), and the Navigator layer holds exactly the emulated
techniques."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from connectors.instantly.emulation import EMULATION_DIR, emulation_block, run_emulation
from connectors.instantly.rules import PACK
from pipeline.cli.main import main
from pipeline.rules.navigator import SCHEMA_PATH

SCENARIOS = sorted(EMULATION_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_emulated_attack_fires_its_rule(path: Path, tmp_path: Path) -> None:
    """Played step by step after the baseline, the attack opens an alert of the rule it names."""
    result = await run_emulation(path, tmp_path)
    assert result.refused_steps == []
    assert result.fired, f"{result.rule} did not fire; opened: {[a['rule']['id'] for a in result.opened]}"
    fired = next(a for a in result.opened if a["rule"]["id"] == result.rule)
    assert result.technique in fired["rule"]["attack"]


async def test_baseline_alerts_do_not_count(tmp_path: Path) -> None:
    """The demo workspace already holds an all:all key; with no attack steps the rule has not 'fired'."""
    idle = tmp_path / "idle.yaml"
    idle.write_text("name: idle\nworkspace: acme\nemulation: {technique: T1098.001, rule: api_key.all_scope}\n"
                    "steps: []\n", encoding="utf-8")  # fmt: skip
    result = await run_emulation(idle, tmp_path)
    assert not result.fired and result.opened == []


def _layer(tmp_path: Path, *extra: str) -> dict[str, object]:
    out = tmp_path / "layer.json"
    assert main(["rules", "coverage", "--navigator", str(out), *extra]) == 0
    layer: dict[str, object] = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(layer, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    return layer


def test_layer_holds_exactly_the_emulated_techniques(tmp_path: Path) -> None:
    """Every technique of the layer has an emulation in this suite, and every emulation's technique is in it."""
    assert PACK.emulations_dir == EMULATION_DIR
    layer = _layer(tmp_path)
    assert layer["domain"] == "enterprise-attack" and layer["versions"] == {
        "attack": "17", "navigator": "5.1.0", "layer": "4.5"}  # fmt: skip
    techniques = layer["techniques"]
    assert isinstance(techniques, list)
    in_layer = {t["techniqueID"] for t in techniques}
    assert in_layer == {emulation_block(p)["technique"] for p in SCENARIOS}
    assert all(t["score"] >= 1 and t["enabled"] is True and "emulated:" in t["comment"] for t in techniques)


def test_technique_without_emulation_is_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Drop one technique's emulation: it leaves the layer and is named as left out."""
    subset = tmp_path / "emulations"
    subset.mkdir()
    for p in SCENARIOS:
        if emulation_block(p)["technique"] != "T1556.006":
            shutil.copy(p, subset / p.name)
    layer = _layer(tmp_path, "--emulations", str(subset))
    techniques = layer["techniques"]
    assert isinstance(techniques, list)
    assert "T1556.006" not in {t["techniqueID"] for t in techniques}
    assert "not in the layer (no passing emulation): T1556.006 (auth.mfa_disabled" in capsys.readouterr().out
