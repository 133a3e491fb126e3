"""Event v1 / Alert v1 → ArcSight Common Event Format (CEF:0), for ArcSight, Sentinel and QRadar.

``CEF:0|Instantly-Audit|instantly-audit|<version>|<signature id>|<name>|<severity>|<extension>``

Escaping (ArcSight "Implementing CEF", rev. 25):

* header fields: ``\\`` → ``\\\\`` and ``|`` → ``\\|``; a header cannot hold a line break, so
  CR, LF and every other control character become U+FFFD;
* extension values: ``\\`` → ``\\\\``, ``=`` → ``\\=``, LF → ``\\n``, CR → ``\\r``; other control
  characters (which CEF cannot escape, and which would let a value forge a key boundary
  through a tab or corrupt a terminal) become U+FFFD; pipes need no escape there;
* keys come only from :data:`EXTENSION_KEYS` (the CEF dictionary entries this project uses)
  and every value is cut to the dictionary's length for its key (an ellipsis marks a cut).

Signature id: the event type with its first dot as a colon (``api_key:created``,
``member:role_changed``, ``audit:user_login``) or ``alert:<rule id>``. Severity 0-10: events 1
(5 when they record a failure); open alerts info 1, low 3, medium 5, high 8, critical 10; a resolved
alert 3 whatever its rule's severity (an all-clear is not a high-importance event: a severity-routed
rule must not fire on it), the rule's severity in ``flexString2`` (``ruleSeverity``) on every alert.
Custom slots are labelled per record (``cs1Label=workspaceId`` …). CEF carries the mapped
fields only; the complete record travels in the JSON formats.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pipeline.formats._common import (
    PRODUCT_NAME,
    VENDOR_NAME,
    as_dict,
    classify,
    epoch_ms,
    product_version,
    record_kind,
    role_change,
)

# key → maximum length in characters (0: a number or a timestamp, never cut)
EXTENSION_KEYS: dict[str, int] = {
    "act": 63, "cat": 1023, "cnt": 0, "deviceFacility": 1023, "dhost": 1023, "duid": 1023, "duser": 1023,
    "end": 0, "externalId": 40, "msg": 1023, "outcome": 63, "reason": 1023,
    "requestClientApplication": 1023, "rt": 0, "src": 0, "start": 0, "suid": 1023, "suser": 1023,
    "c6a2": 0, "c6a2Label": 1023,
    "cs1": 4000, "cs2": 4000, "cs3": 4000, "cs4": 4000, "cs5": 4000, "cs6": 4000,
    "cs1Label": 1023, "cs2Label": 1023, "cs3Label": 1023, "cs4Label": 1023, "cs5Label": 1023,
    "cs6Label": 1023, "cn1": 0, "cn2": 0, "cn1Label": 1023, "cn2Label": 1023,
    "flexString1": 1023, "flexString2": 1023, "flexString1Label": 128, "flexString2Label": 128,
}  # fmt: skip
HEADER_LIMITS = {"vendor": 63, "product": 63, "version": 31, "signature_id": 1023, "name": 512}
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_CONTROL = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")
_ALERT_SEVERITY = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
RESOLVED_SEVERITY = 3
"""A resolved alert's CEF severity (Low), whatever its rule's: the all-clear of a condition."""
_ACT = {"create": "created", "delete": "deleted", "update": "updated", "login": "login", "enable": "enabled",
        "disable": "disabled", "read": "read", "accept": "accepted", "other": "other"}  # fmt: skip


def _cut(text: str, limit: int) -> str:
    return text if limit <= 0 or len(text) <= limit else text[: limit - 1] + "…"


def escape_header(value: str) -> str:
    """Escape one header field: backslash and pipe; control characters become U+FFFD."""
    return _CONTROL.sub("\ufffd", value.replace("\\", "\\\\").replace("|", "\\|"))


def escape_value(value: str) -> str:
    """Escape one extension value: backslash, equals sign, CR and LF; other controls become U+FFFD."""
    value = _VALUE_CONTROL.sub("\ufffd", value)
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def cef_line(
    *,
    signature_id: str,
    name: str,
    severity: int,
    extension: Sequence[tuple[str, Any]],
    vendor: str = VENDOR_NAME,
    product: str = PRODUCT_NAME,
    version: str | None = None,
) -> str:
    """Assemble one CEF line; ``None``/empty extension values are left out.

    Raises:
        ValueError: severity outside 0-10, or an extension key not in :data:`EXTENSION_KEYS`.
    """
    if type(severity) is not int or not 0 <= severity <= 10:
        raise ValueError(f"CEF severity must be an integer 0-10, got {severity!r}")
    header = [
        _cut(vendor, HEADER_LIMITS["vendor"]),
        _cut(product, HEADER_LIMITS["product"]),
        _cut(version or product_version(), HEADER_LIMITS["version"]),
        _cut(signature_id, HEADER_LIMITS["signature_id"]),
        _cut(name, HEADER_LIMITS["name"]),
    ]
    pairs: list[str] = []
    for key, value in extension:
        if key not in EXTENSION_KEYS or not _KEY.match(key):
            raise ValueError(f"CEF extension key {key!r} is not in the allowed dictionary")
        if value is None or value == "":
            continue
        text = str(int(value)) if isinstance(value, bool | int) else _cut(str(value), EXTENSION_KEYS[key])
        pairs.append(f"{key}={escape_value(text)}")
    head = "|".join(escape_header(h) for h in header)
    return f"CEF:0|{head}|{severity}|{' '.join(pairs)}"


def to_cef(record: Any) -> str:
    """Render an Event or Alert (object or dict form) as one CEF line (no trailing newline).

    Raises:
        TypeError: ``record`` is neither an Event/Alert nor a mapping.
    """
    body = as_dict(record)
    return _alert(body) if record_kind(body) == "alert" else _event(body)


def _labelled(slot: str, label: str, value: Any) -> list[tuple[str, Any]]:
    if value is None or value == "" or value == []:
        return []
    return [(f"{slot}Label", label), (slot, value)]


def _address(ip: Any) -> list[tuple[str, Any]]:
    if not isinstance(ip, str):
        return []
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return []
    if addr.version == 4:
        return [("src", ip)]
    return [("c6a2Label", "Source IPv6 Address"), ("c6a2", ip)]


def webhook_host(body: Mapping[str, Any]) -> str | None:
    """The host a webhook delivers to (never the path or query, which may hold a token)."""
    attrs = body.get("attributes") or {}
    change = body.get("change") or {}
    candidates = [attrs.get("url_host"), attrs.get("target_host")]
    for where in (attrs, change.get("after") or {}, change.get("before") or {}, body.get("raw") or {}):
        url = where.get("target_hook_url") if isinstance(where, Mapping) else None
        if isinstance(url, str) and url:
            try:
                candidates.append(urlsplit(url).hostname)
            except ValueError:
                continue
    return next((c for c in candidates if isinstance(c, str) and c), None)


def _event(body: Mapping[str, Any]) -> str:
    act = classify(body)
    etype = str(body.get("type", "unknown.unknown"))
    actor = body.get("actor") or {}
    target = body.get("target") or {}
    attrs = body.get("attributes") or {}
    source = body.get("source") or {}
    workspace = body.get("workspace") or {}
    kind = target.get("kind")
    person = kind in ("member", "user")
    old, new = role_change(body) if kind in ("member", "user") else (None, None)
    scopes = attrs.get("scopes")
    key_id = actor.get("api_key_id") or (target.get("id") if kind == "api_key" else None)
    fingerprint = attrs.get("key_fingerprint") or attrs.get("fingerprint")
    affected = attrs.get("affected_count")
    parts = [act.label]
    if target:
        parts.append(f"{kind} {target.get('name') or target.get('id') or ''}".strip())
    who = actor.get("user_name") or actor.get("user_id") or actor.get("api_key_id")
    if who:
        parts.append(f"by {who}")
    parts.append(f"in workspace {workspace.get('name') or workspace.get('id')}")
    ext: list[tuple[str, Any]] = [
        ("rt", epoch_ms(body.get("time"))),
        ("externalId", body.get("id")),
        ("cat", etype.partition(".")[0]),
        ("act", _ACT[act.verb]),
        ("outcome", act.outcome if act.outcome != "unknown" else None),
        ("deviceFacility", source.get("stream")),
        *_labelled("flexString1", "sourceRecordId", source.get("record_id")),
        ("suid", actor.get("user_id")),
        ("suser", actor.get("user_name")),
        *_address(actor.get("ip")),
        ("requestClientApplication", actor.get("user_agent")),
        *_labelled("cs1", "workspaceId", workspace.get("id")),
        *_labelled("cs2", "apiKeyId", key_id),
        *_labelled("cs3", "scopes", ",".join(map(str, scopes)) if isinstance(scopes, list) else None),
        *_labelled("cs4", "keyFingerprint", fingerprint if isinstance(fingerprint, str) else None),
        *_labelled("cs5", "oldRole", old),
        *_labelled("cs6", "newRole", new),
        ("dhost", webhook_host(body) if kind == "webhook" or act.family == "webhook" else None),
        ("duid", target.get("id") if person else None),
        ("duser", target.get("name") if person else None),
        *_labelled("flexString2", "target", f"{kind}:{target.get('id') or ''}" if target and not person else None),
        *_labelled("cn1", "activityType", act.code),
        *_labelled("cn2", "affectedCount", affected if isinstance(affected, int) else None),
        ("msg", ", ".join(parts)),
    ]
    return cef_line(
        signature_id=etype.replace(".", ":", 1),
        name=act.label,
        severity=5 if act.outcome == "failure" else 1,
        extension=ext,
    )


def _alert(body: Mapping[str, Any]) -> str:
    rule = body.get("rule") or {}
    workspace = body.get("workspace") or {}
    entities = [
        f"{e.get('kind')}:{e.get('id') or ''}:{e.get('name') or ''}"
        for e in body.get("entities") or []
        if isinstance(e, Mapping)
    ]
    first, last = epoch_ms(body.get("first_seen")), epoch_ms(body.get("last_seen"))
    count, version = body.get("count"), rule.get("version")
    ext: list[tuple[str, Any]] = [
        ("rt", last or first),
        ("start", first),
        ("end", last),
        ("cnt", count if isinstance(count, int) else None),
        ("externalId", body.get("id")),
        ("cat", "alert"),
        ("act", body.get("status")),
        *_labelled("cs1", "workspaceId", workspace.get("id")),
        *_labelled("cs2", "dedupKey", body.get("dedup_key")),
        *_labelled("cs3", "ruleId", rule.get("id")),
        *_labelled("cn1", "ruleVersion", version if isinstance(version, int) else None),
        *_labelled("cs4", "attack", ",".join(map(str, rule.get("attack") or []))),
        *_labelled("cs5", "runbook", rule.get("runbook")),
        *_labelled("cs6", "entities", "; ".join(entities)),
        *_labelled("flexString1", "eventIds", ",".join(map(str, body.get("event_ids") or []))),
        *_labelled("flexString2", "ruleSeverity", rule.get("severity")),
        ("reason", rule.get("basic")),
        ("msg", body.get("summary")),
    ]
    return cef_line(
        signature_id=f"alert:{rule.get('id', 'unknown')}",
        name=str(rule.get("title") or "Alert"),
        severity=RESOLVED_SEVERITY
        if body.get("status") == "resolved"
        else _ALERT_SEVERITY.get(str(rule.get("severity")), 1),
        extension=ext,
    )
