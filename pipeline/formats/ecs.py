"""Event v1 / Alert v1 → Elastic Common Schema (ECS 8.17) documents for Elastic Security.

Events: ``@timestamp``, ``event.kind=event``, ``event.category/type`` from the allowed ECS
values per family (login → ``authentication``/``start``; API keys → ``iam``+``configuration``
and members → ``iam``, both with ``user``+``creation|deletion|change``; workspace groups → ``iam``
with ``group``+the activity; webhooks → ``configuration``),
``event.action`` (``api-key-created``), ``event.id`` (the stable event id, also the ES ``_id``),
``event.outcome`` (success/failure; absent where ECS says not to populate it: ``event.type``
``info`` that succeeded, outcomes nobody knows), ``user.*`` (the actor), ``user.target.*``
(a member acted upon, old role in ``user.target.roles``, new role in ``user.changes.roles``
as in the ECS user-usage guide; with no actor user, e.g. a snapshot change, the member is also
``user.id/name/email``, the one user the event mentions; a workspace owner change: the new owner
in ``user.target.id`` with ``user.changes.roles: ["owner"]``, the previous one in ``related.user``,
the workspace only in ``organization.*``), ``source.ip``, ``user_agent.original``, ``organization.*``
(the workspace), ``related.*`` and ``labels``. Alerts: ``event.kind=alert``, ``rule.*``, ``threat.technique.*``,
``@timestamp`` their latest event, ``event.start/end`` the events' range, ``event.created`` when the rules engine
raised them (``raised_at``).

Snapshot baselines (``*.baseline``) describe what exists, not a change: ``event.kind=state``,
``event.type=info`` (an IAM baseline also ``user``/``group``: ``["user", "info"]``). The raw
Instantly record travels as a JSON string in ``event.original`` (not again as ``change.after``
when that is the same record). ``event.provider`` is
``instantly-audit`` for events and alerts alike.

Whatever ECS has no field for is kept under ``instantly.details`` at its original path (mapped
``flattened``/``flat_object`` by the shipped index templates, so stream-specific shapes never
clash); API key details have explicit fields under ``instantly.api_key.*``. Nothing is dropped.
Those mappings index every leaf as one term, and Lucene refuses a whole document with a term over
32,766 UTF-8 bytes ("immense term"): a leftover string longer than :data:`MAX_INDEXED_BYTES` (or a
list holding one) goes to ``instantly.unindexed`` at the same path instead, mapped ``enabled: false``
(kept in ``_source``, not searchable, as a keyword past its ``ignore_above``). So does an object
nested deeper than :data:`MAX_INDEXED_DEPTH` levels: Elasticsearch's ``flattened`` refuses a document
past its ``depth_limit`` (20 by default), and Event v1 allows 64.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.formats._common import Activity, Picker, as_dict, classify, owner_change, record_kind, role_change

ECS_VERSION = "8.17.0"
PROVIDER = "instantly-audit"
MAX_INDEXED_BYTES = 8191
"""Longest leftover string (UTF-8 bytes) kept under ``instantly.details``: a ``flat_object`` leaf is also indexed
as ``<path>=<value>``, so this leaves ~24 KB of Lucene's 32,766-byte term limit to the path."""
MAX_INDEXED_DEPTH = 16
"""Deepest object nesting kept under ``instantly.details`` (``details.a.b`` is 2), under ``flattened``'s default
``depth_limit`` of 20."""

_CATEGORY: dict[str, list[str]] = {
    "auth": ["authentication"],
    "mfa": ["iam"],
    "api_key": ["iam", "configuration"],
    "webhook": ["configuration"],
    "member": ["iam"],
    "workspace_group": ["iam"],
    "block_list": ["configuration"],
    "account": ["configuration"],
    "workspace": ["configuration"],
    "audit": ["configuration"],
    "webhook_delivery": ["email"],
}
_CHANGE_TYPE = {"create": "creation", "delete": "deletion", "read": "access"}
_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
_RISK = {"info": 0.0, "low": 21.0, "medium": 47.0, "high": 73.0, "critical": 99.0}


def to_ecs(record: Any) -> dict[str, Any]:
    """Map an Event or Alert (object or dict form) to one ECS document.

    Raises:
        TypeError: ``record`` is neither an Event/Alert nor a mapping.
    """
    body = as_dict(record)
    return _alert(body) if record_kind(body) == "alert" else _event(body)


def _types(act: Activity, event_type: str) -> tuple[list[str], list[str]]:
    """(event.category, event.type) — only combinations ECS allows.

    An IAM event has two types (ECS user usage guide, Categorization): the activity and what it is about,
    ``group`` for a workspace group, ``user`` otherwise (a member, MFA, the owner, an API key: a credential
    of a user), baselines included (``["user", "info"]``), in the guide's order (``["group", "creation"]``).
    """
    category = _CATEGORY.get(act.family, ["configuration"])
    if act.family == "auth":
        return category, ["start"] if act.verb == "login" else ["info"]
    if act.family == "webhook_delivery":
        return category, ["info"]
    if act.family in ("pipeline", "other"):
        return ["configuration"], ["info"]
    activity = _CHANGE_TYPE.get(act.verb, "change" if act.verb != "other" else "info")
    if act.family in ("member", "mfa") or event_type == "workspace.owner_changed":
        category = ["iam"]
    if act.family == "api_key" and activity in ("access", "info"):
        activity = "change"
    if event_type.endswith("baseline"):  # what exists, not a change
        activity = "info"
    if "iam" not in category:
        return category, [activity]
    subject = "group" if act.family == "workspace_group" else "user"
    return category, [subject, activity if activity != "access" else "info"]


