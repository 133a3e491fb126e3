"""Event v1 / Alert v1 → OCSF 1.9.0 (Open Cybersecurity Schema Framework).

Class per event family (``type_uid = class_uid * 100 + activity_id``):

=====================================================  =====================================
audit ``user_login``, MFA challenges 1, 28-31          3002 Authentication (1 Logon)
MFA settings (TOTP 22-26, recovery codes 27)            3007 User Management (12/13 Enable/Disable
                                                        MFA Factors, 2 Update, 99 Other)
API key created/deleted (audit 37/38, snapshots)        3007 User Management (18/19 Add/Remove
                                                        Programmatic Credentials; user = workspace)
audit webhook 18-21; other ``api_key.*``,               3004 Entity Management (1 Create,
``webhook.*``, ``block_list.*``, ``account.*``,         3 Update, 4 Delete, 8/9 Enable/Disable,
other ``workspace.*`` (an ``account`` is a sending      12/13 Suspend/Resume: a webhook marked as
mailbox, not a user: entity type ``account``)           error is suspended, then resumed)
``member.invited/accepted/removed``                     3006 Group Management (group = workspace,
                                                        the member in ``users``, its role unmapped)
``workspace_group.*``                                   3006 Group Management (7/8 Add/Remove Subgroup)
``member.role_changed/permissions_changed``,            3007 User Management (14 Assign / 15 Remove
``workspace.owner_changed``                             Privileges; the workspace in ``resources``,
                                                        the new owner in ``user``)
every other audit record (``audit.*``)                  6003 API Activity (Create/Read/Update/Delete;
                                                        an API key caller in ``api.token``)
anything else (``pipeline.*``, ``webhook_delivery.*``)  0 Base Event
alerts                                                  2004 Detection Finding
=====================================================  =====================================

``observables`` list the IPs, user names, email addresses, user agents, hostnames and (redacted)
webhook URLs the document carries, each named by its attribute path (``src_endpoint.ip``,
``users[0].email_addr``), each value once.

Nothing is dropped: every field of the source record that no OCSF attribute carries is
kept under ``unmapped`` at its original path, and the redacted source record travels in
``raw_data`` (JSON text). Validated in the tests against the OCSF 1.9.0 schema
(``tests/fixtures/ocsf-1.9.0``). Nothing deprecated in 1.9.0 is emitted: not Account Change or
User Access Management (User Management instead), nor ``entity_result`` (``updated_entity``),
Group Management ``user`` (``users``) or ``resource`` (``resources``). ``type_name`` is always
the caption of ``type_uid`` (``<class>: Other`` for activity 99, whose own label is in
``activity_name``), and every ``type``/``status``/``severity`` sibling is its id's caption.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipeline.formats._common import (
    PRODUCT_NAME,
    ROLE_RANK,
    Activity,
    Picker,
    as_dict,
    classify,
    epoch_ms,
    owner_change,
    product_version,
    record_kind,
    role_change,
)
from pipeline.formats.native import dumps
from pipeline.formats.ocsf_observables import EMAIL, observables, valid_ip

OCSF_VERSION = "1.9.0"

_CATEGORY = {0: "Uncategorized", 2: "Findings", 3: "Identity & Access Management", 6: "Application Activity"}
_CLASSES: dict[int, tuple[str, int, dict[int, str]]] = {
    0: ("Base Event", 0, {0: "Unknown", 99: "Other"}),
    2004: ("Detection Finding", 2, {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"}),
    3002: ("Authentication", 3, {0: "Unknown", 1: "Logon", 2: "Logoff", 99: "Other"}),
    3004: (
        "Entity Management",
        3,
        {
            0: "Unknown",
            1: "Create",
            2: "Read",
            3: "Update",
            4: "Delete",
            8: "Enable",
            9: "Disable",
            12: "Suspend",
            13: "Resume",
            99: "Other",
        },
    ),
    3006: (
        "Group Management",
        3,
        {
            0: "Unknown",
            1: "Assign Privileges",
            2: "Revoke Privileges",
            3: "Add User",
            4: "Remove User",
            5: "Delete",
            6: "Create",
            7: "Add Subgroup",
            8: "Remove Subgroup",
            99: "Other",
        },
    ),
    3007: (
        "User Management",
        3,
        {
            0: "Unknown",
            1: "Create",
            2: "Update",
            3: "Delete",
            4: "Enable",
            5: "Disable",
            6: "Lock",
            7: "Unlock",
            8: "Password Change",
            9: "Password Reset",
            10: "Attach Policies",
            11: "Detach Policies",
            12: "Enable MFA Factors",
            13: "Disable MFA Factors",
            14: "Assign Privileges",
            15: "Remove Privileges",
            16: "Assign Roles",
            17: "Remove Roles",
            18: "Add Programmatic Credentials",
            19: "Remove Programmatic Credentials",
            99: "Other",
        },
    ),
    6003: ("API Activity", 6, {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}),
}
_SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
_STATUS = {0: "Unknown", 1: "Success", 2: "Failure"}
_ALERT_SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_RISK_LEVEL = {
    "info": (0, "Info"),
    "low": (1, "Low"),
    "medium": (2, "Medium"),
    "high": (3, "High"),
    "critical": (4, "Critical"),
}
_VERB_ACTIVITY = {"create": 1, "read": 2, "update": 3, "delete": 4}
_ENTITY_ACTIVITY = {"create": 1, "read": 2, "update": 3, "delete": 4, "enable": 8, "disable": 9}
# OCSF pairs 8 Enable with 9 Disable and 12 Suspend with 13 Resume: a webhook Instantly marks as error
# (audit 20) is suspended until it is resumed (audit 21), not disabled.
_SUSPEND_RESUME_CODE = {20: 12, 21: 13}
_SUSPEND_RESUME_ACTION = {"marked_error": 12, "marked_as_error": 12, "suspended": 12, "resumed": 13}
_ATTACK_ID = re.compile(r"^(T\d{4})(?:\.(\d{3}))?$")
# programmatic_credential.type: free text; OCSF's own example spelling for an API key, used everywhere
_API_KEY_CREDENTIAL = "API Key"


def to_ocsf(record: Any) -> dict[str, Any]:
    """Map an Event or Alert (object or dict form) to one OCSF 1.9.0 event.

    Raises:
        TypeError: ``record`` is neither an Event/Alert nor a mapping.
    """
    body = as_dict(record)
    return _finding(body) if record_kind(body) == "alert" else _event(body)


# ------------------------------------------------------------------------------ shared parts
def _head(class_uid: int, activity_id: int, activity_name: str | None = None) -> dict[str, Any]:
    class_name, category_uid, activities = _CLASSES[class_uid]
    caption = activities.get(activity_id, "Other")
    name = activity_name or caption
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": _CATEGORY[category_uid],
        "activity_id": activity_id,
        "activity_name": name,
        "type_uid": class_uid * 100 + activity_id,
        # the type_uid caption (a 99's own label is in activity_name); but the Base Event's type_uid
        # is 99 itself, where the validator flags the caption "Base Event: Other" as suspicious
        "type_name": f"{class_name}: {name if class_uid == 0 else caption}",
    }


def _metadata(p: Picker, *, product: dict[str, Any], code: int | None = None) -> dict[str, Any]:
    """OCSF metadata. ``event_code`` is the original event's identifier: the Instantly audit
    ``activity_type`` when the record has one (the event type then stays in unmapped), else the event
    type. ``observed_at`` (when the pipeline saw the record) is ``processed_time``, the time an
    intermediate system processed it; ``logged_time`` is left to the final destination."""
    meta: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": product,
        "log_provider": PRODUCT_NAME,
    }
    optional = {
        "uid": p.take_str("id"),
        "event_code": str(code) if code is not None else p.take_str("type"),
        "tenant_uid": p.take_str("workspace.id"),
        "original_event_uid": p.take_str("source.record_id"),
        "log_name": p.take_str("source.stream"),
        "log_source": p.take_str("source.kind"),
        "log_version": p.take_str("schema"),
        "processed_time": epoch_ms(p.get("observed_at")),
    }
    if optional["processed_time"] is not None:
        p.take("observed_at")
    meta.update({k: v for k, v in optional.items() if v is not None})
    return meta


def _actor_user(p: Picker) -> dict[str, Any] | None:
    user: dict[str, Any] = {}
    if uid := p.take_str("actor.user_id"):
        user["uid"] = uid
    if name := p.take_str("actor.user_name"):
        user["name"] = name
    if key_id := p.take_str("actor.api_key_id"):
        user["programmatic_credentials"] = [{"uid": key_id, "type": _API_KEY_CREDENTIAL}]
        if "uid" not in user and "name" not in user:
            user["uid"] = key_id  # an API key acting alone: the key is the principal
    return user or None


def _endpoint_parts(p: Picker, out: dict[str, Any]) -> None:
    """src_endpoint.ip and http_request.user_agent from the actor."""
    ip = valid_ip(p.get("actor.ip"))
    if ip is not None:
        p.take("actor.ip")
        out["src_endpoint"] = {"ip": ip}
    if ua := p.take_str("actor.user_agent"):
        out["http_request"] = {"user_agent": ua}


def _finish(p: Picker, out: dict[str, Any]) -> dict[str, Any]:
    if found := observables(out):
        out["observables"] = found
    raw = p.take("raw")
    if raw is not None:
        out["raw_data"] = dumps(raw).decode("utf-8")
    rest = p.rest()
    if rest:
        out["unmapped"] = rest
    return out


def _status(act: Activity) -> dict[str, Any]:
    status_id = {"success": 1, "failure": 2}.get(act.outcome, 0)
    return {"status_id": status_id, "status": _STATUS[status_id]}


def _target_user(p: Picker) -> dict[str, Any]:
    """The member a membership event is about, as an OCSF user (needs uid or name)."""
    user: dict[str, Any] = {}
    if uid := p.take_str("target.id"):
        user["uid"] = uid
    if name := p.take_str("target.name"):
        user["name"] = name
        if EMAIL.match(name):
            user["email_addr"] = name
    return user or {"name": "unknown"}


def _workspace_org(p: Picker) -> dict[str, Any]:
    group: dict[str, Any] = {"uid": p.take_str("workspace.id") or "unknown", "type": "workspace"}
    if name := p.take_str("workspace.name"):
        group["name"] = name
    return group


# ------------------------------------------------------------------------------ events
def _event(body: dict[str, Any]) -> dict[str, Any]:
    act = classify(body)
    etype = str(body.get("type", ""))
    p = Picker(body)
    if act.family == "mfa":
        out = _user_management_mfa(p, act)
    elif act.family == "auth":
        out = _authentication(p, act)
    elif act.family == "api_key" and act.verb in ("create", "delete"):
        out = _user_management_key(p, act)
    elif etype in ("member.role_changed", "member.permissions_changed", "workspace.owner_changed"):
        out = _user_privileges(p, act, body)
    elif act.family in ("api_key", "webhook", "block_list", "account", "workspace"):
        out = _entity_management(p, act, etype)
    elif act.family in ("member", "workspace_group"):
        out = _group_management(p, act)
    elif act.family == "audit":
        out = _api_activity(p, act)
    else:  # pipeline.*, webhook_delivery.*, unknown families: everything else stays unmapped
        out = _head(0, 99, act.label)
    out.update(_status(act))
    out["severity_id"] = 1
    out["severity"] = _SEVERITY[1]
    time_ms = epoch_ms(p.get("time"))
    if time_ms is not None:
        p.take("time")
    else:  # an unparseable time stays in unmapped; OCSF needs one, so use when we saw it
        time_ms = epoch_ms(body.get("observed_at")) or 0
    out["time"] = time_ms
    out["message"] = act.label
    out["metadata"] = _metadata(p, product={"name": "Instantly", "vendor_name": "Instantly.ai"}, code=act.code)
    if out["class_uid"] != 0:
        if "actor" not in out and (user := _actor_user(p)) is not None:
            out["actor"] = {"user": user}
        if "src_endpoint" not in out and "http_request" not in out:
            _endpoint_parts(p, out)
    return _finish(p, out)


def _authentication(p: Picker, act: Activity) -> dict[str, Any]:
    activity_id = 1 if act.verb == "login" else 99
    out = _head(3002, activity_id, None if activity_id == 1 else act.label)
    user = _actor_user(p)
    out["user"] = user or {"name": "unknown"}
    out["service"] = {"name": "Instantly"}
    if act.mfa and act.verb == "login":
        out["is_mfa"] = True
    if act.code is not None and 22 <= act.code <= 26:
        out["auth_factors"] = [{"factor_type_id": 7, "factor_type": "OTP", "is_totp": True}]
    _endpoint_parts(p, out)
    return out


_MFA_ACTIVITY = {"enable": 12, "disable": 13, "update": 2}
_TOTP = {"factor_type_id": 7, "factor_type": "OTP", "is_totp": True}


def _user_management_mfa(p: Picker, act: Activity) -> dict[str, Any]:
    """A user's own MFA settings changed (TOTP enabled/disabled/replaced, recovery codes)."""
    activity_id = _MFA_ACTIVITY.get(act.verb, 99)
    out = _head(3007, activity_id, None if activity_id != 99 else act.label)
    user = _actor_user(p)
    out["user"] = user or {"name": "unknown"}
    recovery = act.code == 27 or "recovery" in act.label.lower()
    out["auth_factors"] = [{"factor_type_id": 99, "factor_type": "Recovery Code"} if recovery else dict(_TOTP)]
    _endpoint_parts(p, out)
    return out


