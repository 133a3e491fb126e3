"""Remove secrets from Instantly records before they reach an event, a snapshot, a log or the bus.

* An API key's ``key`` becomes its fingerprint ``sha256:<8 hex>`` (:func:`schemas.ids.fingerprint_secret`).
* Webhook ``headers`` keep their names; every value becomes ``"<redacted>"``.
* Any field whose name looks secret (``password``, ``token``, ``sec``, ``*_secret``, ...) becomes
  ``"<redacted>"`` at any depth — the same name pattern the Event v1 JSON Schema rejects.
* URLs lose user-info passwords and the values of secret-looking query parameters.

Redaction is idempotent: a value that is already ``<redacted>`` or a fingerprint stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.ids import fingerprint_secret

REDACTED = "<redacted>"

SECRET_FIELD = re.compile(
    r"^(api_?key|key|secret|.*_secret|password|passwd|.*_password|token|.*_token|authorization"
    r"|cookie|set-cookie|sec)$",
    re.IGNORECASE,
)
"""Field names whose values are secrets (mirrors ``event.v1.json`` ``redacted_object``)."""

HEADERS_FIELD = re.compile(r"^headers$", re.IGNORECASE)
_ALREADY = re.compile(r"^(<redacted>|sha256:[0-9a-f]{8,64})$")
_SECRET_QUERY = re.compile(
    r"(?i)^(.*key|.*token|.*secret|sig|signature|password|passwd|pwd|auth|authorization|code|sec)$"
)


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
    """Keep header names, replace every value with ``<redacted>``; non-objects become ``None``."""
    if not isinstance(headers, Mapping):
        return None
    return {str(name): REDACTED for name in headers}


def header_names(headers: Any) -> list[str]:
    """The sorted header names of a (raw or redacted) headers object."""
    if not isinstance(headers, Mapping):
        return []
    return sorted(str(name) for name in headers)


def redact_url(url: Any) -> Any:
    """Drop a user-info password and secret-looking query values from a URL; other values pass."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, REDACTED if _SECRET_QUERY.match(k) else v) for k, v in pairs], safe="<>")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return REDACTED


_KINDS: dict[str, int] = {}
"""Field name → 0 plain, 1 headers, 2 secret: records repeat the same few field names."""
_MAX_KINDS = 4096


def _field_kind(name: str) -> int:
    """0 plain, 1 headers, 2 secret (cached in ``_KINDS``)."""
    kind = 1 if HEADERS_FIELD.match(name) else (2 if SECRET_FIELD.match(name) else 0)
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
    """Replace every occurrence of each known secret in ``text`` (e.g. a server message) by ``<redacted>``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return re.sub(r"(?i)(bearer\s+)[^\s\"',;]+", r"\1" + REDACTED, text)
