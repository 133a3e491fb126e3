"""Sigma interop where a reading differs from pySigma's: each case either means the same on both sides or is
refused with a one-line reason naming the construct (never silently read another way)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule

from pipeline.cli.main import main
from pipeline.clock import FakeClock, parse_time
from pipeline.rules.engine import RulesEngine
from pipeline.rules.matcher import compile_detection
from pipeline.rules.sigma import SigmaImportError, import_rule
from pipeline.rules.sigma_correlation import import_collection
from pipeline.rules.testing import make_event
from schemas.event import Event

T0 = parse_time("2026-03-01T00:00:00Z")


def _base(name: str, sel: dict[str, Any]) -> dict[str, Any]:
    return {"title": name, "name": name, "logsource": {"product": "instantly"},
            "detection": {"s": sel, "condition": "s"}}  # fmt: skip


def _doc(detection: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"title": "T", "logsource": {"product": "instantly"}, "detection": detection, **extra}


def _ev(type_: str = "audit.x", **kw: Any) -> Event:
    return make_event(type_, time=T0, **kw)


def _attrs(**a: Any) -> Event:
    return _ev(attributes=a)


def _name(n: str) -> Event:
    return _ev(target={"kind": "user", "name": n})


def _pred(doc: dict[str, Any]) -> Any:
    return compile_detection(import_rule(doc)["detection"])


def _corr(corr: dict[str, Any], *bases: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    docs = [(b["name"], b) for b in bases] + [("c", {"title": "C", "correlation": corr})]
    return {w: (r, m) for w, r, m in import_collection(docs)}["c"]


# ---- 1. temporal conditions --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["temporal", "temporal_ordered"])
def test_an_extended_temporal_condition_is_refused_not_dropped(kind: str) -> None:
    """pySigma parses ``key_created and not key_deleted`` as an extended condition; reading only a mapping
    imported "created and deleted" — alerting on exactly the case the rule excludes."""
    corr = {"type": kind, "rules": ["key_created", "key_deleted"], "group-by": ["target.id"], "timespan": "10m",
            "condition": "key_created and not key_deleted"}  # fmt: skip
    rule, msg = _corr(corr, _base("key_created", {"type": "api_key.created"}),
                      _base("key_deleted", {"type": "api_key.deleted"}))  # fmt: skip
    assert rule is None and "extended temporal conditions are not supported" in msg, msg
    for odd in (["gte", 2], 2, True):
        rule, msg = _corr(dict(corr, condition=odd), _base("key_created", {"type": "api_key.created"}),
                          _base("key_deleted", {"type": "api_key.deleted"}))  # fmt: skip
        assert rule is None and "is not a mapping" in msg, msg


def test_the_reviewers_extended_condition_file_is_rejected(tmp_path: Path) -> None:
    """The whole file through the CLI: the correlation is rejected (exit 1), nothing imported opens."""
    text = """title: Key created and NOT deleted within 10m
correlation:
    type: temporal
    rules: [key_created, key_deleted]
    group-by: [target.id]
    timespan: 10m
    condition: key_created and not key_deleted
level: high
---
title: key created
name: key_created
logsource: {product: instantly}
detection: {selection: {type: api_key.created}, condition: selection}
---
title: key deleted
name: key_deleted
logsource: {product: instantly}
detection: {selection: {type: api_key.deleted}, condition: selection}
"""
    f = tmp_path / "ext.yml"
    f.write_text(text, encoding="utf-8")
    out = tmp_path / "out.yaml"
    assert main(["rules", "import", str(f), "--output", str(out)]) == 1
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["rules"] == []


# ---- 2. quantifiers with any whitespace ---------------------------------------------------------
@pytest.mark.parametrize("cond", ["1  of them", "1 of\tthem", "all  of sel*", "any\t of them"])
def test_quantifiers_with_extra_whitespace_leave_out_underscore_identifiers(cond: str) -> None:
    """pySigma's parser takes any whitespace between ``1``/``all``, ``of`` and the pattern; its reading
    (``_``-prefixed identifiers left out) must apply to those spellings too."""
    det = {"sel_a": {"attributes.a": 1}, "_sel_f": {"attributes.b": 1}, "condition": cond}
    if cond.startswith("any"):
        cond = cond.replace("any", "1")
    sigma = SigmaCollection.from_yaml(yaml.safe_dump(_doc(dict(det, condition=cond)))).rules[0]
    assert not sigma.errors
    p = _pred(_doc(det))
    assert p(_attrs(a=1)) and not p(_attrs(b=1))


def test_neq_split_under_a_spaced_quantifier_keeps_its_meaning() -> None:
    """``1  of sel*`` over a selection with a ``|neq`` item: the split selections stay one AND."""
    det = {"sel": {"attributes.a": 1, "attributes.b|neq": 2}, "condition": "1  of sel*"}
    p = _pred(_doc(det))
    assert not p(_attrs(a=1, b=2)) and not p(_attrs(a=5, b=2)) and p(_attrs(a=1, b=3))


def test_export_writes_out_spaced_quantifiers_too() -> None:
    """Export: ``1  of them`` over a rule with a ``_`` selection is written out as our reading."""
    from pipeline.rules.sigma import export_detection

    det = export_detection({"a": {"attributes.x": 1}, "_b": {"attributes.y": 2}, "condition": "all  of them"},
                           ["*"], None)  # fmt: skip
    assert det["condition"] == "(a and _b)"


# ---- 6/7. upper-bound and multi-operator correlation conditions -----------------------------------
@pytest.mark.parametrize("cond", [{"lt": 5}, {"lte": 5}, {"eq": 3}, {"neq": 3}])
def test_upper_bound_correlation_conditions_are_refused_on_import(cond: dict[str, int]) -> None:
    corr = {"type": "event_count", "rules": ["b"], "group-by": ["actor.user_id"], "timespan": "1h", "condition": cond}
    rule, msg = _corr(corr, _base("b", {"type": "audit.login"}))
    assert rule is None and f"condition {next(iter(cond))}: conditions with an upper bound" in msg, msg


def test_an_impossible_date_is_rejected_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unquoted ``date: 2024-13-45`` made PyYAML raise ValueError while reading the file: ``rules import``
    ended in a traceback. The value stays text and is rejected as the quoted form is."""
    f = tmp_path / "d.yml"
    f.write_text("title: D\ndate: 2024-13-45\nlogsource: {product: instantly}\n"
                 "detection: {s: {type: audit.login}, condition: s}\n", encoding="utf-8")  # fmt: skip
    assert main(["rules", "import", str(f)]) == 1
    assert f"rules import: {f}: rejected: date '2024-13-45' is not a date" in capsys.readouterr().err


