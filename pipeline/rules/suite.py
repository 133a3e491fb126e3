"""What ``rules test`` runs: every case of every rule, and the test minimum per rule.

Cases come from four places:

* the ``cases_dir`` of every installed rule pack (built-in and Python user packs);
* the ``tests:`` block inside a YAML rule (the case list of a case file, for that rule);
* case files beside the user's rule files (in a directory named in ``rules.files``);
* the DIR given on the command line (a case file or a directory of them).

Every rule in scope must have at least one positive case (one expecting an alert of the rule)
and one negative case (``expect: []``); a rule without both fails the run with one line saying
so. Without DIR every rule is in scope; with DIR only the user's rules are (their built-in
cases run in the no-DIR run).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.base import validation_error_lines
from pipeline.config.yaml_load import safe_load_all
from pipeline.errors import ConfigError
from pipeline.rules.config import RuleSet, is_case_file
from pipeline.rules.packs import rule_packs
from pipeline.rules.testing import CaseFile, CaseResult, TestReport, case_files, load_case_file, run_case


def _looks_like_rule(path: Path) -> bool:
    """Whether a YAML file holds rules rather than cases (a rules directory holds both)."""
    try:
        docs = safe_load_all(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return (
        bool(docs)
        and not any(is_case_file(d) for d in docs)
        and all(isinstance(d, list) or (isinstance(d, dict) and ("id" in d or set(d) == {"rules"})) for d in docs if d)
    )


def _case_paths(path: Path) -> list[Path]:
    return [p for p in case_files(path) if path.is_file() or not _looks_like_rule(p)]


def _run_file(report: TestReport, f: Path, section: Mapping[str, Any], base_dir: Path | None) -> None:
    try:
        cf = load_case_file(f)
    except ConfigError as err:
        report.results.append(CaseResult(str(f), "<case file>", f.name, [err.message]))
        return
    for case in cf.cases:
        report.results.append(run_case(cf, case, section, file=str(f), base_dir=base_dir))


def in_file_cases(ruleset: RuleSet) -> list[tuple[str, CaseFile | str]]:
    """(rule id, case file or the reason it is invalid) for every rule with a ``tests:`` block."""
    out: list[tuple[str, CaseFile | str]] = []
    for rule in ruleset.rules:
        spec = getattr(rule, "spec", None)
        tests = getattr(spec, "tests", None)
        if not tests:
            continue
        try:
            out.append((rule.meta.id, CaseFile.model_validate({"rule": rule.meta.id, "cases": tests})))
        except ValidationError as err:
            lines = validation_error_lines(err, CaseFile)
            out.append((rule.meta.id, "; ".join(f"tests: {line}" for line in lines)))
    return out


def _user_dirs(ruleset: RuleSet, base_dir: Path | None) -> list[Path]:
    dirs = []
    for entry in ruleset.settings.files:
        p = Path(entry)
        p = p if p.is_absolute() else (base_dir or Path.cwd()) / p
        if p.is_dir():
            dirs.append(p)
    return dirs


def minimum_problems(ruleset: RuleSet, report: TestReport, scope: set[str]) -> list[CaseResult]:
    """One failed result per rule in ``scope`` lacking a positive or a negative case."""
    pos: dict[str, int] = {}
    neg: dict[str, int] = {}
    for r in report.results:
        if r.kind == "positive":
            pos[r.rule] = pos.get(r.rule, 0) + 1
        elif r.kind == "negative":
            neg[r.rule] = neg.get(r.rule, 0) + 1
    out = []
    for rid in sorted(scope):
        p, n = pos.get(rid, 0), neg.get(rid, 0)
        if p < 1 or n < 1:
            msg = (f"rule {rid} has {p} positive and {n} negative test cases: every rule needs at least one "
                   "of each (a case expecting its alert, and one with expect: [])")  # fmt: skip
            out.append(CaseResult("<test minimum>", rid, "test minimum", [msg]))
    return out


def run_suite(
    ruleset: RuleSet, section: Mapping[str, Any], base_dir: Path | None, directory: Path | None
) -> TestReport:
    """Run every case in scope (see the module docstring) and add the test-minimum failures.

    Raises:
        ConfigError: ``directory`` does not exist.
    """
    report = TestReport()
    user = {r.meta.id for r in ruleset.rules} - ruleset.builtin
    if directory is not None:
        files = _case_paths(directory)
        scope = user
    else:
        files = [f for p in rule_packs() if p.cases_dir is not None for f in case_files(p.cases_dir)]
        scope = {r.meta.id for r in ruleset.rules}
    seen = {f.resolve() for f in files}
    for d in _user_dirs(ruleset, base_dir):
        files += [f for f in _case_paths(d) if f.resolve() not in seen]
    for f in files:
        _run_file(report, f, section, base_dir)
    for rid, cf in in_file_cases(ruleset):
        if directory is not None and rid not in user:
            continue
        if isinstance(cf, str):
            report.results.append(CaseResult("<tests: in the rule>", rid, "tests", [cf]))
            continue
        for case in cf.cases:
            report.results.append(run_case(cf, case, section, file=f"{rid} (tests:)", base_dir=base_dir))
    report.results += minimum_problems(ruleset, report, scope)
    return report
