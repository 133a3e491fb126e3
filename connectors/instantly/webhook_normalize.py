"""Instantly webhook deliveries → Event v1 (pure functions: no I/O, no clock reads).

* Type ``webhook_delivery.<event_type>`` for the documented types; any other label (a custom
  workspace label, or a type Instantly added since) gets its own namespace,
  ``webhook_delivery.label.<slug>``, so ``Email Sent`` can never pass for ``email_sent``; when the
  slug is not the label itself (other case, spaces, non-Latin letters, over 64 characters) it ends
  in ``_`` and 8 hex digits of the label's SHA-256, so distinct labels stay distinct types
  (:func:`event_type_for`). The label as sent stays in ``attributes.event_label``.
  A click is one event under both of its names: Instantly subscribes to it as
  ``email_link_clicked`` (``POST /api/v2/webhooks`` enum) but delivers ``link_clicked`` (guide
  "Webhook events"), so both become ``webhook_delivery.link_clicked`` (:data:`EVENT_TYPE_ALIASES`).
* Id: hash of (workspace, ``webhook_<source>``, SHA-256 of the raw body), so a redelivery of the
  same bytes gets the same id and every sink can de-duplicate, whatever the receiver remembers.
* Lead data is kept only as configured (:meth:`SourceConfig.kept_fields`): by default ids and event
  facts; message bodies are never kept; subjects and custom lead variables only when listed.
  The names (never the values) of dropped fields are listed in ``attributes.dropped_fields``.
* Secret-looking keys inside kept values (``token``, ``*_secret``, ``headers``, ...) are redacted.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.clock import format_time, parse_time
from pipeline.errors import WebhookRejected
from pipeline.redaction.text import redact_text
from pipeline.sources.webhook.dedup import body_digest as body_digest  # the idempotency key of a delivery
from schemas.event import Event, Source, Target, WorkspaceRef, slug
from schemas.secret_names import HEADERS_NAME, is_secret_name

DEFAULT_KEPT_FIELDS: tuple[str, ...] = (
    "event_type",
    "timestamp",
    "workspace",
    "campaign_id",
    "campaign_name",
    "lead_email",
    "email_account",
    "step",
    "variant",
    "is_first",
    "email_id",
)
"""Payload fields kept by default: ids and event facts."""

BODY_FIELDS: frozenset[str] = frozenset({"email_text", "email_html", "reply_text", "reply_html", "reply_text_snippet"})
"""Message bodies: never kept (``keep_lead_fields`` refuses them)."""

SUBJECT_FIELDS: frozenset[str] = frozenset({"email_subject", "reply_subject"})
"""Subject lines: dropped by default, keepable through ``keep_lead_fields``."""

REQUIRED_FIELDS: frozenset[str] = frozenset({"event_type", "timestamp", "workspace"})
"""Fields every delivery must carry; they cannot be dropped."""

TYPE_PREFIX = "webhook_delivery"
LABEL_PREFIX = f"{TYPE_PREFIX}.label"
"""Namespace of the types of labels Instantly does not document (custom workspace labels)."""
LABEL_HASH_CHARS = 8
REDACTED = "<redacted>"
MAX_EVENT_TYPE_CHARS = 4096
"""Longest ``event_type`` (label) accepted; its event type is cut to a 64-character slug plus a hash,
the label itself is kept whole in ``attributes.event_label``."""
MAX_DROPPED_NAMES = 64
MAX_EVENT_BYTES = 256 * 1024
"""Above this the kept custom fields are left out of ``raw`` (the bus and SIEMs take small records)."""

KNOWN_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "email_sent",
        "email_opened",
        "reply_received",
        "auto_reply_received",
        "link_clicked",
        "email_link_clicked",
        "email_bounced",
        "lead_unsubscribed",
        "account_error",
        "campaign_completed",
        "lead_neutral",
        "lead_interested",
        "lead_not_interested",
        "lead_meeting_booked",
        "lead_meeting_completed",
        "lead_closed",
        "lead_out_of_office",
        "lead_wrong_person",
        "lead_no_show",
        "supersearch_enrichment_completed",
    }
)
"""Payload ``event_type`` values documented by Instantly (anything else is a custom label)."""

EVENT_TYPE_ALIASES: Mapping[str, str] = {"email_link_clicked": "link_clicked"}
"""Subscription names of an event whose deliveries carry another name: the delivered name wins."""

_STANDARD_ATTRS = tuple(f for f in DEFAULT_KEPT_FIELDS if f not in ("event_type", "timestamp", "workspace"))
_SLIM_FIELDS = frozenset({"event_type", "timestamp", "workspace", "campaign_id", "email_id", "step", "variant"})
_META = frozenset({"event_label", "custom_label", "body_sha256", "body_bytes", "dropped_fields", "dropped_field_count"})
_MAX_NAME = 128
_INT_ATTRS = frozenset({"step", "variant"})
"""Numbers in the payload that may arrive as digit strings (``"2"``): attributes carry them as ints."""
_DIGITS = re.compile(r"[0-9]{1,9}")
_MAX_SLIM_VALUE = 1024


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """Which payload fields an event keeps."""

    kept: frozenset[str]


def reject(status: int, reason: str, message: str) -> WebhookRejected:
    """A rejection whose message never quotes the request."""
    return WebhookRejected(status, reason, message)


def parse_delivery(body: bytes) -> dict[str, Any]:
    """Decode and shape-check a delivery body.

    Raises:
        WebhookRejected: 400 ``malformed_json`` (not JSON, not UTF-8, too deep) or ``bad_shape``
            (not an object, or ``event_type`` / ``timestamp`` / ``workspace`` missing or invalid).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise reject(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise reject(400, "bad_shape", "the body must be a JSON object")
    et = doc.get("event_type")
    if not isinstance(et, str) or not et.strip() or len(et) > MAX_EVENT_TYPE_CHARS:
        raise reject(400, "bad_shape", "event_type must be a non-empty string")
    ws = doc.get("workspace")
    if not isinstance(ws, str) or not ws.strip() or len(ws) > 128:
        raise reject(400, "bad_shape", "workspace must be a non-empty string")
    if event_time(doc.get("timestamp")) is None:
        raise reject(400, "bad_shape", "timestamp must be an ISO 8601 time")
    return doc


def event_time(value: Any) -> str | None:
    """The payload timestamp as RFC 3339 UTC with milliseconds (ISO string or epoch s/ms); else ``None``."""
    try:
        if isinstance(value, str) and value.strip():
            epoch = parse_time(value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            epoch = value / 1000.0 if value > 1e11 else float(value)
        else:
            return None
        if not 0 < epoch < 253402300800:  # before year 10000
            return None
        return format_time(epoch)
    except (ValueError, OverflowError, OSError):
        return None


def event_type_for(label: str) -> str:
    """The event type of a payload ``event_type``: ``webhook_delivery.<name>`` for a documented one
    (the subscription name ``email_link_clicked`` gives the delivered name's type, ``link_clicked``),
    else ``webhook_delivery.label.<slug>`` (:func:`label_slug`).

    A label the text redaction changes (a registered secret, ``token=…``, a bearer token, a URL)
    becomes ``webhook_delivery.label.redacted_<hash>``: its slug would carry the secret past the
    gate, which never rewrites a type. The hash still tells one such label from another."""
    name = EVENT_TYPE_ALIASES.get(label, label)
    if name in KNOWN_EVENT_TYPES:
        return f"{TYPE_PREFIX}.{name}"
    if redact_text(label) != label:
        digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:LABEL_HASH_CHARS]
        return f"{LABEL_PREFIX}.redacted_{digest}"
    return f"{LABEL_PREFIX}.{label_slug(label)}"


def label_slug(label: str) -> str:
    """A custom label as a type segment: the label itself when it already is one (``hot_lead``), else
    its slug plus ``_`` and the first 8 hex digits of the label's SHA-256 (``Hot Lead!`` →
    ``hot_lead_<hash>``, ``Интерес`` → ``unnamed_<hash>``): the slug alone would merge labels that
    differ in case, punctuation or script. At most 64 characters."""
    s = slug(label)
    if s == label:
        return s
    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:LABEL_HASH_CHARS]
    return f"{s[: 64 - LABEL_HASH_CHARS - 1]}_{digest}"


