"""The one aiohttp client for Instantly API v2 (one ``ClientSession`` per workspace).

* Headers: ``Authorization: Bearer <key>``, ``Accept: application/json``, an explicit
  ``User-Agent: instantly-audit/<version>`` (Cloudflare may refuse requests without one) and
  ``x-as-workspace`` when acting on an agency sub-workspace.
* Errors map onto :mod:`pipeline.errors`: 401 :class:`AuthError`, 402
  :class:`PaymentRequiredError`, 403 :class:`ScopeError`, 404 :class:`NotFoundError`, 429
  :class:`RateLimitedError`, 5xx / timeouts / connection errors / malformed bodies
  :class:`UpstreamError`. Messages carry the method, path, status and the server's
  ``{statusCode, error, message}`` text — never a header or the key. aiohttp exceptions are
  converted outside their ``except`` block, so they are neither chained nor kept as context
  (aiohttp puts request headers, including ``Authorization``, into some of its errors).
* ``base_url`` is the server root; a configured ``https://api.instantly.ai/api/v2`` (how most
  integrations spell the base URL) works too (:func:`~connectors.instantly.api.api_root`).
* Reads retry 429, 5xx, timeouts and malformed bodies with exponential backoff and full
  jitter (``uniform(0, min(cap, base * 2**attempt))``, at least the wait the answer asks for:
  ``Retry-After`` in seconds or as an HTTP-date, else a ``RateLimit-Reset`` /
  ``X-RateLimit-Reset`` header — Instantly documents none, so none is needed) up
  to ``max_retries``; 401/402/403/404 are never retried. Writes are not idempotent on
  Instantly, so they are retried only after a 429 (the request was refused, not processed).
* Every attempt first takes a token from the workspace's :class:`RequestBudget`. A ``Retry-After``
  (or reset header) on a 429/5xx is waited out before the retry; when the request gives up with
  one, it holds the whole budget that long (:meth:`RequestBudget.hold`), so no request of the
  workspace is sent before it passes. One longer than ``backoff_max_secs`` is not waited out
  inside a poll: the request fails with :class:`RateLimitedError` at once, and so does every call
  until the hold ends, without sending anything.
* A request that fails as unreachable (timeout, connection refused or reset, DNS: an
  :class:`UnreachableError`) after its retries marks the workspace unreachable: every later call
  fails at once with the same error, sending nothing, until :meth:`InstantlyClient.new_poll`
  (the poller calls it at the start of each poll). A host that accepts connections but never
  answers so costs one request's retries per poll, not every stream's. A timeout once the host
  has answered something in the poll is one slow endpoint (a large audit page), not an
  unreachable host: it fails only its own call, and a second timeout in the poll marks the
  workspace unreachable (a host that stopped answering mid-poll costs two requests' retries).
* The retry log line names the workspace (``source``: the config alias, ``workspace``: its id
  once known) and a plain ``cause`` (``HTTP 503``, ``timeout``, ``connection refused``, ``DNS``…);
  never a URL query, a header or a body.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from connectors.instantly.api import GROUP_ADMIN_PATH, WORKSPACE, api_root
from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.responses import (
    ClientRequestError,
    decode_body,
    error_for,
    require_admin_answer,
    require_item_list,
    require_items,
    require_object,
    require_workspace,
    retry_after_from,
)
from pipeline import __version__
from pipeline.errors import AuthError, RateLimitedError, SourceError, UpstreamError
from pipeline.observability.logs import get_logger
from pipeline.observability.telemetry import Telemetry, get_telemetry

__all__ = [
    "USER_AGENT",
    "ClientRequestError",
    "InstantlyClient",
    "SessionFactory",
    "TransportError",
    "UnreachableError",
    "cause_of",
]

log = get_logger("instantly.client")

USER_AGENT = f"instantly-audit/{__version__}"
SessionFactory = Callable[[], aiohttp.ClientSession]
Sleep = Callable[[float], Awaitable[None]]
JSONDict = dict[str, Any]
OBJECT_CHECKS: Mapping[str, Callable[[str, Any], None]] = {
    WORKSPACE.path: require_workspace,
    GROUP_ADMIN_PATH: require_admin_answer,
}
"""The single objects :meth:`InstantlyClient.get` checks beyond "a JSON object": a 200 whose body is
an error (API reference §1.3) must fail like a 5xx, never be diffed as the resource."""


class TransportError(UpstreamError):
    """The request got no HTTP answer; ``cause`` says why in plain words (``disconnected``, …)."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


