"""The Splunk format and add-on: CIM Authentication/Change fields, eventtypes and tags, the shipped lookup.

The add-on's eventtype searches (``field=value`` conjunctions) are evaluated here against the
``splunk`` format of every record the pipeline can produce (:mod:`tests.event_corpus`), so the
tags a search head would give each record are checked without a Splunk instance.
"""

from __future__ import annotations

import configparser
import csv
import functools
from pathlib import Path
from typing import Any

import pytest

from pipeline.formats import to_splunk
from tests.event_corpus import fixture_events, incident_records, webhook_events
from tests.unit.test_formats_native import sample_alert, sample_events

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
        assert (row["object_category"], row["change_type"]) == (
            doc.get("object_category", ""),
            doc.get("change_type", ""),
        )
    assert seen


def test_addon_files_are_complete() -> None:
    """app.conf, props/transforms/eventtypes/tags.conf exist; props covers both sourcetypes; lookups exist."""
    props = conf("props.conf")
    assert set(props.sections()) == set(SOURCETYPE.values())
    transforms = conf("transforms.conf")
    for section in transforms.sections():
        assert (ADDON / "lookups" / transforms[section]["filename"]).is_file()
    assert conf("app.conf")["package"]["id"] == "TA-instantly-audit"
