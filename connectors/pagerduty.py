"""PagerDuty sink (type ``pagerduty``): alerts through the Events API v2 (``POST /v2/enqueue``).

* ``routing_key`` (the integration key) is a ``Secret``: registered with the log redactor and
  sent only in the request body, never in a message.
* ``dedup_key`` = the alert's ``dedup_key`` (stable per rule + workspace + entity; a key over
  PagerDuty's 255 characters is replaced by ``sha256:<hex>`` of it), so retries and replays
  fold into the open PagerDuty alert and never page twice. ``event_action`` is ``trigger`` for
  open alerts and ``resolve`` for resolved ones. Within a batch only the last record per
  dedup key is sent (earlier ones are superseded and counted as duplicates), so a replayed
  batch never re-triggers a condition it also resolves; ``replay --to`` applies the same rule
  to its whole range (:class:`~pipeline.delivery.base.CollapsingSink`).
* Severity: critical → critical, high → error, medium → warning, low/info → info. The
  payload carries ``summary`` (≤ 1024 characters), ``source`` (the workspace), ``component``
  (the first entity), ``group``, ``class`` (the rule id), ``timestamp`` and
  ``custom_details`` (the whole alert; with ``format: ecs|ocsf|splunk`` the alert rendered
  in that format), plus the runbook as a link; bodies over PagerDuty's
  512 KB are trimmed (event ids, attributes) or dead-lettered.
* Answers: 202 accepted (final); 400 → that record is poison (dead letter), unless its
  ``errors`` name the routing key (then no event can pass: the batch fails, as below); 413 → poison;
  429 and 5xx/timeouts → that record and the rest of the batch are retriable failures
  (``Retry-After`` or ``rate_limited_retry_secs``), records already accepted stay confirmed;
  401/403/404 and redirects mean a wrong URL or key: the batch fails without retrying soon.
* Alerts only (``topics: [alerts]``); an event that reaches it is dead-lettered.
* ``healthcheck()`` sends a no-op ``acknowledge`` for the dedup key
  ``instantly-audit:healthcheck`` (no such alert exists, so nothing changes); PagerDuty
  answers 202 for a valid routing key and 400 otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.base import Secret
from pipeline.delivery.base import Delivery, Failure, SendResult, SinkConfig
from pipeline.delivery.http import HttpClient, HttpResponse, HttpSinkConfig, status_error, upstream_text
from pipeline.errors import SinkError
from pipeline.formats import render
from pipeline.observability.logs import register_secret

ENQUEUE_PATH = "/v2/enqueue"
SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info", "info": "info"}
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_BODY_BYTES = 512 * 1024
HEALTHCHECK_DEDUP_KEY = "instantly-audit:healthcheck"


def _default_topics() -> list[Literal["events", "alerts"]]:
    return ["alerts"]


class PagerDutySinkConfig(HttpSinkConfig):
    """Options of the PagerDuty sink."""

    CREDENTIAL_FIELDS: ClassVar[tuple[str, ...]] = ("routing_key",)

    type: Literal["pagerduty"] = "pagerduty"
    url: str = Field("https://events.pagerduty.com", description="Events API base URL (tests point it at a fake)")
    routing_key: Secret = Field(description="integration key (a secret: ${ENV} or routing_key_file)")
    topics: list[Literal["events", "alerts"]] = Field(default_factory=_default_topics)
    batch_max_records: int = Field(50, ge=1, le=100_000, description="one request per record (~120/min allowed)")
    request_timeout_secs: float = Field(10.0, gt=0)
    source: str | None = Field(None, description="payload.source (default: the workspace name and id)")
    client: str = "instantly-audit"
    client_url: str | None = None
    rate_limited_retry_secs: float = Field(30.0, gt=0, description="wait after a 429 without Retry-After")

    @field_validator("topics")
    @classmethod
    def _alerts_only(cls, v: list[str]) -> list[str]:
        if v != ["alerts"]:
            raise ValueError("PagerDuty takes alerts only: use topics: [alerts]")
        return v


def dedup_key(alert: Mapping[str, Any]) -> str:
    """The PagerDuty dedup key of an alert dict: its ``dedup_key``, hashed when over 255 characters."""
    key = str(alert.get("dedup_key") or alert.get("id") or "")
    if len(key) > MAX_DEDUP_KEY:
        return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PagerDutySink:
    """Triggers and resolves PagerDuty alerts, one per alert dedup key."""

    Config: ClassVar[type[SinkConfig]] = PagerDutySinkConfig
    type: ClassVar[str] = "pagerduty"
    deduplicates_by_id: ClassVar[bool] = True
    """PagerDuty keeps one incident per ``dedup_key``: a re-sent alert folds into it (``replay --to``)."""

    def __init__(self, sink_id: str, config: SinkConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(config, PagerDutySinkConfig):
            raise TypeError(f"sinks.{sink_id}: expected a pagerduty config, got {type(config).__name__}")
        self.sink_id = sink_id
        self.config = config
        self._key = config.routing_key.get_secret_value()
        register_secret(self._key)
        self._name = f"pagerduty {sink_id}"
        self._http = HttpClient(config, name=self._name, headers={"Content-Type": "application/json"}, clock=clock)

    async def __aenter__(self) -> PagerDutySink:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.__aexit__(None, None, None)

    # ------------------------------------------------------------------ payload
    def event(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        """The Events API v2 body for an Alert v1 dict (routing key included)."""
        key = dedup_key(alert)
        if alert.get("status") == "resolved":
            return {"routing_key": self._key, "event_action": "resolve", "dedup_key": key}
        rule = alert.get("rule") or {}
        ws = alert.get("workspace") or {}
        where = f"{ws.get('name')} ({ws.get('id')})" if ws.get("name") else str(ws.get("id") or "unknown")
        entities = [e for e in alert.get("entities") or [] if isinstance(e, Mapping)]
        component = None
        if entities:
            first = entities[0]
            component = f"{first.get('kind')}:{first.get('name') or first.get('id') or ''}"
        title = str(rule.get("title") or rule.get("id") or "Alert")
        summary = f"{title}: {alert.get('summary') or ''} [{where}]"
        payload: dict[str, Any] = {
            "summary": _cut(summary, MAX_SUMMARY),
            "source": _cut(self.config.source or f"instantly workspace {where}", 255),
            "severity": SEVERITY.get(str(rule.get("severity")), "info"),
            "timestamp": alert.get("last_seen") or alert.get("first_seen"),
            "component": _cut(component, 255) if component else None,
            "group": f"instantly:{ws.get('id')}",
            "class": rule.get("id"),
            "custom_details": self._details(alert, rule, ws, entities),
        }
        body: dict[str, Any] = {
            "routing_key": self._key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {k: v for k, v in payload.items() if v is not None},
            "client": self.config.client,
        }
        if self.config.client_url:
            body["client_url"] = self.config.client_url
        runbook = rule.get("runbook")
        if isinstance(runbook, str) and runbook.startswith(("https://", "http://")):
            body["links"] = [{"href": runbook, "text": "Runbook"}]
        return body

    def _details(
        self, alert: Mapping[str, Any], rule: Any, ws: Any, entities: list[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """``custom_details``: the alert's fields (native) or the alert in the configured format."""
        fmt = self.config.record_format
        if fmt != "native":
            rendered = render(dict(alert), fmt)
            return rendered if isinstance(rendered, dict) else {"record": rendered}
        return {
            "alert_id": alert.get("id"),
            "summary": alert.get("summary"),
            "rule": rule,
            "workspace": ws,
            "entities": entities,
            "event_ids": alert.get("event_ids") or [],
            "first_seen": alert.get("first_seen"),
            "last_seen": alert.get("last_seen"),
            "count": alert.get("count"),
            "attributes": alert.get("attributes") or {},
        }

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """The request body; trimmed to PagerDuty's 512 KB.

        Raises:
            ValueError: the alert is too large even after trimming.
        """
        body = self.event(alert)
        data = orjson.dumps(body)
        if len(data) > MAX_BODY_BYTES and "payload" in body and "event_ids" in body["payload"]["custom_details"]:
            details = body["payload"]["custom_details"]
            ids = details["event_ids"]
            details["event_ids"] = ids[:100]
            details["event_ids_total"] = len(ids)
            details["attributes"] = "<trimmed: over PagerDuty's 512 KB>"
            data = orjson.dumps(body)
        if len(data) > MAX_BODY_BYTES:
            raise ValueError(f"the PagerDuty event is {len(data)} bytes, over the 512 KB limit")
        return data

    # ------------------------------------------------------------------ protocol
    def _message(self, resp: HttpResponse) -> str:
        try:
            doc = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return resp.text(200)
        if not isinstance(doc, dict):
            return resp.text(200)
        parts = [str(doc.get("message") or doc.get("status") or "")] + [str(e) for e in doc.get("errors") or []]
        return upstream_text("; ".join(p for p in parts if p), 500).replace(self._key, "<redacted>")

    @staticmethod
    def _key_refused(resp: HttpResponse) -> bool:
        """Whether a 400 is about the routing key (the integration), not this event."""
        try:
            doc = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return False
        errors = doc.get("errors") if isinstance(doc, dict) else None
        texts = [str(e).lower() for e in errors] if isinstance(errors, list) else []
        return any("routing_key" in t or "routing key" in t for t in texts)

    def collapse_key(self, d: Delivery) -> str | None:
        """The PagerDuty dedup key of an alert (``replay --to`` sends only the range's last record per key)."""
        return dedup_key(d.body) if d.kind == "alert" else None

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Send one Events API request per dedup key (the batch's last record for that key).

        Raises:
            SinkError: 401/403/404, a redirect or a 400 about the routing key (wrong URL or
                key), not retriable;
                a transport error before anything was accepted (retriable).
        """
        result = SendResult()
        groups: dict[str, list[Delivery]] = {}
        for d in batch:
            if d.kind != "alert":
                result.failures.append(Failure(d, f"{self._name}: PagerDuty takes alerts only", retriable=False))
                continue
            groups.setdefault(dedup_key(d.body), []).append(d)
        keys = list(groups)
        for n, key in enumerate(keys):
            group = groups[key]
            last = group[-1]
            try:
                data = self.encode(last.body)
            except (TypeError, ValueError) as err:
                result.failures += [Failure(d, f"{self._name}: {err}", retriable=False) for d in group]
                continue
            try:
                resp = await self._http.request("POST", ENQUEUE_PATH, data=data)
            except SinkError as err:
                if n == 0 and not result.failures:
                    raise
                result.failures += [Failure(d, err.message, err.retriable, err.retry_after)
                                    for k in keys[n:] for d in groups[k]]  # fmt: skip
                break
            if resp.status in (200, 201, 202):
                result.duplicates += len(group) - 1  # superseded by the last record for this key
            elif resp.status == 400 and self._key_refused(resp):
                raise status_error(self._name, f"POST {ENQUEUE_PATH}", resp, self._message(resp))
            elif resp.status in (400, 413):
                reason = f"{self._name}: PagerDuty rejected the event: HTTP {resp.status} {self._message(resp)}"
                result.failures += [Failure(d, reason, retriable=False) for d in group]
            elif resp.status == 429 or resp.status >= 500 or resp.status == 408:
                wait = resp.retry_after
                if resp.status == 429 and wait is None:
                    wait = self.config.rate_limited_retry_secs
                reason = f"{self._name}: HTTP {resp.status} {self._message(resp)}".rstrip()
                result.failures += [Failure(d, reason, retriable=True, retry_after=wait)
                                    for k in keys[n:] for d in groups[k]]  # fmt: skip
                break
            else:
                raise status_error(self._name, f"POST {ENQUEUE_PATH}", resp, self._message(resp))
        return result

    async def healthcheck(self) -> None:
        """Send a no-op ``acknowledge`` (unknown dedup key): 202 proves URL and routing key.

        Raises:
            SinkError: unreachable (retriable) or the key/URL is refused (not retriable).
        """
        body = {"routing_key": self._key, "event_action": "acknowledge", "dedup_key": HEALTHCHECK_DEDUP_KEY}
        opened = not self._http.is_open
        if opened:
            await self._http.__aenter__()
        try:
            resp = await self._http.request("POST", ENQUEUE_PATH, data=orjson.dumps(body))
        finally:
            if opened:
                await self._http.__aexit__(None, None, None)
        if resp.status not in (200, 201, 202):
            raise status_error(self._name, "health check", resp, self._message(resp))
