"""Handlers of the simulated ``/api/v2`` endpoints and the route table with their scopes.

A handler gets a :class:`Ctx` (the authenticated key, the acting workspace, query,
path parameters and parsed body) and returns the JSON-able response body; errors are
raised as :class:`~.errors.ApiError`. Authentication, rate limiting, the paid-plan check
and the scope check happen before, in :mod:`.app`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pipeline.clock import parse_time

from . import catalog
from .config import SimConfig
from .errors import bad_request, not_found
from .models import JSON, Actor, ApiKey, AuditRecord, Workspace
from .pagination import envelope, paginate
from .state import SimState
from .validation import Field, Schema, query_bool, query_enum, query_int, validate_body


@dataclass(frozen=True)
class Ctx:
    """Everything a handler may use about one authenticated request."""

    state: SimState
    config: SimConfig
    key: ApiKey
    workspace: Workspace
    actor: Actor
    query: Mapping[str, str]
    params: Mapping[str, str]
    body: Any

    @property
    def ws(self) -> str:
        """The acting workspace id."""
        return self.workspace.id

    def limit(self, maximum: int = 100) -> int:
        """The validated ``limit`` query parameter."""
        return query_int(self.query, "limit", 1, maximum, min(self.config.default_limit, maximum))

    def page(self, items: Any, render: Callable[[Any], JSON], *, maximum: int = 100, **kw: Any) -> JSON:
        """Paginate ``items`` by id and render the envelope."""
        cursor_of = kw.pop("cursor_of", _id_of)
        page, nxt = paginate(
            items,
            cursor_of,
            self.query.get("starting_after"),
            self.limit(maximum),
            trailing_cursor=self.config.trailing_cursor,
            **kw,
        )
        return envelope([render(item) for item in page], nxt)


Handler = Callable[[Ctx], Any]


@dataclass(frozen=True)
class Route:
    """One endpoint: method, path under ``/api/v2``, handler and required ``(resource, action)``.

    ``scope_listed`` is False where the spec lists no scope (enforced only when
    :attr:`SimConfig.enforce_unlisted_scopes` is set).
    """

    method: str
    path: str
    handler: Handler
    scope: tuple[str, str]
    scope_listed: bool = True


def _id_of(obj: Any) -> str:
    return str(obj.id)


_S = Field("string")
_S_NULL = Field("string", nullable=True)

API_KEY_CREATE = Schema({"name": _S, "scopes": Field("string_array", enum=catalog.SCOPES)}, ("name", "scopes"))
MEMBER_CREATE = Schema(
    {
        "email": Field("string", format="email"),
        "role": Field("string", enum=catalog.ROLES),
        "user_email": _S_NULL,
        "nickname": Field("string", nullable=True, max_length=80),
        "permissions": Field("string_array", nullable=True, enum=catalog.PERMISSIONS),
    },
    ("email", "role"),
)
MEMBER_PATCH = Schema(
    {"role": Field("string", enum=catalog.ROLES), "nickname": Field("string", nullable=True, max_length=80)},
    min_properties=1,
)
WORKSPACE_PATCH = Schema({"name": _S, "org_logo_url": _S_NULL}, min_properties=1)
CHANGE_OWNER = Schema({"email": Field("string", format="email"), "sec": _S}, ("email", "sec"))
GROUP_MEMBER_CREATE = Schema({"sub_workspace_id": Field("string", format="uuid")}, ("sub_workspace_id",))
_WEBHOOK_FIELDS = {
    "target_hook_url": Field("string", pattern="^https?://"),
    "campaign": Field("string", nullable=True, format="uuid"),
    "name": _S_NULL,
    "event_type": Field("string", nullable=True, enum=catalog.WEBHOOK_EVENT_TYPES),
    "custom_interest_value": Field("number", nullable=True),
    "headers": Field("string_map", nullable=True),
}
WEBHOOK_CREATE = Schema(_WEBHOOK_FIELDS, ("target_hook_url",))
WEBHOOK_PATCH = Schema(_WEBHOOK_FIELDS, min_properties=1)
BLOCK_LIST_CREATE = Schema({"bl_value": _S}, ("bl_value",))


# ---- audit logs -----------------------------------------------------------------------------


def list_audit_logs(ctx: Ctx) -> JSON:
    """``GET /audit-logs``: by id, ascending or newest first (:attr:`SimConfig.audit_order`); filters on
    ``timestamp``, type and text."""
    q = ctx.query
    activity = q.get("activity_type")
    if activity is not None and not activity.lstrip("-").isdigit():
        raise bad_request("querystring/activity_type must be number")
    start = _date_param(q, "start_date", end=False)
    end = _date_param(q, "end_date", end=True)
    needle = (q.get("search") or "").lower()

    def keep(r: AuditRecord) -> bool:
        if activity is not None and r.activity_type != int(activity):
            return False
        if (start is not None and r.timestamp < start) or (end is not None and r.timestamp > end):
            return False
        return not needle or needle in _audit_text(r)

    descending = ctx.config.audit_order == "desc"
    return ctx.page(ctx.state.audit_of(ctx.ws), AuditRecord.to_json, maximum=1000, keep=keep, descending=descending)


def _audit_text(r: AuditRecord) -> str:
    label = catalog.ACTIVITY_TYPES.get(r.activity_type, "")
    parts = (label, r.actor.user_name, r.actor.ip_address, r.actor.user_agent)
    return " ".join(p for p in parts if p).lower()


def _date_param(q: Mapping[str, str], name: str, *, end: bool) -> float | None:
    """A date (whole UTC day, inclusive) or an ISO date-time (exact bound)."""
    raw = q.get(name)
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            day = datetime.combine(date.fromisoformat(raw), datetime.min.time(), tzinfo=UTC)
            return (day + timedelta(days=1)).timestamp() - 0.001 if end else day.timestamp()
        return parse_time(raw)
    except ValueError:
        raise bad_request(f'querystring/{name} must match format "date"') from None


# ---- API keys -------------------------------------------------------------------------------


def list_api_keys(ctx: Ctx) -> JSON:
    """``GET /api-keys``; ``key`` per :attr:`SimConfig.key_value_mode`."""
    mode = ctx.config.key_value_mode
    return ctx.page(ctx.state.api_keys_of(ctx.ws), lambda k: k.to_json(mode))


def create_api_key(ctx: Ctx) -> JSON:
    """``POST /api-keys``: the only response that always shows the full secret. Audit 37."""
    body = validate_body(API_KEY_CREATE, ctx.body)
    return ctx.state.create_api_key(ctx.ws, body["name"], body["scopes"], actor=ctx.actor).to_json("full")


def delete_api_key(ctx: Ctx) -> JSON:
    """``DELETE /api-keys/{id}``: the key stops working at once. Audit 38."""
    key = ctx.state.api_key(ctx.params["id"])
    if key.workspace_id != ctx.ws:
        raise not_found()
    return ctx.state.delete_api_key(key.id, actor=ctx.actor).to_json(ctx.config.key_value_mode)


# ---- workspace members ----------------------------------------------------------------------


def list_members(ctx: Ctx) -> JSON:
    """``GET /workspace-members`` with ``accepted`` and ``search`` (name or email) filters."""
    accepted = query_bool(ctx.query, "accepted")
    needle = (ctx.query.get("search") or "").lower()

    def keep(m: Any) -> bool:
        text = f"{m.email} {m.first_name} {m.last_name}".lower()
        return (accepted is None or m.accepted == accepted) and needle in text

    return ctx.page(ctx.state.members_of(ctx.ws), lambda m: m.to_json(), keep=keep)


def create_member(ctx: Ctx) -> JSON:
    """``POST /workspace-members``: sends an invitation (``accepted: false``)."""
    body = validate_body(MEMBER_CREATE, ctx.body)
    extra = {k: body[k] for k in ("nickname", "permissions", "user_email") if k in body}
    member = ctx.state.invite_member(ctx.ws, body["email"], body["role"], issuer_id=ctx.actor.user_id, **extra)
    return member.to_json()


def get_member(ctx: Ctx) -> JSON:
    """``GET /workspace-members/{id}``."""
    return ctx.state.member(ctx.params["id"], ctx.ws).to_json()


def patch_member(ctx: Ctx) -> JSON:
    """``PATCH /workspace-members/{id}``: ``role`` and/or ``nickname``."""
    body = validate_body(MEMBER_PATCH, ctx.body)
    member = ctx.state.member(ctx.params["id"], ctx.ws)
    return ctx.state.update_member(member.id, body).to_json()


def delete_member(ctx: Ctx) -> JSON:
    """``DELETE /workspace-members/{id}``."""
    member = ctx.state.member(ctx.params["id"], ctx.ws)
    return ctx.state.delete_member(member.id).to_json()


# ---- current workspace ----------------------------------------------------------------------


def get_workspace(ctx: Ctx) -> JSON:
    """``GET /workspaces/current``."""
    return ctx.workspace.to_json()


def patch_workspace(ctx: Ctx) -> JSON:
    """``PATCH /workspaces/current``: ``name``, ``org_logo_url``."""
    return ctx.state.update_workspace(ctx.ws, validate_body(WORKSPACE_PATCH, ctx.body)).to_json()


def change_owner(ctx: Ctx) -> JSON:
    """``POST /workspaces/current/change-owner`` (``sec`` is accepted as given)."""
    body = validate_body(CHANGE_OWNER, ctx.body)
    return ctx.state.change_owner(ctx.ws, body["email"]).to_json()


def schedule_removal(ctx: Ctx) -> JSON:
    """``POST /workspaces/current/schedule-for-removal``: removal in 24 h."""
    return ctx.state.schedule_removal(ctx.ws).to_json()


def cancel_removal(ctx: Ctx) -> JSON:
    """``DELETE /workspaces/current/schedule-for-removal``."""
    return ctx.state.schedule_removal(ctx.ws, cancel=True).to_json()


# ---- workspace groups -----------------------------------------------------------------------


def list_group_members(ctx: Ctx) -> JSON:
    """``GET /workspace-group-members``: this workspace's sub-workspaces (its own admin: ``/admin``)."""
    return ctx.page(ctx.state.group_members_of(ctx.ws), ctx.state.group_member_json)


