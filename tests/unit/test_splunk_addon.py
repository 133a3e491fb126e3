"""The Splunk format and add-on: CIM Authentication/Change fields, eventtypes and tags, the shipped lookup.

The add-on's eventtype searches (``field=value`` conjunctions) are evaluated here against the
``splunk`` format of every record the pipeline can produce (:mod:`tests.event_corpus`), so the
tags a search head would give each record are checked without a Splunk instance.
"""

from __future__ import annotations

import configparser
import csv
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.formats import to_splunk
from pipeline.formats._common import audit_code
from pipeline.rules.testing import make_event
from tests.event_corpus import fixture_events, incident_records, webhook_events
from tests.unit.test_formats_native import normalizer_events, sample_alert, sample_events

ADDON = Path(__file__).resolve().parents[2] / "deploy" / "splunk" / "TA-instantly-audit"
SOURCETYPE = {"event": "instantly:audit:event", "alert": "instantly:audit:alert"}
CIM_SEVERITY = {"critical", "high", "medium", "low", "informational", "unknown"}


def conf(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ADDON / "default" / name)
    return parser


@functools.cache
def corpus() -> list[dict[str, Any]]:
    events, alerts = incident_records()
    return [e.to_dict() for e in fixture_events() + webhook_events()] + events + alerts + [sample_alert().to_dict()]


def tags(record: dict[str, Any]) -> set[str]:
    """The tags Splunk would give ``record`` sent in format splunk, per eventtypes.conf + tags.conf."""
    doc = {**to_splunk(record), "sourcetype": SOURCETYPE["alert" if "rule" in record else "event"]}
    eventtypes, tagconf = conf("eventtypes.conf"), conf("tags.conf")
    out: set[str] = set()
    for name in eventtypes.sections():
        terms = [t.partition("=") for t in eventtypes[name]["search"].split()]
        if all(str(doc.get(k, "")) == v or (v == "*" and k in doc) for k, _, v in terms):
            out |= {t for t, state in tagconf[f"eventtype={name}"].items() if state == "enabled"}
    return out


def test_login_is_authentication() -> None:
    """A login: tag authentication with action, user, src, app (a failed MFA challenge: action=failure)."""
    for name, action in (("login", "success"), ("mfa_failed", "failure")):
        event = sample_events()[name]
        doc = to_splunk(event)
        assert "authentication" in tags(event.to_dict())
        assert (doc["action"], doc["app"]) == (action, "instantly")
        assert event.actor is not None and (doc["user"], doc["src"]) == (event.actor.user_name, event.actor.ip)


@pytest.mark.parametrize("name", ["key_created", "key_deleted", "audit_key_created", "member_invited", "role_up"])
def test_key_and_member_changes_are_change(name: str) -> None:
    """API key and member changes: tag change with object, object_category, action, user (members: account)."""
    event = sample_events()[name]
    doc = to_splunk(event)
    assert "change" in tags(event.to_dict())
    assert all(doc.get(f) for f in ("object", "object_category", "action", "user")), doc
    assert doc["action"] in ("created", "deleted", "modified", "read")
    if name.startswith(("member", "role")):
        assert doc["object_category"] == "user" and "account" in tags(event.to_dict())
        changer = event.actor.user_name if event.actor else "unknown"  # a snapshot diff does not know who
        assert (
            event.target is not None and doc["user"] == event.target.name and doc["src_user"] == changer
        )  # the account changed vs the changer


def test_every_record_of_a_data_model_has_its_fields() -> None:
    """Every Authentication record has action/app/user-or-src; every Change record has object/category/action/user."""
    counts = {"authentication": 0, "change": 0, "alert": 0}
    for record in corpus():
        doc, got = to_splunk(record), tags(record)
        if "authentication" in got:
            counts["authentication"] += 1
            assert doc["action"] in ("success", "failure") and doc["app"] == "instantly", doc
            assert doc.get("user") or doc.get("src"), record["type"]
        if "change" in got:
            counts["change"] += 1
            assert all(doc.get(f) for f in ("object", "object_category", "action", "user")), record["type"]
        if "alert" in got:
            counts["alert"] += 1
            assert doc["severity"] in CIM_SEVERITY and doc["signature_id"] and doc["type"] == "alert"
        assert doc["instantly"] == record  # the native record travels whole
    assert all(counts.values()), counts


