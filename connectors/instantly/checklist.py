"""The security checklist of Instantly's security basics (``reference/seed-security-basics.md``).

One place: rules cite an item as their ``basic`` and ``check`` groups its results by it, in order.
"""

from __future__ import annotations


class Basic:
    """The checklist items, by name."""

    SECRETS = "API keys stored in environment variables or secret manager"
    ENV_FILES = ".env files listed in .gitignore"
    SCOPED_KEYS = "Each integration has its own scoped API key"
    NO_ALL_ALL = "No all:all keys in production"
    WEBHOOK_AUTH = "Webhook endpoints validate authentication"
    ROTATION = "API key rotation schedule (quarterly recommended)"
    AUDIT_LOGS = "Audit logs reviewed periodically"
    MEMBER_ROLES = "Workspace members have minimum necessary roles"
    BLOCK_LIST = "Block list entries for competitor/internal domains"


CHECKLIST: tuple[str, ...] = (
    Basic.SECRETS,
    Basic.ENV_FILES,
    Basic.SCOPED_KEYS,
    Basic.NO_ALL_ALL,
    Basic.WEBHOOK_AUTH,
    Basic.ROTATION,
    Basic.AUDIT_LOGS,
    Basic.MEMBER_ROLES,
    Basic.BLOCK_LIST,
)
"""The checklist in the order of the security basics (``check`` groups its results by it)."""
