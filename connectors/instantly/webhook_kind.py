"""Instantly as a webhook kind: the options of an Instantly webhook source and how its deliveries
become events (the receiver itself is generic: :mod:`pipeline.sources.webhook.receiver`).

```yaml
webhook:
  sources:
    crm:
      workspace_id: 019cc043-e2f1-7def-8b07-0aab88328dad
      secrets: ["${HOOK_SECRET_A}"]
      keep_lead_fields: [company_name]                # custom lead variables to keep
      drop_fields: [lead_email]                       # default fields to drop
```
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from connectors.instantly.webhook_normalize import (
    BODY_FIELDS,
    DEFAULT_KEPT_FIELDS,
    REQUIRED_FIELDS,
    FieldPolicy,
    normalize_delivery,
    parse_delivery,
)
from pipeline.config.base import Model
from pipeline.errors import WebhookRejected
from schemas.event import Event, WorkspaceRef


class InstantlyWebhookOptions(Model):
    """What an Instantly webhook source keeps of each delivery."""

    keep_lead_fields: list[str] = Field(default_factory=list)
    drop_fields: list[str] = Field(default_factory=list)

    @field_validator("keep_lead_fields", "drop_fields")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or len(name) > 128:
                raise ValueError("field names must be 1..128 characters")
        if len(set(v)) != len(v):
            raise ValueError("a field is listed twice")
        return v

    @field_validator("keep_lead_fields")
    @classmethod
    def _no_bodies(cls, v: list[str]) -> list[str]:
        bodies = sorted(set(v) & BODY_FIELDS)
        if bodies:
            raise ValueError(f"message bodies never enter events: remove {', '.join(bodies)}")
        return v

    @field_validator("drop_fields")
    @classmethod
    def _not_required(cls, v: list[str]) -> list[str]:
        required = sorted(set(v) & REQUIRED_FIELDS)
        if required:
            raise ValueError(f"{', '.join(required)} cannot be dropped (every event needs them)")
        return v

    def kept_fields(self) -> frozenset[str]:
        """The payload fields this source keeps."""
        return (frozenset(DEFAULT_KEPT_FIELDS) | frozenset(self.keep_lead_fields)) - frozenset(self.drop_fields)

    @field_validator("drop_fields")
    @classmethod
    def _disjoint(cls, v: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(v) & set(info.data.get("keep_lead_fields") or ()))
        if both:
            raise ValueError(f"{', '.join(both)} also in keep_lead_fields")
        return v


class InstantlyWebhookKind:
    """Instantly webhook deliveries (``{event_type, timestamp, workspace, …}``, no signature)."""

    name: ClassVar[str] = "instantly"
    component_type: ClassVar[str] = "instantly_webhook"
    Options: ClassVar[type[Model]] = InstantlyWebhookOptions

    def policy(self, options: Model) -> FieldPolicy:
        """The fields a source keeps."""
        assert isinstance(options, InstantlyWebhookOptions)
        return FieldPolicy(options.kept_fields())

    def normalize(
        self, body: bytes, *, source_name: str, workspace: WorkspaceRef, digest: str, observed_at: str, policy: Any
    ) -> Event:
        """Check the body is a delivery for ``workspace`` and normalize it.

        Raises:
            WebhookRejected: 400 for a body that is not an Instantly delivery, or one for another workspace.
        """
        payload = parse_delivery(body)
        if str(payload["workspace"]).strip().lower() != workspace.id.strip().lower():
            raise WebhookRejected(400, "workspace_mismatch", "the payload's workspace is not this source's workspace")
        try:
            return normalize_delivery(
                payload,
                source_name=source_name,
                workspace=workspace,
                digest=digest,
                body_bytes=len(body),
                observed_at=observed_at,
                policy=policy,
            )
        except (TypeError, ValueError) as err:
            raise WebhookRejected(400, "bad_shape", f"cannot normalize the payload ({type(err).__name__})") from None


KIND = InstantlyWebhookKind()
"""The entry point ``instantly_audit.webhook_kinds: instantly``."""
