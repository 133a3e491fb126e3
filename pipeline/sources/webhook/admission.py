"""Who may deliver: the client's address (``X-Forwarded-For`` only from trusted proxies), the IP
allowlist and the constant-time secret-header check, plus the fixed answers a refusal gets."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping, Sequence

import orjson
from aiohttp import web
from pydantic import SecretStr

from pipeline.errors import WebhookRejected

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_SECRET_HEADER_BYTES = 4096

_ERRORS = {
    400: "bad request",
    408: "request timeout",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "payload too large",
    415: "unsupported media type",
    417: "expectation failed",
    422: "unprocessable entity",
    500: "internal error",
    503: "unavailable, retry later",
}
_BODIES = {status: orjson.dumps({"error": error}) for status, error in _ERRORS.items()}


# ------------------------------------------------------------------------------- client address
def _parse_ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]" or "[v6]:port"
        text = text[1 : text.index("]")]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_any(ip: Address, nets: Iterable[Network]) -> bool:
    """Whether ``ip`` is in one of ``nets`` (same IP version)."""
    return any(ip.version == n.version and ip in n for n in nets)


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> Address | None:
    """The client's address: the TCP peer, or — only when the peer is a trusted proxy — the
    right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy. ``None`` if unknown
    or malformed (an allowlist then refuses the request)."""
    addr = _parse_ip(peer) if peer else None
    if addr is None or not trusted or not in_any(addr, trusted):
        return addr
    hops = [h for value in forwarded_for for h in value.split(",")]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            return None
        if not in_any(ip, trusted):
            return ip
        addr = ip
    return addr


# ------------------------------------------------------------------------------------ secrets
class SecretChecker:
    """Constant-time check of a header value against a source's live secrets (1 or 2).

    Both sides are reduced to HMAC-SHA256 digests under a random per-process key before
    :func:`hmac.compare_digest`, so neither content nor length leaks through timing, and every
    live secret is compared (no early exit).
    """

    def __init__(self, values: Sequence[SecretStr]):
        self._key = secrets.token_bytes(32)
        self._digests = [self._mac(s.get_secret_value().encode()) for s in values]

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def match(self, received: bytes) -> int | None:
        """The index of the matching secret, or ``None``."""
        mac = self._mac(received)
        found: int | None = None
        for i, digest in enumerate(self._digests):
            if hmac.compare_digest(mac, digest) and found is None:
                found = i
        return found


def authenticate(values: Sequence[str], checker: SecretChecker) -> int:
    """The live-secret slot matched by the secret header's ``values`` (all occurrences).

    Raises:
        WebhookRejected: 401 when the header is missing, repeated, undecodable, over-long or wrong.
    """
    if not values:
        raise WebhookRejected(401, "missing_secret", "no secret header")
    if len(values) > 1:
        raise WebhookRejected(401, "duplicate_secret_header", "the secret header was sent more than once")
    try:
        received = values[0].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise WebhookRejected(401, "wrong_secret", "undecodable secret header") from None
    if len(received) > MAX_SECRET_HEADER_BYTES:
        raise WebhookRejected(401, "wrong_secret", "over-long secret header")
    slot = checker.match(received)
    if slot is None:
        raise WebhookRejected(401, "wrong_secret", "the secret header does not match")
    return slot


def response(
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    force_close: bool = False,
    rejected: WebhookRejected | None = None,
) -> web.Response:
    """The fixed JSON answer for ``status`` (never an echo of the request).

    With ``rejected`` (any status but 401), the answer also names the refusal: ``reason`` (the
    counter name, e.g. ``malformed_json``) and ``message`` (a fixed sentence of our own), so a
    sender can tell a malformed body from an oversized one. A 401 never says which check failed.
    """
    body = _BODIES.get(status, b"{}")
    if rejected is not None and status != 401:
        error = _ERRORS.get(status, "refused")
        body = orjson.dumps({"error": error, "reason": rejected.reason, "message": rejected.message})
    resp = web.Response(status=status, body=body, content_type="application/json", headers=headers)
    if force_close:
        resp.force_close()
    return resp


async def read_capped(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as more than ``limit`` bytes arrived.

    Raises:
        WebhookRejected: 413 once more than ``limit`` bytes arrived.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise WebhookRejected(413, "body_too_large", "the body exceeded the limit while streaming")
        chunks.append(chunk)
    return b"".join(chunks)
