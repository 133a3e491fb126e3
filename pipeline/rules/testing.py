"""Rules as data: YAML test cases (input events → expected alerts) and the ``rules test`` runner.

A case file (``*.yaml`` under the directory given to ``instantly-audit rules test``)::

    rule: api_key.all_scope            # the rule under test: only its alerts are compared
    workspace: ws-1                    # default workspace of the events (id, or {id, name})
    start: 2026-01-01T00:00:00Z        # time of the first event without one (then +1 s each)
    config: {}                         # rules config for every case (merged over --rules)
    cases:
      - name: an all:all key on the baseline alerts
        config: {}                     # optional, merged over the file's
        events:
          - type: api_key.baseline
            target: {kind: api_key, id: k1, name: ci}
            attributes: {scopes: ["all:all"]}
          - tick: 2026-01-09T00:00:00Z  # a time tick (time-based rules)
        expect:                        # [] = no alert; each item matches one distinct alert
          - {severity: critical, status: open, dedup_key: "api_key.all_scope:ws-1:key:k1", count: 1,
             entity: {kind: api_key, id: k1}, summary_contains: all:all}

Events need only ``type``; the rest is filled in (source kind and stream from the type, the
activity code from a named ``audit.*`` type, a deterministic id; ``observed_at`` defaults to
``time``, give it to play a record read late, as a history backfill does). Every case runs all enabled
rules on a fresh engine with a fake clock; produced alerts are also checked against the Alert
v1 JSON Schema when ``jsonschema`` is installed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from pipeline.clock import FakeClock, format_time, parse_time
from pipeline.config.base import Model, validation_error_lines
from pipeline.config.yaml_load import safe_load
from pipeline.errors import ConfigError
from pipeline.rules.base import RULE_ID_PATTERN
from pipeline.rules.engine import RulesEngine
from schemas.alert import Alert
from schemas.event import Actor, Change, Event, Source, SourceKind, Target, WorkspaceRef
from schemas.ids import deterministic_id

AUDIT_CODES: dict[str, int] = {
    "audit.user_login": 1, "audit.lead_deleted": 2, "audit.campaign_deleted": 3, "audit.campaign_launched": 4,
    "audit.campaign_paused": 5, "audit.account_added": 6, "audit.account_deleted": 7, "audit.lead_moved": 8,
    "audit.lead_added": 9, "audit.lead_merged": 10, "audit.campaign_updated": 11,
    "audit.subsequence_updated": 12, "audit.webhook_created": 18, "audit.webhook_updated": 19,
    "audit.webhook_marked_error": 20, "audit.webhook_resumed": 21, "audit.mfa_totp_enrollment_started": 22,
    "audit.mfa_totp_enabled": 23, "audit.mfa_totp_replacement_started": 24, "audit.mfa_totp_replaced": 25,
    "audit.mfa_totp_disabled": 26, "audit.mfa_recovery_codes_generated": 27,
    "audit.mfa_recovery_code_used": 28, "audit.mfa_challenge_failed": 29,
    "audit.mfa_challenge_failed_too_many": 30, "audit.mfa_login_succeeded": 31,
    "audit.subscriber_import_started": 32, "audit.subscriber_import_cancelled": 33, "audit.lead_exported": 34,
    "audit.supersearch_enrichment_created": 35, "audit.account_updated": 36, "audit.api_key_created": 37,
    "audit.api_key_deleted": 38,
}  # fmt: skip
"""The names the Instantly connector gives every documented audit code (any code also works as
``audit.activity_<n>``): a case event of a named type carries the code it has live, so a rule's
``activity_codes`` route it as they do in the worker. ``tests/unit/test_rules_cases.py`` keeps this
table equal to the connector's (``pipeline`` does not import connectors)."""
_STREAMS = {"api_key": "api_keys", "member": "members", "webhook": "webhooks", "workspace": "workspace",
            "workspace_group": "group_members", "block_list": "block_list", "account": "accounts"}  # fmt: skip
_ACTIVITY = re.compile(r"^audit\.activity_(\d+)$")
DEFAULT_START = "2026-01-01T00:00:00.000Z"


def source_for(event_type: str) -> Source:
    """The source an event of this type comes from (audit log, snapshot stream, pipeline, webhook)."""
    head = event_type.split(".", 1)[0]
    kind: SourceKind
    if head == "audit":
        kind, stream = "audit_log", "audit_logs"
    elif head == "pipeline":
        kind, stream = "pipeline", "pipeline"
    elif head == "webhook_delivery":
        kind, stream = "webhook", "webhook"
    else:
        kind, stream = "snapshot", _STREAMS.get(head, head)
    return Source(kind, stream, None)