def create_group_member(ctx: Ctx) -> JSON:
    """``POST /workspace-group-members``: invite a sub-workspace (``pending``)."""
    body = validate_body(GROUP_MEMBER_CREATE, ctx.body)
    sub = ctx.state.workspace(body["sub_workspace_id"])
    return ctx.state.group_member_json(ctx.state.add_group_member(ctx.ws, sub.id))


def _own_link(ctx: Ctx) -> Any:
    link = ctx.state.group_member(ctx.params["id"])
    if ctx.ws not in (link.admin_workspace_id, link.sub_workspace_id):
        raise not_found()
    return link


def get_group_member(ctx: Ctx) -> JSON:
    """``GET /workspace-group-members/{id}``."""
    return ctx.state.group_member_json(_own_link(ctx))


def delete_group_member(ctx: Ctx) -> JSON:
    """``DELETE /workspace-group-members/{id}``: remove a sub, or leave the group."""
    return ctx.state.group_member_json(ctx.state.delete_group_member(_own_link(ctx).id))


def get_admin_workspace(ctx: Ctx) -> JSON:
    """``GET /workspace-group-members/admin``: ``workspace_name`` is ``Undefined`` without one."""
    link = ctx.state.admin_link_of(ctx.ws)
    if link is None:
        return {"workspace_name": "Undefined", "has_admin_workspace": False}
    admin = ctx.state.workspace(link.admin_workspace_id)
    return {"workspace_name": admin.name, "has_admin_workspace": True, "workspace_group_member_id": link.id}


