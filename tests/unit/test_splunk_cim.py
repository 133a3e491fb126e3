"""Format ``splunk`` against Splunk's own CIM data model definitions (Authentication, Change, Alerts).

``tests/fixtures/splunk-cim`` holds the definitions Splunk's CIM compliance tester (pytest-splunk-addon)
checks an add-on against. Every record the pipeline can produce (:mod:`tests.event_corpus`) is
rendered in format ``splunk``, given the tags the shipped add-on's eventtypes give it, and checked
in each data model and dataset those tags put it in: every field the model requires is there
(unless the record itself does not know it: a login without an IP has no ``src``), values are the
expected ones and pass the model's validity expressions, and every top-level field is a field of
that model (a field of another model, such as Web's ``http_user_agent``, lands in none).
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.formats import to_splunk
from tests.unit.test_splunk_addon import ADDON, SOURCETYPE, conf, corpus, event_records, spl_eval, tags

CIM = Path(__file__).resolve().parents[1] / "fixtures" / "splunk-cim"
MODEL_OF_TAG = {"authentication": "Authentication", "change": "Change", "alert": "Alerts"}
ROOT_CONSTRAINTS = {
    "Authentication": "tag=authentication NOT (action=success user=*$)",
    "All_Changes": "tag=change NOT (object_category=file OR object_category=directory OR object_category=registry)",
    "Alerts": "tag=alert",
}
_NO_QUOTE = "like("  # the validity of action, object_attrs, object_id, object_path: null when the value has a '"'
# Top-level fields of format splunk that are not fields of the record's data model, and why they are there.
EXTRA: dict[str, set[str]] = {
    # the native record, the add-on's key, the dedup id; Change also the audit activity and the changer
    "Authentication": {"instantly", "cim_model", "id", "vendor_product"},
    "Change": {"instantly", "cim_model", "id", "app", "signature", "signature_id", "src_user"},
    "Alerts": {"instantly", "vendor_product", "status"},  # status: open / resolved
}


def _entities(record: Mapping[str, Any], kinds: tuple[str, ...]) -> bool:
    return any(isinstance(e, dict) and e.get("kind") in kinds for e in record.get("entities") or [])


def _get(record: Mapping[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


# Required fields a record cannot fill because the record itself does not know the value.
UNKNOWABLE: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "src": lambda r: (not _entities(r, ("ip",))) if "rule" in r else not _get(r, "actor.ip"),
    "user": lambda r: "rule" in r and not _entities(r, ("user", "member")),
    "object_attrs": lambda r: not _get(r, "change.fields"),
    "object_id": lambda r: not _get(r, "target.id"),
}


def _known(record: Mapping[str, Any]) -> bool:
    return False


@functools.cache
def model(name: str) -> dict[str, Any]:
    return dict(json.loads((CIM / f"{name}.json").read_text()))


def datasets(name: str, record_tags: set[str]) -> list[dict[str, Any]]:
    """The datasets of data model ``name`` a record with ``record_tags`` enters (root, then tagged children)."""
    out: list[dict[str, Any]] = []

    def visit(node: dict[str, Any]) -> None:
        if any(set(group) <= record_tags for group in node["tags"]):
            out.append(node)
            for child in node.get("child_dataset", []):
                visit(child)

    for root in model(name)["objects"]:
        visit(root)
    return out


def _condition_holds(condition: str, doc: Mapping[str, Any], record_tags: set[str]) -> bool:
    """A field condition of the definitions: space-separated ``name=value`` / ``name=*`` / ``tag=x`` terms."""
    for term in condition.split():
        name, _, value = term.partition("=")
        if name == "tag":
            ok = value in record_tags
        elif value == "*":
            ok = bool(doc.get(name))
        else:
            ok = str(doc.get(name)) == value
        if not ok:
            return False
    return True


def cim_problems(record: dict[str, Any], doc: dict[str, Any] | None = None, got: set[str] | None = None) -> list[str]:
    """What Splunk's CIM definitions find wrong with ``record`` in format splunk (empty: nothing), or with ``doc``,
    the fields Splunk gives it otherwise, tagged ``got``."""
    doc = to_splunk(record) if doc is None else doc
    got = tags(record) if got is None else got
    problems: list[str] = []
    for tag, name in MODEL_OF_TAG.items():
        if tag not in got:
            continue
        entered = datasets(name, got)
        root = entered[0]
        assert root["search_constraints"] == ROOT_CONSTRAINTS[root["name"]], "definitions changed: update the test"
        if name == "Authentication" and doc.get("action") == "success" and str(doc.get("user", "")).endswith("$"):
            problems.append("Authentication: excluded as a machine account")
        if name == "Change" and doc.get("object_category") in ("file", "directory", "registry"):
            problems.append("Change: excluded by object_category")
        fields = {f["name"]: f for ds in entered for f in ds["fields"]}
        for field, spec in fields.items():
            value = doc.get(field)
            required = spec["type"] == "required" or (
                spec["type"] == "conditional" and _condition_holds(spec.get("condition", ""), doc, got)
            )
            if required and value in (None, "", []) and field != "tag" and not UNKNOWABLE.get(field, _known)(record):
                problems.append(f"{name}: required field {field} missing")
            if value is not None and spec.get("expected_values") and value not in spec["expected_values"]:
                problems.append(f"{name}: {field}={value!r} not one of {spec['expected_values']}")
            if isinstance(value, str) and '"' in value and _NO_QUOTE in spec.get("validity", ""):
                problems.append(f"{name}: {field} contains a double quote (invalid per the model)")
        category = doc.get("object_category")
        if name == "Change" and category is not None and ("account" in got) != (category == "user"):
            problems.append(f"Change: object_category={category!r} with tags {sorted(got)}")  # its validity
        unknown = set(doc) - set(fields) - EXTRA[name]
        problems += [f"{name}: {field} is no field of the data model" for field in sorted(unknown)]
    return problems


def test_every_record_fits_the_cim_data_models() -> None:
    """Every event and alert, in format splunk, passes the CIM definitions of the data model its tags give it."""
    entered = {"Authentication": 0, "Change": 0, "Alerts": 0}
    failures: dict[str, list[str]] = {}
    for record in corpus():
        got = tags(record)
        for tag, name in MODEL_OF_TAG.items():
            entered[name] += tag in got
        problems = cim_problems(record)
        if problems:
            failures.setdefault(str(record.get("type") or record["rule"]["id"]), problems)
    assert failures == {}
    assert all(entered.values()), entered


def test_the_user_agent_is_the_cim_user_agent_field() -> None:
    """CIM Authentication and Change call the client ``user_agent`` (``http_user_agent`` is Web's): a login's and a
    change's user agent is there, in format splunk and, through the add-on's EVAL, in format native."""
    expr = conf("props.conf")[SOURCETYPE["event"]]["EVAL-user_agent"]
    seen = set()
    for record in event_records():
        agent = _get(record, "actor.user_agent")
        doc = to_splunk(record)
        assert "http_user_agent" not in doc
        assert doc.get("user_agent") == agent, record["type"]
        assert spl_eval(expr, record) == agent and spl_eval(expr, doc) == agent, record["type"]
        if agent and doc.get("cim_model"):
            seen.add(doc["cim_model"])
    assert seen == {"Authentication", "Change"}


def test_change_records_name_the_reporting_device_and_the_command() -> None:
    """CIM Change requires ``dvc`` (the system that reported the change: Instantly) and ``command`` (what made the
    change: the event type, as CloudTrail's add-on gives the API call); both on every Change record, none elsewhere."""
    changes = 0
    for record in corpus():
        doc = to_splunk(record)
        if doc.get("cim_model") == "Change":
            changes += 1
            assert (doc["dvc"], doc["command"]) == ("instantly", record["type"])
        else:
            assert "dvc" not in doc and "command" not in doc
    assert changes


def _lookup(name: str, column: str) -> dict[str, dict[str, str]]:
    """The rows of lookup ``name`` by their ``column``."""
    with (ADDON / "lookups" / conf("transforms.conf")[name]["filename"]).open() as f:
        return {row[column]: row for row in csv.DictReader(f)}


def native_view(record: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The fields a search head gives ``record`` sent with format native, through the add-on: KV_MODE=json's dotted
    fields, then every EVAL (each reads the extracted fields, not another EVAL), then the LOOKUPs (OUTPUTNEW); and
    the tags its eventtypes give it."""
    sourcetype = SOURCETYPE["alert" if "rule" in record else "event"]
    props = conf("props.conf")[sourcetype]
    extracted: dict[str, Any] = {}

    def flatten(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(value, f"{path}.{key}" if path else key)
        elif node is not None and node != "" and not isinstance(node, list):
            extracted[path] = node if isinstance(node, str) else json.dumps(node)

    flatten(record, "")
    view = dict(extracted)
    for key, expr in props.items():
        if key.startswith("EVAL-"):
            value = spl_eval(expr, record)
            view[key[5:]] = value if not isinstance(value, bool) else str(value).lower()
            if value is None:
                del view[key[5:]]
    for key, spec in props.items():
        if not key.startswith("LOOKUP-"):
            continue
        m = re.match(r"^(\S+) (\S+) AS (\S+) OUTPUTNEW (.+)$", spec)
        assert m is not None, spec
        table, column, field, outputs = m.groups()
        row = _lookup(table, column).get(str(view.get(field, "")))
        for output in (o.strip() for o in outputs.split(",")):
            src, _, dst = output.partition(" AS ")
            if row is not None and row.get(src) and (dst or src) not in view:  # OUTPUTNEW: never overwrites
                view[dst or src] = row[src]
    view["sourcetype"] = sourcetype
    got: set[str] = set()
    eventtypes, tagconf = conf("eventtypes.conf"), conf("tags.conf")
    for name in eventtypes.sections():
        terms = [t.partition("=") for t in eventtypes[name]["search"].split()]
        if all(str(view.get(k, "")) == v for k, _, v in terms):
            got |= {t for t, state in tagconf[f"eventtype={name}"].items() if state == "enabled"}
    cim = {k: v for k, v in view.items() if "." not in k and k != "sourcetype"}
    return cim, got


# What only format splunk gives: an alert's user and src come from its entities, a JSON list of objects whose id and
# name may be null, which Splunk's multivalue fields (entities{}.kind, entities{}.name) cannot pair up reliably.
NATIVE_GAPS = {"Alerts: required field user missing", "Alerts: required field src missing"}


def test_format_native_through_the_addon_fits_the_cim_data_models() -> None:
    """A record sent with format native gets, from the add-on's EVALs and lookups, the tags, the required fields and
    the values format splunk gives it (the native record's own top-level fields count as the model's extras): a
    Change its status, object (the workspace when the record names no target), object_attrs, src_user ("unknown"
    when nobody is named), dvc and command; an alert its dest and ATT&CK ids."""
    failures: dict[str, list[str]] = {}
    compared = 0
    for record in corpus():
        view, got = native_view(record)
        assert got == tags(record), record.get("type") or record["rule"]["id"]
        problems = [p for p in cim_problems(record, view, got) if "is no field" not in p and p not in NATIVE_GAPS]
        doc = to_splunk(record)
        for field in ("status", "object", "object_attrs", "src_user", "dvc", "command", "dest", "mitre_technique_id"):
            if got and field in doc:
                compared += 1
                if view.get(field) != doc[field]:
                    problems.append(f"{field}: {view.get(field)!r}, format splunk {doc[field]!r}")
        if problems:
            failures[str(record.get("type") or record["rule"]["id"])] = problems
    assert failures == {}
    assert compared > 500
