"""What the generic webhook receiver needs from a connector: how to turn one delivery body into
an Event v1 (:class:`WebhookKind`), found by name in the ``instantly_audit.webhook_kinds`` registry.

The receiver does everything else — admission (method, path, content type, size, IP allowlist,
secret header), de-duplication, group commit, health — the same way for every kind. A kind
brings the options a source of its kind accepts (``Options``, validated with the rest of the
``webhook:`` section) and a pure ``normalize``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from pipeline.config.base import Model
from pipeline.errors import ConfigError
from pipeline.registry import WEBHOOK_KINDS, load_group, load_one
from schemas.event import Event, WorkspaceRef


@runtime_checkable
class WebhookKind(Protocol):
    """A kind of webhook delivery (e.g. ``instantly``)."""

    name: ClassVar[str]
    component_type: ClassVar[str]
    """The ``component.type`` of this kind's receiver in telemetry (``instantly_webhook``)."""
    Options: ClassVar[type[Model]]
    """The options a source of this kind accepts besides the receiver's own (path, secrets, …)."""

    def policy(self, options: Model) -> Any:
        """Prepare the per-source state ``normalize`` needs (computed once at start)."""

    def normalize(
        self, body: bytes, *, source_name: str, workspace: WorkspaceRef, digest: str, observed_at: str, policy: Any
    ) -> Event:
        """Check and normalize one authenticated delivery.

        Raises:
            WebhookRejected: the body is not a delivery of this kind (400) or not for ``workspace``.
        """


def webhook_kind(name: str) -> WebhookKind:
    """The installed webhook kind ``name``.

    Raises:
        ConfigError: no such kind is installed, or the entry is not a :class:`WebhookKind`.
    """
    kind = load_one(WEBHOOK_KINDS, name, "webhook kind")
    if not isinstance(kind, WebhookKind):
        raise ConfigError(f"webhook kind {name!r} does not provide the WebhookKind interface")
    return kind


def default_kind() -> str:
    """The kind a source gets when it names none: the only installed one.

    Raises:
        ConfigError: none or several kinds are installed (then ``kind:`` must be given).
    """
    kinds = sorted(load_group(WEBHOOK_KINDS))
    if len(kinds) != 1:
        raise ConfigError(f"give the source's kind: one of {', '.join(kinds) or 'none installed'}")
    return kinds[0]
