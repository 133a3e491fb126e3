"""Sigma interop: every exported rule is valid for pySigma, import maps back to the same detection, and
Sigma rules that do not fit Event v1 are rejected with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule
from sigma.validation import SigmaValidator
from sigma.validators.core import validators

from connectors.instantly.rules import PACK
from pipeline.cli.main import main
from pipeline.clock import FakeClock, parse_time
from pipeline.rules.engine import RulesEngine
from pipeline.rules.sigma import SigmaImportError, import_rule, sigma_filename, sigma_id
from pipeline.rules.testing import make_event
from schemas.event import Event, WorkspaceRef

# attacktag and d3_fendtag download MITRE data at validation time (no network in CI); the tag
# format is checked below instead.
OFFLINE_VALIDATORS = [cls for name, cls in validators.items() if name not in ("attacktag", "d3_fendtag")]
T0 = parse_time("2026-03-01T00:00:00Z")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in rules exported with ``rules export --format sigma``."""
    out = tmp_path_factory.mktemp("sigma")
    assert main(["rules", "export", "--format", "sigma", "--output", str(out)]) == 0
    return out


def _rule_id(f: Path) -> str:
    """The rule id an exported file names in its first line."""
    m = re.match(r"# instantly-audit rule (\S+), exported as Sigma\.", f.read_text(encoding="utf-8"))
    assert m is not None, f.name
    return m.group(1)


def test_every_exported_file_is_a_valid_sigma_rule(exported: Path) -> None:
    """pySigma parses each file without errors and its offline validators report no issue."""
    files = sorted(exported.glob("*.yml"))
    assert {_rule_id(f) for f in files} >= {"auth.mfa_disabled", "auth.recovery_code_used", "api_key.all_scope"}
    for f in files:
        coll = SigmaCollection.from_yaml(f.read_text(encoding="utf-8"))
        assert len(coll.rules) == 1 and not coll.errors, f.name
        rule = coll.rules[0]
        assert isinstance(rule, SigmaRule)
        assert not rule.errors, (f.name, rule.errors)
        assert str(rule.id) == sigma_id(_rule_id(f))
        assert rule.logsource.product == "instantly" and rule.logsource.service == "audit"
        assert rule.level is not None and rule.status is not None and rule.falsepositives
        assert rule.tags and all(
            re.fullmatch(r"t\d{4}(\.\d{3})?", t.name) for t in rule.tags if t.namespace == "attack"
        )
    parsed = [r for r in SigmaCollection.load_ruleset([str(f) for f in files]) if isinstance(r, SigmaRule)]
    assert len(parsed) == len(files)
    issues = SigmaValidator(OFFLINE_VALIDATORS).validate_rules(iter(parsed))
    assert issues == []


def test_stateful_python_rules_are_listed_as_skipped(exported: Path) -> None:
    """Rules with state, thresholds or ticks are not exported; README.md names each with the reason."""
    readme = (exported / "README.md").read_text(encoding="utf-8")
    for rid in ("auth.mfa_attack", "data.lead_export", "api_key.stale"):
        assert not (exported / sigma_filename(rid)).exists()
        assert f"`{rid}`: stateful Python rule" in readme
    assert "Event v1 paths" in readme


def _case_events(rule_id: str) -> list[Event]:
    assert PACK.cases_dir is not None
    doc = yaml.safe_load((PACK.cases_dir / f"{rule_id}.yaml").read_text(encoding="utf-8"))
    ws = WorkspaceRef("ws-1")
    raws = [e for case in doc["cases"] for e in case["events"]]
    return [make_event(r["type"], time=T0, workspace=ws, actor=r.get("actor"), target=r.get("target"),
                       change=r.get("change"), attributes=r.get("attributes")) for r in raws]  # fmt: skip


def _opens(cfg: dict[str, Any], rule_id: str, ev: Event, base: Path | None = None) -> bool:
    result = RulesEngine.from_config(cfg, clock=FakeClock(T0), base_dir=base).evaluate([ev])
    return any(a.rule.id == rule_id and a.status == "open" for a in result.alerts)


