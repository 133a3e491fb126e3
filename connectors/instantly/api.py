"""The Instantly API as the connector reads it: one table of streams, and what its scopes grant.

Every client-side fact about a stream — its name in the config, the endpoint, the one read scope
it needs, the page size asked for, whether it is the audit log or a snapshot, and the prefix of
the event types its snapshot diff emits — lives in :data:`STREAMS` and nowhere else. The poller
(:mod:`connectors.instantly.source`), the snapshot diff (:mod:`connectors.instantly.snapshots`),
``check`` (:mod:`connectors.instantly.posture`) and ``keys rotate``
(:mod:`connectors.instantly.rotation`) derive from it. The simulator keeps its own route table
because it models the server; a test checks that it serves every path here with the same scope.

Scopes are ``<resource>:<action>`` with action ``all``, ``create``, ``read``, ``update`` or
``delete``; ``all`` is a wildcard on either side (:func:`covers`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

API_PREFIX = "/api/v2"
StreamName = Literal[
    "audit_logs",
    "api_keys",
    "members",
    "webhooks",
    "workspace",
    "group_members",
    "block_list",
    "accounts",
    "webhook_deliveries",
]
"""The stream names a workspace config may list (a typing aid; a test keeps it equal to :data:`STREAMS`)."""
StreamKind = Literal["audit", "snapshot", "delivery_log"]


@dataclass(frozen=True, slots=True)
class Stream:
    """One stream of a workspace: where it is read and what reading it needs."""

    name: StreamName
    path: str
    """The endpoint (``GET``), starting with :data:`API_PREFIX`."""
    scope: str
    """The one read scope the endpoint needs."""
    page_size: int | None
    """The ``limit`` asked for (the API's maximum); ``None`` for a single object that is not paginated."""
    kind: StreamKind
    """``audit``: read incrementally behind a cursor; ``snapshot``: listed in full and diffed;
    ``delivery_log``: Instantly's webhook delivery log, read over a look-back window for the
    deliveries to the pipeline's own receiver that Instantly gave up on."""
    resource: str
    """The prefix of the event types the stream emits (``api_key`` → ``api_key.created``)."""
    opt_in: bool = False
    """Not in a workspace's default ``streams``: polled only when listed there."""


STREAMS: tuple[Stream, ...] = (
    Stream("audit_logs", f"{API_PREFIX}/audit-logs", "audit_logs:read", 1000, "audit", "audit"),
    Stream("api_keys", f"{API_PREFIX}/api-keys", "api_keys:read", 100, "snapshot", "api_key"),
    Stream("members", f"{API_PREFIX}/workspace-members", "workspace_members:read", 100, "snapshot", "member"),
    Stream("webhooks", f"{API_PREFIX}/webhooks", "webhooks:read", 100, "snapshot", "webhook"),
    Stream("workspace", f"{API_PREFIX}/workspaces/current", "workspaces:read", None, "snapshot", "workspace"),
    Stream("group_members", f"{API_PREFIX}/workspace-group-members", "workspace_group_members:read", 100,
           "snapshot", "workspace_group"),
    Stream("block_list", f"{API_PREFIX}/block-lists-entries", "block_list_entries:read", 100, "snapshot",
           "block_list"),
    Stream("accounts", f"{API_PREFIX}/accounts", "accounts:read", 100, "snapshot", "account"),
    Stream("webhook_deliveries", f"{API_PREFIX}/webhook-events", "webhook_events:read", 100, "delivery_log",
           "webhook_delivery", opt_in=True),
)  # fmt: skip
"""Every stream, in the order a poll runs them by default (API reference sections 3 to 9).

``accounts`` (the sending mailboxes) is keyed by lower-cased ``email``, not ``id``; its cursor is
``timestamp_created&email``, passed back as ``next_starting_after`` like every other listing.

``webhook_deliveries`` (opt-in: its scope reads every delivery's payload, lead data included)
republishes what Instantly failed to deliver to the pipeline's webhook receiver
(:mod:`connectors.instantly.deliveries`); its events are the receiver's ``webhook_delivery.*``."""

BY_NAME: Mapping[str, Stream] = MappingProxyType({s.name: s for s in STREAMS})
AUDIT_LOGS = BY_NAME["audit_logs"]
API_KEYS = BY_NAME["api_keys"]
WEBHOOKS = BY_NAME["webhooks"]
WORKSPACE = BY_NAME["workspace"]
"""``GET /workspaces/current``: the workspace itself, read first on every poll (id, name, health)."""
GROUP_MEMBERS = BY_NAME["group_members"]
WEBHOOK_DELIVERIES = BY_NAME["webhook_deliveries"]
DEFAULT_STREAMS: tuple[Stream, ...] = tuple(s for s in STREAMS if not s.opt_in)
"""A workspace's ``streams`` when its config lists none."""
GROUP_ADMIN_PATH = f"{API_PREFIX}/workspace-group-members/admin"
"""``GET``: the admin workspace of the current one, if any (``group_members`` reads it too, same scope):
the list endpoint shows an admin workspace its sub-workspaces, never a sub-workspace its admin."""
SNAPSHOT_STREAMS: tuple[Stream, ...] = tuple(s for s in STREAMS if s.kind == "snapshot")
LISTED_STREAMS: tuple[Stream, ...] = tuple(s for s in SNAPSHOT_STREAMS if s.page_size is not None)
"""The snapshot streams read as paginated listings (all but the workspace object)."""


def api_root(base_url: str) -> str:
    """The server root the :data:`STREAMS` paths are appended to.

    Instantly's OpenAPI document names the server ``https://api.instantly.ai`` with every path
    under ``/api/v2``, while most integrations configure ``https://api.instantly.ai/api/v2`` as
    the base URL. Both spellings (with or without a trailing slash) give the host, so a
    configured ``…/api/v2`` never yields ``/api/v2/api/v2/…``.
    """
    root = base_url.rstrip("/")
    return root.removesuffix(API_PREFIX) if root.endswith(API_PREFIX) else root


def stream(name: str) -> Stream:
    """The stream called ``name``.

    Raises:
        KeyError: no stream has that name.
    """
    return BY_NAME[name]


def page_limit(s: Stream) -> int:
    """The ``limit`` a paginated stream asks for.

    Raises:
        ValueError: the stream is a single object, not a listing.
    """
    if s.page_size is None:
        raise ValueError(f"{s.name} is not paginated")
    return s.page_size


def read_scopes(names: Iterable[str]) -> list[str]:
    """The read scopes the named streams need, sorted and without repeats.

    Raises:
        KeyError: a name is not a stream.
    """
    return sorted({BY_NAME[n].scope for n in names})


# --------------------------------------------------------------------------------------------- ids
_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def is_id(text: str) -> bool:
    """Whether ``text`` has the shape of an Instantly id (workspaces, keys, members...: UUIDs)."""
    return _ID.match(text) is not None


# ------------------------------------------------------------------------------------------ scopes
SCOPE_ACTIONS = ("all", "create", "read", "update", "delete")
_SCOPE = re.compile(rf"^[a-z_-]+:({'|'.join(SCOPE_ACTIONS)})$")


def is_scope(text: str) -> bool:
    """Whether ``text`` has the form ``<resource>:<all|create|read|update|delete>``."""
    return _SCOPE.match(text) is not None


def covers(held: Sequence[str], scope: str) -> bool:
    """Whether the ``held`` scopes already grant everything ``scope`` grants (``all`` is a wildcard on either side)."""
    resource, _, action = scope.partition(":")
    if scope in held or "all:all" in held:
        return True
    if resource == "all":
        return False  # all:<action> is covered only by itself or all:all
    if action == "all":
        return f"{resource}:all" in held
    return f"{resource}:all" in held or f"all:{action}" in held