def _action(event_type: str) -> str:
    prefix, _, action = event_type.partition(".")
    name = action if prefix == "audit" else event_type
    return name.replace(".", "-").replace("_", "-")


def _ip(value: Any) -> str | None:
    return value if isinstance(value, str) and _is_ip(value) else None


@functools.lru_cache(maxsize=4096)
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``doc[a][b][c] = value`` for ``path='a.b.c'`` unless value is None/empty."""
    if value is None or value == [] or value == "":
        return
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _common(p: Picker, doc: dict[str, Any]) -> None:
    _put(doc, "organization.id", p.take_str("workspace.id"))
    _put(doc, "organization.name", p.take_str("workspace.name"))
    _put(doc, "labels.schema", p.take_str("schema"))


def _event(body: dict[str, Any]) -> dict[str, Any]:
    act = classify(body)
    p = Picker(body)
    event_type = p.take_str("type") or "unknown.unknown"
    category, types = _types(act, event_type)
    doc: dict[str, Any] = {"@timestamp": p.take("time"), "ecs": {"version": ECS_VERSION}, "message": act.label}
    baseline = event_type.endswith("baseline")
    event: dict[str, Any] = {
        "kind": "state" if baseline else "event",
        "category": category,
        "type": types,
        "action": _action(event_type),
        "id": p.take("id"),
        "created": p.take("observed_at"),
        "module": "instantly",
        "provider": PROVIDER,
        "dataset": f"instantly.{p.get('source.stream') or 'events'}",
    }
    if act.outcome == "failure" or (act.outcome == "success" and "info" not in types and not baseline):
        # ECS: not populated for a successful event.type info (also ["user", "info"]) or where an
        # outcome makes no sense (a baseline states what exists); "unknown" is only for an attempt
        # whose result the producer cannot see, which no Instantly record is.
        event["outcome"] = act.outcome
    if act.code is not None:
        event["code"] = str(act.code)
    raw = p.get("raw")
    if raw is not None:
        p.take("raw")
        event["original"] = orjson.dumps(raw).decode()
        if raw == p.get("change.after"):
            p.take("change.after")
    doc["event"] = event
    _common(p, doc)
    _put(doc, "labels.event_type", event_type)
    _put(doc, "labels.source_kind", p.take_str("source.kind"))
    _put(doc, "labels.source_stream", p.take_str("source.stream"))
    _put(doc, "labels.source_record_id", p.take_str("source.record_id"))

    related_users: list[str] = []
    uid, uname = p.take_str("actor.user_id"), p.take_str("actor.user_name")
    _put(doc, "user.id", uid)
    _put(doc, "user.name", uname)
    related_users += [u for u in (uname, uid) if u]
    ip = _ip(p.get("actor.ip"))
    if ip:
        p.take("actor.ip")
        _put(doc, "source.ip", ip)
        _put(doc, "related.ip", [ip])
    _put(doc, "user_agent.original", p.take_str("actor.user_agent"))

    kind = p.get("target.kind")
    if event_type == "workspace.owner_changed":
        related_users += _owner_change(p, body, doc, actor=bool(uid or uname))
    elif kind in ("member", "user"):
        tid, tname = p.take_str("target.id"), p.take_str("target.name")
        _put(doc, "user.target.id", tid)
        _put(doc, "user.target.name", tname)
        email = tname if tname and "@" in tname else None
        _put(doc, "user.target.email", email)
        if not uid and not uname:  # no actor user: the one user the event mentions goes at the root too
            _put(doc, "user.id", tid)  # (ECS user usage guide, "User fields at the Root of an Event")
            _put(doc, "user.name", tname)
            _put(doc, "user.email", email)
        related_users += [u for u in (tname, tid) if u]
        old, new = role_change(body)
        if old is not None and new is not None and old != new:
            _put(doc, "user.target.roles", [old])
            _put(doc, "user.changes.roles", [new])
        elif new is not None or old is not None:
            _put(doc, "user.target.roles", [new or old])
    elif kind == "api_key":
        _put(doc, "instantly.api_key.id", p.take_str("target.id"))
        _put(doc, "instantly.api_key.name", p.take_str("target.name"))
        scopes = p.get("attributes.scopes")
        if isinstance(scopes, list):
            p.take("attributes.scopes")
            _put(doc, "instantly.api_key.scopes", scopes)
        _put(doc, "instantly.api_key.fingerprint", p.take_str("attributes.key_fingerprint"))
    if related_users:
        _put(doc, "related.user", list(dict.fromkeys(related_users)))
    return _finish(p, doc)


def _owner_change(p: Picker, body: Mapping[str, Any], doc: dict[str, Any], *, actor: bool) -> list[str]:
    """``workspace.owner_changed``: the target is the workspace (already ``organization.*``); the user affected
    is the new owner, ``user.target.id`` (ECS user usage guide: ``user.target`` is the user's prior state,
    ``user.changes`` only what changed: ``roles: ["owner"]``), the previous owner is in ``related.user``.
    Returns the users for ``related.user``."""
    previous, new = owner_change(body)
    for path, value in (("attributes.owner", new), ("attributes.previous_owner", previous)):
        if value is not None and p.get(path) == value:
            p.take(path)
    _put(doc, "user.target.id", new)
    if new is not None:
        _put(doc, "user.changes.roles", ["owner"])
        if not actor:  # no actor user: the user the change is about goes at the root too, as for a member
            _put(doc, "user.id", new)
    return [u for u in (new, previous) if u]


def _finish(p: Picker, doc: dict[str, Any]) -> dict[str, Any]:
    rest = p.rest()
    long = _split_long(rest)
    if rest:
        doc.setdefault("instantly", {})["details"] = rest
    if long:
        doc.setdefault("instantly", {})["unindexed"] = long
    return doc


def _unindexable(value: Any, depth: int) -> bool:
    """A string too long to be indexed as one term, or an object deeper than :data:`MAX_INDEXED_DEPTH`, anywhere
    in ``value`` (found at nesting ``depth``)."""
    if value.__class__ is str:
        return len(value) > MAX_INDEXED_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_INDEXED_BYTES
    if isinstance(value, list):
        return any(_unindexable(v, depth) for v in value)
    if isinstance(value, dict):
        return depth >= MAX_INDEXED_DEPTH or any(_unindexable(v, depth + 1) for v in value.values())
    return False


def _split_long(node: dict[str, Any], depth: int = 1) -> dict[str, Any]:
    """Move what :func:`_unindexable` finds out of ``node`` (at nesting ``depth``), in place: a string, a list as a
    whole, an object past the depth limit as a whole; return them nested as they were. Objects left empty go."""
    moved: dict[str, Any] = {}
    for key in list(node):
        value = node[key]
        if isinstance(value, dict) and depth < MAX_INDEXED_DEPTH:
            inner = _split_long(value, depth + 1)
            if inner:
                moved[key] = inner
                if not value:
                    del node[key]
        elif _unindexable(value, depth):
            moved[key] = node.pop(key)
    return moved


def _alert(body: dict[str, Any]) -> dict[str, Any]:
    p = Picker(body)
    severity = str(p.take("rule.severity") or "info")
    status = p.take_str("status") or "open"
    first, last = p.take("first_seen"), p.take("last_seen")
    doc: dict[str, Any] = {"@timestamp": last or first, "ecs": {"version": ECS_VERSION}}
    _put(doc, "message", p.take_str("summary"))
    doc["event"] = {
        "kind": "alert",
        "category": ["intrusion_detection"],
        "type": ["info"],
        "action": f"alert-{status}",
        "id": p.take("id"),
        "start": first,
        "end": last,
        "severity": _SEVERITY.get(severity, 0),
        "risk_score": _RISK.get(severity, 0.0),
        "module": "instantly",
        "provider": PROVIDER,
        "dataset": "instantly.alerts",
    }
    # ECS: event.created is when the pipeline created the event, for an alert when the rules engine raised it
    # (absent from records written before Alert v1 had raised_at); @timestamp stays its latest activity
    _put(doc, "event.created", p.take_str("raised_at"))
    _common(p, doc)
    _put(doc, "labels.severity", severity)
    _put(doc, "labels.status", status)
    _put(doc, "rule.id", p.take_str("rule.id"))
    _put(doc, "rule.name", p.take_str("rule.title"))
    version = p.take("rule.version")
    _put(doc, "rule.version", str(version) if version is not None else None)
    _put(doc, "rule.description", p.take_str("rule.basic"))
    runbook = p.get("rule.runbook")
    if isinstance(runbook, str) and runbook.startswith(("https://", "http://")):
        p.take("rule.runbook")
        _put(doc, "rule.reference", runbook)
        _put(doc, "event.reference", runbook)
    _put(doc, "rule.ruleset", "instantly-audit")
    attack = [str(a) for a in p.take("rule.attack") or []]
    if attack:
        doc["threat"] = {"framework": "MITRE ATT&CK", "technique": {"id": sorted({a[:5] for a in attack})}}
        subs = [a for a in attack if "." in a]
        if subs:
            doc["threat"]["technique"]["subtechnique"] = {"id": subs}
    users = [
        str(e.get("name") or e.get("id"))
        for e in body.get("entities") or []
        if isinstance(e, Mapping) and e.get("kind") in ("user", "member") and (e.get("name") or e.get("id"))
    ]
    ips = [str(e["id"]) for e in body.get("entities") or [] if isinstance(e, Mapping) and _ip(e.get("id"))]
    _put(doc, "related.user", users)
    _put(doc, "related.ip", ips)
    return _finish(p, doc)