def test_import_of_an_export_detects_the_same_events(exported: Path, tmp_path: Path) -> None:
    """Round trip: each exported rule, imported back, opens on exactly the case events the original opens on."""
    rules_file = tmp_path / "imported.yaml"
    files = [str(f) for f in sorted(exported.glob("*.yml"))]
    assert main(["rules", "import", *files, "--output", str(rules_file)]) == 0
    imported = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["rules"]
    assert len(imported) == len(files)
    cfg = {"files": [str(rules_file)]}
    checked, opened = 0, 0
    for f, new in zip(sorted(exported.glob("*.yml")), imported, strict=True):
        orig = _rule_id(f)
        for ev in _case_events(orig):
            was = _opens({}, orig, ev)
            assert was == _opens(cfg, new["id"], ev), (orig, ev.type, ev.attributes)
            checked, opened = checked + 1, opened + was
    assert checked >= 15 and 5 <= opened < checked


def _doc(detection: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"title": "T", "logsource": {"product": "instantly"}, "detection": detection, **extra}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"title": "W", "logsource": {"product": "windows", "category": "process_creation"},
          "detection": {"s": {"Image|endswith": "cmd.exe"}, "condition": "s"}}, "not instantly-audit's"),
        (_doc({"s": {"EventID": 4624}, "condition": "s"}), "does not map to Event v1"),
        (_doc({"keywords": ["evil"], "condition": "keywords"}), "keyword"),
        (_doc({"s": {"actor.user_agent|base64offset|contains": "x"}, "condition": "s"}), "|base64offset"),
        (_doc({"s": {"type": "audit.user_login"}, "condition": "s | count() > 5"}), "aggregations"),
        ({"title": "C", "correlation": {"type": "event_count"}}, "correlation"),
        (_doc({"s": {"actor.ip": "1.2.3.4"}, "condition": "s and other"}), "unknown selection"),
    ],
)  # fmt: skip
def test_import_rejects_what_does_not_map(doc: dict[str, Any], reason: str) -> None:
    """Each rejection says why."""
    with pytest.raises(SigmaImportError, match=re.escape(reason)):
        import_rule(doc)


def test_import_turns_wildcards_into_modifiers() -> None:
    """Sigma wildcards become startswith/endswith/contains, or an anchored case-insensitive regex."""
    sel = {"type": "audit.mfa_*", "actor.user_agent": "*curl*", "target.name": "a*b?"}
    rule = import_rule(_doc({"s": sel, "condition": "s"}, level="high", tags=["attack.t1078", "attack.initial_access"]))
    sel = rule["detection"]["s"]
    assert sel == {"type|startswith": "audit.mfa_", "actor.user_agent|contains": "curl", "target.name|re|i": "^a.*b.$"}
    assert rule["severity"] == "high" and rule["attack"] == ["T1078"] and rule["id"] == "sigma.t"


