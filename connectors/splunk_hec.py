"""Splunk HTTP Event Collector sink (type ``splunk_hec``).

Protocol (Splunk docs, "Format events for HTTP Event Collector" and "HTTP Event Collector
indexer acknowledgment"):

* ``POST /services/collector/event`` with ``Authorization: Splunk <token>``; the body is
  a sequence of concatenated JSON objects ``{"time", "host", "source", "sourcetype",
  "index", "event"}``, gzip-compressed here (``Content-Encoding: gzip``). A batch is split
  into requests of at most ``max_request_bytes`` (uncompressed; HEC's
  ``max_content_length``) and the requests run concurrently.
* ``event`` is the record in ``format``: ``splunk`` (default: CIM fields at the top, the
  native record under ``instantly``; ``deploy/splunk/`` tags it for the Authentication and
  Change data models), ``native``, ``ecs`` or ``ocsf``.
* ``time`` is the event's ``time`` (an alert's ``last_seen``) in epoch seconds; the
  sourcetype is ``instantly:audit:event`` or ``instantly:audit:alert``. Every event keeps
  its ``id``, so a search can ``dedup id`` whatever HEC accepted twice.
* A plain 200 only means "looks valid". With ``ack: true`` each request carries the
  ``X-Splunk-Request-Channel`` header, the answer holds an ``ackId``, and the sink polls
  ``POST /services/collector/ack`` with ``{"acks": [...]}`` until every id is ``true``;
  what is not acknowledged within ``ack_timeout_secs`` is reported as a retriable failure
  and sent again (HEC cannot de-duplicate: a resend may index an event twice).
* Answers (body ``{"text", "code"}``): 503 (code 9 busy, 18 unhealthy, 23 shutting down),
  429 and other 5xx are retried, honouring ``Retry-After``; 400 with code 6/12/13/15
  (invalid event) dead-letters the event named by ``invalid-event-number`` (events after it
  are retried; events before it count as accepted unless ``ack`` is on, then they are
  resent); 401/403 (codes 1-4: token missing, disabled or invalid), 400 codes 7/10/11/14
  (index, channel, ack configuration) and redirects fail the whole batch without retrying
  soon, which opens the runner's circuit, with what to change (``CONFIG_HINTS``: code 10, a
  token with indexer acknowledgement, asks for ``ack: true``); 413 splits the request, and a single event too
  large for HEC is dead-lettered.
* ``url`` is the collector's base; Splunk's own HEC URL (``…:8088/services/collector/event``,
  ``/services/collector``, ``/raw``) is accepted and its endpoint path ignored.
* ``healthcheck()`` calls ``GET /services/collector/health``, then checks the token with an
  empty ``POST`` (HEC answers code 5 "No data" to a valid token).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from pydantic import Field, field_validator

from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.base import Secret
from pipeline.delivery.base import Delivery, Failure, PreparedBatch, SendResult, SinkConfig
from pipeline.delivery.http import (
    HttpClient,
    HttpResponse,
    HttpSinkConfig,
    millis_time,
    record_time,
    redact_url,
    request_body,
    upstream_text,
)
from pipeline.errors import SinkError
from pipeline.formats import dumps, get_format
from pipeline.observability.logs import register_secret

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
CHANNEL_HEADER = "X-Splunk-Request-Channel"
HEC_ENDPOINT_PATH = re.compile(r"/services/collector(?:/(?:event|raw|health)(?:/1\.0)?)?/?$")
"""The endpoint path Splunk documents as *the* HEC URL (``https://<host>:8088/services/collector/event``):
removed from ``url``, which is the collector's base (the sink adds each endpoint's path itself)."""
INVALID_EVENT_CODES = frozenset({6, 12, 13, 15})
CONFIG_CODES = frozenset({1, 2, 3, 4, 7, 10, 11, 14, 16})
# What to change for HEC's answers about the setup (its status code table), said with the error.
CONFIG_HINTS = {
    1: "the token is disabled in Splunk",
    4: "check the token",
    7: "the token may not write to this index: add it to the token's allowed indexes or change index",
    10: "the token has indexer acknowledgement on: set ack: true",
    11: "channel must be a GUID",
    14: "the token has indexer acknowledgement off: set ack: false or turn it on for the token",
    16: "query-string authorization is off on the token",
}

Sleep = Callable[[float], Awaitable[None]]


class SplunkHecConfig(HttpSinkConfig):
    """Options of the Splunk HEC sink."""

    DEFAULT_FORMAT: ClassVar[str] = "splunk"
    CREDENTIAL_FIELDS: ClassVar[tuple[str, ...]] = ("token",)

    type: Literal["splunk_hec"] = "splunk_hec"
    token: Secret
    index: str | None = None
    host: str | None = None
    source: str = "instantly-audit"
    sourcetype_event: str = "instantly:audit:event"
    sourcetype_alert: str = "instantly:audit:alert"
    compression: Literal["gzip", "none"] = "gzip"
    gzip_level: int = Field(3, ge=1, le=9, description="3: a tenth of level 6's CPU for ~15% more bytes")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="HEC max_content_length (uncompressed)")
    ack: bool = False
    channel: str | None = Field(None, description="a GUID; default: a new one per process")
    ack_poll_interval_secs: float = Field(2.0, gt=0, description="longest wait between ack queries")
    ack_timeout_secs: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        """``https://splunk:8088/services/collector/event`` (Splunk's HEC URL) → ``https://splunk:8088``."""
        parts = urlsplit(v)
        base = HEC_ENDPOINT_PATH.sub("", parts.path)
        return v if base == parts.path else urlunsplit(parts._replace(path=base))

    @field_validator("channel")
    @classmethod
    def _guid(cls, v: str | None) -> str | None:
        if v is not None:
            uuid.UUID(v)  # ValueError names the field
        return v