def test_yaml_nested_thousands_deep_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 nested ``[`` made PyYAML recurse past Python's limit: ``rules import`` crashed with a traceback."""
    f = tmp_path / "deep.yml"
    f.write_text("title: " + "[" * 3000 + "]" * 3000 + "\n", encoding="utf-8")
    assert main(["rules", "import", str(f)]) == 2
    assert capsys.readouterr().err == f"rules import: {f}: cannot read (YAMLNestingError)\n"


def test_rules_given_as_one_string_is_that_one_rule() -> None:
    """pySigma reads ``rules: failed_login`` as ``[failed_login]`` (as it reads ``group-by``); the import
    refused it ("must list the correlated rules") and its collection pass read the name letter by letter."""
    corr = {"type": "event_count", "rules": "b", "group-by": ["actor.user_id"], "timespan": "1h",
            "condition": {"gte": 3}}  # fmt: skip
    base = _base("b", {"type": "audit.login"})
    res = {w: (r, m) for w, r, m in import_collection([("b", base), ("c", {"title": "C", "correlation": corr})])}
    rule, msg = res["c"]
    assert rule is not None, msg
    assert [e["name"] for e in rule["correlation"]["rules"]] == ["b"]
    assert res["b"] == (None, "used by correlation 'C'")
    text = yaml.safe_dump(base) + "---\n" + yaml.safe_dump({"title": "C", "correlation": corr})
    assert not SigmaCollection.from_yaml(text).errors


@pytest.mark.parametrize("kind", ["temporal", "temporal_ordered", "event_count"])
def test_a_rule_named_twice_in_a_correlation_is_refused(kind: str) -> None:
    """The specification's JSON schema has ``uniqueItems`` on ``correlation.rules``; imported, ``temporal``
    with ``[login, login]`` opened on one single login (Splunk's conversion counts distinct rules: never)."""
    corr = {"type": kind, "rules": ["b", "b"], "group-by": ["actor.user_id"], "timespan": "1h",
            **({"condition": {"gte": 2}} if kind == "event_count" else {})}  # fmt: skip
    rule, msg = _corr(corr, _base("b", {"type": "audit.login"}))
    assert rule is None and msg == "rejected: correlation.rules names 'b' more than once", msg


def test_the_specification_range_example_is_refused_for_its_upper_bound() -> None:
    """sigma-correlation-rules-specification.md's range "101 to 200" (``gt: 100, lte: 200``) is valid Sigma:
    the reason it cannot run here is its upper bound, not the number of operators."""
    corr = {"type": "event_count", "rules": ["b"], "group-by": ["actor.user_id"], "timespan": "1h",
            "condition": {"gt": 100, "lte": 200}}  # fmt: skip
    rule, msg = _corr(corr, _base("b", {"type": "audit.login"}))
    assert rule is None and "condition lte: conditions with an upper bound" in msg, msg


def test_a_condition_with_two_operators_is_refused_as_pysigma_does() -> None:
    corr = {"type": "event_count", "rules": ["b"], "group-by": ["actor.user_id"], "timespan": "1h",
            "condition": {"gt": 2, "gte": 4}}  # fmt: skip
    rule, msg = _corr(corr, _base("b", {"type": "audit.login"}))
    assert rule is None and "exactly one operator" in msg, msg


def test_a_two_operator_correlation_is_skipped_on_export(tmp_path: Path) -> None:
    """pySigma cannot parse a condition with two operators: the rule is skipped with the reason."""
    rule = {"id": "custom.range_corr", "title": "Range", "severity": "medium",
            "correlation": {"type": "event_count", "group-by": ["actor.user_id"], "timespan": "1h",
                            "condition": {"gt": 2, "gte": 4},
                            "rules": [{"name": "c", "types": ["api_key.created"],
                                       "detection": {"s": {"type": "api_key.created"}}}]}}  # fmt: skip
    out = _export(tmp_path, [rule])
    assert not list(out.rglob("custom_range_corr.yml"))
    assert "`custom.range_corr`: condition" in (out / "README.md").read_text(encoding="utf-8")


def test_group_by_as_one_string_is_one_field() -> None:
    """pySigma reads ``group-by: actor.user_id`` as ``[actor.user_id]``; it was read letter by letter."""
    corr = {"type": "event_count", "rules": ["b"], "group-by": "actor.user_id", "timespan": "1h",
            "condition": {"gte": 2}}  # fmt: skip
    rule, msg = _corr(corr, _base("b", {"type": "audit.login"}))
    assert rule is not None and rule["correlation"]["group-by"] == ["actor.user_id"], msg


def _export(tmp_path: Path, rules: list[dict[str, Any]], *extra: str) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"defaults": {"enabled": True}, "custom": rules}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg), *extra]) == 0
    return out


