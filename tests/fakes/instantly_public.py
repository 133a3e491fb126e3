"""An Instantly API v2 fake written from the public reference (developer.instantly.ai), independent of ``sim/``.

It is what a stranger would write from the docs alone, so it serves only what they state and
varies everything they leave open:

* bearer auth (``Authorization: Bearer <key>``); a missing or wrong key is 401 with the
  documented error body ``{statusCode, error, message}``;
* list envelope ``{items, next_starting_after}``; ``limit`` 1-100 (audit logs 1-1000), anything
  else 400 with Fastify/AJV wording; no documented default (10 here); ``starting_after`` = "the ID
  of the last item in the previous page", items strictly after it in the listing's order — so
  an item deleted between pages does not break the cursor;
* :attr:`PublicInstantly.last_cursor` — what the last page carries: ``"absent"``, ``"null"``,
  ``"empty"`` or ``"id"`` (the last id, as the starter kit warns; the next page is then empty);
* :attr:`PublicInstantly.order` per listing: ``"asc"`` or ``"desc"`` by id (the audit log's order
  is undocumented);
* :meth:`PublicInstantly.answer` — scripted one-shot answers for a path (429 with or without
  ``Retry-After``, 5xx with an HTML body, 401/403 bodies, a slow answer);
* :attr:`PublicInstantly.between_pages` — a hook run before every page after the first, to
  insert or delete items mid-listing.

Records are whatever the test puts in :attr:`lists`, :attr:`audit` and :attr:`workspace`, so
optional fields can be absent or null, enums unknown, timestamps in any RFC 3339 spelling — or an
item no object at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes import FakeServer

REASONS = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
           404: "Not Found", 429: "Too Many Requests"}  # fmt: skip
LIST_MAX = {"audit-logs": 1000}
"""The documented ``limit`` maximum per listing (every other listing: 100)."""
DEFAULT_LIMIT = 10


@dataclass
class Answer:
    """One scripted answer: ``status`` with a JSON ``body`` (the error envelope when ``None``) or raw ``text``."""

    status: int
    body: Any = None
    text: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_secs: float = 0.0


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    tail: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = 0.0
    """When it arrived, on :attr:`PublicInstantly.now`'s clock."""


class PublicInstantly(FakeServer):
    """The fake; mutate :attr:`lists`, :attr:`audit`, :attr:`workspace` between polls."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.workspace: dict[str, Any] = {}
        self.lists: dict[str, list[dict[str, Any]]] = {}
        """Listing tail (``api-keys``, ``workspace-members``, ...) → items."""
        self.audit: list[Any] = []
        """Audit records (anything: a test may serve an item that is no object)."""
        self.order: dict[str, Literal["asc", "desc"]] = {}
        self.order_by: dict[str, str] = {}
        """Listing tail → a field the listing is sorted by, newest first (``timestamp_updated``), instead
        of the id: ``starting_after`` then continues after the cursor item's current place, so an
        item updated between two pages moves to the top and out of this listing."""
        self.last_cursor: Literal["absent", "null", "empty", "id"] = "absent"
        self.script: dict[str, list[Answer]] = {}
        self.between_pages: Callable[[str, dict[str, str]], None] | None = None
        self.seen: list[Seen] = []
        self.now: Callable[[], float] = time.monotonic
        """The clock requests are stamped with (a test's fake clock)."""

    def answer(self, tail: str, *answers: Answer) -> None:
        """Answer the next requests to ``tail`` with ``answers``, in order, before serving it normally."""
        self.script.setdefault(tail, []).extend(answers)

    def requests_to(self, tail: str) -> list[Seen]:
        """The requests received for ``tail``."""
        return [s for s in self.seen if s.tail == tail]

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_route("GET", "/api/v2/{tail:.*}", self._handle)
        return app

    @staticmethod
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        """The documented error body."""
        body = {"statusCode": status, "error": REASONS.get(status, "Error"), "message": message}
        return web.json_response(body, status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        self.seen.append(Seen(request.method, tail, dict(request.query), dict(request.headers), self.now()))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return self.error(401, "Invalid authorization header")
        queued = self.script.get(tail)
        if queued:
            a = queued.pop(0)
            if a.delay_secs:
                await asyncio.sleep(a.delay_secs)
            if a.text is not None:
                return web.Response(status=a.status, text=a.text, content_type=a.content_type, headers=a.headers)
            if a.body is None and a.status >= 400:
                return self.error(a.status, REASONS.get(a.status, "Error"), a.headers)
            return web.json_response(a.body, status=a.status, headers=a.headers)
        if tail == "workspaces/current":
            return web.json_response(self.workspace)
        if tail == "audit-logs":
            return self._page(tail, self.audit, request.query)
        if tail in self.lists:
            return self._page(tail, self.lists[tail], request.query)
        return self.error(404, "Resource not found")

    def _page(self, tail: str, items: list[Any], query: Any) -> web.Response:
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return self.error(400, "querystring/limit must be integer")
        top = LIST_MAX.get(tail, 100)
        if not 1 <= limit <= top:
            bound = f"<= {top}" if limit > top else ">= 1"
            return self.error(400, f"querystring/limit must be {bound}")
        after = query.get("starting_after")
        if after is not None and self.between_pages is not None:
            self.between_pages(tail, dict(query))
        desc = self.order.get(tail, "asc") == "desc"
        by = self.order_by.get(tail)
        if by is not None:
            ordered = sorted(items, key=lambda r: str(r.get(by, "")), reverse=True)
            ids = [_id(r) for r in ordered]
            if after is not None:
                ordered = ordered[ids.index(after) + 1 :] if after in ids else ordered
        else:
            ordered = sorted(items, key=_id, reverse=desc)
            if after is not None:
                ordered = [r for r in ordered if (_id(r) < after if desc else _id(r) > after)]
        page = ordered[:limit]
        out: dict[str, Any] = {"items": page}
        if len(ordered) > limit:
            out["next_starting_after"] = _id(page[-1])
        elif self.last_cursor == "null":
            out["next_starting_after"] = None
        elif self.last_cursor == "empty":
            out["next_starting_after"] = ""
        elif self.last_cursor == "id" and page:
            out["next_starting_after"] = _id(page[-1])
        return web.json_response(out)


def _id(item: Any) -> str:
    """An item's id as the listing orders it (an item that is no object, or has no id, sorts first)."""
    return str(item.get("id", "")) if isinstance(item, dict) else ""
