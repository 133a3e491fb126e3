"""What every format needs: record kind, times, the lossless field picker, and event classification.

Formats read the *dict form* of Event v1 / Alert v1 (what a sink gets in ``Delivery.body``).
:func:`classify` decides once what an event is about (family, verb, outcome, label), so
OCSF, ECS, CEF and syslog agree with each other. The audit ``activity_type`` table mirrors
the Instantly API reference (§3.3); every enum is open, unknown codes become ``other``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline import __version__
from pipeline.clock import parse_time
from schemas.event import slug

RecordKind = Literal["event", "alert"]
Family = Literal[
    "auth", "mfa", "api_key", "webhook", "member", "workspace", "workspace_group",
    "block_list", "account", "audit", "webhook_delivery", "pipeline", "other",
]  # fmt: skip
Verb = Literal["create", "update", "delete", "read", "login", "enable", "disable", "accept", "other"]
Outcome = Literal["success", "failure", "unknown"]

PRODUCT_NAME = "instantly-audit"
VENDOR_NAME = "Instantly-Audit"


def product_version() -> str:
    """The version of instantly-audit (``pipeline.__version__``)."""
    return __version__


def record_kind(body: Mapping[str, Any]) -> RecordKind:
    """Tell an alert dict from an event dict (by ``schema``, else by shape)."""
    schema = body.get("schema")
    if schema == "instantly.alert.v1":
        return "alert"
    if schema == "instantly.event.v1":
        return "event"
    return "alert" if isinstance(body.get("rule"), Mapping) else "event"


def as_dict(record: Any) -> dict[str, Any]:
    """Accept an Event/Alert object or its dict form; return the dict form.

    Raises:
        TypeError: ``record`` is neither a mapping nor has ``to_dict()``.
    """
    if isinstance(record, Mapping):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if callable(to_dict):
        d = to_dict()
        if isinstance(d, dict):
            return d
    raise TypeError(f"expected an Event/Alert or its dict form, got {type(record).__name__}")


def epoch_ms(timestamp: Any) -> int | None:
    """RFC 3339 text → integer epoch milliseconds (None when absent or unparseable)."""
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        return round(parse_time(timestamp) * 1000)
    except ValueError:
        return None


# ------------------------------------------------------------------------------ picker
@functools.lru_cache(maxsize=2048)
def _parts(path: str) -> tuple[str, ...]:
    """``'a.b.c'`` → ``('a', 'b', 'c')`` (formats use a few dozen fixed paths: cached)."""
    return tuple(path.split("."))


class Picker:
    """Reads fields of a nested dict by dotted path and remembers which were used.

    :meth:`rest` returns everything *not* taken, in the original nesting, so a format
    can put it under ``unmapped`` (OCSF) or ``instantly`` (ECS) and drop nothing. Lists
    are leaves; ``None`` values and empty containers carry no information and are omitted.
    """

    __slots__ = ("_doc", "_taken")

    def __init__(self, doc: Mapping[str, Any]):
        self._doc = doc
        self._taken: set[tuple[str, ...]] = set()

    def get(self, path: str) -> Any:
        """The value at ``path`` (None when any part is missing); does not mark it used."""
        node: Any = self._doc
        for part in _parts(path):
            if node.__class__ is not dict and not isinstance(node, Mapping):  # dict first: abc checks are slow
                return None
            node = node.get(part)
        return node

    def take(self, path: str) -> Any:
        """The value at ``path``, marked as mapped (a dict path marks its whole subtree)."""
        self._taken.add(_parts(path))
        return self.get(path)

    def take_str(self, path: str) -> str | None:
        """Like :meth:`take` but only a non-empty string is returned (other values stay unmapped)."""
        value = self.get(path)
        if value.__class__ is str and value:
            self._taken.add(_parts(path))
            return value
        return None

    def rest(self) -> dict[str, Any]:
        """Everything not taken, nested as in the source; empty when all was mapped."""
        out = self._rest(self._doc, ())
        return out if isinstance(out, dict) else {}

    def _rest(self, node: Any, where: tuple[str, ...]) -> Any:
        if where in self._taken:
            return None
        if node.__class__ is dict or isinstance(node, Mapping):
            kept: dict[str, Any] = {}
            for k, v in node.items():
                sub = self._rest(v, (*where, str(k)))
                if sub is not None:
                    kept[str(k)] = sub
            return kept or None
        if node is None or (isinstance(node, list | tuple) and not node):
            return None
        return node


# ------------------------------------------------------------------------------ classify
@dataclass(frozen=True, slots=True)
class Activity:
    """What an event is about, decided once for every format."""

    family: Family
    verb: Verb
    outcome: Outcome
    label: str
    code: int | None = None
    mfa: bool = False


# activity_type → (label, family, verb, outcome, mfa)
AUDIT_ACTIVITIES: dict[int, tuple[str, Family, Verb, Outcome, bool]] = {
    1: ("User login", "auth", "login", "success", False),
    2: ("Lead deletion", "audit", "delete", "success", False),
    3: ("Campaign deletion", "audit", "delete", "success", False),
    4: ("Campaign launch", "audit", "update", "success", False),
    5: ("Campaign pause", "audit", "update", "success", False),
    6: ("Account addition", "audit", "create", "success", False),
    7: ("Account deletion", "audit", "delete", "success", False),
    8: ("Lead moved", "audit", "update", "success", False),
    9: ("Lead added", "audit", "create", "success", False),
    10: ("Lead merged", "audit", "update", "success", False),
    11: ("Campaign update", "audit", "update", "success", False),
    12: ("Subsequence update", "audit", "update", "success", False),
    18: ("Webhook created", "webhook", "create", "success", False),
    19: ("Webhook updated", "webhook", "update", "success", False),
    20: ("Webhook marked as error", "webhook", "disable", "success", False),
    21: ("Webhook resumed", "webhook", "enable", "success", False),
    22: ("TOTP enrollment started", "mfa", "other", "success", True),
    23: ("TOTP enabled", "mfa", "enable", "success", True),
    24: ("TOTP replacement started", "mfa", "other", "success", True),
    25: ("TOTP replaced", "mfa", "update", "success", True),
    26: ("TOTP disabled", "mfa", "disable", "success", True),
    27: ("MFA recovery codes generated", "mfa", "create", "success", True),
    28: ("MFA recovery code used", "auth", "login", "success", True),
    29: ("MFA login challenge failed", "auth", "login", "failure", True),
    30: ("MFA login challenge failed too many times", "auth", "login", "failure", True),
    31: ("MFA login succeeded", "auth", "login", "success", True),
    32: ("Subscriber import started", "audit", "create", "success", False),
    33: ("Subscriber import cancelled", "audit", "other", "success", False),
    34: ("Lead exported", "audit", "read", "success", False),
    35: ("SuperSearch enrichment created", "audit", "create", "success", False),
    36: ("Account update", "audit", "update", "success", False),
    37: ("API key created", "api_key", "create", "success", False),
    38: ("API key deleted", "api_key", "delete", "success", False),
}
_AUDIT_BY_SLUG = {slug(label): code for code, (label, *_rest) in AUDIT_ACTIVITIES.items()}

_FAMILIES: dict[str, Family] = {
    "api_key": "api_key", "webhook": "webhook", "member": "member", "workspace": "workspace",
    "workspace_group": "workspace_group", "block_list": "block_list", "account": "account", "audit": "audit",
    "webhook_delivery": "webhook_delivery", "pipeline": "pipeline", "auth": "auth", "mfa": "mfa",
}  # fmt: skip
_FAILURE_WORDS = ("unauthorized", "failed", "failure", "error", "denied", "forbidden", "rejected")


def audit_code(event: Mapping[str, Any]) -> int | None:
    """The Instantly ``activity_type`` of an audit event (attributes, raw record, or type name)."""
    attrs = event.get("attributes") or {}
    raw = event.get("raw") or {}
    for value in (attrs.get("activity_code"), attrs.get("activity_type"), raw.get("activity_type")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
    name = str(event.get("type", "")).partition(".")[2]
    if name.startswith("activity_") and name[9:].isdigit():
        return int(name[9:])
    return _AUDIT_BY_SLUG.get(name)


def _verb_of(action: str) -> Verb:
    if action in ("created", "added", "invited", "entry_added", "member_added", "member_invited"):
        return "create"
    if action in ("deleted", "removed", "entry_removed", "member_removed", "revoked"):
        return "delete"
    if action in ("disabled", "marked_error", "suspended"):
        return "disable"
    if action in ("enabled", "resumed"):
        return "enable"
    if action in ("accepted", "member_accepted"):
        return "accept"
    if action in ("read", "exported", "viewed"):
        return "read"
    if action.endswith(("_changed", "_updated")) or action in ("updated", "changed", "renamed"):
        return "update"
    return "other"


_ACRONYMS = {"api": "API", "mfa": "MFA", "totp": "TOTP", "ip": "IP", "url": "URL"}


def humanize(event_type: str) -> str:
    """``api_key.created`` → ``API key created``; used when no better label exists."""
    words = [_ACRONYMS.get(w, w) for w in event_type.replace(".", " ").replace("_", " ").split()]
    if not words:
        return "Event"
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def classify(event: Mapping[str, Any]) -> Activity:
    """Decide family, verb, outcome and a human label for an event dict."""
    etype = str(event.get("type", ""))
    prefix, _, action = etype.partition(".")
    attrs = event.get("attributes") or {}
    label_attr = attrs.get("activity_label") if isinstance(attrs.get("activity_label"), str) else None
    if prefix == "audit":
        code = audit_code(event)
        known = AUDIT_ACTIVITIES.get(code) if code is not None else None
        if known is not None:
            return Activity(known[1], known[2], known[3], label_attr or known[0], code, known[4])
        label = label_attr or (f"Audit activity {code}" if code is not None else humanize(action))
        return Activity("audit", "other", "unknown", label, code)
    family = _FAMILIES.get(prefix, "other")
    outcome: Outcome = "success"  # a snapshot difference is an observed, completed change
    if family in ("pipeline", "other", "webhook_delivery"):
        outcome = "failure" if any(w in action for w in _FAILURE_WORDS) else "unknown"
    return Activity(family, _verb_of(action), outcome, humanize(etype))


def role_change(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(old role, new role) of a member event, from ``change`` or ``attributes``."""
    change = event.get("change") or {}
    before = change.get("before") or {}
    after = change.get("after") or {}
    attrs = event.get("attributes") or {}
    old = before.get("role") if isinstance(before.get("role"), str) else attrs.get("previous_role")
    new = after.get("role") if isinstance(after.get("role"), str) else attrs.get("new_role", attrs.get("role"))
    return (old if isinstance(old, str) else None, new if isinstance(new, str) else None)


def owner_change(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(previous owner, new owner) user ids of a ``workspace.owner_changed`` event.

    The event's target is the workspace (a snapshot diff of the workspace record); the owners are user
    ids: the new one in ``change.after.owner`` (also ``attributes.owner``), the previous one in
    ``attributes.previous_owner`` (also ``change.before.owner``).
    """
    change = event.get("change")
    change = change if isinstance(change, Mapping) else {}
    before, after = change.get("before"), change.get("after")
    attrs = event.get("attributes")
    attrs = attrs if isinstance(attrs, Mapping) else {}
    new = after.get("owner") if isinstance(after, Mapping) else None
    new = new if isinstance(new, str) and new else attrs.get("owner")
    old = attrs.get("previous_owner")
    old = old if isinstance(old, str) and old else (before.get("owner") if isinstance(before, Mapping) else None)
    return (old if isinstance(old, str) and old else None, new if isinstance(new, str) and new else None)


ROLE_RANK = {"view": 1, "client": 1, "editor": 2, "admin": 3, "owner": 4}
SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
