"""A generic webhook receiver that verifies Standard Webhooks signatures on its own.

The verification here is written from the specification, independently of
``connectors.webhook_sink``: lower-case header names, integer timestamp within
``tolerance_secs`` of the wall clock, HMAC-SHA256 over ``{id}.{timestamp}.{raw body}`` with
the base64-decoded ``whsec_`` secret, any of the space-separated ``v1,`` signatures,
constant-time comparison. Unsigned or badly signed requests get 401 and are counted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer, Faults

Reject = Callable[[dict[str, Any]], bool]


def spec_verify(secret: str, headers: dict[str, str], body: bytes, tolerance_secs: float, now: float) -> bool:
    """True when the headers carry a valid Standard Webhooks v1 signature of ``body``."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
        sigs = h["webhook-signature"].split(" ")
    except (KeyError, ValueError):
        return False
    if abs(now - ts) > tolerance_secs:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    want = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256).digest()
    ok = False
    for s in sigs:
        if s.startswith("v1,"):
            ok |= hmac.compare_digest(base64.b64decode(s[3:]), want)
    return ok


class FakeReceiver(FakeServer):
    """Receives signed webhooks at ``/hooks``."""

    def __init__(
        self, secret: str, *, faults: Faults | None = None, reject: Reject | None = None, tolerance_secs: float = 300
    ) -> None:
        super().__init__(faults)
        self.secret = secret
        self.reject = reject
        self.tolerance_secs = tolerance_secs
        self.records: list[dict[str, Any]] = []
        self.webhook_ids: Counter[str] = Counter()
        self.bad_signatures = 0
        self.arrays = 0
        self.after_fault_records = 0  # accepted, then answered 500: the sender will resend them

    @property
    def hook_url(self) -> str:
        """The endpoint URL."""
        return self.url + "/hooks"

    @property
    def ids(self) -> list[str]:
        """Ids of the received records, with repetitions."""
        return [r["id"] for r in self.records]

    def app(self) -> web.Application:
        """Routes."""
        app = web.Application()
        app.router.add_post("/hooks", self.hook)
        app.router.add_route("HEAD", "/hooks", self.head)
        return app

    async def head(self, request: web.Request) -> web.Response:
        """Reachability probe."""
        return web.Response(status=503 if self.faults.down else 200)

    async def hook(self, request: web.Request) -> web.Response:
        """Verify, then accept (or fail as configured)."""
        self.requests += 1
        await self.faults.delay()
        body = await request.read()
        if not spec_verify(self.secret, dict(request.headers), body, self.tolerance_secs, time.time()):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        fate = self.faults.roll()
        if self.faults.down or fate == "before":
            return web.Response(status=503, headers=self.faults.headers())
        data = json.loads(body)
        records = data if isinstance(data, list) else [data]
        if isinstance(data, list):
            self.arrays += 1
        if self.reject is not None and any(self.reject(r) for r in records):
            return web.Response(status=422, text="unprocessable record")
        self.records.extend(records)
        self.webhook_ids[request.headers["webhook-id"]] += 1
        if fate == "after":
            self.after_fault_records += len(records)
            return web.Response(status=500)
        return web.Response(status=204)