@dataclass(slots=True)
class _Outcome:
    """What one request settled: failures, deliveries awaiting an ack, a fatal error."""

    failures: list[Failure] = field(default_factory=list)
    acks: dict[int, list[Delivery]] = field(default_factory=dict)
    fatal: SinkError | None = None


class SplunkHecSink:
    """Send events and alerts to a Splunk HTTP Event Collector."""

    Config: ClassVar[type[SinkConfig]] = SplunkHecConfig

    def __init__(
        self, sink_id: str, config: SplunkHecConfig, *, clock: Clock = SYSTEM_CLOCK, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.sink_id = sink_id
        self.config = config
        token = config.token.get_secret_value()
        register_secret(token)
        self.channel = config.channel or str(uuid.uuid4())
        headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json"}
        self._post_headers = {"Content-Encoding": "gzip"} if config.compression == "gzip" else {}
        if config.ack:
            headers[CHANNEL_HEADER] = self.channel
        self._http = HttpClient(config, name=f"splunk_hec {sink_id}", headers=headers, clock=clock)
        self._clock = clock
        self._sleep = sleep
        self._prefix = {kind: self._envelope_prefix(kind) for kind in ("event", "alert")}
        fmt = config.record_format
        self._render = None if fmt == "native" else get_format(fmt).render

    def _envelope_prefix(self, kind: str) -> bytes:
        meta: dict[str, Any] = {
            "host": self.config.host,
            "source": self.config.source,
            "sourcetype": self.config.sourcetype_event if kind == "event" else self.config.sourcetype_alert,
            "index": self.config.index,
        }
        return orjson.dumps({k: v for k, v in meta.items() if v is not None})[:-1] + b',"time":'

    async def __aenter__(self) -> SplunkHecSink:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.__aexit__(None, None, None)

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, d: Delivery) -> bytes:
        """One HEC event object."""
        if self._render is not None:
            raw = dumps(self._render(d.body))
        else:
            raw = d.raw if d.raw[:1] == b"{" else orjson.dumps(d.body)
        fast = millis_time(d.body.get("time" if d.kind == "event" else "last_seen"))
        if fast is not None:  # the digits repr(round(t, 3)) prints, without the float round trip
            stamp = f"{fast[0]}.{fast[1].rstrip('0') or '0'}".encode()
        else:
            stamp = repr(round(record_time(d)[0], 3)).encode()
        return b"".join((self._prefix[d.kind], stamp, b',"event":', raw, b"}"))

    def _chunks(self, batch: Sequence[Delivery]) -> list[tuple[list[Delivery], list[bytes]]]:
        encode = self.encode
        parts = [encode(d) for d in batch]
        if sum(map(len, parts)) <= self.config.max_request_bytes:
            return [(list(batch), parts)] if parts else []
        return self._split(batch, parts)

    def _split(self, batch: Sequence[Delivery], encoded: list[bytes]) -> list[tuple[list[Delivery], list[bytes]]]:
        """Group the encoded events into requests of at most ``max_request_bytes``."""
        out: list[tuple[list[Delivery], list[bytes]]] = []
        items: list[Delivery] = []
        parts: list[bytes] = []
        size = 0
        for d, b in zip(batch, encoded, strict=True):
            if items and size + len(b) > self.config.max_request_bytes:
                out.append((items, parts))
                items, parts, size = [], [], 0
            items.append(d)
            parts.append(b)
            size += len(b)
        if items:
            out.append((items, parts))
        return out

    async def _body(self, parts: list[bytes]) -> bytes:
        cfg = self.config
        return await request_body(parts, gzip_level=cfg.gzip_level if cfg.compression == "gzip" else None)

    async def prepare(self, batch: Sequence[Delivery]) -> PreparedBatch:
        """Encode (and compress) ``batch`` into its requests, ready for :meth:`send_prepared`."""
        return PreparedBatch(batch, [(items, await self._body(parts)) for items, parts in self._chunks(batch)])

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Send the batch (waiting for indexer acknowledgement when ``ack`` is on).

        Raises:
            SinkError: (not retriable) the token, index, channel or ack setting is refused.
        """
        if not batch:
            return SendResult()
        return await self.send_prepared(await self.prepare(batch))

    async def send_prepared(self, prepared: PreparedBatch) -> SendResult:
        """Send a batch :meth:`prepare` encoded; the same contract as :meth:`send`.

        Raises:
            SinkError: (not retriable) the token, index, channel or ack setting is refused.
        """
        if not prepared.requests:
            return SendResult()
        requests = prepared.requests
        if len(requests) == 1:  # no task: the request goes out before anything else runs
            outcomes = [await self._post(*requests[0])]
        else:
            outcomes = await asyncio.gather(*(self._post(items, body) for items, body in requests))
        failures: list[Failure] = []
        acks: dict[int, list[Delivery]] = {}
        for o in outcomes:
            if o.fatal is not None:
                raise o.fatal
            failures.extend(o.failures)
            acks.update(o.acks)
        if acks:
            failures.extend(await self._await_acks(acks))
        return SendResult(failures=failures)

    async def _encode_and_post(self, items: list[Delivery]) -> _Outcome:
        return await self._post(items, await self._body([self.encode(d) for d in items]))

    async def _post(self, items: list[Delivery], body: bytes) -> _Outcome:
        try:
            resp = await self._http.request("POST", EVENT_PATH, data=body, headers=self._post_headers)
        except SinkError as err:
            return _Outcome(failures=[Failure(d, err.message, retriable=True) for d in items])
        if resp.status == 200:
            return self._accepted(items, resp)
        code, text, invalid = self._error_fields(resp)
        what = f"HTTP {resp.status}" + (f" code {code}" if code is not None else "") + (f" ({text})" if text else "")
        if resp.status == 413 or (resp.status == 400 and (code in INVALID_EVENT_CODES or code == 5)):
            return await self._isolate(items, resp.status, what, invalid)
        if resp.status in (401, 403) or code in CONFIG_CODES or 300 <= resp.status < 400 or resp.status == 404:
            return _Outcome(fatal=SinkError(f"splunk_hec {self.sink_id}: {what}{self._hint(code)}", retriable=False))
        retriable = resp.status in (408, 429) or resp.status >= 500
        return _Outcome(failures=[
            Failure(d, f"splunk_hec: {what}", retriable=retriable, retry_after=resp.retry_after) for d in items
        ])  # fmt: skip

    def _accepted(self, items: list[Delivery], resp: HttpResponse) -> _Outcome:
        if not self.config.ack:
            return _Outcome()
        try:
            ack_id = resp.json("splunk_hec event").get("ackId")
        except (SinkError, AttributeError):
            ack_id = None
        if not isinstance(ack_id, int):
            return _Outcome(fatal=SinkError(
                f"splunk_hec {self.sink_id}: ack is on but HEC returned no ackId (is indexer acknowledgement "
                "enabled on the token?)", retriable=False))  # fmt: skip
        return _Outcome(acks={ack_id: items})

    def _hint(self, code: int | None) -> str:
        hint = CONFIG_HINTS.get(code) if code is not None else None
        if code == 10 and self.config.ack:
            hint = None  # the channel header is sent: something in between dropped it
        return f"; {hint}" if hint else ""

    @staticmethod
    def _error_fields(resp: HttpResponse) -> tuple[int | None, str, int | None]:
        try:
            body = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return None, resp.text(120), None
        if not isinstance(body, dict):
            return None, "", None
        code, text, invalid = body.get("code"), body.get("text"), body.get("invalid-event-number")
        return (
            code if isinstance(code, int) else None,
            upstream_text(str(text), 200) if text is not None else "",
            invalid if isinstance(invalid, int) else None,
        )

    async def _isolate(self, items: list[Delivery], status: int, what: str, invalid: int | None) -> _Outcome:
        """Settle a request HEC refused because of its content (one bad event, or too large)."""
        if len(items) == 1:
            reason = "event larger than HEC accepts" if status == 413 else "event refused by HEC"
            return _Outcome(failures=[Failure(items[0], f"splunk_hec: {what}: {reason}", retriable=False)])
        if status == 400 and invalid is not None and 0 <= invalid < len(items):
            out = _Outcome(failures=[Failure(items[invalid], f"splunk_hec: {what}: event refused", retriable=False)])
            earlier = items[:invalid] if self.config.ack else []  # without ack HEC's acceptance is all there is
            out.failures += [Failure(d, f"splunk_hec: not indexed ({what} on another event)", retriable=True)
                             for d in [*earlier, *items[invalid + 1 :]]]  # fmt: skip
            return out
        half = len(items) // 2
        merged = _Outcome()
        for sub in await asyncio.gather(self._encode_and_post(items[:half]), self._encode_and_post(items[half:])):
            merged.failures += sub.failures
            merged.acks.update(sub.acks)
            merged.fatal = merged.fatal or sub.fatal
        return merged

    async def _await_acks(self, pending: dict[int, list[Delivery]]) -> list[Failure]:
        """Poll the ack endpoint until every id is acknowledged or ``ack_timeout_secs`` passed."""
        deadline = self._clock.monotonic() + self.config.ack_timeout_secs
        interval = min(0.05, self.config.ack_poll_interval_secs)
        while pending:
            await self._sleep(min(interval, max(0.0, deadline - self._clock.monotonic())))
            interval = min(interval * 2, self.config.ack_poll_interval_secs)
            body = orjson.dumps({"acks": sorted(pending)})
            try:
                resp = await self._http.request("POST", ACK_PATH, data=body, params={"channel": self.channel})
                answer = resp.json("splunk_hec ack") if resp.status == 200 else {}
            except SinkError:
                answer = {}
            acks = answer.get("acks") if isinstance(answer, dict) else None
            if isinstance(acks, dict):
                for key, done in acks.items():
                    if done is True and key.isdigit():
                        pending.pop(int(key), None)
            if pending and self._clock.monotonic() >= deadline:
                break
        timeout = self.config.ack_timeout_secs
        return [
            Failure(d, f"splunk_hec: not acknowledged by the indexers within {timeout:g}s", retriable=True)
            for items in pending.values()
            for d in items
        ]

    async def healthcheck(self) -> None:
        """Check HEC is healthy and accepts the token.

        Raises:
            SinkError: HEC is unreachable or unhealthy, or the token is refused.
        """
        resp = await self._http.request("GET", HEALTH_PATH)
        code, text, _ = self._error_fields(resp)
        if resp.status == 404:
            raise SinkError(f"splunk_hec {self.sink_id}: health: HTTP 404: no HTTP Event Collector answers at "
                            f"{redact_url(self._http.base_url)}{HEALTH_PATH} (url is the collector's base, "
                            "https://<host>:8088; HEC may be off or on another port)")  # fmt: skip
        if resp.status != 200:
            raise SinkError(f"splunk_hec {self.sink_id}: health: HTTP {resp.status} code {code} ({text})",
                            retriable=resp.status >= 500)  # fmt: skip
        resp = await self._http.request("POST", EVENT_PATH, data=b"")
        code, text, _ = self._error_fields(resp)
        if resp.status in (200, 400) and code in (0, 5):
            return
        raise SinkError(f"splunk_hec {self.sink_id}: token check: HTTP {resp.status} code {code} ({text})"
                        f"{self._hint(code)}", retriable=resp.status >= 500)  # fmt: skip
