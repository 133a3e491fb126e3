"""ATT&CK Navigator layer (format 4.5) from the rules' technique ids — only techniques proven by emulation.

An *emulation* is a scenario file that scripts one attack for one technique and names the
rule that must fire; the emulation suite (CI) plays every such file through the real
pipeline and fails when the rule does not fire. A rule pack lists its scenario directory
(:attr:`pipeline.rules.base.RulePack.emulations_dir`); this module reads only each file's
``emulation: {technique, rule}`` block, never the scenario itself.

A technique enters the layer only when an enabled rule claims it *and* an emulation of that
technique names one of those rules. Its score is the number of claiming rules with an
emulation; the comment names the emulated rules and their scenarios (and the claiming rules
without an emulation).
Claimed techniques without any emulation are returned as ``unproven``. A technique whose
sub-techniques are in the layer has ``showSubtechniques``, and the layout expands annotated
sub-techniques, so a sub-technique score is visible without opening its parent by hand.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.yaml_load import safe_load
from pipeline.errors import ConfigError
from pipeline.rules.base import ATTACK_PATTERN, Rule

LAYER_VERSIONS = {"attack": "17", "navigator": "5.1.0", "layer": "4.5"}
SCHEMA_PATH = Path(__file__).resolve().parent / "navigator_layer.schema.json"


@dataclass(frozen=True, slots=True)
class Emulation:
    """One scenario's claim: playing ``scenario`` makes ``rule`` fire, which detects ``technique``."""

    technique: str
    rule: str
    scenario: str


def read_emulations(dirs: Iterable[Path]) -> list[Emulation]:
    """The ``emulation:`` blocks of every ``*.yaml`` file under ``dirs``.

    Raises:
        ConfigError: a file is unreadable or its block is malformed.
    """
    out: list[Emulation] = []
    for d in dirs:
        for path in sorted(Path(d).glob("*.yaml")):
            try:
                doc = safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
                raise ConfigError(f"{path}: cannot read the emulation ({type(err).__name__})") from None
            block = doc.get("emulation") if isinstance(doc, dict) else None
            if block is None:
                continue
            tech, rule = (block.get("technique"), block.get("rule")) if isinstance(block, dict) else (None, None)
            if not isinstance(tech, str) or not re.fullmatch(ATTACK_PATTERN, tech) or not isinstance(rule, str):
                raise ConfigError(f"{path}: emulation needs technique: T#### and rule: <rule id>")
            out.append(Emulation(tech, rule, path.stem))
    return out


@dataclass
class Coverage:
    """What the layer shows and what it leaves out."""

    layer: dict[str, Any]
    proven: dict[str, list[str]] = field(default_factory=dict)
    unproven: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    """Why each emulation that proves nothing does not (``<scenario>: <reason>``): an unknown or disabled
    rule, or a rule that does not claim the emulation's technique."""


def build_layer(rules: Iterable[Rule], emulations: Iterable[Emulation], name: str = "instantly-audit") -> Coverage:
    """The Navigator layer of the enabled ``rules``' techniques that have an emulation of a claiming rule."""
    rules = list(rules)
    claims: dict[str, list[str]] = {}
    for r in rules:
        if r.params.enabled:
            for t in r.meta.attack:
                claims.setdefault(t, []).append(r.meta.id)
    by_tech: dict[str, list[Emulation]] = {}
    cov = Coverage(layer={})
    by_id = {r.meta.id: r for r in rules}
    for e in emulations:
        by_tech.setdefault(e.technique, []).append(e)
        rule = by_id.get(e.rule)
        if rule is None:
            near = difflib.get_close_matches(e.rule, by_id, n=1)
            cov.ignored.append(f"{e.scenario}: no rule {e.rule}" + (f" (did you mean {near[0]}?)" if near else ""))
        elif not rule.params.enabled:
            cov.ignored.append(f"{e.scenario}: rule {e.rule} is disabled")
        elif e.technique not in rule.meta.attack:
            claims_of = ", ".join(rule.meta.attack) or "none"
            cov.ignored.append(f"{e.scenario}: rule {e.rule} does not claim {e.technique} (its attack: {claims_of})")
    techniques: list[dict[str, Any]] = []
    for tech in sorted(claims):
        emus = [e for e in by_tech.get(tech, []) if e.rule in claims[tech]]
        if not emus:
            cov.unproven[tech] = claims[tech]
            continue
        proven = sorted({e.rule for e in emus})
        cov.proven[tech] = proven
        comment = f"emulated: {', '.join(proven)} (by {', '.join(sorted({e.scenario for e in emus}))})"
        if rest := [r for r in claims[tech] if r not in proven]:
            comment += f"; also claimed, not emulated: {', '.join(rest)}"
        techniques.append({"techniqueID": tech, "score": len(proven), "comment": comment, "enabled": True})
    in_layer = {str(item["techniqueID"]) for item in techniques}
    for item in techniques:  # a parent with scored sub-techniques opens on them (layerformat.md v4.5)
        if any(x.startswith(f"{item['techniqueID']}.") for x in in_layer):
            item["showSubtechniques"] = True
    top = max((len(r) for r in cov.proven.values()), default=1)
    cov.layer = {
        "name": f"{name} detections (emulated)",
        "versions": dict(LAYER_VERSIONS),
        "domain": "enterprise-attack",
        "description": "Techniques detected by instantly-audit rules, each proven by an emulated attack played "
        "through the pipeline in CI. Score = rules whose emulation of the technique passes.",
        "sorting": 3,
        # sub-techniques are collapsed under their parent by default; show the annotated ones
        "layout": {"layout": "side", "showID": True, "showName": True, "expandedSubtechniques": "annotated"},
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": ["#c6dbef", "#08519c"], "minValue": 0, "maxValue": max(top, 1)},
        "legendItems": [],
    }
    return cov