@functools.lru_cache(maxsize=4096)
def _name_kind(name: str) -> int:
    """0 ordinary, 1 a header map, 2 a secret-looking key."""
    return 1 if HEADERS_NAME.match(name) else 2 if is_secret_name(name) else 0


def redact_value(value: Any, name: str = "") -> Any:
    """Deep copy with secret-looking keys redacted and header maps reduced to names."""
    kind = _name_kind(name) if name else 0
    if kind == 1:
        return {str(k): REDACTED for k in value} if isinstance(value, Mapping) else None
    if kind == 2:
        return None if value is None else REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


def _as_int(value: Any) -> Any:
    """A decimal digit string (``"2"``, at most 9 digits) as its int; anything else as it is."""
    return int(value) if isinstance(value, str) and _DIGITS.fullmatch(value) else value


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value if len(value) <= _MAX_SLIM_VALUE else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def normalize_delivery(
    payload: Mapping[str, Any],
    *,
    source_name: str,
    workspace: WorkspaceRef,
    digest: str,
    body_bytes: int,
    observed_at: str,
    policy: FieldPolicy,
) -> Event:
    """Turn a checked delivery (see :func:`parse_delivery`) into an Event v1.

    Raises:
        WebhookRejected: 400 ``bad_shape`` when the payload lacks its required fields.
    """
    label = payload.get("event_type")
    when = event_time(payload.get("timestamp"))
    if not isinstance(label, str) or when is None:
        raise reject(400, "bad_shape", "event_type and timestamp are required")
    kept = {k: redact_value(v, k) for k, v in payload.items() if k in policy.kept}
    dropped = sorted(k[:_MAX_NAME] for k in payload if k not in policy.kept)
    attributes: dict[str, Any] = {
        "event_label": label,
        "custom_label": label not in KNOWN_EVENT_TYPES,
        "body_sha256": digest,
        "body_bytes": body_bytes,
        "dropped_fields": dropped[:MAX_DROPPED_NAMES],
        "dropped_field_count": len(dropped),
    }
    for name in _STANDARD_ATTRS:
        if name in kept:
            attributes[name] = _as_int(kept[name]) if name in _INT_ATTRS else kept[name]
    campaign_id, account = _str(kept.get("campaign_id")), _str(kept.get("email_account"))
    target: Target | None = None
    if campaign_id:
        target = Target("campaign", campaign_id, _str(kept.get("campaign_name")))
    elif account:
        target = Target("email_account", account, None)

    def build(raw: dict[str, Any], attrs: dict[str, Any]) -> Event:
        return Event.build(
            type=event_type_for(label),
            time=when,
            observed_at=observed_at,
            workspace=workspace,
            source=Source("webhook", f"webhook_{source_name}", digest),
            natural_key=(digest,),
            target=target,
            attributes=attrs,
            raw=raw,
        )

    event = build(kept, attributes)
    # Small bodies cannot make an oversized event (kept values are a subset of the body).
    if body_bytes * 2 + 32_768 > MAX_EVENT_BYTES and len(event.to_json()) > MAX_EVENT_BYTES:
        slim = {k: v for k, v in kept.items() if k in _SLIM_FIELDS and len(orjson.dumps(v)) <= _MAX_SLIM_VALUE}
        event = build(slim, {**{k: v for k, v in attributes.items() if k in _META}, "raw_truncated": True})
    return event
