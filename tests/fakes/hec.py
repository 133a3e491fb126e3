"""A fake Splunk HTTP Event Collector speaking the real protocol, with its failure modes.

* ``POST /services/collector/event``: ``Authorization: Splunk <token>`` (401 code 2 when
  missing, 401 code 3 when malformed, 403 code 4 when wrong); gzip bodies; concatenated
  JSON event objects; 400 code 5 (no data), 6 (invalid data, with ``invalid-event-number``;
  the events before it are indexed, as Splunk does), 12 (``event`` missing), 13 (blank);
  413 beyond ``max_content_length``; 503 code 9 when busy.
* Indexer acknowledgement (``ack=True``): the channel is required (400 code 10), each
  accepted request gets an ``ackId``; ``POST /services/collector/ack`` answers
  ``{"acks": {"<id>": true|false}}``. ``lose_rate`` makes the "indexer" lose a request:
  nothing indexed, its ack never turns true.
* ``GET /services/collector/health``: code 17 healthy, 503 code 18 when down.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer, Faults, json_error

Reject = Callable[[dict[str, Any]], bool]


def parse_concatenated(text: str) -> list[Any]:
    """Split concatenated JSON values; raises ValueError with the index of the bad one."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            return out
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            raise ValueError(len(out)) from None
        out.append(value)


class FakeHec(FakeServer):
    """Splunk HEC on 127.0.0.1."""

    def __init__(
        self,
        token: str,
        *,
        ack: bool = False,
        faults: Faults | None = None,
        reject: Reject | None = None,
        lose_rate: float = 0.0,
        max_content_length: int = 800_000_000,
    ) -> None:
        super().__init__(faults)
        self.token = token
        self.ack = ack
        self.reject = reject
        self.lose_rate = lose_rate
        self.max_content_length = max_content_length
        self.events: list[dict[str, Any]] = []
        self.gzip_requests = 0
        self.ack_queries = 0
        self.after_fault_events = 0  # indexed, then answered 500: the client will resend them
        self._acks: dict[str, dict[int, bool]] = {}
        self._next_ack: Counter[str] = Counter()

    @property
    def ids(self) -> list[str]:
        """The ids of the indexed events, with repetitions."""
        return [e["event"]["id"] for e in self.events]

    def app(self) -> web.Application:
        """Routes of the collector."""
        app = web.Application(client_max_size=self.max_content_length + 1024)
        app.router.add_post("/services/collector/event", self.event)
        app.router.add_post("/services/collector", self.event)
        app.router.add_post("/services/collector/ack", self.ack_query)
        app.router.add_get("/services/collector/health", self.health)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            return json_error(401, {"text": "Token is required", "code": 2})
        scheme, _, value = header.partition(" ")
        if scheme != "Splunk" or not value:
            return json_error(401, {"text": "Invalid authorization", "code": 3})
        if value != self.token:
            return json_error(403, {"text": "Invalid token", "code": 4})
        return None

    def _channel(self, request: web.Request) -> str | None:
        return request.headers.get("X-Splunk-Request-Channel") or request.query.get("channel")

    async def event(self, request: web.Request) -> web.Response:
        """Index a batch of events."""
        self.requests += 1
        await self.faults.delay()
        denied = self._auth(request)
        if denied is not None:
            return denied
        fate = self.faults.roll()
        if self.faults.down or fate == "before":
            return json_error(503, {"text": "Server is busy", "code": 9}, self.faults.headers())
        channel = self._channel(request)
        if self.ack and not channel:
            return json_error(400, {"text": "Data channel is missing", "code": 10})
        if request.headers.get("Content-Encoding") == "gzip":
            self.gzip_requests += 1
        if (request.content_length or 0) > self.max_content_length:
            return json_error(413, {"text": "Content too large", "code": 27})
        raw = await request.read()
        if len(raw) > self.max_content_length:
            return json_error(413, {"text": "Content too large", "code": 27})
        try:
            objs = parse_concatenated(raw.decode("utf-8"))
        except ValueError as err:
            return json_error(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": err.args[0]})
        if not objs:
            return json_error(400, {"text": "No data", "code": 5})
        batch: list[dict[str, Any]] = []
        for i, obj in enumerate(objs):
            problem = self._invalid(obj)
            if problem is not None:
                self._index(batch)  # Splunk keeps what came before the bad event
                text, code = problem
                return json_error(400, {"text": text, "code": code, "invalid-event-number": i})
            batch.append(obj)
        if self.ack:
            assert channel is not None
            ack_id = self._next_ack[channel]
            self._next_ack[channel] += 1
            lost = self.faults.rng.random() < self.lose_rate
            self._acks.setdefault(channel, {})[ack_id] = not lost
            if not lost:
                self._index(batch)
            if fate == "after":
                self.after_fault_events += 0 if lost else len(batch)
                return json_error(500, {"text": "Internal server error", "code": 8})
            return json_error(200, {"text": "Success", "code": 0, "ackId": ack_id})
        self._index(batch)
        if fate == "after":
            self.after_fault_events += len(batch)
            return json_error(500, {"text": "Internal server error", "code": 8})
        return json_error(200, {"text": "Success", "code": 0})

    def _invalid(self, obj: Any) -> tuple[str, int] | None:
        if not isinstance(obj, dict):
            return "Invalid data format", 6
        if "event" not in obj:
            return "Event field is required", 12
        if obj["event"] in ("", None, {}):
            return "Event field cannot be blank", 13
        if "time" in obj and not isinstance(obj["time"], int | float):
            return "Invalid data format", 6
        if self.reject is not None and self.reject(obj):
            return "Invalid data format", 6
        return None

    def _index(self, batch: list[dict[str, Any]]) -> None:
        self.events.extend(batch)

    async def ack_query(self, request: web.Request) -> web.Response:
        """Report which ack ids are indexed."""
        self.ack_queries += 1
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not self.ack:
            return json_error(400, {"text": "ACK is disabled", "code": 14})
        channel = self._channel(request)
        if not channel:
            return json_error(400, {"text": "Data channel is missing", "code": 10})
        body = await request.json()
        known = self._acks.get(channel, {})
        return json_error(200, {"acks": {str(i): known.get(i, False) for i in body.get("acks", [])}})

    async def health(self, request: web.Request) -> web.Response:
        """Collector health."""
        if self.faults.down:
            return json_error(503, {"text": "HEC is unhealthy, queues are full", "code": 18})
        return json_error(200, {"text": "HEC is healthy", "code": 17})
