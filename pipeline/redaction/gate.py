"""The redaction gate: every event and alert passes here before it is published.

:func:`encode_event` / :func:`encode_alert` return the bus bytes of the record with

* the **name** rule (:mod:`schemas.secret_names`) applied to every free-form map (``attributes``,
  ``raw``, ``change.before/after`` of events; ``attributes`` of alerts): a secret-named field
  keeps ``null`` or becomes ``<redacted>`` (a registered secret or a connector key shape becomes
  its ``sha256:`` fingerprint); a ``headers`` map keeps its names only;
* the **value**, **shape** and **URL** passes (:func:`pipeline.redaction.text.redact_text`) on every
  other string, map keys included, with registered secrets replaced by their fingerprint;

then the secret check (:mod:`pipeline.redaction.check`): the identity fields (type, times,
workspace id, source) are never rewritten, so a registered value or a shape there refuses the
record; when a pass rewrote anything, the result is checked again — no registered value left in
the bytes, every secret-named field redacted (what the JSON Schema's ``redacted_object``
demands). A record the check refuses raises :class:`GateRejected`; the publisher turns it into a
dead letter (:func:`rejected_letter`) that carries the reason and the path, never the value.

Strings found clean are remembered (bounded), so the repeated values of a stream (labels, user
agents, names) cost one set lookup.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline.errors import WebhookRejected
from pipeline.redaction import memo as _state
from pipeline.redaction import registry
from pipeline.redaction.check import MAX_DEPTH, GateRejected, leaked_secret, rejected_letter, secret_problems
from pipeline.redaction.fast import event_unchanged, native_common_case
from pipeline.redaction.text import CLEAN_CHARS as _CLEAN_CHARS
from pipeline.redaction.text import REDACTED, is_redacted
from schemas.alert import Alert, Entity
from schemas.event import Actor, Change, Event, Target
from schemas.ids import fingerprint_secret
from schemas.secret_names import HEADERS_NAME, is_secret_name

_replace = msgspec.structs.replace
_memo = _state.MEMO
_names = _state.NAMES
_clean_text = _state.clean_text
_id_clean = _state.id_clean


def _secret_value(value: Any) -> Any:
    """What a secret-named field holds after the gate."""
    if value is None or is_redacted(value):
        return value
    if isinstance(value, str):
        for secret in registry.known_secrets():
            if value == secret.forms[0]:
                return secret.fingerprint
        for shape in registry.shapes():
            if shape.pattern.fullmatch(value) and (shape.check is None or shape.check(value)):
                return fingerprint_secret(value)
    return REDACTED


def redact_tree(value: Any, depth: int = 0) -> Any:
    """``value`` with the name, value, shape and URL passes applied (unchanged objects are returned as is).

    Raises:
        GateRejected: nested deeper than :data:`MAX_DEPTH`.
    """
    _state.sync()
    return _tree(value, depth)


def _tree(value: Any, depth: int) -> Any:
    t = type(value)
    if t is str:
        return value if value in _memo else _clean_text(value)
    if t is dict:
        return _map(value, depth)
    if t is list or t is tuple:
        if depth > MAX_DEPTH:
            raise GateRejected("too_deep", f"depth {depth}")
        items = [_tree(v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if t is list else tuple(items)
    # subclasses (an OrderedDict, a str enum) are serialized like their base: walk a plain copy, keep
    # the original when the passes changed nothing
    out: Any
    if isinstance(value, str):
        plain: Any = str.__str__(value)
        out = _clean_text(plain)
    elif isinstance(value, dict):
        plain = dict(value)
        out = _map(plain, depth)
    elif isinstance(value, list | tuple):
        plain = list(value)
        out = _tree(plain, depth)
    else:
        return value
    return value if out is plain else out


def _map(value: dict[Any, Any], depth: int) -> dict[Any, Any]:
    """The hot loop: a known-clean key with a scalar or known-clean string value costs two lookups."""
    if depth > MAX_DEPTH:
        raise GateRejected("too_deep", f"depth {depth}")
    memo, names, risky, cc = _memo, _names, _state.RISKY_FORMS, _CLEAN_CHARS
    if names.issuperset(value):  # every key seen before and clean: check the values only
        for v in value.values():
            tv = type(v)
            if tv is str:
                if v in memo or (not v.strip(cc) and (not risky or _id_clean(v))):
                    continue
                break
            if tv is dict:
                if not v or _map(v, depth + 1) is v:
                    continue
                break
            if v is not None and tv is not int and tv is not bool and tv is not float:
                break  # a list, or a subclass to walk as its base
        else:
            return value
    out: dict[str, Any] | None = None
    for k, v in value.items():
        if k in names:  # a key already seen and not secret-named
            tv = type(v)
            if (
                v is None or tv is int or tv is bool or tv is float
                or (tv is str and (v in memo or ((len(v) < 6 or not v.strip(cc)) and (not risky or _id_clean(v)))))
            ):  # fmt: skip
                if out is not None:
                    out[k] = v
                continue
            key = k
            nv = _tree(v, depth + 1)
        else:
            key = _clean_text(k if type(k) is str else str(k))
            if is_secret_name(key):
                nv = _secret_value(v)
            elif HEADERS_NAME.match(key) and isinstance(v, dict):
                nv = {_clean_text(str(h)): (x if x is None or is_redacted(x) else REDACTED) for h, x in v.items()}
            else:
                if key is k and not HEADERS_NAME.match(key):  # "headers": a map of it is never a known name
                    _state.remember_name(k)
                nv = _tree(v, depth + 1)
        if out is None and (nv is not v or key is not k):
            out = {}
            for k2, v2 in value.items():
                if k2 is k:
                    break
                out[k2] = v2
        if out is not None:
            out[key] = nv
    return value if out is None else out


def _text(s: str | None) -> str | None:
    return s if s is None or s in _memo else _clean_text(s)


def _all_clean(values: tuple[str | None, ...], memo: set[object], risky: list[str]) -> bool:
    """Whether every value is None, known clean, or an id/time/address that holds no registered value."""
    cc = _CLEAN_CHARS
    for v in values:
        if v is None or v in memo or (not v.strip(cc) and (not risky or _id_clean(v))):
            continue
        return False
    return True


def _identity_field(event: Event, value: str) -> str:
    """The name of the identity field holding ``value`` (for the refusal; the value is never reported)."""
    src = event.source
    named = {
        "type": event.type, "time": event.time, "observed_at": event.observed_at, "workspace.id": event.workspace.id,
        "source.stream": src.stream, "source.record_id": src.record_id,
    }  # fmt: skip
    return next((k for k, v in named.items() if v == value), "identity")


def gate_event(event: Event) -> Event:
    """``event`` with every pass applied (the same object when nothing needed redacting).

    Raises:
        GateRejected: nested too deep.
    """
    _state.sync()
    a, t, c = event.actor, event.target, event.change
    src = event.source
    memo, risky, cc = _memo, _state.RISKY_FORMS, _CLEAN_CHARS
    # event.id is a hash the model computed: nothing of the source can be in it
    for ident in (event.type, event.time, event.observed_at, event.workspace.id, src.stream, src.record_id):
        if ident is None or ident in memo or (not ident.strip(cc) and (not risky or _id_clean(ident))):
            continue
        if _clean_text(ident) != ident:
            raise GateRejected("secret_in_identity", _identity_field(event, ident))
    changes: dict[str, Any] = {}
    if event.workspace.name is not None:
        name = _clean_text(event.workspace.name)
        if name is not event.workspace.name:
            changes["workspace"] = _replace(event.workspace, name=name)
    if a is not None and not _all_clean((a.user_id, a.user_name, a.api_key_id, a.ip, a.user_agent), memo, risky):
        na = Actor(
            _text(a.user_id), _text(a.user_name), _text(a.api_key_id), _text(a.ip), _text(a.user_agent), a.via_api
        )
        if na != a:
            changes["actor"] = na
    if t is not None:
        nt = Target(_clean_text(t.kind), _text(t.id), _text(t.name))
        if nt != t:
            changes["target"] = nt
    if c is not None:
        nc = Change(_tree(c.before, 0), _tree(c.after, 0), tuple(_clean_text(f) for f in c.fields))
        if nc.before is not c.before or nc.after is not c.after or nc.fields != c.fields:
            changes["change"] = nc
    attrs = _tree(event.attributes, 0)
    if attrs is not event.attributes:
        changes["attributes"] = attrs
    if event.raw is not None:
        raw = _tree(event.raw, 0)
        if raw is not event.raw:
            changes["raw"] = raw
    return _replace(event, **changes) if changes else event


def gate_alert(alert: Alert) -> Alert:
    """``alert`` with every pass applied to its summary, entities, dedup key and attributes.

    Raises:
        GateRejected: nested too deep.
    """
    _state.sync()
    changes: dict[str, Any] = {}
    summary = _clean_text(alert.summary)
    if summary is not alert.summary:
        changes["summary"] = summary
    dedup = _clean_text(alert.dedup_key)
    if dedup is not alert.dedup_key:
        changes["dedup_key"] = dedup
    entities = tuple(Entity(_clean_text(e.kind), _text(e.id), _text(e.name)) for e in alert.entities)
    if entities != alert.entities:
        changes["entities"] = entities
    attrs = _tree(alert.attributes, 0)
    if attrs is not alert.attributes:
        changes["attributes"] = attrs
    return _replace(alert, **changes) if changes else alert


def _checked(data: bytes, doc: dict[str, Any] | None) -> bytes:
    """The secret check after a rewrite: no registered value left, every secret-named field redacted."""
    if doc is not None:
        if leaked_secret(data):
            raise GateRejected("registered_secret", "a field the gate does not rewrite")
        problems = secret_problems(doc)
        if problems:
            raise GateRejected("secret_field", problems[0].split(":", 1)[0])
    return data


def encode_event(event: Event) -> bytes:
    """The bus bytes of ``event`` after the gate and the secret check.

    The fast path first (:func:`pipeline.redaction.fast.event_unchanged`): when it proves the
    passes would change nothing, the plain encoding is the gated encoding; otherwise the full walk
    (:func:`encode_event_full`) runs.

    Raises:
        GateRejected: the check still fails; publish :func:`rejected_letter` instead.
    """
    if (native_common_case is not None and native_common_case(event)) or event_unchanged(event):
        return event.to_json()
    return encode_event_full(event)


def encode_event_full(event: Event) -> bytes:
    """:func:`encode_event` without the fast path: every pass, then the check (tests compare the two).

    Raises:
        GateRejected: the check still fails; publish :func:`rejected_letter` instead.
    """
    gated = gate_event(event)
    data = gated.to_json()
    if gated is event:
        return _checked(data, None)
    return _checked(data, {"attributes": gated.attributes, "raw": gated.raw, "change": gated.to_dict()["change"]})


def gated_event_bytes(event: Event) -> bytes:
    """:func:`encode_event` for a receiver that answers its sender: a refusal becomes a 422.

    Raises:
        WebhookRejected: the gate refused the event (the sender learns the reason, not the value).
    """
    try:
        return encode_event(event)
    except GateRejected as err:
        if err.reason == "too_deep":  # a shape problem of the body, like the parser's own depth limit
            raise WebhookRejected(400, "too_deep", "the body is nested too deeply") from None
        raise WebhookRejected(422, "secret_rejected", f"the redaction gate refused the event ({err.reason})") from None


def encode_alert(alert: Alert) -> bytes:
    """The bus bytes of ``alert`` after the gate and the secret check.

    Raises:
        GateRejected: the check still fails; publish :func:`rejected_letter` instead.
    """
    gated = gate_alert(alert)
    data = gated.to_json()
    return _checked(data, {"attributes": gated.attributes})  # alerts are few: always the full check


__all__ = [
    "MAX_DEPTH",
    "GateRejected",
    "encode_alert",
    "encode_event",
    "encode_event_full",
    "gate_alert",
    "gate_event",
    "gated_event_bytes",
    "leaked_secret",
    "redact_tree",
    "rejected_letter",
    "secret_problems",
]