def _engine_opens(rules_file: Path, rule_id: str, events: list[Event], fresh: bool = False) -> list[bool]:
    """Per event: did it open an alert of the rule (``fresh``: each event on its own engine, no dedup)."""

    def new() -> RulesEngine:
        return RulesEngine.from_config({"files": [str(rules_file)]}, clock=FakeClock(T0))

    engine = new()
    return [any(a.rule.id == rule_id and a.status == "open" for a in (new() if fresh else engine).evaluate([e]).alerts)
            for e in events]  # fmt: skip


def _raises(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(SigmaImportError) as info:
        import_rule(doc)
    assert reason in str(info.value), str(info.value)


# ---- 3. two items of one mapping that become one key ------------------------------------------------
def test_items_converting_to_one_key_are_all_kept() -> None:
    """Sigma ANDs a mapping's items: ``{f: 'adm*', f|startswith: x}`` matches nothing; both become
    ``f|startswith`` and the second overwrote the first (matching every ``x…``)."""
    p = _pred(_doc({"s": {"target.name": "adm*", "target.name|startswith": "x"}, "condition": "s"}))
    assert [p(_name(n)) for n in ("adm_svc", "x1", "admx")] == [False, False, False]
    p = _pred(_doc({"s": {"target.name": "adm*", "target.name|startswith": "ad", "type": "audit.x"},
                    "condition": "s"}))  # fmt: skip
    assert [p(_name(n)) for n in ("adm_svc", "ad", "x")] == [True, False, False]
    alts = {"s": [{"target.name": "adm*", "target.name|startswith": "x"}, {"target.name": "root"}],
            "t": {"type": "audit.x"}, "condition": "s and t"}  # fmt: skip
    p = _pred(_doc(alts))
    assert [p(_name(n)) for n in ("adm1", "x1", "root")] == [False, False, True]
    both = {"s": {"target.name": "adm*", "target.name|startswith": "a", "target.name|neq": "adm_svc"},
            "condition": "1 of them"}  # fmt: skip
    p = _pred(_doc(both))
    assert [p(_name(n)) for n in ("adm1", "adm_svc", "bob")] == [True, False, False]


# ---- 10. a lone "*" ---------------------------------------------------------------------------------
def test_a_lone_wildcard_matches_any_value_but_not_null() -> None:
    """Sigma backends' ``f=*`` does not match a null field; ``|exists: true`` did."""
    p = _pred(_doc({"s": {"attributes.f": "*"}, "condition": "s"}))
    assert [p(_attrs(f=None)), p(_attrs()), p(_attrs(f=True)), p(_attrs(f="")), p(_attrs(f="x"))] == [
        False, False, True, True, True]  # fmt: skip
    p = _pred(_doc({"s": {"target.name": "*", "target.name|exists": False}, "condition": "s"}))
    assert not p(_name("a")) and not p(_ev())


# ---- 5. temporal_ordered with a repeated first step, end to end ------------------------------------
ORDERED = """title: Login then key created then webhook created
correlation:
    type: temporal_ordered
    rules: [step_a, step_b, step_c]
    group-by: [actor.user_id]
    timespan: 10m
level: high
---
title: a
name: step_a
logsource: {product: instantly}
detection: {s: {type: audit.login}, condition: s}
---
title: b
name: step_b
logsource: {product: instantly}
detection: {s: {type: api_key.created}, condition: s}
---
title: c
name: step_c
logsource: {product: instantly}
detection: {s: {type: webhook.created}, condition: s}
"""


def test_imported_temporal_ordered_fires_when_a_login_repeats_mid_sequence(tmp_path: Path) -> None:
    """login, key created, login, webhook created within 10 min: the sequence login → key → webhook happened
    (Sigma backends alert); the second login threw the chain away."""
    src = tmp_path / "ord.yml"
    src.write_text(ORDERED, encoding="utf-8")
    out = tmp_path / "rules.yaml"
    assert main(["rules", "import", str(src), "--output", str(out)]) == 0
    actor = {"user_id": "u1"}
    evs = [make_event(t, time=T0 + 60 * n, actor=actor, target={"kind": "api_key", "id": "K1"})
           for n, t in enumerate(["audit.login", "api_key.created", "audit.login", "webhook.created"])]  # fmt: skip
    rid = "sigma.login_then_key_created_then_webhook_created"
    assert _engine_opens(out, rid, evs) == [False, False, False, True]


# ---- 4. filters ----------------------------------------------------------------------------------
KEY_DET = {"selection": {"type": "api_key.created"}, "_x": {"target.id": "K9"}, "condition": "1 of them"}
KEY_RULE = {"title": "API key created", "id": "6f3e2987-db24-4c78-a860-b4f4095a7095", "name": "key_created",
            "logsource": {"product": "instantly"}, "detection": KEY_DET, "level": "high"}  # fmt: skip
KEYS_CORR = {"type": "event_count", "rules": ["key_created"], "group-by": ["actor.user_id"], "timespan": "1h",
             "condition": {"gte": 1}}  # fmt: skip


def _filter(rules: Any, cond: str = "not selection", **extra: Any) -> dict[str, Any]:
    return {"title": "Not the automation account", "logsource": {"product": "instantly"},
            "filter": {"rules": rules, "selection": {"actor.user_id|startswith": "svc_"}, "condition": cond},
            **extra}  # fmt: skip


def _key_event(user: str) -> Event:
    return make_event("api_key.created", time=T0, actor={"user_id": user}, target={"kind": "api_key", "id": "K1"})


@pytest.mark.parametrize("rules", [["6f3e2987-db24-4c78-a860-b4f4095a7095"], ["key_created"], "any", []])
def test_a_filter_is_applied_to_the_rules_it_names_as_pysigma_does(rules: Any) -> None:
    """The rule was imported without its filter (alerting on what the filter excludes); now the filter's
    condition is ANDed in with its selections prefixed, and ``1 of them`` of the rule does not reach them."""
    res = import_collection([("r", KEY_RULE), ("f", _filter(rules))])
    (rule, msg), (none, fmsg) = [(r, m) for _, r, m in res]
    assert rule is not None and "filtered by 'Not the automation account'" in msg, msg
    assert none is None and fmsg == "filter applied to 1 rule(s)"
    text = yaml.safe_dump({"title": "x", **KEY_RULE}) + "---\n" + yaml.safe_dump(_filter(rules))
    sigma = SigmaCollection.from_yaml(text).rules[0]
    p = compile_detection(rule["detection"])
    assert isinstance(sigma, SigmaRule) and sigma.detection.condition[0].endswith("_selection)")
    assert [p(_key_event("alice")), p(_key_event("svc_ci"))] == [True, False]


def test_a_filter_for_another_log_source_or_rule_does_not_apply() -> None:
    other = _filter("any", logsource={"product": "windows"})
    res = import_collection([("r", KEY_RULE), ("f", other)])
    assert res[0][2] == "imported as sigma.api_key_created"
    assert res[1][2].startswith("rejected: the filter applies to no rule")
    res = import_collection([("r", KEY_RULE), ("f", _filter(["other_rule"]))])
    assert res[0][2] == "imported as sigma.api_key_created" and res[1][2].startswith("rejected")


def test_a_filter_naming_a_rule_of_another_log_source_says_so() -> None:
    """The filter names the rule, but pySigma applies a filter only to rules of its log source: the rejection
    names that mismatch and the rule, not "applies to no rule of the imported files" (the rule is there)."""
    other = _filter(["6f3e2987-db24-4c78-a860-b4f4095a7095"], logsource={"product": "windows"})
    res = import_collection([("r", KEY_RULE), ("f", other)])
    assert res[0][2] == "imported as sigma.api_key_created"
    assert res[1][2] == (
        "rejected: the filter's logsource {'product': 'windows'} is not that of the rule it names "
        "(r: {'product': 'instantly'}); pySigma applies a filter only to rules of its log source"
    ), res[1][2]


def test_a_filter_that_cannot_be_read_refuses_the_rules_it_names() -> None:
    """Without the filter the rule would match what it excludes: both are rejected, and so is a correlation
    using the rule."""
    bad = _filter(["key_created"], cond=["not selection", "selection"])  # type: ignore[arg-type]
    corr = {"title": "Keys", "correlation": KEYS_CORR}
    res = {w: (r, m) for w, r, m in import_collection([("r", KEY_RULE), ("f", bad), ("c", corr)])}
    assert res["r"][0] is None and "filter f names this rule and cannot be applied" in res["r"][1], res["r"][1]
    assert res["f"][1].startswith("rejected: filter.condition must be one string")
    assert res["c"][0] is None and "cannot be applied" in res["c"][1]


def test_a_correlation_counts_the_filtered_rule(tmp_path: Path) -> None:
    """pySigma filters the rule objects the correlation references: the imported correlation uses the
    filtered selection too."""
    corr = {"title": "Keys", "correlation": KEYS_CORR}
    res = {w: (r, m) for w, r, m in import_collection([("r", KEY_RULE), ("f", _filter("any")), ("c", corr)])}
    c = res["c"][0]
    assert c is not None
    p = compile_detection(c["correlation"]["rules"][0]["detection"])
    assert [p(_key_event("alice")), p(_key_event("svc_ci"))] == [True, False]


# ---- 11. metadata as strict as pySigma; collection files ---------------------------------------------
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"tags": "attack.t1078"}, "tags must be a list"),
        ({"tags": ["Attack T1078"]}, "tag 'Attack T1078' is not <namespace>.<name>"),
        ({"modified": "yesterday"}, "modified 'yesterday' is not a date"),
        ({"date": "2023/13/01"}, "date '2023/13/01' is not a date"),
        ({"author": ["a", "b"]}, "author must be a string"),
        ({"falsepositives": "admins"}, "falsepositives must be a list"),
        ({"references": "https://x"}, "references must be a list"),
        ({"title": "x" * 257}, "title is longer than 256 characters"),
    ],
)
def test_metadata_pysigma_refuses_is_refused(extra: dict[str, Any], reason: str) -> None:
    doc = _doc({"s": {"type": "audit.login"}, "condition": "s"}, **extra)
    with pytest.raises(Exception) as info:
        SigmaCollection.from_yaml(yaml.safe_dump(doc)).rules[0]
    assert str(info.value)
    _raises(doc, reason)


