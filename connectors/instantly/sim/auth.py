"""Bearer authentication, scope checks and ``x-as-workspace`` for the simulated API.

- No ``Authorization`` header → 401 ``Missing Authorization header``.
- Not ``Bearer <token>``, or an unknown / deleted key → 401 ``Invalid authorization header``
  (the docs give no separate message for a revoked key).
- An operation needing ``{resource}:{action}`` accepts any of ``{resource}:{action}``,
  ``{resource}:all``, ``all:{action}``, ``all:all``; otherwise 403 naming the scopes
  (the 403 body is undocumented; it keeps the three-field shape).
- ``x-as-workspace: <id>`` lets a key of an admin workspace act on a sub-workspace whose
  group link is ``accepted``; anything else → 403 (undocumented; chosen here).
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import MSG_INVALID_AUTH, MSG_MISSING_AUTH, ApiError
from .models import ApiKey, Workspace
from .state import SimState


def authenticate(state: SimState, authorization: str | None) -> ApiKey:
    """The live key named by an ``Authorization`` header value.

    Raises:
        ApiError: 401 when the header is missing, malformed, or names no live key.
    """
    if authorization is None:
        raise ApiError(401, MSG_MISSING_AUTH)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise ApiError(401, MSG_INVALID_AUTH)
    key = state.key_by_secret(token)
    if key is None:
        raise ApiError(401, MSG_INVALID_AUTH)
    return key


def accepted_scopes(resource: str, action: str) -> tuple[str, ...]:
    """The scopes any one of which grants ``resource:action``."""
    return (f"{resource}:{action}", f"{resource}:all", f"all:{action}", "all:all")


def has_scope(scopes: Iterable[str], resource: str, action: str) -> bool:
    """Whether ``scopes`` grant ``resource:action``."""
    return not set(accepted_scopes(resource, action)).isdisjoint(scopes)


def require_scope(key: ApiKey, resource: str, action: str) -> None:
    """Refuse a key lacking ``resource:action``.

    Raises:
        ApiError: 403 whose message names the accepted scopes.
    """
    if not has_scope(key.scopes, resource, action):
        needed = ", ".join(accepted_scopes(resource, action))
        raise ApiError(403, f"API key is missing the required scope {resource}:{action} (any of: {needed})")


def acting_workspace(state: SimState, key: ApiKey, as_workspace: str | None) -> Workspace:
    """The workspace a call acts on: the key's own, or an accepted sub via ``x-as-workspace``.

    Raises:
        ApiError: 403 when the key's workspace is not the accepted admin of ``as_workspace``.
    """
    own = state.workspace(key.workspace_id)
    if not as_workspace or as_workspace == own.id:
        return own
    link = state.admin_link_of(as_workspace)
    if link is None or link.admin_workspace_id != own.id:
        raise ApiError(403, f"API key cannot act as workspace {as_workspace}")
    return state.workspace(as_workspace)
