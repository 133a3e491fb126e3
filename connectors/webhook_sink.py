"""Signed webhook sink (type ``webhook``): POST events/alerts signed per Standard Webhooks 1.0.

* Each record is POSTed as JSON in ``format`` (default ``native``; ``ecs``, ``ocsf``,
  ``splunk``) (or, with ``batch_as_array: true``, a batch as
  one JSON array) with the headers ``webhook-id`` (the event/alert id; for an array
  ``batch_`` + a hash of the ids), ``webhook-timestamp`` (integer epoch seconds) and
  ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``. The
  secret is ``whsec_<base64>``; the HMAC key is the decoded bytes. A retry is signed again
  with a fresh timestamp and the same id, which receivers use to de-duplicate.
* Answers: 2xx delivered; 408/425/429/5xx and transport errors retried (``Retry-After``
  honoured); 401/403/404/410 and redirects mean the endpoint or the secret is wrong, so the
  batch fails without retrying soon and the runner's circuit opens (nothing is dropped);
  any other 4xx dead-letters the record (an array is split to find the records at fault).
* :func:`verify_standard_webhook` is the receiving side of the same scheme, for tests and
  for users who point one pipeline at another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.base import Secret, is_unresolved
from pipeline.delivery.base import Delivery, Failure, SendResult, SinkConfig
from pipeline.delivery.http import HttpClient, HttpSinkConfig
from pipeline.errors import SinkError, WebhookRejected
from pipeline.formats import render_bytes
from pipeline.observability.logs import register_secret
from schemas.ids import deterministic_id

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
ENDPOINT_ERRORS = frozenset({401, 403, 404, 410})


def decode_secret(secret: str | SecretStr) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret.

    Raises:
        ValueError: not ``whsec_`` + base64 of 16 bytes or more (the message never holds the secret).
    """
    text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not text.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not valid base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 random bytes (Standard Webhooks: 24-64)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def verify_standard_webhook(
    secret: str | SecretStr | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_secs: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a Standard Webhooks signature (any of several ``v1,`` signatures may match).

    ``now`` is epoch seconds (default: the system clock); timestamps more than
    ``tolerance_secs`` away in either direction are refused. Comparison is constant-time.

    Raises:
        WebhookRejected: (status 401) headers missing, timestamp invalid or outside the
            tolerance, or no signature matches; ``reason`` says which.
    """
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not (msg_id and stamp and sigs):
        msg = "webhook-id, webhook-timestamp and webhook-signature are required"
        raise WebhookRejected(401, "missing_headers", msg)
    if not stamp.isdigit() or len(stamp) > 12:
        raise WebhookRejected(401, "bad_timestamp", "webhook-timestamp is not integer seconds")
    ts = int(stamp)
    current = SYSTEM_CLOCK.now() if now is None else now
    if abs(current - ts) > tolerance_secs:
        raise WebhookRejected(401, "stale_timestamp", "webhook-timestamp is outside the tolerance")
    expected = base64.b64decode(sign(key, msg_id, ts, body)[3:])
    for candidate in sigs.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return
    raise WebhookRejected(401, "bad_signature", "no webhook-signature matches")


class SignedWebhookConfig(HttpSinkConfig):
    """Options of the signed webhook sink (``url`` is the full endpoint URL)."""

    CREDENTIAL_FIELDS: ClassVar[tuple[str, ...]] = ("secret",)

    type: Literal["webhook"] = "webhook"
    secret: Secret
    batch_as_array: bool = False
    max_concurrent_requests: int = Field(8, ge=1, le=256)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        if not is_unresolved(v):  # an unread secret is checked by the command that reads it
            decode_secret(v)
        return v


HOOK_PATH_MIN_CHARS = 12
"""A shorter path (``/webhook``, ``/ingest``) names an endpoint, not a credential: it stays readable."""


def register_hook_path(url: str) -> None:
    """Register the path of the endpoint's URL as a secret: a Zapier or n8n hook URL *is* the credential.

    Servers answer ``Cannot POST <path>``, and HTTP errors name the URL with its path: every log
    line, dead letter and CLI line loses it (the query string is refused by the URL check).
    """
    path = urlsplit(url).path
    if len(path.strip("/")) >= HOOK_PATH_MIN_CHARS:
        register_secret(path.rstrip("/"))


class SignedWebhookSink:
    """POST signed events and alerts to an HTTP endpoint."""

    Config: ClassVar[type[SinkConfig]] = SignedWebhookConfig

    def __init__(self, sink_id: str, config: SignedWebhookConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.sink_id = sink_id
        self.config = config
        register_secret(config.secret.get_secret_value())
        register_hook_path(config.url)
        self._key = decode_secret(config.secret)
        self._clock = clock
        self._http = HttpClient(config, name=f"webhook {sink_id}", headers={"Content-Type": "application/json"})
        self._limit = asyncio.Semaphore(config.max_concurrent_requests)

    async def __aenter__(self) -> SignedWebhookSink:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.__aexit__(None, None, None)

    def _json(self, d: Delivery) -> bytes:
        fmt = self.config.record_format
        if fmt != "native":
            return render_bytes(d.body, fmt)
        return d.raw if d.raw[:1] == b"{" else orjson.dumps(d.body)

    def signed_headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body``, timestamped now."""
        ts = int(self._clock.now())
        signature = sign(self._key, msg_id, ts, body)
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """POST the batch (one request per record, or one array).

        Raises:
            SinkError: (not retriable) the endpoint answered 401/403/404/410 or a redirect.
        """
        if not batch:
            return SendResult()
        groups = [list(batch)] if self.config.batch_as_array else [[d] for d in batch]
        # Every body is rendered before the first request goes out: a record its format cannot render
        # raises here, not inside one of the concurrent posts while the others go on unobserved.
        bodies = [self._body(g) for g in groups]
        results = await asyncio.gather(*(self._post(g, body) for g, body in zip(groups, bodies, strict=True)))
        failures: list[Failure] = []
        for fatal, fails in results:
            if fatal is not None:
                raise fatal
            failures.extend(fails)
        return SendResult(failures=failures)

    def _body(self, items: list[Delivery]) -> bytes:
        if self.config.batch_as_array:
            return b"[" + b",".join(self._json(d) for d in items) + b"]"
        return self._json(items[0])

    async def _post(self, items: list[Delivery], body: bytes | None = None) -> tuple[SinkError | None, list[Failure]]:
        if body is None:
            body = self._body(items)
        msg_id = "batch_" + deterministic_id(*(d.id for d in items)) if self.config.batch_as_array else items[0].id
        async with self._limit:
            try:
                resp = await self._http.request("POST", "", data=body, headers=self.signed_headers(msg_id, body))
            except SinkError as err:
                return None, [Failure(d, err.message, retriable=True) for d in items]
        if 200 <= resp.status < 300:
            return None, []
        what = f"webhook: HTTP {resp.status}" + (f" ({resp.text(200)})" if resp.body else "")
        if resp.status in ENDPOINT_ERRORS or 300 <= resp.status < 400:
            return SinkError(f"webhook {self.sink_id}: HTTP {resp.status} from the endpoint", retriable=False), []
        if resp.status in (408, 425, 429) or resp.status >= 500:
            return None, [Failure(d, what, retriable=True, retry_after=resp.retry_after) for d in items]
        if len(items) > 1:
            half = len(items) // 2
            left, right = await asyncio.gather(self._post(items[:half]), self._post(items[half:]))
            return left[0] or right[0], left[1] + right[1]
        return None, [Failure(items[0], what, retriable=False)]

    async def healthcheck(self) -> None:
        """Check the endpoint is reachable (any answer but a 5xx, 404 or 410 will do).

        Raises:
            SinkError: unreachable, or the endpoint is gone or failing.
        """
        resp = await self._http.request("HEAD", "")
        if resp.status >= 500 or resp.status in (404, 410):
            raise SinkError(f"webhook {self.sink_id}: HEAD answered HTTP {resp.status}", retriable=resp.status >= 500)