def _user_management_key(p: Picker, act: Activity) -> dict[str, Any]:
    """An API key (a programmatic credential of the workspace) was created or deleted."""
    out = _head(3007, 18 if act.verb == "create" else 19)
    workspace = {"uid": p.get("workspace.id") or "unknown", "type_id": 99, "type": "Workspace"}
    if isinstance(name := p.get("workspace.name"), str) and name:
        workspace["name"] = name
    key_id = p.get("target.id") if p.get("target.kind") == "api_key" else None
    if isinstance(key_id, str) and key_id:
        p.take("target.id")
        p.take("target.kind")
        workspace["programmatic_credentials"] = [{"uid": key_id, "type": _API_KEY_CREDENTIAL}]
        resource: dict[str, Any] = {"uid": key_id, "type": "api_key"}
        if key_name := p.take_str("target.name"):
            resource["name"] = key_name
        data = p.get("change.after" if act.verb == "create" else "change.before")
        if isinstance(data, Mapping) and data:
            p.take("change.after" if act.verb == "create" else "change.before")
            resource["data"] = dict(data)
        out["resources"] = [resource]
    out["user"] = workspace
    return out


def _entity(p: Picker, entity_type: str, data: Any) -> dict[str, Any]:
    # managed_entity.type is the type_id caption unless type_id is 99 (Other): a workspace is 4 Organization.
    entity: dict[str, Any] = {"type": entity_type, "type_id": 99}
    if entity_type == "workspace":
        entity.update(type="Organization", type_id=4)
    if uid := p.take_str("target.id"):
        entity["uid"] = uid
    if name := p.take_str("target.name"):
        entity["name"] = name
    if "uid" not in entity and "name" not in entity:
        entity["name"] = "unknown"
    if isinstance(data, Mapping) and data:
        entity["data"] = dict(data)
    return entity


