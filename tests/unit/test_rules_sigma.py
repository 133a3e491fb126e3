"""Sigma interop: every exported rule is valid for pySigma, import maps back to the same detection, and
Sigma rules that do not fit Event v1 are rejected with the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.rule import SigmaRule
from sigma.validation import SigmaValidator
from sigma.validators.core import validators

from connectors.instantly.rules import PACK
from pipeline.cli.main import main
from pipeline.clock import FakeClock, parse_time
from pipeline.rules.engine import RulesEngine
from pipeline.rules.sigma import SigmaImportError, export_detection, import_rule, sigma_filename, sigma_id
from pipeline.rules.testing import make_event
from schemas.event import Event, WorkspaceRef

# attacktag and d3_fendtag download MITRE data at validation time (no network in CI); the tag
# format is checked below instead.
OFFLINE_VALIDATORS = [cls for name, cls in validators.items() if name not in ("attacktag", "d3_fendtag")]
CORR = "correlations"  # where the export writes correlation files
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
    """pySigma parses each file without errors and its offline validators report no issue; a correlation
    file holds the Sigma correlation (resolved against its base rules) and nothing else alerts."""
    files = sorted(exported.rglob("*.yml"))
    ids = {_rule_id(f) for f in files}
    assert ids >= {
        "workspace_group.change",
        "auth.recovery_code_used",
        "api_key.all_scope",
        "corr.privilege_grant_burst",
    }
    for f in files:
        coll = SigmaCollection.from_yaml(f.read_text(encoding="utf-8"))
        assert coll.rules and not coll.errors, f.name
        rule = next(r for r in coll.rules if str(r.id) == sigma_id(_rule_id(f)))
        others = [r for r in coll.rules if r is not rule]
        assert not rule.errors, (f.name, rule.errors)
        assert rule.level is not None and rule.status is not None and rule.falsepositives
        assert rule.tags and all(
            re.fullmatch(r"t\d{4}(\.\d{3})?", t.name) for t in rule.tags if t.namespace == "attack"
        )
        if isinstance(rule, SigmaCorrelationRule):
            assert [r.rule for r in rule.rules or []] == others and "workspace.id" in (rule.group_by or [])
            assert all(isinstance(b, SigmaRule) and b.level is None and b.name for b in others)
        else:
            assert len(coll.rules) == 1, f.name
        for r in coll.rules:
            if isinstance(r, SigmaRule):
                assert r.logsource.product == "instantly" and r.logsource.service == "audit"
    parsed = list(SigmaCollection.load_ruleset([str(f) for f in files]))
    assert sum(isinstance(r, SigmaCorrelationRule) for r in parsed) == 3
    issues = SigmaValidator(OFFLINE_VALIDATORS).validate_rules(iter(parsed))  # type: ignore[arg-type]
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
    files = [str(f) for f in sorted(exported.rglob("*.yml"))]
    assert main(["rules", "import", *files, "--output", str(rules_file)]) == 0
    imported = yaml.safe_load(rules_file.read_text(encoding="utf-8"))["rules"]
    assert len(imported) == len(files)
    cfg = {"files": [str(rules_file)]}
    checked, opened = 0, 0
    for f, new in zip(sorted(exported.rglob("*.yml")), imported, strict=True):
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
        # pySigma: "Sigma logsource must be a valid YAML map", "Sigma log source can't be empty"
        (_doc({"s": {"type": "x"}, "condition": "s"}, logsource="instantly"), "logsource must be a mapping"),
        (_doc({"s": {"type": "x"}, "condition": "s"}, logsource=[{"product": "instantly"}]), "logsource must be a"),
        (_doc({"s": {"type": "x"}, "condition": "s"}, logsource=None), "logsource must be a mapping"),
        (_doc({"s": {"type": "x"}, "condition": "s"}, logsource={}), "logsource must name a product"),
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
    assert sel == {"type|startswith": "audit.mfa_", "actor.user_agent|contains": "curl",
                   "target.name|re|i|s": "^a.*b.\\Z"}  # fmt: skip
    assert rule["severity"] == "high" and rule["attack"] == ["T1078"] and rule["id"] == "sigma.t"


def test_import_reads_a_quoted_boolean_on_a_boolean_field_as_the_boolean() -> None:
    """``actor.via_api: 'true'`` (Sigma values are strings; Splunk and Elasticsearch match it against the JSON
    boolean) imports as ``true`` and matches the API's events; it imported as the string, which no event
    equals, and now would not load."""
    det = {"s": {"type": "audit.lead_exported", "actor.via_api": ["TRUE"]}, "n": {"actor.via_api": "false"}}
    rule = import_rule(_doc({**det, "condition": "s and not n"}))
    assert rule["detection"]["s"]["actor.via_api"] == [True] and rule["detection"]["n"]["actor.via_api"] is False
    engine = RulesEngine.from_config({"defaults": {"enabled": False}, "custom": [rule]}, clock=FakeClock(T0))
    api = make_event("audit.lead_exported", time=T0, actor={"via_api": True})
    ui = make_event("audit.lead_exported", time=T0 + 1, actor={"via_api": False})
    assert [a.event_ids for a in engine.evaluate([api, ui]).alerts] == [(api.id,)]


UID = "5a2a3c9e-8a52-4b8c-9f6e-2f7b0c3d1e11"


def test_an_imported_description_ends_its_sentence_before_the_origin() -> None:
    """Sigma descriptions rarely end with a stop: "…corporate ranges Imported from Sigma rule …" read as one
    sentence; the origin is now a sentence of its own."""
    rule = import_rule(_doc({"s": {"type": "x"}, "condition": "s"}, description="Outside the ranges", id=UID))
    assert rule["description"] == f"Outside the ranges. Imported from Sigma rule {UID}."
    rule = import_rule(_doc({"s": {"type": "x"}, "condition": "s"}, description="Done.", id=UID))
    assert rule["description"] == f"Done. Imported from Sigma rule {UID}."


def test_import_keeps_an_escaped_star_at_an_end_literal_and_loadable() -> None:
    """Sigma's ``\\*admin`` is the literal text "*admin"; a plain value with a * at an end is refused by the rule
    language (a Sigma habit that never matched), so it imports as an anchored regex that loads and matches it."""
    rule = import_rule(_doc({"s": {"target.name": "\\*admin"}, "condition": "s"}))
    assert rule["detection"]["s"] == {"target.name|re|i|s": "^\\*admin\\Z"}
    engine = RulesEngine.from_config({"defaults": {"enabled": False}, "custom": [rule]}, clock=FakeClock(T0))
    hit = make_event("member.invited", time=T0, target={"kind": "member", "id": "m1", "name": "*Admin"})
    miss = make_event("member.invited", time=T0 + 1, target={"kind": "member", "id": "m2", "name": "xadmin"})
    assert [a.event_ids for a in engine.evaluate([hit, miss]).alerts] == [(hit.id,)]


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
    names = [f.name for f in exported.rglob("*.yml")]
    assert names and all(re.fullmatch(r"[a-z0-9_]{6,66}\.yml", n) for n in names), names
    assert "api_key_all_scope.yml" in names
    assert sigma_filename("a.b") == "instantly_a_b.yml"
    long_a, long_b = "x." + "y" * 90 + ".a", "x." + "y" * 90 + ".b"
    assert len(sigma_filename(long_a)) <= 70 and sigma_filename(long_a) != sigma_filename(long_b)


def test_export_carries_author_references_and_typed_related(tmp_path: Path) -> None:
    """A YAML rule's lifecycle keys become Sigma's author, references and related (UUID + relation type)."""
    rule = {"id": "custom.one", "title": "One", "severity": "low", "types": ["audit.*"], "author": "Sec team",
            "references": ["https://developer.instantly.ai/"], "fields": ["actor.ip"],
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
    assert doc["fields"] == ["actor.ip"]


def test_export_keeps_them_to_the_rules_own_selections() -> None:
    """``1 of them`` must not reach the rule_types selection export adds, nor lose _-prefixed selections."""
    det = export_detection({"a": {"actor.ip": "1.1.1.1"}, "_b": {"actor.ip": "2.2.2.2"}, "condition": "1 of them"},
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
        "actor.user_agent|re|i|s": "python.*requests",
        "target.name|endswith": "*x",
        "target.id|re": "a\\\\b\\*c",
    }
    anything = import_rule(_doc({"s": {"actor.ip": "*"}, "condition": "s"}))["detection"]
    assert anything == {"s_not": {"actor.ip": None}, "condition": "(not s_not)"}  # any value, not null
    mixed = import_rule(_doc({"s": {"target.name": ["exact", "pre*"]}, "condition": "s"}))["detection"]["s"]
    assert mixed == {"target.name|re|i|s": ["^exact\\Z", "^pre.*\\Z"]}
    full = import_rule(_doc({"s": {"type": "a"}, "condition": "s"}, status="test", author="A", falsepositives=["fp"],
                            fields=["actor.ip", "CommandLine"], id="929a690e-bef0-4204-a928-ef5e620d6fcc",
                            related=[{"id": "929a690e-bef0-4204-a928-ef5e620d6fcd", "type": "derived"}]))  # fmt: skip
    cased = import_rule(_doc({"s": {"target.name|contains|cased": "Adm"}, "condition": "s"}))["detection"]["s"]
    assert cased == {"target.name|contains|cased": "Adm"}
    assert (full["status"], full["author"], full["falsepositives"]) == ("test", "A", ["fp"])
    assert full["fields"] == ["actor.ip"]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (_doc({"k": {"|all": ["a", "b"]}, "condition": "k"}), "keyword"),
        (_doc({"s": {"actor.ip|contains|all": "x"}, "condition": "s"}), "|all needs a list"),
        (_doc({"s": {"actor.ip": ["", None]}, "condition": "s"}), "null cannot be part of a list"),
        (_doc({"s": {"actor.ip": "1.1.1.1"}}), "condition is missing"),
        (_doc({"s": {"actor.ip": "1.1.1.1"}, "condition": "s"}, status="unsupported"), "unsupported"),
        (_doc({"s": {"actor.user_name|expand": "%Administrators%"}, "condition": "s"}), "|expand"),
        (_doc({"s": {"target.name": []}, "condition": "s"}), "detection.s.target.name: the list of values is empty"),
        (_doc({"s": {"type": "x"}, "condition": "s"}, status="production"), "status 'production' is not a Sigma"),
        (_doc({"s": {"type": "x"}, "condition": "s"}, id="not-a-uuid"), "id 'not-a-uuid' is not a UUID"),
        (_doc({"s": {"type": "x"}, "condition": "s"},
              related=[{"id": "929a690e-bef0-4204-a928-ef5e620d6fcc", "type": "copied"}]),
         "related.0.type 'copied' is not a Sigma relation"),
        (_doc({"s": {"target.name|i": "a"}, "condition": "s"}), "|i is a regular expression flag; it needs |re"),
        (_doc({"s": {"target.name|contains|m": "a"}, "condition": "s"}), "|m is a regular expression flag"),
        (_doc({"_a": {"type": "x"}, "condition": "1 of them"}), "'1 of them' doesn't match any detection"),
        (_doc({"a": {"type": "x"}, "condition": "a or all of x*"}), "'all of x*' doesn't match any detection"),
    ],
)  # fmt: skip
def test_import_rejects_what_sigma_forbids_or_we_cannot_express(doc: dict[str, Any], reason: str) -> None:
    """sigma-rules-specification.md and the modifiers appendix: each rejection names the reason."""
    with pytest.raises(SigmaImportError, match=re.escape(reason)):
        import_rule(doc)


def _opened_per_case(cfg: dict[str, Any], rule_id: str, case_rule: str) -> list[bool]:
    """For each case of ``case_rule``'s case file: does ``rule_id`` open when the case's events play in order?"""
    assert PACK.cases_dir is not None
    doc = yaml.safe_load((PACK.cases_dir / f"{case_rule}.yaml").read_text(encoding="utf-8"))
    out = []
    for case in doc["cases"]:
        engine = RulesEngine.from_config(cfg, clock=FakeClock(T0))
        opened = False
        for n, r in enumerate(case["events"]):
            ev = make_event(r["type"], time=r.get("time", T0 + n), actor=r.get("actor"), target=r.get("target"),
                            change=r.get("change"), attributes=r.get("attributes"))  # fmt: skip
            opened |= any(a.rule.id == rule_id and a.status == "open" for a in engine.evaluate([ev]).alerts)
        out.append(opened)
    return out


@pytest.mark.parametrize("rule_id", ["corr.privilege_grant_burst", "corr.lead_export_spread"])
def test_correlation_export_imports_back_to_the_same_alerts(exported: Path, tmp_path: Path, rule_id: str) -> None:
    """An exported Sigma correlation, imported back, opens on exactly the cases the original opens on."""
    out = tmp_path / "imported.yaml"
    assert main(["rules", "import", str(exported / CORR / sigma_filename(rule_id)), "--output", str(out)]) == 0
    (new,) = yaml.safe_load(out.read_text(encoding="utf-8"))["rules"]
    assert new["correlation"]["type"] in ("event_count", "value_count")
    want = _opened_per_case({}, rule_id, rule_id)
    assert True in want and False in want
    assert _opened_per_case({"files": [str(out)]}, new["id"], rule_id) == want


def _base(name: str, sel: dict[str, Any]) -> dict[str, Any]:
    return {"title": name, "name": name, "logsource": {"product": "instantly"},
            "detection": {"s": sel, "condition": "s"}}  # fmt: skip


def test_import_of_spec_shaped_correlations() -> None:
    """sigma-correlation-rules-specification.md examples with Event v1 fields: rules by name or id, group-by,
    timespan, condition; the base rules are used by the correlation, not imported alone (unless generate)."""
    from pipeline.rules.sigma_correlation import import_collection

    failed = _base("failed_login", {"type": "audit.login_failed"}) | {"id": "5638f7c0-ac70-491d-8465-2a65075e0d86"}
    ok = _base("successful_login", {"type": "audit.login"})
    count: dict[str, Any] = {
        "title": "Many failed logins",
        "level": "high",
        "tags": ["attack.t1110"],
        "correlation": {
            "type": "event_count",
            "rules": ["5638f7c0-ac70-491d-8465-2a65075e0d86"],
            "group-by": ["actor.user_id"],
            "timespan": "1h",
            "condition": {"gte": 100},
        },
    }
    ordered = {"title": "Failed then success", "generate": True,
               "correlation": {"type": "temporal_ordered", "rules": ["failed_login", "successful_login"],
                               "group-by": ["actor.user_id"], "timespan": "90m"}}  # fmt: skip
    res = import_collection([("a", failed), ("b", ok), ("c", count), ("d", ordered)])
    by = {w: (r, m) for w, r, m in res}
    assert by["a"][1].startswith("imported") and by["b"][1].startswith("imported")  # generate: true on "d"
    c = by["c"][0]
    assert c is not None and c["severity"] == "high" and c["attack"] == ["T1110"]
    assert c["correlation"] | {"rules": None} == {"type": "event_count", "rules": None, "group-by": ["actor.user_id"],
                                                  "timespan": "1h", "condition": {"gte": 100}}  # fmt: skip
    d = by["d"][0]
    assert d is not None and [e["name"] for e in d["correlation"]["rules"]] == ["failed_login", "successful_login"]
    res = import_collection([("a", failed), ("c", count)])
    assert res[0] == ("a", None, "used by correlation 'Many failed logins'")
    gt = count | {"correlation": {**count["correlation"], "condition": {"gt": 3}}}
    (_, c, msg) = import_collection([("a", failed), ("c", gt)])[1]
    assert c is not None and c["correlation"]["condition"] == {"gt": 3}, msg  # compiled on import


@pytest.mark.parametrize(
    ("corr", "reason"),
    [
        ({"type": "value_sum", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1h",
          "condition": {"field": "attributes.bytes", "gt": 1}}, "value_sum"),
        ({"type": "event_count", "rules": ["b"], "aliases": {"ip": {"other": "actor.ip"}}, "group-by": ["ip"],
          "timespan": "1h", "condition": {"gte": 2}}, "names no field for rule 'b'"),
        ({"type": "event_count", "rules": ["nope"], "group-by": ["actor.ip"], "timespan": "1h",
          "condition": {"gte": 2}}, "names no rule"),
        ({"type": "event_count", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1h",
          "condition": {"ne": 2}}, "needs numeric gt, gte, lt, lte, eq or neq"),
        ({"type": "value_count", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1h",
          "condition": {"gte": 2}}, "condition.field"),
        ({"type": "event_count", "rules": ["b"], "group-by": ["ComputerName"], "timespan": "1h",
          "condition": {"gte": 2}}, "does not map to Event v1"),
        ({"type": "temporal", "rules": ["b", "b2"], "group-by": ["actor.ip"], "timespan": "1h",
          "condition": {"gte": 1}}, "other than all 2 rules"),
        ({"type": "event_count", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1 hour",
          "condition": {"gte": 2}}, "timespan"),
        ({"type": "event_count", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1w",
          "condition": {"gte": 2}}, "timespan '1w' is not a number and one of s, m, h, d"),
    ],
)  # fmt: skip
def test_import_rejects_correlations_we_cannot_express(corr: dict[str, Any], reason: str) -> None:
    """Each rejected correlation names the reason; its base rules are then not imported either."""
    from pipeline.rules.sigma_correlation import import_collection

    docs = [
        ("b", _base("b", {"type": "x"})),
        ("b2", _base("b2", {"type": "y"})),
        ("c", {"title": "C", "correlation": corr}),
    ]
    res = {w: (r, m) for w, r, m in import_collection(docs)}
    assert res["c"][0] is None and res["c"][1].startswith("rejected") and reason in res["c"][1], res["c"][1]


def test_import_reads_patterns_and_identifiers_as_pysigma_does() -> None:
    """pySigma leaves _-prefixed identifiers out of any pattern not starting with _ (``1 of *`` too), and
    accepts ``-`` in identifiers; the imported condition reaches the same selections."""
    det = {"sel-a": {"type": "x"}, "sel-b": {"type": "y"}, "_f": {"actor.ip": "1.1.1.1"},
           "condition": "1 of sel* and not 1 of *"}  # fmt: skip
    got = import_rule(_doc(det))["detection"]
    assert got["condition"] == "(sel_a or sel_b) and not (sel_a or sel_b)"
    assert set(got) == {"sel_a", "sel_b", "_f", "condition"}
    det = {"sel_x": {"type": "x"}, "sel-a": {"type": "y"}, "condition": "1 of sel_*"}  # sel-a is not sel_*
    assert import_rule(_doc(det))["detection"]["condition"] == "(sel_x)"
    got = import_rule(_doc({"a-1": {"type": "x"}, "condition": "a-1"}))["detection"]
    assert got == {"a_1": {"type": "x"}, "condition": "a_1"}
    assert (
        import_rule(_doc({"_f": {"type": "x"}, "s": {"type": "y"}, "condition": "1 of _*"}))["detection"]["condition"]
        == "1 of _*"
    )


def test_export_uses_modifiers_not_wildcards_for_type_globs() -> None:
    """pySigma's wildcards_instead_of_modifiers: type globs become startswith/endswith/contains;
    ``|all`` on a single value (invalid in Sigma) is dropped."""
    det = export_detection({"s": {"actor.user_agent|contains|all": ["x"]}, "condition": "s"},
                           ["audit.*", "*.deleted", "*key*", "member.invited", "a*b"], None)  # fmt: skip
    assert det["s"] == {"actor.user_agent|contains": ["x"]}
    assert det["rule_types"] == [{"type|startswith": "audit."}, {"type|endswith": ".deleted"},
                                 {"type|contains": "key"}, {"type": ["member.invited", "a*b"]}]  # fmt: skip


def test_field_name_aliases_both_ways(tmp_path: Path) -> None:
    """sigma-correlation-rules-specification.md "Field Name Aliases": an entry's own group-by is exported as
    an alias (pySigma resolves it) and Sigma aliases import as per-entry group-by."""
    from pipeline.rules.sigma_correlation import import_collection

    corr = {"id": "custom.key_then_use", "title": "Key created then used", "severity": "medium",
            "correlation": {"type": "temporal_ordered", "timespan": "1h", "rules": [
                {"name": "created", "types": ["api_key.created"], "detection": {"s": {"type": "api_key.created"}},
                 "group-by": ["target.id"]},
                {"name": "used", "types": ["audit.*"], "detection": {"s": {"actor.api_key_id|exists": True}},
                 "group-by": ["actor.api_key_id"]}]}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"rules": [corr]}), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"files": [str(tmp_path / "r.yaml")]}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg)]) == 0
    text = (out / CORR / "custom_key_then_use.yml").read_text(encoding="utf-8")
    coll = SigmaCollection.from_yaml(text)
    (sc,) = [r for r in coll.rules if isinstance(r, SigmaCorrelationRule)]
    assert not coll.errors and sc.group_by == ["workspace.id", "group_1"] and sc.aliases is not None
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    (back,) = [r for _, r, _ in import_collection([(str(i), d) for i, d in enumerate(docs)]) if r is not None]
    assert [e["group-by"] for e in back["correlation"]["rules"]] == [["target.id"], ["actor.api_key_id"]]
    spec_shaped = {"title": "Error then connection", "correlation": {
        "type": "temporal", "rules": ["internal_error", "new_network_connection"],
        "group-by": ["internal_ip"], "timespan": "10s",
        "aliases": {"internal_ip": {"internal_error": "target.id", "new_network_connection": "actor.ip"}}}}  # fmt: skip
    docs2 = [("a", _base("internal_error", {"type": "x"})), ("b", _base("new_network_connection", {"type": "y"})),
             ("c", spec_shaped)]  # fmt: skip
    (got,) = [r for _, r, _ in import_collection(docs2) if r is not None]
    assert [e["group-by"] for e in got["correlation"]["rules"]] == [["target.id"], ["actor.ip"]]


def test_import_gives_rules_with_one_title_distinct_ids_that_load(tmp_path: Path) -> None:
    """Two Sigma rules titled alike get distinct ids (the second one suffixed with its Sigma id), so the
    imported file loads; without a Sigma id a counter is the suffix."""
    first = _doc({"s": {"actor.ip|cidr": "10.0.0.0/8"}, "condition": "s"}, title="Suspicious login",
                 id="11111111-1111-4111-8111-111111111111")  # fmt: skip
    second = _doc({"s": {"actor.ip|cidr": "192.168.0.0/16"}, "condition": "s"}, title="Suspicious login",
                  id="22222222-2222-4222-8222-222222222222")  # fmt: skip
    third = _doc({"s": {"actor.ip": "1.2.3.4"}, "condition": "s"}, title="Suspicious login")
    src, out = tmp_path / "dup.yml", tmp_path / "imported.yaml"
    src.write_text(yaml.safe_dump_all([first, second, third]), encoding="utf-8")
    assert main(["rules", "import", str(src), "--output", str(out)]) == 0
    ids = [r["id"] for r in yaml.safe_load(out.read_text(encoding="utf-8"))["rules"]]
    assert ids == ["sigma.suspicious_login", "sigma.suspicious_login_22222222", "sigma.suspicious_login_2"]
    engine = RulesEngine.from_config({"files": [str(out)]}, clock=FakeClock(T0))
    assert {r.meta.id for r in engine.ruleset.rules} >= set(ids)


@pytest.mark.parametrize(
    ("corr", "reason"),
    [
        ({"type": "temporal", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "0s"},
         "correlation.timespan: must be greater than 0"),
        ({"type": "temporal", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "1h"},
         "temporal needs at least 2 entries"),
        ({"type": "event_count", "rules": ["b"], "group-by": ["actor.ip"], "timespan": "0s",
          "condition": {"gte": 3}}, "correlation.timespan: must be greater than 0"),
    ],
)  # fmt: skip
def test_import_rejects_a_correlation_the_engine_would_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corr: dict[str, Any], reason: str
) -> None:
    """Import compiles each correlation as the engine loads it: what the engine refuses is rejected with the
    compile error (exit 1), never reported as imported into a file that then fails to load."""
    src, out = tmp_path / "c.yml", tmp_path / "imported.yaml"
    src.write_text(yaml.safe_dump_all([{"title": "C", "correlation": corr}, _base("b", {"type": "x"})]),
                   encoding="utf-8")  # fmt: skip
    assert main(["rules", "import", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "c.yml#0: rejected" in err and reason in err, err
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["rules"] == []


def test_import_of_neq_negates_the_field_item_as_pysigma_does() -> None:
    """Modifiers appendix 2.1 ``neq``: the field differs from the values. pySigma negates the whole item
    (``not (f contains a or f contains b)``); import makes each ``neq`` item a selection the condition
    negates, in a mapping and in one mapping of a list."""
    from pipeline.rules.matcher import compile_detection

    det = {"s": {"type": "audit.login", "target.name|contains|neq": ["adm", "root"]}, "t": {"type": "audit.x"},
           "condition": "1 of *"}  # fmt: skip
    got = import_rule(_doc(det))["detection"]
    assert got == {"s": {"type": "audit.login"}, "s_not": {"target.name|contains": ["adm", "root"]},
                   "t": {"type": "audit.x"}, "condition": "((s and not s_not) or t)"}  # fmt: skip
    match = compile_detection(got)
    assert match(make_event("audit.login", time=T0, target={"kind": "user", "name": "bob"}))
    assert not match(make_event("audit.login", time=T0, target={"kind": "user", "name": "ADMIN"}))
    assert match(make_event("audit.login", time=T0))  # no name: it differs (pySigma: not (name = ...))
    alts = {"s": [{"type": "audit.login", "actor.ip|neq": "10.0.0.1"}, {"type": "audit.x"}], "condition": "s"}
    got = import_rule(_doc(alts))["detection"]
    assert got["condition"] == "(s or (s_0 and not s_0_not))"
    match = compile_detection(got)
    assert match(make_event("audit.login", time=T0, actor={"ip": "10.0.0.2"}))
    assert not match(make_event("audit.login", time=T0, actor={"ip": "10.0.0.1"}))
    assert match(make_event("audit.x", time=T0, actor={"ip": "10.0.0.1"}))


def test_import_wildcards_span_newlines_and_anchor_at_the_very_end() -> None:
    """A Sigma ``*`` matches any characters, newlines included, and the value must end there: ``a*z`` matches
    "a\\nz" and not "az\\n" (a regex ending in ``$`` matched before a trailing newline)."""
    from pipeline.rules.matcher import compile_detection

    det = import_rule(_doc({"s": {"target.name": "a*z"}, "condition": "s"}))["detection"]
    match = compile_detection(det)

    def named(name: str) -> Event:
        return make_event("audit.x", time=T0, target={"kind": "user", "name": name})

    assert match(named("a\nz")) and match(named("AbcZ"))
    assert not match(named("az\n")) and not match(named("abzq"))
    cased = import_rule(_doc({"s": {"target.name|cased": "A?z"}, "condition": "s"}))["detection"]["s"]
    assert cased == {"target.name|re|s": "^A.z\\Z"}
    assert compile_detection({"s": cased})(named("A\nz"))


def test_import_wildcards_as_regex_match_numbers_as_strings() -> None:
    """Sigma compares values as strings: ``'2?'`` (a regex once imported) matches the integer 26 as ``'2*'``
    (startswith) already did."""
    from pipeline.rules.matcher import compile_detection

    def code(value: str) -> bool:
        det = import_rule(_doc({"s": {"attributes.activity_code": value}, "condition": "s"}))["detection"]
        return compile_detection(det)(make_event("audit.x", time=T0, attributes={"activity_code": 26}))

    assert code("2?") and code("2*") and code("*6") and not code("2?7")


def _export_user_rules(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    """``rules export --format sigma`` of the given YAML rules (with the built-in ones) into tmp_path/out."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"rules": rules}), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"files": [str(tmp_path / "r.yaml")]}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg)]) == 0
    return out