def activity_code(event_type: str) -> int | None:
    """The audit activity code of a named or numbered ``audit.*`` type."""
    m = _ACTIVITY.match(event_type)
    return int(m.group(1)) if m else AUDIT_CODES.get(event_type)


def make_event(
    type: str,
    *,
    time: str | float,
    workspace: str | WorkspaceRef = "ws-1",
    actor: Actor | Mapping[str, Any] | None = None,
    target: Target | Mapping[str, Any] | None = None,
    change: Change | Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    observed_at: str | None = None,
) -> Event:
    """Build an Event v1 the way the connector would, for tests, cases and benchmarks.

    Raises:
        TypeError: ``actor``, ``target`` or ``change`` holds an unknown field.
        ValueError: ``time`` is not a timestamp.
    """
    t = format_time(time) if isinstance(time, int | float) else format_time(parse_time(time))
    ws = workspace if isinstance(workspace, WorkspaceRef) else WorkspaceRef(workspace, None)
    attrs = dict(attributes or {})
    code = activity_code(type)
    if code is not None and "activity_code" not in attrs:
        attrs["activity_code"] = code
    ch = change
    if isinstance(ch, Mapping):
        ch = Change(ch.get("before"), ch.get("after"), tuple(ch.get("fields", ())))
    return Event(
        id=event_id or deterministic_id(ws.id, type, t, attrs, dict(target) if isinstance(target, Mapping) else None),
        type=type, time=t, observed_at=observed_at or t, workspace=ws, source=source_for(type),
        actor=Actor(**actor) if isinstance(actor, Mapping) else actor,
        target=Target(**target) if isinstance(target, Mapping) else target,
        change=ch, attributes=attrs,
    )  # fmt: skip


# ---- case files ------------------------------------------------------------------------------
class Expectation(Model):
    """One expected alert; every field given must match."""

    rule: str | None = None
    status: str | None = None
    severity: str | None = None
    dedup_key: str | None = None
    count: int | None = None
    title: str | None = None
    entity: dict[str, str | None] | None = None
    summary_contains: str | None = None

    def mismatch(self, alert: Alert) -> str | None:
        """Why ``alert`` does not match (None when it does)."""
        checks = [("rule", alert.rule.id), ("status", alert.status), ("severity", alert.rule.severity),
                  ("dedup_key", alert.dedup_key), ("count", alert.count), ("title", alert.rule.title)]  # fmt: skip
        for name, actual in checks:
            want = getattr(self, name)
            if want is not None and want != actual:
                return f"{name} {actual!r} != {want!r}"
        if self.summary_contains is not None and self.summary_contains not in alert.summary:
            return f"summary {alert.summary!r} lacks {self.summary_contains!r}"
        if self.entity is not None:
            want_e = self.entity
            if not any(all(getattr(e, k, object()) == v for k, v in want_e.items()) for e in alert.entities):
                return f"no entity like {want_e}"
        return None

    def describe(self) -> str:
        """The fields given, for messages."""
        return ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude_none=True).items())


class Case(Model):
    """One test case."""

    name: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    rules: list[str] | None = None
    events: list[dict[str, Any]] = Field(min_length=1)
    expect: list[Expectation]


class WorkspaceSpec(Model):
    """The default workspace of a case file's events."""

    id: str = Field(min_length=1)
    name: str | None = None