# ---- webhooks -------------------------------------------------------------------------------


def list_webhooks(ctx: Ctx) -> JSON:
    """``GET /webhooks`` with ``campaign`` and ``event_type`` filters."""
    event_type = query_enum(ctx.query, "event_type", catalog.WEBHOOK_LIST_FILTER_TYPES)
    campaign = ctx.query.get("campaign")

    def keep(w: Any) -> bool:
        return (event_type is None or w.event_type == event_type) and (campaign is None or w.campaign == campaign)

    return ctx.page(ctx.state.webhooks_of(ctx.ws), lambda w: w.to_json(), keep=keep)


def create_webhook(ctx: Ctx) -> JSON:
    """``POST /webhooks``: active (``status 1``). Audit 18."""
    body = dict(validate_body(WEBHOOK_CREATE, ctx.body))
    url = body.pop("target_hook_url")
    return ctx.state.create_webhook(ctx.ws, url, fields=body, actor=ctx.actor).to_json()


def get_webhook(ctx: Ctx) -> JSON:
    """``GET /webhooks/{id}``."""
    return ctx.state.webhook(ctx.params["id"], ctx.ws).to_json()


def patch_webhook(ctx: Ctx) -> JSON:
    """``PATCH /webhooks/{id}``. Audit 19."""
    body = validate_body(WEBHOOK_PATCH, ctx.body)
    hook = ctx.state.webhook(ctx.params["id"], ctx.ws)
    return ctx.state.update_webhook(hook.id, body, actor=ctx.actor).to_json()