def test_metadata_pysigma_accepts_is_accepted() -> None:
    import datetime

    doc = _doc({"s": {"type": "audit.login"}, "condition": "s"}, level="High", date="2023/1/5",
               modified=datetime.date(2024, 2, 1), license="MIT", tags=["attack.t1078", "cve.2021-1234"])  # fmt: skip
    assert not SigmaCollection.from_yaml(yaml.safe_dump(doc)).rules[0].errors
    rule = import_rule(doc)
    assert rule["severity"] == "high" and rule["attack"] == ["T1078"]


def test_a_collection_file_is_refused_as_a_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """action: global merges into the documents after it (here the level and tags); imported one by one they
    lost them or, with a global detection, part of their condition."""
    text = """action: global
logsource: {product: instantly}
level: critical
tags: [attack.t1098]
---
title: Webhook deleted
logsource: {product: instantly}
detection: {selection: {type: webhook.deleted}, condition: selection}
"""
    f = tmp_path / "glob.yml"
    f.write_text(text, encoding="utf-8")
    out = tmp_path / "out.yaml"
    assert main(["rules", "import", str(f), "--output", str(out)]) == 1
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["rules"] == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rules import: {f}: rejected: a Sigma collection file (action: global) is not supported; none "
                   "of its 2 documents is imported"]  # fmt: skip


