"""Event v1 / Alert v1 → CIM-friendly JSON for Splunk HEC (format ``splunk``).

Splunk's Common Information Model wants flat, well-known field names. This format puts them
at the top level of the HEC ``event`` and keeps the whole native record under ``instantly``,
so nothing is lost and ``deploy/splunk/`` (eventtypes + tags) only has to tag them:

* Authentication (logins, MFA challenges): ``action`` (success|failure), ``app``, ``user``,
  ``src``, ``dest``, ``signature``, ``signature_id``, ``authentication_method``, ``user_agent``.
* Change (API keys, members, groups, webhooks, sending accounts, MFA settings, workspace, audit changes):
  ``action`` (created|deleted|modified|read), ``change_type``, ``object``, ``object_id``,
  ``object_category``, ``object_attrs``, ``status``, ``user`` (the account changed, or the
  actor when no account is), ``src_user`` (the actor), ``src``, ``user_agent``, and the two the
  model requires of every change: ``dvc`` (the system that reported it: ``instantly``) and
  ``command`` (what made it: the event type, ``api_key.created``).
* Snapshot baselines (what exists at the first poll) carry ``object*`` but no ``action`` and
  no data model: they are inventory, not changes.
* Alerts: ``type=alert``, ``severity``, ``signature``, ``signature_id``, ``description``,
  ``mitre_technique_id``, ``user``/``src`` from the entities.

``cim_model`` (``Authentication`` | ``Change``) names the data model a record belongs to; the
add-on's eventtypes key on it. Every CIM field is a string (lists for ``object_attrs`` and
``mitre_technique_id``). Field names are those of Splunk's CIM definitions (checked against them by
``tests/unit/test_splunk_cim.py``): the client is ``user_agent``, not Web's ``http_user_agent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.formats._common import AUDIT_ACTIVITIES, Activity, as_dict, classify, record_kind

APP = "instantly"
DVC = APP
"""CIM Change ``dvc``, the device that reported the change: Instantly (its audit log or API), whatever the stream."""
VENDOR_PRODUCT = "Instantly"
_CHANGE_ACTION = {"create": "created", "delete": "deleted", "read": "read"}
_OBJECT_CATEGORY = {
    "api_key": "api_key", "member": "user", "mfa": "user", "workspace_group": "group",
    "webhook": "webhook", "workspace": "workspace", "block_list": "block_list", "account": "account",
}  # fmt: skip
_CIM_SEVERITY = {"info": "informational", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "" and value != []:
        doc[key] = value


def to_splunk(record: Any) -> dict[str, Any]:
    """Map an Event or Alert (object or dict form) to one CIM-friendly HEC event.

    Raises:
        TypeError: ``record`` is neither an Event/Alert nor a mapping.
    """
    body = as_dict(record)
    doc: dict[str, Any] = {"app": APP, "vendor_product": VENDOR_PRODUCT}
    if record_kind(body) == "alert":
        _alert(body, doc)
    else:
        _event(body, doc)
    doc["instantly"] = body
    return doc


def _workspace(body: Mapping[str, Any]) -> str | None:
    ws = body.get("workspace")
    return (_str(ws.get("name")) or _str(ws.get("id"))) if isinstance(ws, Mapping) else None


def _event(body: dict[str, Any], doc: dict[str, Any]) -> None:
    act = classify(body)
    actor = body.get("actor") if isinstance(body.get("actor"), Mapping) else {}
    target = body.get("target") if isinstance(body.get("target"), Mapping) else {}
    assert isinstance(actor, Mapping) and isinstance(target, Mapping)
    who = _str(actor.get("user_name")) or _str(actor.get("user_id"))
    _put(doc, "src", _str(actor.get("ip")))
    _put(doc, "user_agent", _str(actor.get("user_agent")))
    _put(doc, "dest", _workspace(body))
    _put(doc, "signature", act.label)
    _put(doc, "signature_id", str(act.code) if act.code is not None else _str(body.get("type")))
    _put(doc, "id", _str(body.get("id")))
    if act.family == "auth":
        doc["cim_model"] = "Authentication"
        doc["action"] = "failure" if act.outcome == "failure" else "success"
        _put(doc, "user", who)
        if act.mfa:
            doc["authentication_method"] = "mfa"
        return
    if act.family in ("pipeline", "other", "webhook_delivery"):
        _put(doc, "status", act.outcome)
        return
    _change(body, act, doc, who, target)


def _change(
    body: dict[str, Any], act: Activity, doc: dict[str, Any], who: str | None, target: Mapping[str, Any]
) -> None:
    if not str(body.get("type", "")).endswith("baseline"):  # a baseline states what exists: no change
        doc["cim_model"] = "Change"
        doc["action"] = _CHANGE_ACTION.get(act.verb, "modified")
        doc["dvc"] = DVC
        _put(doc, "command", _str(body.get("type")))
    doc["status"] = "failure" if act.outcome == "failure" else "success"
    known = AUDIT_ACTIVITIES.get(act.code) if act.code is not None else None
    category = _OBJECT_CATEGORY.get(act.family) or (known[0].split(" ", 1)[0].lower() if known else "audit")
    doc["object_category"] = category
    doc["change_type"] = "AAA" if category in ("user", "group", "api_key") else "application"
    name, tid = _str(target.get("name")), _str(target.get("id"))
    _put(doc, "object", name or tid or _workspace(body) or act.label)
    _put(doc, "object_id", tid)
    change = body.get("change") if isinstance(body.get("change"), Mapping) else None
    if isinstance(change, Mapping):
        fields = change.get("fields")
        if isinstance(fields, list):
            _put(doc, "object_attrs", [str(f) for f in fields])
    account = name or tid if category == "user" else None
    doc["user"] = account or who or "unknown"  # CIM: "unknown" when it cannot be known (a snapshot diff)
    doc["src_user"] = who or "unknown"


def _alert(body: dict[str, Any], doc: dict[str, Any]) -> None:
    rule = body.get("rule") if isinstance(body.get("rule"), Mapping) else {}
    assert isinstance(rule, Mapping)
    doc["type"] = "alert"
    _put(doc, "id", _str(body.get("id")))
    _put(doc, "severity", _CIM_SEVERITY.get(str(rule.get("severity")), "unknown"))
    _put(doc, "signature", _str(rule.get("title")) or _str(rule.get("id")))
    _put(doc, "signature_id", _str(rule.get("id")))
    _put(doc, "description", _str(body.get("summary")))
    _put(doc, "status", _str(body.get("status")))
    _put(doc, "dest", _workspace(body))
    attack = rule.get("attack")
    if isinstance(attack, list):
        _put(doc, "mitre_technique_id", [str(a) for a in attack])
    entities = [e for e in body.get("entities") or [] if isinstance(e, Mapping)]
    users = [str(e.get("name") or e.get("id")) for e in entities if e.get("kind") in ("user", "member")]
    ips = [str(e.get("id")) for e in entities if e.get("kind") == "ip"]
    _put(doc, "user", users[0] if users else None)
    _put(doc, "src", ips[0] if ips else None)
