"""Remove secrets from Instantly records before they reach an event, a snapshot, a log or the bus.

* An API key's ``key`` becomes its fingerprint ``sha256:<8 hex>`` (:func:`schemas.ids.fingerprint_secret`).
* Webhook ``headers`` keep their names; every value becomes ``"<redacted>"``, except an empty one
  (``null`` or only whitespace), which becomes :data:`EMPTY_HEADER`, the fingerprint of the empty
  string: whether a header is set is not a secret, the snapshot diff must see an ``Authorization``
  header emptied, and a fingerprint is still a redacted value to Event v1 and the publish gate.
* Any field whose name looks secret (:mod:`schemas.secret_names`: ``password``, ``accessToken``,
  ``x-api-key``, ``*_key``, ...) becomes ``"<redacted>"`` at any depth — the rule the JSON Schemas
  and the publish gate (:mod:`pipeline.redaction.gate`) apply.
* URLs keep scheme, host and port; path and query become a fingerprint (:mod:`pipeline.redaction.urls`).

Redaction is idempotent: a value that is already ``<redacted>`` or a fingerprint stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from connectors.instantly import key_shape as _key_shape  # noqa: F401 - registers the key shape with the gate
from connectors.instantly.key_shape import instantly_key_parts
from pipeline.redaction.registry import text_forms
from pipeline.redaction.text import fragment_index, redact_text, registered_fragments, replace_fragments
from pipeline.redaction.urls import redact_bare_urls
from pipeline.redaction.urls import redact_url as _redact_url
from schemas.ids import fingerprint_secret
from schemas.secret_names import HEADERS_NAME, SECRET_NAME, is_secret_name

REDACTED = "<redacted>"
EMPTY_HEADER = fingerprint_secret("")
"""A header value that was empty (``sha256:e3b0c442``)."""

SECRET_FIELD = SECRET_NAME
"""Field names whose values are secrets: the one name rule (:mod:`schemas.secret_names`)."""

HEADERS_FIELD = HEADERS_NAME
_ALREADY = re.compile(r"^(<redacted>|sha256:[0-9a-f]{8,64})$")


def is_redacted(value: Any) -> bool:
    """True when ``value`` is already ``<redacted>`` or a ``sha256:`` fingerprint."""
    return isinstance(value, str) and bool(_ALREADY.match(value))


def fingerprint(value: Any) -> str | None:
    """Fingerprint a secret string (``None`` stays ``None``; a fingerprint stays as it is)."""
    if value is None:
        return None
    if is_redacted(value):
        return str(value)
    return fingerprint_secret(value if isinstance(value, str) else repr(value))


def redact_headers(headers: Any) -> dict[str, str] | None:
    """Keep header names, replace every set value with ``<redacted>`` and an empty one (``None``, ``""``,
    whitespace) with :data:`EMPTY_HEADER`; non-objects become ``None``."""
    if not isinstance(headers, Mapping):
        return None
    return {str(name): EMPTY_HEADER if _empty(value) else REDACTED for name, value in headers.items()}


def _empty(value: Any) -> bool:
    return value is None or value == EMPTY_HEADER or (isinstance(value, str) and not value.strip())


def set_header_names(headers: Any) -> list[str]:
    """The sorted names of the headers with a value (raw or redacted headers object)."""
    if not isinstance(headers, Mapping):
        return []
    return sorted(str(name) for name, value in headers.items() if not _empty(value))


def header_names(headers: Any) -> list[str]:
    """The sorted header names of a (raw or redacted) headers object."""
    if not isinstance(headers, Mapping):
        return []
    return sorted(str(name) for name in headers)


def redact_url(url: Any) -> Any:
    """A URL reduced to scheme, host and port plus a fingerprint of its path and query
    (:func:`pipeline.redaction.urls.redact_url`); a hook URL or a protocol-relative URL written without
    a scheme likewise (:func:`pipeline.redaction.urls.redact_bare_urls`); other values pass."""
    if not isinstance(url, str):
        return url
    return _redact_url(url) if "://" in url else redact_bare_urls(url)


_KINDS: dict[str, int] = {}
"""Field name → 0 plain, 1 headers, 2 secret: records repeat the same few field names."""
_MAX_KINDS = 4096


def _field_kind(name: str) -> int:
    """0 plain, 1 headers, 2 secret (cached in ``_KINDS``)."""
    kind = 1 if HEADERS_FIELD.match(name) else (2 if is_secret_name(name) else 0)
    if len(_KINDS) >= _MAX_KINDS:
        _KINDS.clear()
    _KINDS[name] = kind
    return kind


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _redact_value(value: Any) -> Any:
    t = type(value)
    if t in _SCALARS:  # the common case, without the slow ABC check below
        return value
    if t is dict or isinstance(value, Mapping):
        return redact_record(value)
    if t is list or isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-copy ``record`` with every secret-looking field redacted (headers keep their names)."""
    out: dict[str, Any] = {}
    kinds, scalars = _KINDS, _SCALARS
    for name, value in record.items():
        kind = kinds.get(name)
        if kind is None:
            raw_name: Any = name  # JSON keys are str, but a YAML fixture may carry ints
            name = raw_name if isinstance(raw_name, str) else str(raw_name)
            kind = _field_kind(name)
        if kind == 0:
            out[name] = value if type(value) in scalars else _redact_value(value)
        elif kind == 1:
            out[name] = redact_headers(value)
        else:
            out[name] = None if value is None else (value if is_redacted(value) else REDACTED)
    return out


def redact_api_key(record: Mapping[str, Any]) -> dict[str, Any]:
    """An APIKey with ``key`` replaced by its fingerprint, everything else redacted as usual."""
    secret = record.get("key")
    out = redact_record(record)
    if "key" in record:
        out["key"] = fingerprint(secret)
    return out


def redact_webhook(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Webhook with header values redacted and its target URL cleaned of credentials."""
    out = redact_record(record)
    if "target_hook_url" in out:
        out["target_hook_url"] = redact_url(out["target_hook_url"])
    return out


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each known secret in ``text`` (e.g. a server message) by ``<redacted>``.

    Then the runtime's text pass: every registered secret in every form (URL-encoded, the key
    decoded to ``<uuid>:<token>``, its token alone), credential shapes and URL credentials. Last,
    any run of 12 or more consecutive characters of one of those forms (of ``secrets`` or of a
    registered secret; :func:`~pipeline.redaction.text.replace_fragments`): a server that echoes
    the key cut (``Invalid key Q0FOQVJZLWtleS1kby1ub3Qt…``) leaks no piece of it that long.
    """
    forms = [f for s in secrets if s and len(s) >= 4 for f in (*text_forms(s), *instantly_key_parts(s))]
    for form in forms:
        text = text.replace(form, REDACTED)
    text = re.sub(r"(?i)(bearer\s+)[^\s\"',;]+", r"\1" + REDACTED, text)
    text = redact_text(text)
    return replace_fragments(text, registered_fragments() | fragment_index(forms))
