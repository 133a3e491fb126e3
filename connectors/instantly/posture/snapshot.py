"""What ``check`` reads of one workspace: a fresh snapshot of every listing and the audit log's recent key usage.

Only GETs, with the workspace's own (read-only) key. The listings are redacted as the poller
stores them (:func:`~connectors.instantly.snapshots.build_snapshot`); the pipeline's own key is
recognised while the raw records are at hand (:func:`identify_own_key`) and the records are
dropped right after, so no key value outlives this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from connectors.instantly import api
from connectors.instantly.client import InstantlyClient, SessionFactory
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.posture.settings import PostureSettings
from connectors.instantly.snapshots import Snapshot, build_snapshot
from pipeline.clock import Clock, format_time
from pipeline.errors import (
    AuthError,
    NotFoundError,
    PaymentRequiredError,
    ScopeError,
    SourceError,
    UpstreamError,
)
from schemas.event import WorkspaceRef

DAY = 86_400.0
Sleep = Callable[[float], Awaitable[None]]
MAX_AUDIT_RECORDS = 50_000
"""Audit records read per workspace for the shared-key check (the newest window is enough)."""
OPTIONAL_STREAMS = frozenset({"group_members"})
"""Streams ``check`` reads only when the workspace's config lists them (agency links)."""
CHECK_STREAMS: tuple[str, ...] = tuple(
    s.name for s in api.STREAMS if s.name not in OPTIONAL_STREAMS and s.kind != "delivery_log"
)
"""What ``check`` itself reads (its key needs these scopes too; never the webhook delivery log)."""


@dataclass
class WorkspaceSnapshot:
    """What one fresh read of a workspace saw (redacted; no key values)."""

    source_id: str
    workspace: WorkspaceRef
    observed_at: float
    streams: tuple[str, ...]
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    fatal: str | None = None
    own_key_ids: tuple[str, ...] = ()
    own_key_match: str = "none"
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    audit_refusal: SourceError | None = None
    audit_records: int = 0
    key_activity: dict[str, dict[int, int]] = field(default_factory=dict)
    """Audit records per API key id and activity type (least-privilege: scopes never used)."""


def describe(err: SourceError) -> str:
    """``ScopeError (HTTP 403): <message>``: an error as a finding states it, with the client's hint
    (a refused key or an unreachable server: the host and the setting to fix) when it has one."""
    status = getattr(err, "status", None)
    hint = f" — {err.hint}" if err.hint else ""
    return f"{type(err).__name__}{f' (HTTP {status})' if status else ''}: {err.message}{hint}"


def identify_own_key(items: Sequence[Mapping[str, Any]], secret: str, name: str | None) -> tuple[tuple[str, ...], str]:
    """Which listed keys are the pipeline's own: by exact value, configured name, or masked form (unique).

    Returns (key ids, how they matched: ``value`` / ``name`` / ``masked`` / ``none``).
    """

    def ids(pred: Callable[[Mapping[str, Any]], bool]) -> tuple[str, ...]:
        return tuple(str(r["id"]) for r in items if isinstance(r.get("id"), str) and pred(r))

    exact = ids(lambda r: r.get("key") == secret)
    if exact:
        return exact, "value"
    if name:
        named = ids(lambda r: r.get("name") == name)
        if named:
            return named, "name"

    def masked(r: Mapping[str, Any]) -> bool:
        k = r.get("key")
        return (isinstance(k, str) and "*" in k and len(k) >= 9 and "*" not in k[:4] + k[-4:]
                and secret[:4] == k[:4] and secret[-4:] == k[-4:])  # fmt: skip

    found = ids(masked)
    return (found, "masked") if len(found) == 1 else ((), "none")


def client_product(user_agent: Any) -> str | None:
    """The client named by a User-Agent: its first product token, lower-cased (``browser`` for Mozilla/...)."""
    if not isinstance(user_agent, str) or not user_agent.strip():
        return None
    name = user_agent.strip().split()[0].split("/")[0].strip().lower()
    if name in ("mozilla", "opera"):
        return "browser"
    return name or None


async def fetch_workspace(
    source_id: str,
    cfg: WorkspaceConfig,
    settings: PostureSettings,
    *,
    clock: Clock,
    session_factory: SessionFactory | None = None,
    sleep: Sleep = asyncio.sleep,
) -> WorkspaceSnapshot:
    """Read everything the checks need with the workspace's own key (GETs only).

    Refusals are recorded in the snapshot (``fatal``, ``errors``, ``audit_refusal``), not raised.
    """
    now = clock.now()
    streams = tuple(dict.fromkeys(cfg.streams))
    snap = WorkspaceSnapshot(source_id, WorkspaceRef(cfg.as_workspace or source_id, cfg.name), now, streams)
    async with InstantlyClient(cfg, session_factory=session_factory, sleep=sleep, source_id=source_id) as client:
        try:
            ws = await client.get(api.WORKSPACE.path)
        except (AuthError, PaymentRequiredError, UpstreamError) as err:
            snap.fatal = describe(err)
            return snap
        except SourceError as err:
            snap.errors[api.WORKSPACE.name] = describe(err)
        else:
            if isinstance(ws.get("id"), str) and ws["id"]:
                name = ws.get("name")
                snap.workspace = WorkspaceRef(ws["id"], name if isinstance(name, str) else cfg.name)
            snap.snapshots[api.WORKSPACE.name] = build_snapshot(api.WORKSPACE.name, [ws])[0]
        for spec in api.LISTED_STREAMS:
            stream = spec.name
            if stream in OPTIONAL_STREAMS and stream not in streams:
                continue
            try:
                items = await client.get_all(spec.path, limit=api.page_limit(spec))
            except (AuthError, PaymentRequiredError) as err:
                snap.fatal = describe(err)
                return snap
            except SourceError as err:
                snap.errors[stream] = describe(err)
                continue
            if spec is api.API_KEYS:
                secret = cfg.api_key.get_secret_value()
                snap.own_key_ids, snap.own_key_match = identify_own_key(items, secret, settings.pipeline_key_name)
            snap.snapshots[stream] = build_snapshot(stream, items)[0]
            del items  # raw records may hold key values and webhook secrets
        await _read_usage(client, snap, settings, now)
    return snap


async def _read_usage(client: InstantlyClient, snap: WorkspaceSnapshot, settings: PostureSettings, now: float) -> None:
    """Count, per API key id, the clients (User-Agent products) in the audit log's recent window."""
    start = format_time(now - settings.shared_key_window_days * DAY)[:10]
    pages = client.paginate(api.AUDIT_LOGS.path, {"start_date": start}, limit=api.page_limit(api.AUDIT_LOGS))
    try:
        async with aclosing(pages):
            async for page in pages:
                for rec in page:
                    snap.audit_records += 1
                    kid = rec.get("api_key_id")
                    product = client_product(rec.get("user_agent"))
                    if isinstance(kid, str) and kid and isinstance(code := rec.get("activity_type"), int):
                        per_code = snap.key_activity.setdefault(kid, {})
                        per_code[code] = per_code.get(code, 0) + 1
                    if isinstance(kid, str) and kid and product:
                        per = snap.usage.setdefault(kid, {})
                        per[product] = per.get(product, 0) + 1
                if snap.audit_records >= MAX_AUDIT_RECORDS:
                    break
    except (PaymentRequiredError, ScopeError, NotFoundError) as err:
        snap.audit_refusal = err
    except SourceError as err:
        snap.errors[api.AUDIT_LOGS.name] = describe(err)
