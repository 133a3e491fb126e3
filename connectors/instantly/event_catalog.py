"""Every event type the Instantly connector can emit: the rule pack's ``event_types`` catalog.

A YAML rule's ``types`` matching none of these is refused at load (a typo such as ``audit.user_logn``
would load and never match). The catalog is derived from the tables the connector emits from:

* audit records: the activity-code map (:data:`~connectors.instantly.audit_codes.AUDIT_CODES`), plus
  ``audit.activity_*`` for the codes it does not name (``audit.activity_<n>``, ``audit.activity_unknown``);
* snapshot diffs: each stream's prefix with its added/removed/baseline kinds
  (:data:`~connectors.instantly.snapshots.KINDS`) and the change kinds its classifier gives
  (:data:`SNAPSHOT_CHANGES`, kept in step with the classifiers by a test);
* webhook deliveries: ``webhook_delivery.<name>`` of every documented payload type, and
  ``webhook_delivery.label.*`` for custom labels;
* the poller's own facts (:data:`PIPELINE_TYPES`, kept in step with the connector's sources by a test).
"""

from __future__ import annotations

from connectors.instantly.audit_codes import AUDIT_CODES
from connectors.instantly.snapshots import KINDS
from connectors.instantly.webhook_normalize import KNOWN_EVENT_TYPES, LABEL_PREFIX, event_type_for

SNAPSHOT_CHANGES: dict[str, tuple[str, ...]] = {
    "api_keys": ("scopes_changed", "renamed", "updated"),
    "members": ("accepted", "role_changed", "permissions_changed", "updated"),
    "webhooks": ("status_changed", "headers_changed", "updated"),
    "workspace": (
        "owner_changed",
        "plan_changed",
        "removal_scheduled",
        "removal_cancelled",
        "whitelabel_domain_changed",
        "updated",
    ),
    "group_members": ("member_status_changed", "member_updated"),
    "block_list": ("entry_updated",),
    "accounts": ("reply_to_changed", "tracking_domain_changed", "status_changed", "updated"),
}
"""The change kinds (type suffixes) each snapshot stream's classifier can give, besides added/removed/baseline."""

PIPELINE_TYPES: tuple[str, ...] = (
    "pipeline.poller_unauthorized",
    "pipeline.audit_log_unavailable",
    "pipeline.stream_unavailable",
    "pipeline.stream_recovered",
    "pipeline.late_records",
    "pipeline.webhook_deliveries_failed",
)
"""The facts the poller, the sweep and the delivery check report about themselves."""


def snapshot_types() -> list[str]:
    """``<prefix>.<kind>`` of every snapshot stream: added, removed, baseline and each change kind."""
    out: list[str] = []
    for stream, kind in KINDS.items():
        suffixes = (kind.added, kind.removed, kind.baseline, *SNAPSHOT_CHANGES[stream])
        out.extend(f"{kind.prefix}.{s}" for s in suffixes)
    return out


def event_types() -> tuple[str, ...]:
    """The catalog (globs allowed), without duplicates, in a stable order."""
    audit = [*(c.type for c in AUDIT_CODES.values()), "audit.activity_*"]
    webhook = [*sorted({event_type_for(name) for name in KNOWN_EVENT_TYPES}), f"{LABEL_PREFIX}.*"]
    return tuple(dict.fromkeys([*audit, *snapshot_types(), *webhook, *PIPELINE_TYPES]))


EVENT_TYPES = event_types()
"""The Instantly pack's ``event_types``."""