def _entity_activity(act: Activity, event_type: str) -> int:
    """Entity Management activity_id: Suspend/Resume for a webhook marked as error and resumed, else by verb."""
    if act.code is not None:  # an audit record: by its activity_type
        suspend_resume = _SUSPEND_RESUME_CODE.get(act.code)
    else:  # a snapshot change: by its action name
        suspend_resume = _SUSPEND_RESUME_ACTION.get(event_type.partition(".")[2])
    return suspend_resume or _ENTITY_ACTIVITY.get(act.verb, 99)


def _entity_management(p: Picker, act: Activity, event_type: str) -> dict[str, Any]:
    activity_id = _entity_activity(act, event_type)
    out = _head(3004, activity_id, None if activity_id != 99 else act.label)
    kind = p.get("target.kind")
    if not isinstance(kind, str) or not kind:
        kind = "block_list_entry" if act.family == "block_list" else act.family
    before, after = p.get("change.before"), p.get("change.after")
    if act.verb == "create":
        out["entity"] = _entity(p, kind, after)
        p.take("change.after")
    else:
        out["entity"] = _entity(p, kind, before)
        p.take("change.before")
        if isinstance(after, Mapping) and after:
            result = {k: v for k, v in out["entity"].items() if k != "data"}
            out["updated_entity"] = {**result, "data": dict(after)}  # entity_result is deprecated since 1.9.0
            p.take("change.after")
    if out["entity"]["type"] == kind:  # a workspace is typed by the caption "Organization": kind stays unmapped
        p.take("target.kind")
    return out