class CaseFile(Model):
    """A file of cases for one rule."""

    rule: str = Field(pattern=RULE_ID_PATTERN)
    workspace: str | WorkspaceSpec = "ws-1"
    start: str = DEFAULT_START
    config: dict[str, Any] = Field(default_factory=dict)
    cases: list[Case] = Field(min_length=1)

    @field_validator("start", mode="before")
    @classmethod
    def _start_time(cls, value: Any) -> Any:
        """An unquoted ``start: 2026-01-01T00:00:00Z`` is a datetime to YAML (a date without the
        time): take it as event ``time:`` and ``tick:`` are, a zone-less one as UTC."""
        if isinstance(value, datetime):
            return format_time((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
        if isinstance(value, date):
            return format_time(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
        if isinstance(value, str):
            try:
                parse_time(value)
            except ValueError:
                raise ValueError(f"not a time: {value!r} (give e.g. 2026-01-01T00:00:00Z)") from None
        return value


@dataclass(slots=True)
class CaseResult:
    """The outcome of one case."""

    file: str
    rule: str
    name: str
    problems: list[str] = field(default_factory=list)
    kind: str = ""
    """``positive`` (expects an alert of the rule), ``negative`` (``expect: []``) or empty."""

    @property
    def passed(self) -> bool:
        """True when nothing went wrong."""
        return not self.problems


@dataclass(slots=True)
class TestReport:
    """Every case result, groupable by rule."""

    __test__ = False  # not a pytest class
    results: list[CaseResult] = field(default_factory=list)

    def merge(self, other: TestReport) -> TestReport:
        """Both reports' results, in order."""
        return TestReport([*self.results, *other.results])

    @property
    def failed(self) -> list[CaseResult]:
        """The cases that failed."""
        return [r for r in self.results if not r.passed]

    def by_rule(self) -> dict[str, tuple[int, int]]:
        """rule id → (passed, failed)."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.results:
            p, f = out.get(r.rule, (0, 0))
            out[r.rule] = (p + r.passed, f + (not r.passed))
        return dict(sorted(out.items()))

    def format(self) -> str:
        """A table per rule, then each failure."""
        rows = self.by_rule()
        width = max([len("RULE"), *(len(r) for r in rows)])
        lines = [f"{'RULE':<{width}}  CASES  PASSED  FAILED"]
        lines += [f"{rid:<{width}}  {p + f:>5}  {p:>6}  {f:>6}" for rid, (p, f) in rows.items()]
        failed = self.failed
        passed = len(self.results) - len(failed)
        lines.append(f"{len(rows)} rules, {len(self.results)} cases: {passed} passed, {len(failed)} failed")
        for r in failed:
            lines.append(f"\nFAIL {r.rule} :: {r.name} ({r.file})")
            lines += [f"  - {p}" for p in r.problems]
        return "\n".join(lines)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two config mappings (``over`` wins; lists are replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _observed(value: Any) -> str | None:
    """A case event's ``observed_at`` (when the pipeline read it; default: its ``time``) as RFC 3339."""
    return None if value is None else format_time(parse_time(str(value)))


_EVENT_KEYS = ("type", "time", "observed_at", "workspace", "actor", "target", "change", "attributes", "id")
_PARTS: dict[str, tuple[str, ...]] = {
    "actor": Actor.__struct_fields__, "target": Target.__struct_fields__, "change": Change.__struct_fields__,
    "workspace": WorkspaceRef.__struct_fields__,
}  # fmt: skip


def _unknown_key(keys: Iterable[Any], known: Sequence[str], where: str) -> str | None:
    """``<where>.<key>: unknown field …`` for the first key outside ``known`` (with a "did you mean")."""
    bad = sorted(str(k) for k in keys if k not in known)
    if not bad:
        return None
    near = difflib.get_close_matches(bad[0], known, n=1)
    tip = f"did you mean {near[0]!r}?" if near else f"fields: {', '.join(known)}"
    return f"{where}.{bad[0]}: unknown event field ({tip})"


def _event(raw: Mapping[str, Any], default_ws: WorkspaceRef, t: float, where: str) -> Event:
    problem = _unknown_key(raw, _EVENT_KEYS, where)
    for part, known in _PARTS.items():
        if problem is None and isinstance(raw.get(part), Mapping):
            problem = _unknown_key(raw[part], known, f"{where}.{part}")
    if problem is not None:  # (named by key path: msgspec said only "Unexpected keyword argument 'email'")
        raise ValueError(problem)
    if not isinstance(raw.get("type"), str):
        raise ValueError(f"{where}: 'type' is required")
    ws = raw.get("workspace", default_ws)
    ws_ref = ws if isinstance(ws, WorkspaceRef) else WorkspaceRef(**ws) if isinstance(ws, dict) else WorkspaceRef(ws)
    try:
        return make_event(
            raw["type"], time=t, workspace=ws_ref, actor=raw.get("actor"), target=raw.get("target"),
            change=raw.get("change"), attributes=raw.get("attributes"), event_id=raw.get("id"),
            observed_at=_observed(raw.get("observed_at")),
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def run_case(
    cf: CaseFile, case: Case, base_config: Mapping[str, Any], *, file: str, base_dir: Path | None = None
) -> CaseResult:
    """Run one case on a fresh engine and compare its alerts with the expectations."""
    res = CaseResult(file, cf.rule, case.name)
    if not case.expect:
        res.kind = "negative"
    elif any(e.rule in (None, cf.rule) for e in case.expect):
        res.kind = "positive"
    try:
        engine = RulesEngine.from_config(merge(merge(base_config, cf.config), case.config),
                                         clock=FakeClock(parse_time(cf.start)), base_dir=base_dir)  # fmt: skip
    except ConfigError as err:
        res.problems.append(f"rules config: {err}")
        return res
    known = [r.meta.id for r in engine.ruleset.rules]
    if missing := [r for r in dict.fromkeys([cf.rule, *(case.rules or [])]) if r not in known]:
        near = difflib.get_close_matches(missing[0], known, n=1)  # (a negative case passed, testing nothing)
        res.problems.append(f"no rule {missing[0]!r} is loaded" + (f" (did you mean {near[0]!r}?)" if near else ""))
        return res
    w = cf.workspace
    ws = WorkspaceRef(w) if isinstance(w, str) else WorkspaceRef(w.id, w.name)
    t = parse_time(cf.start) - 1.0
    alerts: list[Alert] = []
    try:
        for i, raw in enumerate(case.events):
            if set(raw) == {"tick"}:
                t = parse_time(str(raw["tick"]))
                result = engine.tick(t)
            else:
                t = parse_time(str(raw["time"])) if "time" in raw else t + 1.0
                result = engine.evaluate([_event(raw, ws, t, f"events.{i}")])
            alerts.extend(result.alerts)
            res.problems += [f"rule {f.rule_id} failed: {f.error}" for f in result.failures]
    except ValueError as err:
        res.problems.append(str(err))
        return res
    res.problems += _schema_problems(alerts)
    scope = set(case.rules or [cf.rule])
    _compare(res, case.expect, [a for a in alerts if a.rule.id in scope], cf.rule)
    off = sorted(r for r in scope if (x := engine.ruleset.get(r)) is not None and not x.params.enabled)
    if off and res.problems and case.expect:  # say why nothing came (a correlation's base rule is often off)
        res.problems.append(f"{', '.join(off)} is disabled here (enabled: false): a positive case enables it in "
                            f"its config, e.g. config: {{{off[0]}: {{enabled: true}}}}")  # fmt: skip
    return res


def _compare(res: CaseResult, expect: Sequence[Expectation], alerts: list[Alert], rule: str) -> None:
    left = list(alerts)
    for i, e in enumerate(expect):
        e = e if e.rule is not None else e.model_copy(update={"rule": rule})
        reasons = []
        for a in left:
            why = e.mismatch(a)
            if why is None:
                left.remove(a)
                break
            reasons.append(why)
        else:
            got = "; ".join(reasons) if reasons else "no alert left"
            res.problems.append(f"expected alert #{i + 1} ({e.describe()}) not found: {got}")
    for a in left:
        res.problems.append(
            f"unexpected alert: {a.rule.id} {a.rule.severity} {a.status} dedup_key={a.dedup_key!r} count={a.count}"
        )


def _schema_problems(alerts: Sequence[Alert]) -> list[str]:
    try:
        from schemas.validate import schema_errors

        return [
            f"alert {a.dedup_key} violates Alert v1: {e}" for a in alerts for e in schema_errors("alert", a.to_dict())
        ]
    except ImportError:  # jsonschema is a dev dependency
        return []


def load_case_file(path: Path) -> CaseFile:
    """Read and validate a case file.

    Raises:
        ConfigError: unreadable, not YAML, or not a case file (names the key path).
    """
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the case file ({type(err).__name__}: {err})") from None
    try:
        return CaseFile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("\n".join(f"{path}: {line}" for line in validation_error_lines(err, CaseFile))) from None


def case_files(path: Path) -> list[Path]:
    """The case files in ``path`` (a file, or every ``*.yaml``/``*.yml`` below a directory).

    Raises:
        ConfigError: ``path`` does not exist.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such file or directory")
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def run_cases(path: Path, *, rules_config: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> TestReport:
    """Run every case under ``path``; a malformed case file counts as one failed case.

    Raises:
        ConfigError: ``path`` does not exist.
    """
    report = TestReport()
    for f in case_files(path):
        try:
            cf = load_case_file(f)
        except ConfigError as err:
            report.results.append(CaseResult(str(f), "<case file>", f.name, [err.message]))
            continue
        for case in cf.cases:
            report.results.append(run_case(cf, case, rules_config or {}, file=str(f), base_dir=base_dir))
    return report
