"""The aiohttp application: request pipeline around the handlers in :mod:`.routes`.

For every ``/api/v2`` call, in order: fault decision (latency, injected status) → bearer
authentication (401) → ``x-as-workspace`` (403) → per-workspace rate limit (429) →
paid plan (402) → scope (403) → body parsing (400/415) → handler → optional page
mangling. Unknown routes answer Fastify's 404 body. Every response is logged to ``calls``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from .auth import acting_workspace, authenticate, require_scope
from .clock import Clock
from .config import SimConfig
from .errors import MSG_INVALID_AUTH, MSG_NO_PLAN, MSG_RATE_LIMITED, MSG_SERVER_ERROR, ApiError, error_body
from .faults import FaultDecision, Faults
from .models import ApiKey, Workspace
from .ratelimit import RateLimiter
from .routes import ROUTES, Ctx, Route
from .state import SimState

API_PREFIX = "/api/v2"
_JSON_TYPE = "application/json; charset=utf-8"

AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Call(NamedTuple):
    """One request the simulator answered."""

    method: str
    path: str
    status: int
    workspace_id: str | None
    time: float


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response with Fastify's content type."""
    return web.Response(body=orjson.dumps(body), status=status, headers={"Content-Type": _JSON_TYPE})


def error_response(status: int, message: str) -> web.Response:
    """An error in the documented three-field envelope."""
    return json_response(error_body(status, message), status)


class SimApp:
    """Builds the aiohttp application over shared state, config, faults and limiter."""

    def __init__(
        self,
        state: SimState,
        config: SimConfig,
        faults: Faults,
        limiter: RateLimiter,
        calls: list[Call],
        clock: Clock,
    ):
        self.state, self.config, self.faults, self.limiter = state, config, faults, limiter
        self.calls, self.clock = calls, clock

    def build(self) -> web.Application:
        """The application with every route of :data:`.routes.ROUTES`."""
        app = web.Application(middlewares=[self._log_calls])
        for route in ROUTES:
            app.router.add_route(route.method, API_PREFIX + route.path, self._endpoint(route))
        return app

    @web.middleware
    async def _log_calls(self, request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response = error_response(404, f"Route {request.method}:{request.path_qs} not found")
            self._log(request, response, None)
            return response

    def _log(self, request: web.Request, response: web.StreamResponse, workspace_id: str | None) -> None:
        self.calls.append(Call(request.method, request.path, response.status, workspace_id, self.clock()))

    def _endpoint(self, route: Route) -> AiohttpHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            decision = self.faults.decide(request.path)
            if decision.latency > 0:
                await asyncio.sleep(decision.latency)
            workspace_id: str | None = None
            try:
                if decision.status is not None:
                    raise _injected(decision.status)
                key = authenticate(self.state, request.headers.get("Authorization"))
                workspace = acting_workspace(self.state, key, request.headers.get("x-as-workspace"))
                workspace_id = workspace.id
                body = route.handler(await self._context(request, route, key, workspace))
                response = _mangled(body, decision) if decision.malformed else json_response(body)
            except ApiError as err:
                response = json_response(err.body(), err.status)
            self._log(request, response, workspace_id)
            return response

        return handle

    async def _context(self, request: web.Request, route: Route, key: ApiKey, workspace: Workspace) -> Ctx:
        if not self.limiter.allow(workspace.id):
            raise ApiError(429, MSG_RATE_LIMITED)
        if not workspace.has_paid_plan:
            raise ApiError(402, MSG_NO_PLAN)
        if route.scope_listed or self.config.enforce_unlisted_scopes:
            require_scope(key, *route.scope)
        body = await self._read_body(request)
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
        actor = self.state.actor_for_key(
            key, forwarded or request.remote or "127.0.0.1", request.headers.get("User-Agent")
        )
        return Ctx(self.state, self.config, key, workspace, actor, request.query, request.match_info, body)

    async def _read_body(self, request: web.Request) -> Any:
        raw = await request.read()
        declared = request.headers.get("Content-Type")
        is_json = declared is not None and request.content_type == "application/json"
        if not raw:
            if is_json and self.config.empty_json_body_error:
                raise ApiError(400, "Body cannot be empty when content-type is set to 'application/json'")
            return None
        if not is_json:
            raise ApiError(415, f"Unsupported Media Type: {declared or ''}".rstrip())
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "Body is not valid JSON") from None


def _injected(status: int) -> ApiError:
    if status == 401:
        return ApiError(401, MSG_INVALID_AUTH)
    if status == 429:
        return ApiError(429, MSG_RATE_LIMITED)
    return ApiError(status, MSG_SERVER_ERROR)


def _mangled(body: Any, decision: FaultDecision) -> web.Response:
    if not isinstance(body, dict) or "items" not in body:
        return json_response(body)
    if decision.malformed == "missing_items":
        return json_response({k: v for k, v in body.items() if k != "items"})
    raw = orjson.dumps(body)
    return web.Response(body=raw[: max(1, len(raw) // 2)], status=200, headers={"Content-Type": _JSON_TYPE})