# ---- 12. disabled rules ----------------------------------------------------------------------------
def test_export_skips_rules_the_configuration_disables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rule disabled by config was exported as an ordinary (``status: stable``) Sigma rule."""
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"auth.recovery_code_used": {"enabled": False}}}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg)]) == 0
    assert not (out / "auth_recovery_code_used.yml").exists()
    assert "`auth.recovery_code_used`: disabled in this configuration" in (out / "README.md").read_text(
        encoding="utf-8"
    )
    printed = capsys.readouterr().out
    assert (
        "skipped auth.recovery_code_used: disabled in this configuration" in printed and "1 of them disabled" in printed
    )
    both = tmp_path / "both"
    assert main(["rules", "export", "--format", "sigma", "--output", str(both), "--rules", str(cfg),
                 "--include-disabled"]) == 0  # fmt: skip
    doc = yaml.safe_load((both / "auth_recovery_code_used.yml").read_text(encoding="utf-8"))
    assert doc["description"].endswith("Disabled in the exporting configuration.")
    assert (out / "workspace_group_change.yml").exists()


def test_re_export_removes_the_files_it_no_longer_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exporting again into the same directory after disabling a rule left its earlier file there, read by
    ``sigma convert DIR`` as a rule in use (and an earlier export's correlation beside the single-event rules
    broke ``DIR/*.yml`` for Lucene). Files an export wrote and this one does not write are removed; any
    other file is kept."""
    out = tmp_path / "out"
    assert main(["rules", "export", "--format", "sigma", "--output", str(out)]) == 0
    (out / "corr_block_list_emptied.yml").write_text(  # as the export wrote it before correlations/
        (out / "correlations" / "corr_block_list_emptied.yml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (out / "mine.yml").write_text("title: my own rule\n", encoding="utf-8")
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": {"auth.recovery_code_used": {"enabled": False}}}), encoding="utf-8")
    assert main(["rules", "export", "--format", "sigma", "--output", str(out), "--rules", str(cfg)]) == 0
    assert not (out / "auth_recovery_code_used.yml").exists()
    assert not (out / "corr_block_list_emptied.yml").exists()
    assert (out / "correlations" / "corr_block_list_emptied.yml").exists()
    assert (out / "workspace_group_change.yml").exists()
    assert (out / "mine.yml").read_text(encoding="utf-8") == "title: my own rule\n"
    printed = capsys.readouterr().out
    assert "removed auth_recovery_code_used.yml (an earlier export's; not written now)" in printed, printed


# ---- 8. export: two keys that become one ------------------------------------------------------------
COLLIDE = {"id": "custom.export_collision", "title": "Export collision", "severity": "high",
           "types": ["audit.user_login"],
           "detection": {"s": {"target.name|in": ["alice", "bob"], "target.name|eq": "bob",
                               "attributes.x|contains|all": ["foo"], "attributes.x|contains": "bar"},
                         "t": [{"target.id|in": ["1", "2"], "target.id": "2"}, {"target.id": "9"}],
                         "condition": "s and t"}}  # fmt: skip


def test_export_keeps_items_whose_keys_collide(tmp_path: Path) -> None:
    """``f|in`` and ``f|eq`` both export as ``f``; ``|all`` on one value is dropped: the second item overwrote
    the first (``foo`` was lost). Each colliding item is an extra selection ANDed in; importing the export
    opens on exactly the events the rule opens on."""
    out = _export(tmp_path, [COLLIDE])
    text = (out / "custom_export_collision.yml").read_text(encoding="utf-8")
    (sigma,) = SigmaCollection.from_yaml(text).rules
    assert not sigma.errors
    back = tmp_path / "back.yaml"
    assert main(["rules", "import", str(out / "custom_export_collision.yml"), "--output", str(back)]) == 0
    orig = tmp_path / "orig.yaml"
    orig.write_text(yaml.safe_dump({"rules": [COLLIDE]}), encoding="utf-8")

    def login(name: str, x: str, tid: str) -> Event:
        return make_event("audit.user_login", time=T0, target={"kind": "user", "name": name, "id": tid},
                          attributes={"x": x})  # fmt: skip

    evs = [login("bob", "foo bar", "2"), login("bob", "bar", "2"), login("bob", "foo", "2"),
           login("alice", "foo bar", "2"), login("bob", "foo bar", "1"), login("bob", "foo bar", "9")]  # fmt: skip
    want = [True, False, False, False, False, True]
    assert _engine_opens(orig, "custom.export_collision", evs, fresh=True) == want
    assert _engine_opens(back, "sigma.export_collision", evs, fresh=True) == want


# ---- 9. type globs with classes -------------------------------------------------------------------------
def test_type_glob_classes_are_expanded_or_the_rule_skipped(tmp_path: Path) -> None:
    """``api_key.[cd]*`` was exported as the literal ``type|startswith: api_key.[cd]`` (matching nothing)."""
    rule = {"id": "custom.key_cd", "title": "Key created or deleted", "severity": "low",
            "types": ["audit.user_login", "api_key.[cd]*"], "detection": {"s": {"target.kind": "api_key"}}}  # fmt: skip
    negated = dict(rule, id="custom.key_not_u", types=["api_key.[!u]*"])
    out = _export(tmp_path, [rule, negated])
    doc = yaml.safe_load((out / "custom_key_cd.yml").read_text(encoding="utf-8"))
    want_types = [{"type": "audit.user_login"}, {"type|startswith": ["api_key.c", "api_key.d"]}]
    assert doc["detection"]["rule_types"] == want_types
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "`custom.key_not_u`: event type glob 'api_key.[!u]*': a negated class [!...] has no Sigma form" in readme
    back = tmp_path / "back.yaml"
    assert main(["rules", "import", str(out / "custom_key_cd.yml"), "--output", str(back)]) == 0
    orig = tmp_path / "orig.yaml"
    orig.write_text(yaml.safe_dump({"rules": [rule]}), encoding="utf-8")
    types = ("api_key.created", "api_key.deleted", "api_key.updated", "audit.user_login", "audit.logout")
    evs = [make_event(t, time=T0, target={"kind": "api_key", "id": "K"}) for t in types]
    want = [True, True, False, True, False]
    assert _engine_opens(orig, "custom.key_cd", evs, fresh=True) == want
    assert _engine_opens(back, "sigma.key_created_or_deleted", evs, fresh=True) == want


def test_import_of_a_lone_star_and_its_neq_agree_with_not() -> None:
    """``f|neq: '*'`` is ``not (f: '*')``: a lone ``*`` is any value but not a missing or null field, so its
    ``neq`` holds on a null or missing field and not on a value; ``{f: '*', f|neq: a}`` keeps both tests (the
    lone ``*`` was rewritten to the key ``f|neq`` and one of the two overwrote the other)."""

    def opens(det: dict[str, Any], ev: Event) -> bool:
        return compile_detection(import_rule(_doc(det))["detection"])(ev)

    star = {"s": {"attributes.s": "*"}, "condition": "s"}
    forms = ({"s": {"attributes.s": "*"}, "condition": "not s"}, {"s": {"attributes.s|neq": "*"}, "condition": "s"},
             {"s": {"attributes.s|neq": ["*"]}, "condition": "s"})  # fmt: skip
    for attrs, present in (({"s": "x"}, True), ({"s": 0}, True), ({"s": None}, False), ({}, False)):
        ev = _attrs(**attrs)
        assert opens(star, ev) is present, attrs
        assert [opens(f, ev) for f in forms] == [not present] * 3, attrs
    both = {"s": {"attributes.s": "*", "attributes.s|neq": "a"}, "condition": "s"}
    flipped = {"s": {"attributes.s|neq": "a", "attributes.s": "*"}, "condition": "s"}
    for det in (both, flipped):
        assert opens(det, _attrs(s="b"))
        assert not opens(det, _attrs(s="a")) and not opens(det, _attrs(s=None)) and not opens(det, _attrs())


# ---- values pySigma refuses ----------------------------------------------------------------------
_RE2_REFUSES = ["(?!svc-)x", "(?<=a)b", "(a)\\1", "(?P<n>a)(?P=n)", "(?>a)", "a*+", "a{2}+", "(?x)a b", "(?#c)a",
                "a\\Z", "\\u0041", "[\\b]", "a{1001}", "(a{100}){11}", "(a)(?(1)a|b)"]  # fmt: skip
_RE2_TAKES = ["^adm.*n$", "(?i-s:a)", "\\d{3}\\s\\w+", "[]a\\]]", "\\\\Z", "\\123", "a{1000}", "(a{100}){10}",
              "(?P<x>a)b", "a*?b+?c??", "\\x41[\\x00-\\x7f]", "\\t\\n\\r\\f\\v\\a",
              "(a*){1000}", "\\Ax\\b\\B"]  # fmt: skip


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"attributes.code|startswith": 5}, "attributes.code|startswith: |startswith needs a string, got 5"),
        ({"target.name|contains": [1, "a"]}, "target.name|contains: |contains needs a string, got 1"),
        ({"target.name|endswith": 2.5}, "target.name|endswith: |endswith needs a string, got 2.5"),
        ({"target.name|contains|all": [1, 2]}, "target.name|contains|all: |contains needs a string, got 1"),
        ({"target.name|cased": 5}, "target.name|cased: |cased needs a string, got 5"),
        ({"target.name|cased": True}, "target.name|cased: |cased needs a string, got True"),
        ({"target.name|cased": None}, "target.name|cased: |cased needs a string, got null"),
        ({"target.name|re": "^(?!svc-)"}, "target.name|re: RE2, pySigma's regex engine, cannot compile '^(?!svc-)'"),
        ({"target.name|re|i": "adm\\Z"}, "target.name|re|i: RE2, pySigma's regex engine, cannot compile"),
    ],
)
def test_values_pysigma_refuses_are_refused(item: dict[str, Any], reason: str) -> None:
    """pySigma 2.0.1 raises ``SigmaTypeError`` for a non-string under ``contains``/``startswith``/``endswith``/
    ``cased`` and ``SigmaRegularExpressionError`` for a regex RE2 cannot compile; those were imported."""
    with pytest.raises(SigmaImportError, match=re.escape(f"detection.s.{reason}")):
        import_rule(_doc({"s": item, "condition": "s"}))
    text = yaml.safe_dump(_doc({"s": item, "condition": "s"}))
    with pytest.raises(Exception, match=r"incompatible to value type|is invalid"):  # pySigma agrees
        coll = SigmaCollection.from_yaml(text)
        raise coll.errors[0] if coll.errors else coll.rules[0].errors[0]