def delete_webhook(ctx: Ctx) -> JSON:
    """``DELETE /webhooks/{id}``."""
    return ctx.state.delete_webhook(ctx.state.webhook(ctx.params["id"], ctx.ws).id).to_json()


def resume_webhook(ctx: Ctx) -> JSON:
    """``POST /webhooks/{id}/resume``: ``status 1``. Audit 21 if it was disabled."""
    hook = ctx.state.webhook(ctx.params["id"], ctx.ws)
    return ctx.state.resume_webhook(hook.id, actor=ctx.actor).to_json()


def list_webhook_events(ctx: Ctx) -> JSON:
    """``GET /webhook-events``: ``success``, ``from``/``to`` (dates of ``timestamp_created``, inclusive) and
    ``search`` (the exact webhook URL or lead email); by id, in :attr:`SimConfig.webhook_events_order`."""
    q = ctx.query
    success = query_bool(q, "success")
    start, end = _date_param(q, "from", end=False), _date_param(q, "to", end=True)
    needle = q.get("search")

    def keep(e: Any) -> bool:
        if (success is not None and e.success != success) or (needle and needle not in (e.webhook_url, e.lead_email)):
            return False
        return (start is None or e.timestamp_created >= start) and (end is None or e.timestamp_created <= end)

    descending = ctx.config.webhook_events_order == "desc"
    return ctx.page(ctx.state.webhook_events_of(ctx.ws), lambda e: e.to_json(), keep=keep, descending=descending)


# ---- block list -----------------------------------------------------------------------------


def list_block_list(ctx: Ctx) -> JSON:
    """``GET /block-lists-entries`` with ``domains_only`` and ``search``."""
    domains_only = query_bool(ctx.query, "domains_only")
    needle = (ctx.query.get("search") or "").lower()

    def keep(e: Any) -> bool:
        return (not domains_only or e.is_domain) and needle in e.bl_value.lower()

    return ctx.page(ctx.state.block_list_of(ctx.ws), lambda e: e.to_json(), keep=keep)


def create_block_list_entry(ctx: Ctx) -> JSON:
    """``POST /block-lists-entries``."""
    body = validate_body(BLOCK_LIST_CREATE, ctx.body)
    return ctx.state.add_block_list_entry(ctx.ws, body["bl_value"]).to_json()


def get_block_list_entry(ctx: Ctx) -> JSON:
    """``GET /block-lists-entries/{id}``."""
    return ctx.state.block_list_entry(ctx.params["id"], ctx.ws).to_json()