def test_baselines_are_no_changes() -> None:
    """A snapshot baseline is inventory: no action, no data model, no tags."""
    baselines = [r for r in corpus() if str(r.get("type", "")).endswith("baseline")]
    assert baselines and not any(tags(r) or "action" in to_splunk(r) for r in baselines)


def test_shipped_lookup_matches_the_formatter() -> None:
    """lookups/instantly_audit_types.csv gives format: native records what format: splunk emits."""
    with (ADDON / "lookups" / "instantly_audit_types.csv").open() as f:
        table = {row["type"]: row for row in csv.DictReader(f)}
    seen = 0
    for record in corpus():
        doc = to_splunk(record)
        if "cim_model" not in doc:
            continue
        seen += 1
        row = table[record["type"]]
        assert (row["cim_model"], row["action"]) == (doc["cim_model"], doc["action"]), record["type"]
        assert (row["object_category"], row["change_type"], row["dvc"], row["command"], row["status"]) == (
            doc.get("object_category", ""),
            doc.get("change_type", ""),
            doc.get("dvc", ""),
            doc.get("command", ""),
            doc.get("status", "") if doc["cim_model"] == "Change" else "",
        )
        assert row["src_user"] == ("unknown" if "src_user" in doc else "")  # the fallback when no actor is named
    assert seen


def test_addon_files_are_complete() -> None:
    """app.conf, props/transforms/eventtypes/tags.conf exist; props covers both sourcetypes; lookups exist."""
    props = conf("props.conf")
    assert set(props.sections()) == set(SOURCETYPE.values())
    transforms = conf("transforms.conf")
    for section in transforms.sections():
        assert (ADDON / "lookups" / transforms[section]["filename"]).is_file()
    assert conf("app.conf")["package"]["id"] == "TA-instantly-audit"


# ---- the props.conf EVALs, evaluated ----------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:(?P<str>"[^"]*")|(?P<field>'[^']*')|(?P<op>==|!=|[(),=])|(?P<word>[A-Za-z_][\w.]*))""")


def _field(doc: dict[str, Any], path: str) -> str | list[str] | None:
    """A field as KV_MODE=json extracts it: the dotted path of a scalar, as text (JSON null, "" and objects
    make no field); ``name{}`` is the multivalue field of a list of scalars (None when empty)."""
    node: Any = doc
    for part in path.split("."):
        key, many = (part[:-2], True) if part.endswith("{}") else (part, False)
        node = node.get(key) if isinstance(node, dict) else None
        if many:
            if not isinstance(node, list):
                return None
            values = [v if isinstance(v, str) else json.dumps(v) for v in node if not isinstance(v, dict | list)]
            return values or None
    if node is None or isinstance(node, dict | list) or node == "":
        return None
    return node if isinstance(node, str) else json.dumps(node)