def test_values_pysigma_takes_are_taken() -> None:
    """The same modifiers with values pySigma accepts: an empty ``cased`` string, regexes RE2 compiles."""
    for item in ({"target.name|cased": ""}, {"target.name|startswith|cased": "Adm"}, {"target.name|re": "^adm.*n$"}):
        import_rule(_doc({"s": item, "condition": "s"}))


@pytest.mark.parametrize("without_re2", [False, True])
def test_regexes_re2_refuses_with_or_without_google_re2(monkeypatch: pytest.MonkeyPatch, without_re2: bool) -> None:
    """With ``google-re2`` installed (it comes with pySigma) RE2 itself judges; without it, the constructs RE2
    lacks are found in the pattern. Both agree with RE2 on each pattern here."""
    import re2  # type: ignore[import-untyped]

    from pipeline.rules import sigma_regex

    if without_re2:
        monkeypatch.setattr(sigma_regex, "_re2_module", lambda: None)
    options = re2.Options()
    options.log_errors = False
    for pattern in _RE2_REFUSES + _RE2_TAKES:
        try:
            re2.compile(pattern, options)
            compiles = True
        except re2.error:
            compiles = False
        assert compiles is (pattern in _RE2_TAKES), pattern
        assert (sigma_regex.re2_problem(pattern) is None) is compiles, pattern
        doc = _doc({"s": {"target.name|re": pattern}, "condition": "s"})
        if compiles:
            import_rule(doc)
        else:
            with pytest.raises(SigmaImportError, match="RE2, pySigma's regex engine, cannot compile"):
                import_rule(doc)


