"""Audit activity codes map onto stable event types; unknown codes are kept, never dropped."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.instantly.audit_codes import AUDIT_CODES, describe_activity
from schemas.event import TYPE_PATTERN


def test_every_documented_code_is_mapped() -> None:
    """Codes 1-12 and 18-38 (Aug 2026 spec) all have a type, a label and a category."""
    assert sorted(AUDIT_CODES) == [*range(1, 13), *range(18, 39)]
    for code, entry in AUDIT_CODES.items():
        assert entry.code == code and entry.known
        assert TYPE_PATTERN.match(entry.type) and entry.type.startswith("audit.")
        assert entry.label and entry.category
    assert len({e.type for e in AUDIT_CODES.values()}) == len(AUDIT_CODES)


@pytest.mark.parametrize(
    ("code", "type_"),
    [
        (1, "audit.user_login"),
        (2, "audit.lead_deleted"),
        (3, "audit.campaign_deleted"),
        (20, "audit.webhook_marked_error"),
        (26, "audit.mfa_totp_disabled"),
        (28, "audit.mfa_recovery_code_used"),
        (29, "audit.mfa_challenge_failed"),
        (30, "audit.mfa_challenge_failed_too_many"),
        (34, "audit.lead_exported"),
        (37, "audit.api_key_created"),
        (38, "audit.api_key_deleted"),
    ],
)
def test_named_codes(code: int, type_: str) -> None:
    """The security-relevant codes get the names rules rely on."""
    assert describe_activity(code).type == type_


@pytest.mark.parametrize(
    ("value", "type_"),
    [(13, "audit.activity_13"), (99, "audit.activity_99"), (1.0, "audit.user_login"), ("37", "audit.api_key_created")],
)
def test_unknown_and_loose_codes(value: Any, type_: str) -> None:
    """Unknown integers become ``audit.activity_<n>``; integral floats and digit strings are accepted."""
    entry = describe_activity(value)
    assert entry.type == type_
    assert TYPE_PATTERN.match(entry.type)


@pytest.mark.parametrize("value", [None, "x", -1, 1.5, True])
def test_malformed_codes_still_get_a_type(value: Any) -> None:
    """A value that is not a non-negative integer becomes ``audit.activity_unknown``."""
    entry = describe_activity(value)
    assert entry.type == "audit.activity_unknown" and not entry.known


def test_snapshot_triggers() -> None:
    """Key, webhook and sending-account codes name the snapshot stream they change; other codes trigger nothing."""
    from connectors.instantly.audit_codes import triggered_stream

    assert triggered_stream(37) == triggered_stream("38") == "api_keys"
    assert {triggered_stream(c) for c in (18, 19, 20, 21)} == {"webhooks"}
    assert {triggered_stream(c) for c in (6, 7, "36")} == {"accounts"}  # account added, deleted, updated
    assert triggered_stream(1) is None and triggered_stream(99) is None and triggered_stream(None) is None