def spl_eval(expr: str, doc: dict[str, Any]) -> Any:
    """Evaluate an eval expression of the subset props.conf uses: coalesce, case, if, match, null, true,
    isnull, isnotnull, AND/OR/NOT, ==/=/!=, "strings", 'fields' and bare field names. Null is None."""
    tokens: list[tuple[str | None, str]] = []
    at = 0
    while expr[at:].strip():
        m = _TOKEN.match(expr, at)
        assert m is not None and m.lastgroup, f"cannot read {expr[at : at + 20]!r}"
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        at = m.end()
    pos = 0

    def peek() -> str:
        return tokens[pos][1] if pos < len(tokens) else ""

    def take(expected: str | None = None) -> tuple[str | None, str]:
        nonlocal pos
        kind, text = tokens[pos]
        assert expected is None or text == expected, (expected, text, expr)
        pos += 1
        return kind, text

    def disjunction() -> Any:
        value = conjunction()
        while peek() == "OR":
            take()
            right = conjunction()
            value = bool(value) or bool(right)
        return value

    def conjunction() -> Any:
        value = negation()
        while peek() == "AND":
            take()
            right = negation()
            value = bool(value) and bool(right)
        return value

    def negation() -> Any:
        if peek() == "NOT":
            take()
            return not negation()
        left = primary()
        if peek() in ("==", "=", "!="):
            op = take()[1]
            right = primary()
            return None if left is None or right is None else (left == right) == (op != "!=")
        return left

    def primary() -> Any:
        kind, text = take()
        if text == "(":
            value = disjunction()
            take(")")
            return value
        if kind == "str":
            return text[1:-1]
        if kind == "field":
            return _field(doc, text[1:-1])
        if peek() != "(":
            return _field(doc, text)
        take("(")
        args: list[Any] = []
        while peek() != ")":
            args.append(disjunction())
            if peek() == ",":
                take(",")
        take(")")
        return _call(text, args)

    value = disjunction()
    assert pos == len(tokens), (tokens[pos:], expr)
    return value


def _call(name: str, args: list[Any]) -> Any:
    if name == "coalesce":
        return next((a for a in args if a is not None), None)
    if name == "case":
        return next((args[i + 1] for i in range(0, len(args), 2) if args[i] is True), None)
    if name == "if":
        return args[1] if args[0] is True else args[2]
    if name == "match":
        return None if args[0] is None else re.search(args[1], args[0]) is not None
    if name in ("isnull", "isnotnull"):
        return (args[0] is None) == (name == "isnull")
    if name in ("null", "true"):
        return None if name == "null" else True
    raise AssertionError(f"eval function {name} is not modelled")


def lookup_types() -> set[str]:
    with (ADDON / "lookups" / "instantly_audit_types.csv").open() as f:
        return {row["type"] for row in csv.DictReader(f)}


def event_records() -> list[dict[str, Any]]:
    """Every event the pipeline makes (fixtures, webhook receiver, incident, the samples, the normalizer), and
    each type the add-on maps with an actor named or only by id or none, a target named or only by id."""
    records = [r for r in corpus() if "rule" not in r]
    records += [e.to_dict() for e in [*sample_events().values(), *normalizer_events()]]
    actors = ({"user_id": "u-7", "user_name": "Dana"}, {"user_id": "u-7"}, None)
    targets = ({"kind": "thing", "id": "t-1", "name": "Thing one"}, {"kind": "thing", "id": "t-1"}, None)
    for t in sorted(lookup_types()):
        code = audit_code({"type": t})  # the connector gives every audit record its activity_code
        attrs = {"activity_code": code} if code is not None else None
        records += [
            make_event(t, time=0, actor=a, target=g, attributes=attrs).to_dict() for a in actors for g in targets
        ]
    return records


def test_native_user_is_what_format_splunk_chooses() -> None:
    """props.conf's EVAL-user gives a format: native record the CIM user format: splunk gives it, for every
    event type: the account changed only when the target is a user (a member, a user's MFA), else the changer
    ("unknown" when a snapshot diff names none), never a webhook, key, mailbox, domain or workspace name.
    Format: splunk records keep their own user (or none) under the same EVAL."""
    expr = conf("props.conf")[SOURCETYPE["event"]]["EVAL-user"]
    assert spl_eval('coalesce(a, "x")', {}) == "x" and spl_eval("match('t.k', \"^2[2-7]$\")", {"t": {"k": 23}})
    by_type: dict[str, int] = {}
    for record in event_records():
        splunk = to_splunk(record)
        want = splunk.get("user")
        assert spl_eval(expr, record) == want, (record["type"], record.get("target"), record.get("actor"))
        assert spl_eval(expr, splunk) == want, record["type"]
        by_type[record["type"]] = by_type.get(record["type"], 0) + 1
    assert lookup_types() <= set(by_type)  # every type the add-on maps
    assert {"audit.mfa_totp_enabled", "member.role_changed", "audit.user_login", "pipeline.poller_unauthorized",
            "webhook_delivery.reply_received"} <= set(by_type)  # fmt: skip