def _privileges(body: Mapping[str, Any]) -> tuple[int, list[str]]:
    """(User Management activity_id: 14 Assign / 15 Remove Privileges, privileges) for a role,
    permission or owner change."""
    if body.get("type") == "workspace.owner_changed":
        return 14, ["owner"]
    old, new = role_change(body)
    if old is not None or new is not None:
        if old in ROLE_RANK and new in ROLE_RANK and ROLE_RANK[new] < ROLE_RANK[old]:
            return 15, [old]
        return (14, [new]) if new else (15, [str(old)])
    change = body.get("change") or {}
    before = set((change.get("before") or {}).get("permissions") or [])
    after = set((change.get("after") or {}).get("permissions") or [])
    added, removed = sorted(after - before), sorted(before - after)
    if added and not removed:
        return 14, added
    if removed and not added:
        return 15, removed
    return 99, sorted(after) or sorted(before) or ["unknown"]


def _user_privileges(p: Picker, act: Activity, body: Mapping[str, Any]) -> dict[str, Any]:
    """A member's role or permissions changed: User Management (User Access Management, 3005, is
    deprecated since OCSF 1.9.0 for it), the workspace in ``resources``."""
    activity_id, privileges = _privileges(body)
    out = _head(3007, activity_id, None if activity_id != 99 else act.label)
    if body.get("type") == "workspace.owner_changed" and p.get("target.kind") not in ("member", "user"):
        new = owner_change(body)[1]  # the target is the workspace (resources); the previous owner stays unmapped
        out["user"] = {"uid": new} if new else {"name": "unknown"}
    else:
        out["user"] = _target_user(p)
    out["privileges"] = privileges
    out["resources"] = [{"type": "workspace", **{k: v for k, v in _workspace_org(p).items() if k != "type"}}]
    return out