def delete_block_list_entry(ctx: Ctx) -> JSON:
    """``DELETE /block-lists-entries/{id}``."""
    entry = ctx.state.block_list_entry(ctx.params["id"], ctx.ws)
    return ctx.state.delete_block_list_entry(entry.id).to_json()


# ---- accounts -------------------------------------------------------------------------------


def list_accounts(ctx: Ctx) -> JSON:
    """``GET /accounts``: cursor ``timestamp_created&email`` (a bare timestamp also works)."""
    needle = (ctx.query.get("search") or "").lower()
    return ctx.page(
        ctx.state.accounts_of(ctx.ws),
        lambda a: a.to_json(),
        cursor_of=lambda a: a.cursor,
        keep=lambda a: needle in a.email.lower(),
    )


ROUTES: tuple[Route, ...] = (
    Route("GET", "/audit-logs", list_audit_logs, ("audit_logs", "read")),
    Route("GET", "/api-keys", list_api_keys, ("api_keys", "read")),
    Route("POST", "/api-keys", create_api_key, ("api_keys", "create")),
    Route("DELETE", "/api-keys/{id}", delete_api_key, ("api_keys", "delete")),
    Route("GET", "/workspace-members", list_members, ("workspace_members", "read")),
    Route("POST", "/workspace-members", create_member, ("workspace_members", "create")),
    Route("GET", "/workspace-members/{id}", get_member, ("workspace_members", "read")),
    Route("PATCH", "/workspace-members/{id}", patch_member, ("workspace_members", "update")),
    Route("DELETE", "/workspace-members/{id}", delete_member, ("workspace_members", "delete")),
    Route("GET", "/workspaces/current", get_workspace, ("workspaces", "read")),
    Route("PATCH", "/workspaces/current", patch_workspace, ("workspaces", "update")),
    Route("POST", "/workspaces/current/change-owner", change_owner, ("workspaces", "update")),
    Route("POST", "/workspaces/current/schedule-for-removal", schedule_removal, ("workspaces", "delete")),
    Route("DELETE", "/workspaces/current/schedule-for-removal", cancel_removal, ("workspaces", "delete")),
    Route("GET", "/workspace-group-members", list_group_members, ("workspace_group_members", "read")),
    Route("POST", "/workspace-group-members", create_group_member, ("workspace_group_members", "create")),
    Route(
        "GET",
        "/workspace-group-members/admin",
        get_admin_workspace,
        ("workspace_group_members", "read"),
        False,
    ),
    Route("GET", "/workspace-group-members/{id}", get_group_member, ("workspace_group_members", "read")),
    Route("DELETE", "/workspace-group-members/{id}", delete_group_member, ("workspace_group_members", "delete")),
    Route("GET", "/webhooks", list_webhooks, ("webhooks", "read"), False),
    Route("POST", "/webhooks", create_webhook, ("webhooks", "create")),
    Route("GET", "/webhooks/{id}", get_webhook, ("webhooks", "read")),
    Route("PATCH", "/webhooks/{id}", patch_webhook, ("webhooks", "update")),
    Route("DELETE", "/webhooks/{id}", delete_webhook, ("webhooks", "delete")),
    Route("POST", "/webhooks/{id}/resume", resume_webhook, ("webhooks", "update")),
    Route("GET", "/webhook-events", list_webhook_events, ("webhook_events", "read")),
    Route("GET", "/block-lists-entries", list_block_list, ("block_list_entries", "read")),
    Route("POST", "/block-lists-entries", create_block_list_entry, ("block_list_entries", "create")),
    Route("GET", "/block-lists-entries/{id}", get_block_list_entry, ("block_list_entries", "read")),
    Route("DELETE", "/block-lists-entries/{id}", delete_block_list_entry, ("block_list_entries", "delete")),
    Route("GET", "/accounts", list_accounts, ("accounts", "read")),
)
"""Every endpoint, relative to ``/api/v2``."""
