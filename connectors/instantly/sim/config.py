"""Behaviour switches of the simulator for points the Instantly docs leave open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .models import KeyValueMode

AuditOrder = Literal["asc", "desc"]


@dataclass
class SimConfig:
    """Mutable at run time (tests flip switches between requests).

    Attributes:
        trailing_cursor: the last non-empty page still carries ``next_starting_after``
            (then an empty page follows), as the starter kit warns may happen.
        key_value_mode: what ``GET /api-keys`` and ``DELETE /api-keys/{id}`` put in ``key``:
            ``full`` (the schema and example show a value), ``masked`` or ``absent``.
            ``POST /api-keys`` always returns the full secret once.
        enforce_unlisted_scopes: require ``webhooks:read`` for ``GET /webhooks`` and
            ``workspace_group_members:read`` for ``GET /workspace-group-members/admin``,
            which list no scope in the spec.
        empty_json_body_error: like Fastify, refuse an empty body sent with
            ``Content-Type: application/json`` (400).
        default_limit: page size when ``limit`` is absent (undocumented).
        audit_order: ``GET /audit-logs`` lists ``asc`` (oldest first, by UUIDv7 id) or ``desc``
            (newest first); the reference documents no order, so a client must handle both.
        rate_limit_per_second / rate_limit_per_minute: per-workspace limits (None disables).
        webhook_retries / webhook_retry_delay_secs / webhook_timeout_secs: the webhook delivery policy
            (:mod:`.delivery`; undocumented by Instantly): retries after a failed first attempt, the
            delay between attempts, and how long an attempt may take.
        webhook_events_order: ``GET /webhook-events`` lists ``asc`` or ``desc`` by id (undocumented).
    """

    trailing_cursor: bool = True
    key_value_mode: KeyValueMode = "full"
    enforce_unlisted_scopes: bool = True
    empty_json_body_error: bool = True
    default_limit: int = 100
    audit_order: AuditOrder = "asc"
    rate_limit_per_second: int | None = 100
    rate_limit_per_minute: int | None = 6000
    webhook_retries: int = 3
    webhook_retry_delay_secs: float = 30.0
    webhook_timeout_secs: float = 10.0
    webhook_events_order: AuditOrder = "asc"
