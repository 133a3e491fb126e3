"""Snapshot diffing: what changed in API keys, members, webhooks, the workspace, agency links, the block list
and the sending accounts.

Instantly's audit log has no member, scope or block-list events (and nothing for an account's
``reply_to``, its tracking domain or ``POST /accounts/move``), so these resources are listed
in full on every poll and compared with the last published snapshot (a dict id → redacted
record). The first snapshot of a workspace yields one ``*.baseline`` event per resource so
rules can judge what already exists; later ones yield ``created``/``deleted`` and specific
change events. Pure functions: no I/O, no clock.

Change detection ignores ``timestamp_updated`` (at any depth) and the order of ``scopes`` and
``permissions``. Webhook header *values* are redacted before they are stored, so only changes
of header *names* are visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.instantly import api
from connectors.instantly import normalize as n
from connectors.instantly.redact import header_names, redact_api_key, redact_record, redact_webhook, set_header_names
from pipeline.redaction.gate import GateRejected, redact_tree
from schemas.event import Actor, Event, WorkspaceRef

JSONDict = dict[str, Any]
Snapshot = dict[str, JSONDict]
Rejected = tuple[Mapping[str, Any], str]
"""A listed record the snapshot leaves out, and why (it becomes a dead letter)."""
ChangeSpec = tuple[str, tuple[str, ...], JSONDict]
"""One classified change: (type suffix = change kind, changed fields, extra attributes)."""
SNAPSHOT_VERSION = 1
_VOLATILE = "timestamp_updated"
_SET_FIELDS = frozenset({"scopes", "permissions"})


@dataclass(frozen=True)
class ResourceKind:
    """How one snapshot stream is redacted, described and diffed."""

    stream: str
    prefix: str
    redact: Callable[[Mapping[str, Any]], JSONDict]
    attributes: Callable[[Mapping[str, Any], str], JSONDict]
    classify: Callable[[JSONDict, JSONDict, frozenset[str]], list[ChangeSpec]]
    added: str = "created"
    removed: str = "deleted"
    baseline: str = "baseline"
    identity: Callable[[Mapping[str, Any]], str | None] | None = None
    """A record's key in the snapshot (``None``: its ``id``); accounts use their lower-cased email."""
    removal: str | None = None
    """Attribute ``removal`` of the removed event: what a disappearance can mean (accounts: deleted or moved)."""


