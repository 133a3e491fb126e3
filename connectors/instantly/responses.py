"""Instantly HTTP answers → values or typed errors (pure; used by :mod:`connectors.instantly.client`).

Error bodies are ``{statusCode, error, message}`` (API reference §1.4). The server's text is
kept in the message (trimmed, with known secrets and ``Bearer`` values scrubbed); headers never are.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from connectors.instantly.redact import scrub_text
from pipeline.delivery.backoff import MAX_RETRY_AFTER_SECS as MAX_WAIT_SECS
from pipeline.delivery.http import parse_retry_after as parse_http_retry_after
from pipeline.errors import (
    AuthError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ScopeError,
    SourceError,
    UpstreamError,
)

MAX_MESSAGE = 300
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
EPOCH_RESET_FLOOR = 1e9
"""A reset value above this (2001-09-09 as epoch seconds) is a date, not a delay."""


class ClientRequestError(SourceError):
    """Another 4xx (400 validation, 409 conflict, 413, ...): the request itself is wrong; not retried."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3), ``None`` if absent or garbage.

    ``now`` (epoch seconds; default the wall clock) dates an HTTP-date; one in the past gives 0.
    """
    return parse_http_retry_after(value, time.time() if now is None else now)


def _reset_secs(value: str | None, now: float) -> float | None:
    """A rate-limit reset header as seconds to wait: delta seconds, or epoch seconds when it is a date."""
    if not value:
        return None
    try:
        seconds = float(value.strip().split(",")[0])
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    if seconds > EPOCH_RESET_FLOOR:  # GitHub-style X-RateLimit-Reset: the epoch second the window resets
        seconds -= now
    return min(max(seconds, 0.0), MAX_WAIT_SECS)


def retry_after_from(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long a 429/5xx answer asks the client to wait, in seconds, or ``None`` when it does not say.

    Instantly documents no such header (API reference §2), so none is required: ``Retry-After``
    (seconds or HTTP-date) is read first, then the reset of the common rate-limit header families,
    ``RateLimit-Reset`` (IETF draft: delta seconds) and ``X-RateLimit-Reset`` (delta or epoch seconds).
    """
    at = time.time() if now is None else now
    retry_after = parse_retry_after(headers.get("Retry-After"), at)
    if retry_after is not None:
        return retry_after
    for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
        reset = _reset_secs(headers.get(name), at)
        if reset is not None:
            return reset
    return None


def server_message(raw: bytes, secrets: Iterable[str] = ()) -> str:
    """``"<error>: <message>"`` from an error body, scrubbed and trimmed; ``""`` if it is not one."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts = [str(body[k]) for k in ("error", "message") if isinstance(body.get(k), str | int)]
    return scrub_text(": ".join(parts), secrets)[:MAX_MESSAGE]


def error_for(
    method: str, path: str, status: int, raw: bytes, retry_after: float | None, *, secrets: Iterable[str] = ()
) -> SourceError:
    """The typed error for a non-2xx answer (see the client module docstring for the mapping)."""
    text = f"{method} {path}: HTTP {status}"
    detail = server_message(raw, secrets)
    if detail:
        text = f"{text} ({detail})"
    if status == 401:
        return AuthError(text)
    if status == 402:
        return PaymentRequiredError(text)
    if status == 403:
        return ScopeError(text)
    if status == 404:
        return NotFoundError(text)
    if status == 429:
        return RateLimitedError(text, status=429, retry_after=retry_after)
    if status >= 500:
        return UpstreamError(text, status=status, retry_after=retry_after)
    if 300 <= status < 400:
        return UpstreamError(f"{text}: unexpected redirect", status=status)
    return ClientRequestError(text, status=status)


def decode_body(method: str, path: str, status: int, raw: bytes) -> Any:
    """Decode a 2xx JSON body (``None`` for an empty write answer).

    Raises:
        UpstreamError: the body is not JSON, or a GET answered with an empty body (retriable).
    """
    if not raw.strip():
        if method == "GET":
            raise UpstreamError(f"{method} {path}: HTTP {status} with an empty body", status=status)
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    raise UpstreamError(f"{method} {path}: HTTP {status} body is not valid JSON", status=status)


def require_object(where: str, value: Any) -> None:
    """Check that a response is a JSON object.

    Raises:
        UpstreamError: it is not (retriable).
    """
    if not isinstance(value, dict):
        raise UpstreamError(f"{where}: expected a JSON object, got {type(value).__name__}")


def _error_code(value: dict[str, Any]) -> str:
    """`` (error: ACC_UNKNOWN_ERROR)`` when the object carries a short upper-case error code, else ``""``."""
    code = value.get("error")
    return f" (error: {code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""


def require_workspace(where: str, value: Any) -> None:
    """Check a ``GET /workspaces/current`` answer: an object with the required ``id`` (a non-empty string).

    Some endpoints answer 200 with an error in the body (``{"error": "ACC_UNKNOWN_ERROR"}``, API
    reference §1.3); diffed as the workspace, it would read as the workspace deleted, then created.

    Raises:
        UpstreamError: it is not a workspace object (retriable, like a 5xx).
    """
    require_object(where, value)
    wid = value.get("id")
    if not isinstance(wid, str) or not wid:
        raise UpstreamError(f"{where}: HTTP 200 without the workspace's id{_error_code(value)}")


def require_admin_answer(where: str, value: Any) -> None:
    """Check a ``GET /workspace-group-members/admin`` answer: an object with the required boolean
    ``has_admin_workspace`` (an error body at 200 would read as the agency link removed).

    Raises:
        UpstreamError: it is not that answer (retriable, like a 5xx).
    """
    require_object(where, value)
    if not isinstance(value.get("has_admin_workspace"), bool):
        raise UpstreamError(f"{where}: HTTP 200 without a boolean has_admin_workspace{_error_code(value)}")


def require_item_list(where: str, value: Any) -> None:
    """Check the list envelope ``{items: [...], ...}`` without judging the items (the audit log turns
    an item that is no object into a dead letter instead of refusing the page).

    Raises:
        UpstreamError: ``items`` is missing or not a list (retriable).
    """
    require_object(where, value)
    if not isinstance(value.get("items"), list):
        raise UpstreamError(f"{where}: malformed page, 'items' is missing or not a list")


def require_items(where: str, value: Any) -> None:
    """Check the list envelope ``{items: [object, ...], ...}``.

    Raises:
        UpstreamError: ``items`` is missing, not a list, or holds a non-object (retriable).
    """
    require_item_list(where, value)
    items = value["items"]
    if not all(isinstance(i, dict) for i in items):
        raise UpstreamError(f"{where}: malformed page, 'items' holds a non-object")