def test_export_writes_null_in_a_value_list_as_a_list_of_mappings(tmp_path: Path) -> None:
    """Sigma forbids null inside a value list: ``{actor.ip: [null, 1.2.3.4], type: x}`` is exported as
    ``[{actor.ip: null, ...}, {actor.ip: 1.2.3.4, ...}]`` (the same OR), pySigma parses it, and the import of
    the export matches the same events."""
    rule = {"id": "custom.nulllist", "title": "null list rule", "severity": "low",
            "detection": {"s": {"actor.ip": [None, "1.2.3.4"], "type": "audit.x"}, "condition": "s"}}  # fmt: skip
    out = _export_user_rules(tmp_path, [rule])
    text = (out / "custom_nulllist.yml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert doc["detection"]["s"] == [{"type": "audit.x", "actor.ip": None}, {"type": "audit.x", "actor.ip": "1.2.3.4"}]
    coll = SigmaCollection.from_yaml(text)
    assert not coll.errors and not coll.rules[0].errors
    imported = tmp_path / "imported.yaml"
    assert main(["rules", "import", str(out / "custom_nulllist.yml"), "--output", str(imported)]) == 0
    (new,) = yaml.safe_load(imported.read_text(encoding="utf-8"))["rules"]
    for actor, want in (({}, True), ({"ip": "1.2.3.4"}, True), ({"ip": "9.9.9.9"}, False)):
        ev = make_event("audit.x", time=T0, actor=actor)
        assert _opens({"files": [str(tmp_path / "r.yaml")]}, "custom.nulllist", ev) is want
        assert _opens({"files": [str(imported)]}, new["id"], ev) is want


def test_export_adds_its_selections_under_names_the_rule_does_not_use() -> None:
    """A rule's own ``rule_types`` / ``rule_activity_codes`` selections are kept; the added ones take free names."""
    det = export_detection({"rule_types": {"target.name": "evil"}, "rule_activity_codes": {"target.id": "x"},
                            "condition": "rule_types or rule_activity_codes"}, ["audit.*"], [3])  # fmt: skip
    assert det["rule_types"] == {"target.name": "evil"} and det["rule_activity_codes"] == {"target.id": "x"}
    assert det["rule_types_2"] == {"type|startswith": "audit."}
    assert det["rule_activity_codes_2"] == {"attributes.activity_code": 3}
    assert det["condition"] == "(rule_types or rule_activity_codes) and rule_types_2 and rule_activity_codes_2"
    them = export_detection({"rule_types": {"target.name": "evil"}, "condition": "1 of rule*"}, ["audit.*"], None)
    assert them["condition"] == "((rule_types)) and rule_types_2"  # the pattern must not reach the added one


def test_every_exported_file_stands_alone_and_references_rules_by_name(tmp_path: Path) -> None:
    """A correlation entry ``rule: <id>`` is exported inside the correlation's file (a named copy), so pySigma
    resolves each file loaded alone; aliases key by that ``name`` (correlation spec, "Field Name Aliases");
    ``generate: true`` is set when the referenced rule alerts on its own (enabled), not otherwise. The
    import of the export opens on the same events."""
    created = {"id": "custom.key_created", "title": "Key created", "severity": "low", "types": ["api_key.created"],
               "detection": {"s": {"target.kind": "api_key"}}}  # fmt: skip
    quiet = {"id": "custom.key_quiet", "title": "Key updated", "severity": "low", "types": ["api_key.updated"],
             "enabled": False, "detection": {"s": {"target.kind": "api_key"}}}  # fmt: skip
    used = {"name": "used", "types": ["audit.*"], "detection": {"u": {"actor.api_key_id|exists": True}},
            "group-by": ["actor.api_key_id"]}  # fmt: skip
    ref = {"id": "custom.created_then_used", "title": "Key created then used", "severity": "high",
           "correlation": {"type": "temporal", "rules": [{"rule": "custom.key_created"}, used],
                           "group-by": ["target.id"], "timespan": "1h"}}  # fmt: skip
    burst = {"id": "custom.quiet_burst", "title": "Updates", "severity": "medium",
             "correlation": {"type": "event_count", "rules": ["custom.key_quiet"], "group-by": ["actor.user_id"],
                             "timespan": "1h", "condition": {"gt": 1}}}  # fmt: skip
    out = _export_user_rules(tmp_path, [created, quiet, ref, burst])
    for f in sorted(out.rglob("*.yml")):
        coll = SigmaCollection.from_yaml(f.read_text(encoding="utf-8"))
        coll.resolve_rule_references()  # raises SigmaRuleNotFoundError for a rule outside the file
        assert not coll.errors and not any(r.errors for r in coll.rules), f.name
    docs = list(yaml.safe_load_all((out / CORR / "custom_created_then_used.yml").read_text(encoding="utf-8")))
    corr, bases = docs[0], docs[1:]
    names = [b["name"] for b in bases]
    assert corr["correlation"]["rules"] == names == ["custom_created_then_used_custom_key_created",
                                                      "custom_created_then_used_used"]  # fmt: skip
    assert corr["correlation"]["aliases"] == {"group_1": {names[0]: "target.id", names[1]: "actor.api_key_id"}}
    assert corr["generate"] is True and corr["correlation"]["generate"] is True
    assert bases[0]["detection"]["s"] == {"target.kind": "api_key"} and bases[0]["level"] == "low"
    assert bases[0]["id"] != sigma_id("custom.key_created")  # the stand-alone file keeps that id
    (quiet_corr, quiet_base) = yaml.safe_load_all((out / CORR / "custom_quiet_burst.yml").read_text(encoding="utf-8"))
    assert "generate" not in quiet_corr and "generate" not in quiet_corr["correlation"]
    assert quiet_corr["correlation"]["condition"] == {"gt": 1} and "level" not in quiet_base
    # a disabled rule is not exported on its own (README lists it as skipped): its copy must not say it is
    assert "also exported on its own" in bases[0]["description"]
    assert "also exported on its own" not in quiet_base["description"], quiet_base["description"]
    assert "custom.key_quiet (disabled here: it does not alert on its own)" in quiet_base["description"]
    (sc,) = [r for r in SigmaCollection.from_yaml(yaml.safe_dump_all([quiet_corr, quiet_base])).rules
             if isinstance(r, SigmaCorrelationRule)]  # fmt: skip
    assert isinstance(sc.condition, SigmaCorrelationCondition) and sc.condition.op.name == "GT" and not sc.generate
    whole = SigmaCollection.load_ruleset([str(f) for f in sorted(out.rglob("*.yml"))])
    whole.resolve_rule_references()
    imported = tmp_path / "imported.yaml"
    assert main(["rules", "import", str(out / CORR / "custom_created_then_used.yml"), "--output", str(imported)]) == 0
    back = yaml.safe_load(imported.read_text(encoding="utf-8"))["rules"]
    want_ids = ["sigma.key_created_then_used", "sigma.key_created_then_used_key_created",
                "sigma.key_created_then_used_used"]  # fmt: skip
    assert [r["id"] for r in back] == want_ids  # generate: the bases are imported on their own too
    for key, want in (("K1", True), ("K2", False)):
        evs = [make_event("api_key.created", time=T0, target={"kind": "api_key", "id": "K1"}),
               make_event("audit.x", time=T0 + 5, actor={"api_key_id": key})]  # fmt: skip
        for cfg, rid in (({"files": [str(tmp_path / "r.yaml")]}, "custom.created_then_used"),
                         ({"files": [str(imported)]}, "sigma.key_created_then_used")):  # fmt: skip
            res = RulesEngine.from_config(cfg, clock=FakeClock(T0)).evaluate(evs)
            assert any(a.rule.id == rid and a.status == "open" for a in res.alerts) is want, (rid, key)


def test_exported_files_are_indented_by_four_spaces(exported: Path) -> None:
    """sigma-rules-specification.md "Yaml File": indentation of 4 spaces (block style, lists indented too)."""
    for f in sorted(exported.rglob("*.yml")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
        assert all((len(ln) - len(ln.lstrip(" "))) % 4 == 0 for ln in lines), f.name
    text = (exported / "auth_recovery_code_used.yml").read_text(encoding="utf-8")
    assert "\nlogsource:\n    product: instantly\n    service: audit\n" in text
    assert "\nfalsepositives:\n    - " in text and "\ntags:\n    - attack." in text


def test_export_writes_regexes_re2_compiles(tmp_path: Path) -> None:
    """A mid-value wildcard imports as ``re`` ending in ``\\Z`` (the very end of the value, for Python); RE2,
    which pySigma 2 compiles regexes with, has no ``\\Z``: the export writes ``$`` (RE2's end of text without
    ``m``), ``(?-m:$)`` with ``m``, and pySigma loads the file. A regex RE2 cannot read at all (a lookahead)
    skips the rule with the reason."""
    from pipeline.rules.matcher import compile_detection

    imported = import_rule(_doc({"s": {"target.name": "adm*n"}, "condition": "s"}))
    assert imported["detection"]["s"] == {"target.name|re|i|s": "^adm.*n\\Z"}
    multi = {"id": "custom.multiline", "title": "m flag", "severity": "low",
             "detection": {"s": {"target.name|re|m": "^x\\Z|\\\\Z[Z]"}, "condition": "s"}}  # fmt: skip
    ahead = {"id": "custom.lookahead", "title": "lookahead", "severity": "low",
             "detection": {"s": {"target.name|re": "^(?!svc-)"}, "condition": "s"}}  # fmt: skip
    out = _export_user_rules(tmp_path, [imported, multi, ahead])
    for name, want in ((sigma_filename(imported["id"]), "^adm.*n$"), ("custom_multiline.yml", "^x(?-m:$)|\\\\Z[Z]")):
        text = (out / name).read_text(encoding="utf-8")
        (value,) = yaml.safe_load(text)["detection"]["s"].values()
        assert value == want
        coll = SigmaCollection.from_yaml(text)
        assert not coll.errors and not coll.rules[0].errors, name
    assert not (out / "custom_lookahead.yml").exists()
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "`custom.lookahead`: target.name|re '^(?!svc-)'" in readme and "RE2" in readme
    again = import_rule(yaml.safe_load((out / sigma_filename(imported["id"])).read_text(encoding="utf-8")))
    match = compile_detection(again["detection"])
    assert match(make_event("audit.x", time=T0, target={"kind": "user", "name": "ADMIN"}))
    assert not match(make_event("audit.x", time=T0, target={"kind": "user", "name": "admins"}))
