"""A fake PagerDuty Events API v2 (``POST /v2/enqueue``) with PagerDuty's answers and fault injection.

* 202 ``{"status":"success","message":"Event processed","dedup_key":…}`` for a valid event;
  a trigger without ``dedup_key`` gets a generated one, as PagerDuty does.
* 400 ``{"status":"invalid event","message":"Event object is invalid","errors":[…]}`` for a
  body that is not JSON, a routing key that is not 32 characters, an unknown
  ``event_action``, a trigger without ``payload.summary``/``source``/``severity``, a severity
  outside critical/error/warning/info, a summary over 1024 or a dedup key over 255 characters.
* 429 ``{"status":"throttle exceeded",…}`` when ``rate_limit_per_min`` events arrived in the
  last 60 s (PagerDuty: ~120 per minute per integration key).
* ``script``: answers to give next, in order, before any processing (``(status, body)``).
* An incident model per dedup key counts **pages**: a trigger for a key with no open alert
  opens one and pages; a trigger for an open key is folded into it; resolve closes it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import FakeServer, Faults, json_error

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


class FakePagerDuty(FakeServer):
    """PagerDuty's Events API v2 on 127.0.0.1."""

    def __init__(self, routing_key: str, *, rate_limit_per_min: int | None = None, faults: Faults | None = None):
        super().__init__(faults)
        self.routing_key = routing_key
        self.rate_limit_per_min = rate_limit_per_min
        self.script: list[tuple[int, Any]] = []
        self.received: list[tuple[int, Any]] = []  # (status, parsed body or raw text)
        self.open: dict[str, dict[str, Any]] = {}  # dedup_key → the payload of the open alert
        self.pages = 0
        self.pages_by_key: dict[str, int] = {}
        self._accepted_at: list[float] = []

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 202, in order."""
        return [body for status, body in self.received if status == 202]

    def app(self) -> web.Application:
        """Route: ``POST /v2/enqueue``."""
        app = web.Application()
        app.router.add_post("/v2/enqueue", self._enqueue)
        return app

    def _invalid(self, body: Any, *errors: str) -> web.Response:
        self.received.append((400, body))
        return json_error(
            400, {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)}
        )

    async def _enqueue(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()
        await self.faults.delay()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        if self.script:
            status, answer = self.script.pop(0)
            self.received.append((status, body))
            return json_error(status, answer, self.faults.headers() if status == 429 else None)
        if self.faults.down:
            self.received.append((503, body))
            return json_error(503, {"status": "unavailable"})
        if not isinstance(body, dict):
            return self._invalid(body, "Malformed JSON")
        errors = self._validate(body)
        if errors:
            return self._invalid(body, *errors)
        now = time.monotonic()
        self._accepted_at = [t for t in self._accepted_at if now - t < 60]
        if self.rate_limit_per_min is not None and len(self._accepted_at) >= self.rate_limit_per_min:
            self.received.append((429, body))
            return json_error(429, {"status": "throttle exceeded", "message": "Requests for this service are "
                                    "arriving too quickly. Please retry later."}, self.faults.headers())  # fmt: skip
        self._accepted_at.append(now)
        key = body.get("dedup_key") or uuid.uuid4().hex
        action = body["event_action"]
        if action == "trigger":
            if key not in self.open:
                self.pages += 1
                self.pages_by_key[key] = self.pages_by_key.get(key, 0) + 1
            self.open[key] = body["payload"]
        elif action == "resolve":
            self.open.pop(key, None)
        self.received.append((202, body))
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": key}, status=202)

    def _validate(self, body: dict[str, Any]) -> list[str]:
        errors = []
        if body.get("routing_key") != self.routing_key:
            key = body.get("routing_key")
            if not isinstance(key, str) or len(key) != 32:
                errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
            else:
                errors.append("Invalid routing key")
        if body.get("event_action") not in ACTIONS:
            errors.append("'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or "
                          "'resolve')")  # fmt: skip
        key = body.get("dedup_key")
        if key is not None and (not isinstance(key, str) or len(key) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if body.get("event_action") in ("acknowledge", "resolve") and not key:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if body.get("event_action") == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or not an object")
            else:
                for field in ("summary", "source", "severity"):
                    if not payload.get(field):
                        errors.append(f"'payload.{field}' is missing or blank")
                if payload.get("severity") and payload["severity"] not in SEVERITIES:
                    errors.append("'payload.severity' is invalid (must be one of critical, error, warning, info)")
                if len(str(payload.get("summary", ""))) > 1024:
                    errors.append("'payload.summary' is longer than 1024 characters")
        return errors