def test_a_long_title_is_cut_to_what_sigma_allows(tmp_path: Path) -> None:
    """sigma-detection-rule-schema.json and pySigma cap ``title`` at 256 characters (pySigma refuses the
    file: "Sigma rule title length must not exceed 256 characters"). A longer title of ours, and the title of
    a correlation's base rules (``<correlation title>: <entry>``), is cut to 256 with "…"; the full title
    opens the description."""
    long = "Key created from an unexpected network by someone " * 6
    single = {"id": "custom.long_single", "title": long, "severity": "low", "types": ["audit.*"],
              "detection": {"s": {"actor.ip": "1.2.3.4"}, "condition": "s"}}  # fmt: skip
    entry = {"name": "created_somewhere", "types": ["audit.*"], "detection": {"s": {"actor.ip": "1.2.3.4"}}}
    corr = {"id": "custom.long_corr", "title": long[:250], "severity": "medium",
            "correlation": {"type": "event_count", "group-by": ["actor.user_id"], "timespan": "1h",
                            "condition": {"gte": 2}, "rules": [entry]}}  # fmt: skip
    out = _export(tmp_path, [single, corr])
    for f in (out / "custom_long_single.yml", out / "correlations" / "custom_long_corr.yml"):
        text = f.read_text(encoding="utf-8")
        coll = SigmaCollection.from_yaml(text, collect_errors=True)
        assert not coll.errors and not any(r.errors for r in coll.rules), (f.name, coll.errors)
        for doc in yaml.safe_load_all(text):
            assert len(doc["title"]) <= 256, (f.name, len(doc["title"]))
    (doc,) = yaml.safe_load_all((out / "custom_long_single.yml").read_text(encoding="utf-8"))
    assert len(doc["title"]) == 256 and doc["title"].endswith("…") and long.startswith(doc["title"][:-1])
    assert doc["description"].startswith(f"{long.strip()}.")