def test_import_exit_code_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with one good and one bad rule: the good one is written, the bad one named on stderr, exit 1."""
    src = tmp_path / "mixed.yml"
    good = _doc({"s": {"actor.ip|cidr": "185.220.0.0/16"}, "condition": "s"}, title="Tor login")
    src.write_text(yaml.safe_dump_all([good, _doc({"s": {"EventID": 1}, "condition": "s"})]), encoding="utf-8")
    assert main(["rules", "import", str(src)]) == 1
    out, err = capsys.readouterr()
    assert "sigma.tor_login" in out and "mixed.yml#1: rejected" in err and "EventID" in err


def test_exported_files_follow_the_sigma_file_name_rules(exported: Path) -> None:
    """sigma-rules-specification.md "Yaml File": lower-case letters, digits and _, 10 to 70 characters, .yml."""
    names = [f.name for f in exported.glob("*.yml")]
    assert names and all(re.fullmatch(r"[a-z0-9_]{6,66}\.yml", n) for n in names), names
    assert "api_key_all_scope.yml" in names
    assert sigma_filename("a.b") == "instantly_a_b.yml"
    long_a, long_b = "x." + "y" * 90 + ".a", "x." + "y" * 90 + ".b"
    assert len(sigma_filename(long_a)) <= 70 and sigma_filename(long_a) != sigma_filename(long_b)


def test_export_carries_author_references_and_typed_related(tmp_path: Path) -> None:
    """A YAML rule's lifecycle keys become Sigma's author, references and related (UUID + relation type)."""
    rule = {"id": "custom.one", "title": "One", "severity": "low", "types": ["audit.*"], "author": "Sec team",
            "references": ["https://developer.instantly.ai/"],
            "related": [{"id": "auth.mfa_disabled", "type": "derived"}],
            "detection": {"s": {"actor.ip": "1.2.3.4"}, "condition": "s"}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"rules": [rule]}), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"files": [str(tmp_path / "r.yaml")]}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg)]) == 0
    doc = yaml.safe_load((out / "custom_one.yml").read_text(encoding="utf-8"))
    assert doc["author"] == "Sec team" and doc["references"] == ["https://developer.instantly.ai/"]
    assert doc["related"] == [{"id": sigma_id("auth.mfa_disabled"), "type": "derived"}]


def test_export_keeps_them_to_the_rules_own_selections() -> None:
    """``1 of them`` must not reach the rule_types selection export adds, nor lose _-prefixed selections."""
    from pipeline.rules.sigma import _export_detection

    det = _export_detection({"a": {"actor.ip": "1.1.1.1"}, "_b": {"actor.ip": "2.2.2.2"}, "condition": "1 of them"},
                            ["audit.*"], None)  # fmt: skip
    assert det["condition"] == "((a or _b)) and rule_types"


def test_import_follows_sigma_detection_semantics() -> None:
    """Condition lists are ORed, "them" skips _-prefixed identifiers, wildcards work inside |contains,
    and regex values are taken verbatim (no wildcard unescaping)."""
    rule = import_rule(_doc({"a": {"type": "audit.login"}, "b": {"type": "audit.logout"}, "condition": ["a", "b"]}))
    assert rule["detection"]["condition"] == "(a) or (b)"
    rule = import_rule(_doc({"a": {"type": "x"}, "b": {"actor.ip": "1.1.1.1"}, "_h": {"target.id": "z"},
                             "condition": "all of them"}))  # fmt: skip
    assert rule["detection"]["condition"] == "(a and b)"
    sel = {"actor.user_agent|contains": "python*requests", "target.name|endswith": "\\*x", "target.id|re": "a\\\\b\\*c"}
    got = import_rule(_doc({"s": sel, "condition": "s"}))["detection"]["s"]
    assert got == {
        "actor.user_agent|re|i": "python.*requests",
        "target.name|endswith": "*x",
        "target.id|re": "a\\\\b\\*c",
    }
    mixed = import_rule(_doc({"s": {"target.name": ["exact", "pre*"]}, "condition": "s"}))["detection"]["s"]
    assert mixed == {"target.name|re|i": ["^exact$", "^pre.*$"]}
    full = import_rule(_doc({"s": {"type": "a"}, "condition": "s"}, status="test", author="A", falsepositives=["fp"]))
    assert (full["status"], full["author"], full["falsepositives"]) == ("test", "A", ["fp"])


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (_doc({"k": {"|all": ["a", "b"]}, "condition": "k"}), "keyword"),
        (_doc({"s": {"actor.ip|contains|all": "x"}, "condition": "s"}), "|all needs a list"),
        (_doc({"s": {"actor.ip": ["", None]}, "condition": "s"}), "null cannot be part of a list"),
        (_doc({"s": {"actor.ip": "1.1.1.1"}}), "condition is missing"),
        (_doc({"s": {"actor.ip": "1.1.1.1"}, "condition": "s"}, status="unsupported"), "unsupported"),
        (_doc({"s": {"actor.user_name|expand": "%Administrators%"}, "condition": "s"}), "|expand"),
        (_doc({"s": {"actor.ip|neq": "1.1.1.1"}, "condition": "s"}), "|neq"),
    ],
)  # fmt: skip
def test_import_rejects_what_sigma_forbids_or_we_cannot_express(doc: dict[str, Any], reason: str) -> None:
    """sigma-rules-specification.md and the modifiers appendix: each rejection names the reason."""
    with pytest.raises(SigmaImportError, match=re.escape(reason)):
        import_rule(doc)