def _comparable(value: Any, field: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _comparable(v, k) for k, v in value.items() if k != _VOLATILE}
    if isinstance(value, list):
        items = [_comparable(v) for v in value]
        if field in _SET_FIELDS:
            return sorted(items, key=lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
        return items
    return value


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> frozenset[str]:
    """Top-level fields whose values differ (ignoring volatile fields and set-like list order)."""
    keys = (set(before) | set(after)) - {_VOLATILE}
    return frozenset(k for k in keys if _comparable(before.get(k), k) != _comparable(after.get(k), k))


def _as_set(value: Any) -> set[str]:
    return {str(v) for v in value} if isinstance(value, list) else set()


def _rest(fields: frozenset[str], used: Iterable[str], suffix: str = "updated") -> list[ChangeSpec]:
    rest = tuple(sorted(fields - set(used)))
    return [(suffix, rest, {})] if rest else []


# ---------------------------------------------------------------------------------- classifiers
def _delta(name: str, old: set[str], new: set[str]) -> JSONDict:
    """``previous_<name>``, ``<name>_added`` and ``<name>_removed`` (sorted) for a set-valued field."""
    return {f"previous_{name}": sorted(old), f"{name}_added": sorted(new - old), f"{name}_removed": sorted(old - new)}


def _api_key_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    if "scopes" in fields:
        out.append(
            ("scopes_changed", ("scopes",), _delta("scopes", _as_set(b.get("scopes")), _as_set(a.get("scopes"))))
        )
    if "name" in fields:
        out.append(("renamed", ("name",), {"previous_name": b.get("name")}))
    return out + _rest(fields, ("scopes", "name"))


def _member_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    used = {"role", "permissions"}
    if "accepted" in fields and a.get("accepted") is True:
        out.append(("accepted", ("accepted",), {}))
        used.add("accepted")
    if "role" in fields:
        out.append(("role_changed", ("role",), {"previous_role": b.get("role")}))
    if "permissions" in fields:
        delta = _delta("permissions", _as_set(b.get("permissions")), _as_set(a.get("permissions")))
        out.append(("permissions_changed", ("permissions",), delta))
    return out + _rest(fields, used)


def _webhook_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    used = {"headers"}
    if "status" in fields:
        old, new = b.get("status"), a.get("status")
        kind = "error" if new == -1 else ("resumed" if old == -1 else "changed")
        status_fields = tuple(sorted({"status", "timestamp_error"} & fields))
        out.append(("status_changed", status_fields, {"previous_status": old, "status_change": kind}))
        used |= set(status_fields)
    old_names, new_names = set(header_names(b.get("headers"))), set(header_names(a.get("headers")))
    old_set, new_set = set(set_header_names(b.get("headers"))), set(set_header_names(a.get("headers")))
    if old_names != new_names or old_set != new_set:
        delta = _delta("header_names", old_names, new_names)
        delta["header_values_emptied"] = sorted((old_set - new_set) & new_names)
        delta["header_values_set"] = sorted((new_set - old_set) & old_names)
        out.append(("headers_changed", ("headers",), delta))
    return out + _rest(fields, used)


def _workspace_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    if "owner" in fields:
        out.append(("owner_changed", ("owner",), {"previous_owner": b.get("owner")}))
    plan = tuple(sorted(f for f in fields if f.startswith("plan_id")))
    if plan:
        previous = {"previous_plan_id": b.get("plan_id"), "previous_plan_id_bundle": b.get("plan_id_bundle")}
        out.append(("plan_changed", plan, previous))
    if "scheduled_for_removal_at" in fields:
        kind = "removal_cancelled" if a.get("scheduled_for_removal_at") is None else "removal_scheduled"
        previous = {"previous_scheduled_for_removal_at": n.iso_time(b.get("scheduled_for_removal_at"))}
        out.append((kind, ("scheduled_for_removal_at",), previous))
    if "org_client_domain" in fields:
        previous = {"previous_org_client_domain": b.get("org_client_domain")}
        out.append(("whitelabel_domain_changed", ("org_client_domain",), previous))
    return out + _rest(fields, {"owner", "scheduled_for_removal_at", "org_client_domain", *plan})


def _group_member_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    if "status" in fields:
        out.append(("member_status_changed", ("status",), {"previous_status": b.get("status")}))
    return out + _rest(fields, ("status",), "member_updated")


def _block_list_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    return _rest(fields, (), "entry_updated")


def _account_changes(b: JSONDict, a: JSONDict, fields: frozenset[str]) -> list[ChangeSpec]:
    out: list[ChangeSpec] = []
    used = {"reply_to", "tracking_domain_name", "status", "warmup_status"}
    if "reply_to" in fields:
        out.append(("reply_to_changed", ("reply_to",), {"previous_reply_to": b.get("reply_to")}))
    if "tracking_domain_name" in fields:
        tracking = tuple(sorted({"tracking_domain_name", "tracking_domain_status"} & fields))
        used |= set(tracking)
        previous = {
            "previous_tracking_domain_name": b.get("tracking_domain_name"),
            "previous_tracking_domain_status": b.get("tracking_domain_status"),
        }
        out.append(("tracking_domain_changed", tracking, previous))
    status = tuple(sorted({"status", "warmup_status"} & fields))
    if status:
        previous = {"previous_status": b.get("status"), "previous_warmup_status": b.get("warmup_status")}
        out.append(("status_changed", status, previous))
    if out:  # who made the change moves with it: not a second, separate event
        used.add("modified_by")
    return out + _rest(fields, used)


def _ignore_ws(fn: Callable[[Mapping[str, Any]], JSONDict]) -> Callable[[Mapping[str, Any], str], JSONDict]:
    return lambda r, _ws: fn(r)


def _kind(
    stream: str,
    redact: Callable[[Mapping[str, Any]], JSONDict],
    attributes: Callable[[Mapping[str, Any], str], JSONDict],
    classify: Callable[[JSONDict, JSONDict, frozenset[str]], list[ChangeSpec]],
    *,
    identity: Callable[[Mapping[str, Any]], str | None] | None = None,
    removal: str | None = None,
    **suffixes: str,
) -> ResourceKind:
    """A snapshot stream's diff behaviour; its name and event prefix come from the stream table."""
    spec = api.stream(stream)
    if spec.kind != "snapshot":
        raise ValueError(f"{stream} is not a snapshot stream")
    return ResourceKind(
        spec.name, spec.resource, redact, attributes, classify, identity=identity, removal=removal, **suffixes
    )


KINDS: dict[str, ResourceKind] = {
    k.stream: k
    for k in (
        _kind("api_keys", redact_api_key, _ignore_ws(n.api_key_attributes), _api_key_changes),
        _kind(
            "members",
            redact_record,
            _ignore_ws(n.member_attributes),
            _member_changes,
            added="invited",
            removed="removed",
        ),
        _kind("webhooks", redact_webhook, _ignore_ws(n.webhook_attributes), _webhook_changes),
        _kind("workspace", redact_record, _ignore_ws(n.workspace_attributes), _workspace_changes),
        _kind(
            "group_members",
            redact_record,
            n.group_member_attributes,
            _group_member_changes,
            added="member_added",
            removed="member_removed",
            baseline="member_baseline",
        ),
        _kind(
            "block_list",
            redact_record,
            _ignore_ws(n.block_list_attributes),
            _block_list_changes,
            added="entry_added",
            removed="entry_removed",
            baseline="entry_baseline",
        ),
        _kind(
            "accounts",
            n.redact_account,
            _ignore_ws(n.account_attributes),
            _account_changes,
            added="added",
            removed="removed",
            identity=n.account_id,
            removal="deleted, or moved to another workspace (POST /accounts/move leaves no audit record)",
        ),
    )
}
"""Snapshot kinds by stream name (the ``streams`` names of the workspace config)."""


def _gated(record: JSONDict) -> JSONDict | None:
    """``record`` after the publish gate's passes (name, value, shape, URL): what its events will hold.

    ``None`` when the gate refuses it (nested deeper than the gate allows).
    """
    try:
        out = redact_tree(record)
    except GateRejected:
        return None
    return out if isinstance(out, dict) else None


def gate_snapshot(snapshot: Snapshot) -> Snapshot:
    """A stored snapshot passed through the publish gate again, so it compares with a new one record by record.

    Snapshots stored by older versions hold records redacted by name only (a URL with userinfo, a
    presigned link, a bearer token in a name); re-gating them on load keeps the first poll after
    an upgrade from reporting those fields as changed. The gate is idempotent: an already gated
    record comes back equal.
    """
    return {rid: g for rid, rec in snapshot.items() if (g := _gated(rec)) is not None}


# ------------------------------------------------------------------------------------- public
def build_snapshot(stream: str, records: Iterable[Mapping[str, Any]]) -> tuple[Snapshot, int]:
    """:func:`split_snapshot` with the number of records left out."""
    snap, rejected = split_snapshot(stream, records)
    return snap, len(rejected)


def split_snapshot(stream: str, records: Iterable[Mapping[str, Any]]) -> tuple[Snapshot, list[Rejected]]:
    """Redact ``records`` and key them by id (accounts: lower-cased email); return (snapshot, the
    records left out: without a usable id, or refused by the gate, each with the reason).

    Each record takes its kind's redaction, then the publish gate's passes
    (:func:`pipeline.redaction.gate.redact_tree`): the state store holds exactly what the events hold.
    """
    kind = KINDS[stream]
    snap: Snapshot = {}
    skipped: list[Rejected] = []
    for record in records:
        rid = record.get("id") if kind.identity is None else kind.identity(record)
        if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
            what = "'id'" if kind.identity is None else "identity ('email')"
            skipped.append((record, f"{stream} record has no usable {what}"))
            continue
        gated = _gated(kind.redact(record))
        if gated is None:
            skipped.append((record, f"{stream} record refused by the publish gate (nested too deep)"))
            continue
        snap[str(rid)] = gated
    return snap, skipped


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The state value stored for a snapshot (redacted records only)."""
    return orjson.dumps({"v": SNAPSHOT_VERSION, "records": snapshot}, option=orjson.OPT_SORT_KEYS)


def decode_snapshot(data: bytes | None) -> Snapshot | None:
    """Inverse of :func:`encode_snapshot`; ``None`` when absent or unreadable (a new baseline follows)."""
    if not data:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != SNAPSHOT_VERSION or not isinstance(doc.get("records"), dict):
        return None
    return {str(k): v for k, v in doc["records"].items() if isinstance(v, dict)}


def diff_snapshots(
    stream: str,
    previous: Snapshot | None,
    current: Snapshot,
    *,
    workspace: WorkspaceRef,
    observed_at: str,
) -> list[Event]:
    """Events that turn ``previous`` into ``current`` (baselines when ``previous`` is None), in a stable order."""
    kind = KINDS[stream]
    events: list[Event] = []

    def emit(
        suffix: str,
        rid: str,
        b: JSONDict | None,
        a: JSONDict | None,
        fields: tuple[str, ...],
        extra: JSONDict,
        time: str | None,
        actor: Actor | None = None,
    ) -> None:
        rec = a if a is not None else b
        assert rec is not None
        attrs = {**kind.attributes(rec, workspace.id), **extra}
        events.append(
            n.snapshot_event(
                type=f"{kind.prefix}.{suffix}",
                stream=stream,
                change_kind=suffix,
                resource_id=rid,
                before=b,
                after=a,
                fields=fields,
                attributes=attrs,
                target=n.target_for(stream, rec, rid),
                workspace=workspace,
                observed_at=observed_at,
                time=time,
                actor=actor,
            )
        )

    if previous is None:
        for rid in sorted(current):
            emit(kind.baseline, rid, None, current[rid], (), {}, None)
        return events
    for rid in sorted(current.keys() - previous.keys()):
        a = current[rid]
        by = {"members": "issuer_id", "accounts": "added_by"}.get(stream)
        actor = Actor(user_id=a[by]) if by is not None and isinstance(a.get(by), str) else None
        emit(kind.added, rid, None, a, (), {}, n.iso_time(a.get("timestamp_created")), actor)
        if stream == "members" and a.get("accepted") is True:
            emit("accepted", rid, None, a, ("accepted",), {}, None)
    for rid in sorted(previous.keys() - current.keys()):
        emit(kind.removed, rid, previous[rid], None, (), {"removal": kind.removal} if kind.removal else {}, None)
    for rid in sorted(current.keys() & previous.keys()):
        b, a = previous[rid], current[rid]
        fields = changed_fields(b, a)
        if not fields:
            continue
        updated = n.iso_time(a.get(_VOLATILE))
        when = updated if updated and updated != n.iso_time(b.get(_VOLATILE)) else None
        for suffix, changed, extra in kind.classify(b, a, fields):
            emit(suffix, rid, b, a, changed, extra, when)
    return events
