"""A fake Slack incoming-webhook endpoint with Slack's answers and fault injection.

* ``POST /services/<team>/<bot>/<token>`` (only the configured path exists):
  200 ``ok``; 400 ``invalid_payload`` (not JSON / not an object), 400 ``no_text`` (neither
  ``text`` nor ``blocks``), 400 ``invalid_blocks`` (a header over 150 characters, section
  text over 3000, more than 10 fields or 50 blocks); 404 ``no_service`` for any other path.
* ``rate_limit_secs``: a post less than this long after the previous accepted one gets
  429 ``rate_limited`` with ``Retry-After`` (Slack's ~1 message per second per webhook).
* ``script``: answers to give next, in order, before any other processing
  (``(status, body, retry_after)``), e.g. a 429 burst or a 500.
* Everything received is recorded with its arrival time (monotonic) and status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import FakeServer, Faults

HOOK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"


@dataclass
class Received:
    """One request as the fake saw it."""

    at: float
    path: str
    body: bytes
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


class FakeSlack(FakeServer):
    """Slack's incoming-webhook endpoint on 127.0.0.1."""

    def __init__(self, *, path: str = HOOK_PATH, rate_limit_secs: float | None = None,
                 retry_after: float = 1.0, faults: Faults | None = None) -> None:  # fmt: skip
        super().__init__(faults)
        self.path = path
        self.rate_limit_secs = rate_limit_secs
        self.retry_after = retry_after
        self.script: list[tuple[int, str, float | None]] = []
        self.received: list[Received] = []
        self._last_ok = float("-inf")

    @property
    def hook_url(self) -> str:
        """The webhook URL (a secret in real life)."""
        return self.url + self.path

    @property
    def posted(self) -> list[Any]:
        """The JSON bodies Slack accepted (200), in order."""
        return [r.json for r in self.received if r.status == 200]

    def app(self) -> web.Application:
        """Routes: every POST goes to :meth:`_post`."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._post)
        return app

    def _answer(self, request: web.Request, body: bytes, status: int, text: str,
                retry_after: float | None = None) -> web.Response:  # fmt: skip
        self.received.append(Received(time.monotonic(), request.path, body, status, dict(request.headers)))
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return web.Response(status=status, text=text, headers=headers, content_type="text/html")

    async def _post(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        await self.faults.delay()
        if self.script:
            status, text, retry_after = self.script.pop(0)
            return self._answer(request, body, status, text, retry_after)
        if self.faults.down:
            return self._answer(request, body, 503, "service_unavailable")
        if request.path != self.path:
            return self._answer(request, body, 404, "no_service")
        now = time.monotonic()
        if self.rate_limit_secs is not None and now - self._last_ok < self.rate_limit_secs:
            return self._answer(request, body, 429, "rate_limited", self.retry_after)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._answer(request, body, 400, "invalid_payload")
        if not isinstance(doc, dict):
            return self._answer(request, body, 400, "invalid_payload")
        if not doc.get("text") and not doc.get("blocks"):
            return self._answer(request, body, 400, "no_text")
        if not _blocks_ok(doc.get("blocks") or []):
            return self._answer(request, body, 400, "invalid_blocks")
        self._last_ok = now
        return self._answer(request, body, 200, "ok")


def _blocks_ok(blocks: Any) -> bool:
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") not in ("header", "section", "context", "divider", "actions"):
            return False
        text = (b.get("text") or {}).get("text", "")
        if b["type"] == "header" and (len(text) > 150 or b["text"].get("type") != "plain_text"):
            return False
        if b["type"] == "section" and len(text) > 3000:
            return False
        fields = b.get("fields") or []
        if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
            return False
        if b["type"] == "context" and len(b.get("elements") or []) > 10:
            return False
    return True