def _group_management(p: Picker, act: Activity) -> dict[str, Any]:
    if act.family == "workspace_group":
        activity_id = {"create": 7, "delete": 8}.get(act.verb, 99)
        out = _head(3006, activity_id, None if activity_id != 99 else act.label)
        sub: dict[str, Any] = {"type": p.take_str("target.kind") or "workspace"}
        if uid := p.take_str("target.id"):
            sub["uid"] = uid
        if name := p.take_str("target.name"):
            sub["name"] = name
        if "uid" in sub or "name" in sub:
            out["subgroup"] = sub
        out["group"] = {**_workspace_org(p), "type": "workspace_group"}
        return out
    activity_id = {"create": 3, "delete": 4}.get(act.verb, 99)
    out = _head(3006, activity_id, None if activity_id != 99 else act.label)
    out["users"] = [_target_user(p)]  # group_management.user is deprecated since 1.9.0
    out["group"] = _workspace_org(p)
    # No privileges: OCSF's are those of the group; the member's role (no user attribute holds one) stays
    # in unmapped, under change.after.role / attributes.role as in the source record.
    return out


def _api_activity(p: Picker, act: Activity) -> dict[str, Any]:
    out = _head(6003, _VERB_ACTIVITY.get(act.verb, 99), None if act.verb in _VERB_ACTIVITY else act.label)
    user = _actor_user(p)
    out["actor"] = {"user": user} if user else {"app_name": "Instantly"}
    out["api"] = {"operation": act.label, "service": {"name": "Instantly"}}
    key_id = p.get("actor.api_key_id")
    if isinstance(key_id, str) and key_id:  # the API key the call authenticated with (OCSF 1.9 token)
        out["api"]["token"] = {"uid": key_id, "type_id": 7, "type": "API Token"}
    _endpoint_parts(p, out)
    out.setdefault("src_endpoint", {"name": "unknown"})
    kind = p.get("target.kind")
    if isinstance(kind, str) and (p.get("target.id") or p.get("target.name")):
        p.take("target.kind")
        resource: dict[str, Any] = {"type": kind}
        if uid := p.take_str("target.id"):
            resource["uid"] = uid
        if name := p.take_str("target.name"):
            resource["name"] = name
        out["resources"] = [resource]
    return out


