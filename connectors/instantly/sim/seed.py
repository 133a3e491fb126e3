"""A ready-made demo world: the workspace "Acme Outreach" with a realistic security posture.

:func:`demo_world` fills a :class:`~.state.SimState` with an owner and two members, a
least-privilege poller key, a 200-day-old ``all:all`` key, an authenticated webhook, block
list entries, three sending accounts (one with an in-domain ``reply_to``, one with a tracking
domain) and a week of audit history. Aliases (``acme``,
``owner``, ``poller-key``, ``legacy-key``, ``crm-webhook``, ...) let scenarios refer to them;
``scenarios/demo_incident.yaml`` plays an incident on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import catalog
from .models import Actor, ApiKey, Webhook, Workspace
from .state import SimState

DAY = 86_400.0


@dataclass(frozen=True)
class DemoWorld:
    """Handles on the demo objects (secrets are fake)."""

    workspace: Workspace
    poller_key: ApiKey
    legacy_key: ApiKey
    webhook: Webhook
    owner_email: str
    member_emails: tuple[str, str]


def demo_world(state: SimState) -> DemoWorld:
    """Create the "Acme Outreach" workspace in ``state`` and return handles on it."""
    now = state.now()
    ws = state.add_workspace(
        "Acme Outreach",
        owner_email="dana.whitfield@acme-outreach.com",
        owner_name=("Dana", "Whitfield"),
        alias="acme",
        owner_alias="owner",
        created_at=now - 400 * DAY,
    )
    owner_id = ws.owner
    for email, first, last, role, alias, age in (
        ("sam.ortiz@acme-outreach.com", "Sam", "Ortiz", "editor", "sam", 300),
        ("lee.nakamura@acme-outreach.com", "Lee", "Nakamura", "view", "lee", 90),
    ):
        state.invite_member(
            ws.id,
            email,
            role,
            issuer_id=owner_id,
            name=(first, last),
            accepted=True,
            alias=alias,
            created_at=now - age * DAY,
        )
    legacy = state.create_api_key(
        ws.id,
        "Zapier (legacy)",
        ["all:all"],
        user_id=owner_id,
        alias="legacy-key",
        created_at=now - 200 * DAY,
    )
    hook = state.create_webhook(
        ws.id,
        "https://hooks.acme-outreach.com/instantly/replies",
        fields={
            "name": "CRM reply sync",
            "event_type": "reply_received",
            "headers": {"Authorization": "Bearer whsec_demo_2f9c41d7b8e0"},
        },
        alias="crm-webhook",
        created_at=now - 150 * DAY,
    )
    poller = state.create_api_key(
        ws.id,
        "security-poller",
        list(catalog.DEMO_POLLER_SCOPES),
        user_id=owner_id,
        alias="poller-key",
        created_at=now - 7 * DAY,
    )
    state.add_block_list_entry(ws.id, "competitor-outreach.io", alias="bl-competitor", created_at=now - 60 * DAY)
    state.add_block_list_entry(ws.id, "legal@bigprospect.com", alias="bl-legal", created_at=now - 30 * DAY)
    for email, age, extra in (
        (
            "dana@acmeoutreach-mail.com",
            120,
            {"tracking_domain_name": "track.acmeoutreach-mail.com", "tracking_domain_status": "active"},
        ),
        ("sales@acmeoutreach-mail.com", 45, {"reply_to": "replies@acmeoutreach-mail.com"}),  # in-domain: no alert
        (
            "lee@acmeoutreach-mail.com",
            20,
            {
                "provider_code": 3,
                "warmup_status": 0,
                "status": -1,
                "status_message": {
                    "code": "EAUTH",
                    "command": "AUTH XOAUTH2",
                    "response": "535 5.7.3 Authentication unsuccessful",
                    "e_message": "Invalid login: 535 5.7.3 Authentication unsuccessful",
                    "responseCode": 535,
                },
            },
        ),
    ):
        state.add_account(ws.id, email, created_at=now - age * DAY, added_by=owner_id, first_name="Acme", **extra)
    _history(state, ws, legacy, now)
    return DemoWorld(
        ws,
        poller,
        legacy,
        hook,
        "dana.whitfield@acme-outreach.com",
        ("sam.ortiz@acme-outreach.com", "lee.nakamura@acme-outreach.com"),
    )


def _history(state: SimState, ws: Workspace, legacy: ApiKey, now: float) -> None:
    """A week of ordinary audit records, oldest first (ids minted at their timestamps).

    Includes the owner creating the poller key 7 days ago (audit 37, from the web app).
    """
    office, browser = "198.51.100.24", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"
    owner = state.actor_for_user("owner", office, browser)
    sam = state.actor_for_user("sam", office, browser)
    zapier = state.actor_for_key(legacy, "34.235.12.80", "Zapier")
    events: list[tuple[float, int, Actor, dict[str, Any]]] = [
        (7.0, catalog.AUDIT_USER_LOGIN, owner, {}),
        (7.0 - 0.01, catalog.AUDIT_API_KEY_CREATED, owner, {}),
        (6.0, catalog.AUDIT_USER_LOGIN, sam, {}),
        (5.9, 4, sam, {"campaign_id": "019a7d3e-5b21-7c44-9e1a-3f0d2c8b6a11"}),
        (5.0, 9, zapier, {"affected_count": 120, "list_id": "019a7d3e-5b21-7c44-9e1a-3f0d2c8b6a22"}),
        (3.0, catalog.AUDIT_USER_LOGIN, owner, {}),
        (3.0 - 0.02, catalog.AUDIT_LEAD_EXPORTED, owner, {"affected_count": 350}),
        (1.5, 11, sam, {"campaign_id": "019a7d3e-5b21-7c44-9e1a-3f0d2c8b6a11"}),
        (1.0, catalog.AUDIT_USER_LOGIN, sam, {}),
        (0.2, 9, zapier, {"affected_count": 40, "list_id": "019a7d3e-5b21-7c44-9e1a-3f0d2c8b6a22"}),
    ]
    for days_ago, activity, actor, extra in events:
        state.insert_audit_backdated(ws.id, activity, timestamp=now - days_ago * DAY, actor=actor, **extra)