class UnreachableError(TransportError):
    """The server could not be reached: the request timed out, the connection was refused or
    failed, DNS failed, or TLS did (``cause``: ``timeout``, ``connection refused``,
    ``connection failed``, ``DNS``, ``TLS``)."""


def cause_of(err: SourceError) -> str:
    """A plain cause for logs and pipeline events: ``HTTP 503``, ``timeout``, ``connection refused``,
    ``DNS``, …; ``malformed response`` or the error class otherwise (never a URL, a header or a body)."""
    if isinstance(err, TransportError):
        return err.cause
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    if isinstance(err, UpstreamError):
        return "malformed response"
    return type(err).__name__


def _transport_error(method: str, path: str, err: BaseException) -> TransportError:
    """The secret-free error for an aiohttp failure: :class:`UnreachableError` when the server could
    not be reached at all, else a :class:`TransportError` (it answered something, then failed)."""
    name = type(err).__name__
    if isinstance(err, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError too
        return UnreachableError(f"{method} {path}: request timed out ({name})", "timeout")
    if isinstance(err, aiohttp.ClientConnectorError):
        if isinstance(err, aiohttp.ClientConnectorDNSError):
            cause = "DNS"
        elif isinstance(err, aiohttp.ClientSSLError):
            cause = "TLS"
        elif isinstance(err.os_error, ConnectionRefusedError):
            cause = "connection refused"
        else:
            cause = "connection failed"
        return UnreachableError(f"{method} {path}: request failed ({name})", cause)
    cause = "disconnected" if isinstance(err, aiohttp.ClientConnectionError) else "bad response"
    return TransportError(f"{method} {path}: request failed ({name})", cause)


def _query(params: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (params or {}).items():
        if v is None:
            continue
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


class InstantlyClient:
    """Async client for one workspace; use as ``async with InstantlyClient(cfg) as client``."""

    def __init__(
        self,
        cfg: WorkspaceConfig,
        *,
        budget: RequestBudget | None = None,
        session_factory: SessionFactory | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff_base_secs: float = 0.5,
        backoff_max_secs: float = 60.0,
        max_pages: int = 10_000,
        source_id: str = "",
        telemetry: Telemetry | None = None,
    ):
        self._api_key = cfg.api_key
        self._as_workspace = cfg.as_workspace
        self.base_url = api_root(cfg.base_url)
        """The server root (a configured ``…/api/v2`` suffix removed: every path carries it)."""
        self.max_retries = cfg.max_retries
        self._timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_secs)
        self.budget = budget or RequestBudget.from_config(cfg.budget)
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._sleep = sleep
        self.backoff_base_secs = backoff_base_secs
        self.backoff_max_secs = backoff_max_secs
        self.max_pages = max_pages
        self.requests = 0
        """Requests sent (every attempt counts)."""
        self.retries = 0
        """Attempts that were retried."""
        self.source_id = source_id
        """The config key of the workspace (``component.id`` of the retry metric)."""
        self.config_alias = source_id.removesuffix(f"--{cfg.as_workspace}") if cfg.as_workspace else source_id
        """The ``workspaces`` key whose settings this client uses (a discovered sub-workspace,
        ``<alias>--<sub id>``, uses its agency's key and base_url)."""
        self.workspace_id = cfg.as_workspace or ""
        """The ``workspace_id`` label of the request metrics (the poller sets it once the id is known);
        the ``workspace`` label is ``source_id``, the config alias."""
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        """Where the request and retry metrics go (default: the process's telemetry when built)."""
        self.unreachable: UnreachableError | None = None
        """Set when a request failed as unreachable after its retries: every call fails at once with
        it, sending nothing, until :meth:`new_poll`."""
        self._answered = False
        """Some request of this poll got an HTTP answer (the host is reachable)."""
        self._timed_out = False
        """A request of this poll timed out after its retries although the host had answered."""

    def new_poll(self) -> None:
        """Start a poll: try the server again even if it was unreachable in the last one."""
        self.unreachable = None
        self._answered = self._timed_out = False

    def _mark_unreachable(self, err: UnreachableError) -> None:
        """Fail the rest of the poll with ``err`` — unless it is the first timeout of a poll in which
        the host answered: that is one slow endpoint, not an unreachable host."""
        if err.cause == "timeout" and self._answered and not self._timed_out:
            self._timed_out = True
            return
        self.unreachable = err

    def __repr__(self) -> str:
        return f"InstantlyClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> InstantlyClient:
        if self._session is None:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ---- reads ----------------------------------------------------------------------------
    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> JSONDict:
        """GET ``path`` and return its JSON object, retrying transient failures.

        Raises:
            AuthError, PaymentRequiredError, ScopeError, NotFoundError: 401/402/403/404.
            RateLimitedError: still 429 after ``max_retries`` retries.
            UpstreamError: 5xx, timeout, connection error or a body that is not a JSON object — or,
                for the single objects of :data:`OBJECT_CHECKS`, not that object (a 200 with an
                error in the body).
            ClientRequestError: another 4xx.
        """
        validate = OBJECT_CHECKS.get(path, require_object)
        value = await self._call("GET", path, params=params, validate=validate, retry_writes=False)
        assert isinstance(value, dict)
        return value

    async def paginate(
        self, path: str, params: Mapping[str, Any] | None = None, limit: int = 100, *, objects_only: bool = True
    ) -> AsyncGenerator[list[JSONDict], None]:
        """Yield the ``items`` of each page, following ``next_starting_after`` as ``starting_after``.

        Stops after an empty page or when the cursor is absent or empty (the last page may
        still carry one; the next page is then empty). Each item (by its ``id``) is yielded once.
        A page bringing no item not seen before, or a cursor already followed, after a *short*
        page (fewer than ``limit`` items: the listing could end there) ends the listing with a
        warning: Instantly's own documented examples answer every page with the same fixed cursor,
        so a server doing that is read as a one-page listing rather than refused. After a *full*
        page the same repetition means the rest of the listing was not delivered: that raises,
        because a snapshot diffed against a cut-short listing reads as mass deletions.

        ``objects_only=False`` passes items that are no JSON object through (each counts as new) for
        the caller to turn into dead letters, instead of refusing their page.

        Raises:
            UpstreamError: a page has no ``items`` list (or, with ``objects_only``, one that holds a
                non-object), a full page was followed by a repeated
                page or cursor, or more than ``max_pages`` pages were read; plus everything
                :meth:`get` raises.
        """
        query = dict(params or {})
        query["limit"] = limit
        followed: set[str] = set()
        ids: set[str] = set()
        full = False  # the page whose cursor led here held `limit` items: more may follow
        for _ in range(self.max_pages):
            validate = require_items if objects_only else require_item_list
            page = await self._call("GET", path, params=query, validate=validate, retry_writes=False)
            assert isinstance(page, dict)
            items: list[JSONDict] = page["items"]
            if not items:
                return
            fresh = [i for i in items if not _seen(ids, i)]
            if not fresh:
                self._repeated(path, "page", len(ids), incomplete=full)
                return
            yield fresh
            full = len(items) >= limit
            cursor = page.get("next_starting_after")
            if not isinstance(cursor, str) or not cursor:
                return
            if cursor in followed:
                self._repeated(path, "cursor", len(ids), incomplete=full)
                return
            followed.add(cursor)
            query["starting_after"] = cursor
        raise UpstreamError(f"GET {path}: more than {self.max_pages} pages; listing abandoned")

    @staticmethod
    def _repeated(path: str, what: str, seen: int, *, incomplete: bool) -> None:
        """A repeated page or cursor: the end of a listing after a short page, an error after a full one.

        Raises:
            UpstreamError: ``incomplete``.
        """
        if incomplete:
            raise UpstreamError(
                f"GET {path}: the server repeated a {what} after a full page ({seen} items so far); "
                "the rest of the listing was not delivered, so this listing is abandoned"
            )
        log.warning(
            f"Instantly pagination repeated a {what}; the listing ends here.", extra={"path": path, "items": seen}
        )

    async def get_all(self, path: str, params: Mapping[str, Any] | None = None, limit: int = 100) -> list[JSONDict]:
        """Every item of a paginated listing (all pages or an error — never a partial list).

        Raises:
            SourceError: as :meth:`paginate`.
        """
        out: list[JSONDict] = []
        async with aclosing(self.paginate(path, params, limit)) as pages:
            async for items in pages:
                out.extend(items)
        return out

    # ---- writes (key rotation) --------------------------------------------------------------
    async def post(self, path: str, json: Any = None) -> Any:
        """POST a JSON body (or none); return the decoded response (``None`` when empty).

        Raises:
            SourceError: as :meth:`get`; only 429 is retried.
        """
        return await self._call("POST", path, json=json, retry_writes=True)

    async def patch(self, path: str, json: Mapping[str, Any]) -> Any:
        """PATCH with a JSON body; return the decoded response.

        Raises:
            SourceError: as :meth:`get`; only 429 is retried.
        """
        return await self._call("PATCH", path, json=dict(json), retry_writes=True)

    async def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """DELETE (no body); Instantly answers 200 with the deleted object.

        Raises:
            SourceError: as :meth:`get`; only 429 is retried.
        """
        return await self._call("DELETE", path, params=params, retry_writes=True)

    # ---- internals --------------------------------------------------------------------------
    def _headers(self, with_body: bool) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self._as_workspace:
            headers["x-as-workspace"] = self._as_workspace
        if with_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _hint(self, err: SourceError) -> str | None:
        """Where to look for a refused key or an unreachable server: the host and the config key."""
        where = f"workspaces.{self.config_alias or '<alias>'}"
        if isinstance(err, AuthError):
            return f"Instantly refused the API key ({where}.api_key, or the variable or file it names)"
        if not isinstance(err, UnreachableError):
            return None
        url = urlsplit(self.base_url)  # no credentials: the config refuses them in base_url
        host = url.netloc or self.base_url
        what = {
            "DNS": f"cannot resolve the host {url.hostname or host}",
            "connection refused": f"{host} refused the connection",
            "TLS": f"the TLS handshake with {host} failed",
            "timeout": f"{host} did not answer in time",
        }.get(err.cause, f"cannot reach {host}")
        return f"{what} ({where}.base_url)"

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter delay before retry number ``attempt + 1`` (at least ``Retry-After`` if given)."""
        cap = min(self.backoff_max_secs, self.backoff_base_secs * (2**attempt))
        delay = self._rng.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_secs))
        return delay

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        validate: Callable[[str, Any], None] | None = None,
        retry_writes: bool,
    ) -> Any:
        if self.unreachable is not None:
            skipped = UnreachableError(
                f"{method} {path}: not sent: the server was unreachable earlier in this poll "
                f"({self.unreachable.cause})",
                self.unreachable.cause,
            )
            skipped.hint = self.unreachable.hint
            raise skipped
        held = self.budget.held_for()
        if held > self.backoff_max_secs:
            raise RateLimitedError(
                f"{method} {path}: not sent: Instantly asked to wait {held:.0f} s more (Retry-After)",
                status=429,
                retry_after=held,
            )
        attempt = 0
        while True:
            waited = await self.budget.acquire()
            if waited > 0:
                self.telemetry.api_budget_wait(self.workspace_id, waited, workspace=self.source_id)
            status: int | None = None
            try:
                status, raw, retry_after = await self._send(method, path, params, json)
                if status >= 300:
                    raise error_for(method, path, status, raw, retry_after, secrets=[self._api_key.get_secret_value()])
                value = decode_body(method, path, status, raw)
                if validate is not None:
                    validate(f"{method} {path}", value)
                return value
            except SourceError as err:
                retriable = isinstance(err, RateLimitedError) if retry_writes else err.retriable
                wait = err.retry_after if status is not None else None
                if wait is not None and wait > self.backoff_max_secs:
                    retriable = False
                if not retriable or attempt >= self.max_retries:
                    if wait is not None:  # the retry's own sleep honours it; giving up, every later call must
                        self.budget.hold(wait)
                    err.hint = err.hint or self._hint(err)
                    if isinstance(err, UnreachableError):
                        self._mark_unreachable(err)
                    raise
                delay = self.backoff_delay(attempt, err.retry_after)
                log.warning(
                    "Instantly request failed; retrying.",
                    extra={
                        "source": self.source_id,
                        "workspace": self.workspace_id or self.source_id,
                        "method": method,
                        "path": path,
                        "error": type(err).__name__,
                        "cause": cause_of(err),
                        "attempt": attempt + 1,
                        "delay_secs": round(delay, 3),
                    },
                )
                self.telemetry.retries(self.source_id, _retry_reason(status, err), kind="source")
            self.retries += 1
            attempt += 1
            await self._sleep(delay)

    async def _send(
        self, method: str, path: str, params: Mapping[str, Any] | None, json: Any
    ) -> tuple[int, bytes, float | None]:
        if self._session is None:
            raise RuntimeError("InstantlyClient is not open; use 'async with'")
        body = None if json is None else orjson.dumps(json)
        failure: SourceError | None = None
        self.requests += 1
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                params=_query(params),
                data=body,
                headers=self._headers(body is not None),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = retry_after_from(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as err:
            failure = _transport_error(method, path, err)
        except ValueError as err:
            # aiohttp refuses to build the request: a header value with a control character (the
            # API key) or a URL it cannot send. Its message quotes the value: only the class is kept,
            # and the error is not retriable (the same request would be refused again).
            failure = SourceError(
                f"{method} {path}: request not sent: the base_url or the API key is malformed "
                f"({type(err).__name__}; check workspaces.<alias>.base_url and the key's env var or file)",
                retriable=False,
            )
        tel, wid, alias = self.telemetry, self.workspace_id, self.source_id
        if failure is None:
            self._answered = True
            tel.api_requests(wid, status, workspace=alias)
            if status == 429:
                tel.api_rate_limited(wid, workspace=alias)
            return status, raw, retry_after
        tel.api_requests(wid, 0, workspace=alias)
        # Raised outside the except block: the aiohttp error is neither the cause nor the context.
        raise failure


def _retry_reason(status: int | None, err: SourceError) -> str:
    """The ``reason`` label of a retry: ``http_<status>``, ``timeout``, ``connection`` or ``malformed``."""
    if status is None:
        return "timeout" if "timed out" in err.message else "connection"
    return f"http_{status}" if status >= 300 else "malformed"


def _seen(ids: set[str], item: Any) -> bool:
    """Whether ``item``'s string ``id`` (accounts: its lower-cased ``email``) was already listed; records it.
    Items without either, or that are no object, count as new."""
    if not isinstance(item, dict):
        return False
    i = item.get("id")
    if not isinstance(i, str):
        email = item.get("email")
        if not isinstance(email, str) or not email:
            return False
        i = f"email:{email.strip().lower()}"
    if i in ids:
        return True
    ids.add(i)
    return False