# ------------------------------------------------------------------------------ alerts
def _attacks(ids: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ident in ids if isinstance(ids, list) else []:
        m = _ATTACK_ID.match(str(ident))
        if m is None:
            continue
        attack: dict[str, Any] = {"technique": {"uid": m.group(1)}}
        if m.group(2):
            attack["sub_technique"] = {"uid": str(ident)}
        out.append(attack)
    return out


def _finding(body: dict[str, Any]) -> dict[str, Any]:
    p = Picker(body)
    severity = str(p.take("rule.severity") or "info")
    status = str(p.get("status") or "open")  # stays in unmapped too: OCSF's status names differ
    count = p.get("count")
    emission = p.get("emission")  # stays in unmapped too: activity_id does not say which update
    if status == "resolved":
        activity_id, status_id, status_name = 3, 4, "Resolved"
    else:  # OCSF 1 Create when first generated, 2 Update later: the n-th alert (before emission: by count)
        known = isinstance(emission, int) and not isinstance(emission, bool) and emission >= 1
        activity_id = (1 if emission == 1 else 2) if known else (2 if isinstance(count, int) and count > 1 else 1)
        status_id, status_name = 1, "New"
    out = _head(2004, activity_id)
    sev_id = _ALERT_SEVERITY.get(severity, 0)
    risk_id, risk_name = _RISK_LEVEL.get(severity, (0, "Info"))
    out.update(
        severity_id=sev_id,
        severity=_SEVERITY[sev_id],
        status_id=status_id,
        status=status_name,
        risk_level_id=risk_id,
        risk_level=risk_name,
    )
    if activity_id != 3:  # a Close is no alertable signal: OCSF says omit is_alert (or set it false) there
        out["is_alert"] = True
    first = epoch_ms(p.take("first_seen"))
    last = epoch_ms(p.take("last_seen"))
    if (raised := epoch_ms(p.get("raised_at"))) is not None:
        p.take("raised_at")
    # OCSF finding time: when it was generated (the engine raised it), not when its events happened (those are
    # start_time/end_time); a record from before raised_at falls back to its first event
    out["time"] = raised if raised is not None else first if first is not None else last if last is not None else 0
    if first is not None:
        out["start_time"] = first
    if last is not None:
        out["end_time"] = last
    if isinstance(count, int) and count > 1:  # OCSF: count is only populated for aggregate events
        p.take("count")
        out["count"] = count
    if summary := p.take_str("summary"):
        out["message"] = summary
    info: dict[str, Any] = {"uid": p.take_str("dedup_key") or str(body.get("id", "unknown"))}
    if title := p.take_str("rule.title"):
        info["title"] = title
    if summary:
        info["desc"] = summary
    analytic: dict[str, Any] = {"type_id": 1, "type": "Rule", "uid": p.take_str("rule.id") or "unknown"}
    if title:
        analytic["name"] = title
    version = p.get("rule.version")
    if isinstance(version, int):
        p.take("rule.version")
        analytic["version"] = str(version)
    info["analytic"] = analytic
    attacks = _attacks(p.get("rule.attack"))
    if attacks:
        p.take("rule.attack")
        info["attacks"] = attacks
    if first is not None:
        info["first_seen_time"] = first
    if last is not None:
        info["last_seen_time"] = last
    if raised is not None:  # a condition's first alert creates the finding, a later one or its close modifies it
        info["created_time" if activity_id == 1 and emission == 1 else "modified_time"] = raised
    event_ids = p.take("event_ids") or []
    if event_ids:
        info["related_events"] = [{"uid": str(e)} for e in event_ids]
        info["related_events_count"] = len(event_ids)
    out["finding_info"] = info
    runbook = p.take_str("rule.runbook")
    basic = p.take_str("rule.basic")
    if runbook or basic:
        remediation: dict[str, Any] = {"desc": basic or runbook or ""}
        if runbook and runbook.startswith(("https://", "http://")):
            remediation["references"] = [runbook]
        elif runbook and basic:
            remediation["desc"] = f"{basic}\n\n{runbook}"
        out["remediation"] = remediation
    resources = []
    for ent in p.get("entities") or []:
        if isinstance(ent, Mapping) and (ent.get("id") or ent.get("name")):
            res: dict[str, Any] = {"type": str(ent.get("kind") or "unknown")}
            if ent.get("id"):
                res["uid"] = str(ent["id"])
            if ent.get("name"):
                res["name"] = str(ent["name"])
            resources.append(res)
    if resources and len(resources) == len(p.get("entities") or []):
        p.take("entities")
        out["resources"] = resources
    out["metadata"] = _metadata(
        p, product={"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME, "version": product_version()}
    )
    return _finish(p, out)