SPEC_SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "sigma-specification"


def test_every_exported_document_passes_the_specification_json_schemas(tmp_path: Path) -> None:
    """The shipped pack and user rules using every exportable feature (lists of mappings with null, regex
    flags, cidr, exists, numbers, related, fields, a long title, disabled rules, the four correlation types
    with aliases) export to documents the specification's own JSON schemas accept (detection rules and
    correlations; tests/fixtures/sigma-specification)."""
    schemas = {kind: json.loads((SPEC_SCHEMAS / f"sigma-{kind}-schema.json").read_text(encoding="utf-8"))
               for kind in ("detection-rule", "correlation-rules")}  # fmt: skip
    check = {kind: Draft202012Validator(s, format_checker=Draft202012Validator.FORMAT_CHECKER)
             for kind, s in schemas.items()}  # fmt: skip
    sel = {"s": [{"actor.ip": None, "type": "audit.x"}, {"actor.ip|cidr": ["10.0.0.0/8"], "type": "audit.x"}],
           "r": {"target.name|re|i|m": "^adm.*$", "attributes.affected_count|gte": 5, "actor.api_key_id|exists": True},
           "condition": "1 of them"}  # fmt: skip
    entry = {"types": ["audit.*"], "detection": {"x": {"attributes.activity_code": 1}}}
    rules: list[dict[str, Any]] = [
        {"id": "custom.all_features", "title": "All features " * 30, "severity": "info", "types": ["audit.*"],
         "detection": sel, "fields": ["actor.ip"], "references": ["https://example.com/a"],
         "related": [{"id": "api_key.all_scope", "type": "similar"}], "status": "deprecated", "author": "A"},
        {"id": "custom.off", "title": "Disabled", "severity": "low", "enabled": False, "types": ["audit.*"],
         "detection": {"s": {"actor.ip": "1.2.3.4"}, "condition": "s"}},
    ]  # fmt: skip
    for kind, extra in (("event_count", {"condition": {"gte": 3}}),
                        ("value_count", {"condition": {"gt": 2}, "field": "actor.ip"}),
                        ("temporal", {}), ("temporal_ordered", {})):  # fmt: skip
        two = kind.startswith("temporal")
        entries = [{"name": "a", **entry, "group-by": ["actor.user_id"]},
                   {"name": "b", **entry, "group-by": ["target.id"]}] if two else [{"name": "a", **entry}]  # fmt: skip
        body = {"type": kind, "timespan": "15m", "rules": entries, **({} if two else {"group-by": ["actor.ip"]})}
        rules.append({"id": f"custom.c_{kind}", "title": f"Correlation {kind}", "severity": "high",
                      "correlation": {**body, **extra}})  # fmt: skip
    out = _export(tmp_path, rules, "--include-disabled")  # the shipped pack is exported too
    files = sorted(out.rglob("*.yml"))
    assert len(files) >= 18 and len(list((out / "correlations").glob("*.yml"))) >= 7
    for f in files:
        for doc in yaml.safe_load_all(f.read_text(encoding="utf-8")):
            v = check["correlation-rules" if "correlation" in doc else "detection-rule"]
            errors = [f"{list(e.absolute_path)}: {e.message[:120]}" for e in v.iter_errors(doc)]
            assert not errors, (f.name, doc.get("title"), errors)
