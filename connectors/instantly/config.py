"""The Instantly connector's config section ``workspaces``: one entry per workspace to watch.

```yaml
workspaces:
  acme:
    api_key: ${INSTANTLY_API_KEY}     # read-only scopes are enough
    name: Acme Outreach
    poll_interval_secs: 5            # the audit log and the small snapshot streams
    snapshot_intervals: {block_list: 600}   # optional, per stream (see below)
```

How often a snapshot stream is listed (:meth:`WorkspaceConfig.snapshot_interval`), first match wins:

1. ``snapshot_intervals[stream]`` (a number of seconds; ``null`` = every poll);
2. ``snapshot_interval_secs``, the older global setting, for every stream not named there;
3. the built-in :data:`DEFAULT_SNAPSHOT_INTERVALS`: the streams that can be large (``block_list``:
   one request per 100 entries; ``accounts``: per 100 mailboxes) every 300 s and 60 s; every
   other stream (one or two requests each) every poll.

An audit record saying a stream's resources changed lists it in the same poll anyway
(``audit_triggers_snapshots``).

Registered as the ``workspaces`` section (entry point group ``instantly_audit.sections``), so the
loader validates it with the rest of the file.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, RootModel, ValidatorFunctionWrapHandler, field_validator

from connectors.instantly.api import AUDIT_LOGS, BY_NAME, DEFAULT_STREAMS, StreamName, page_limit
from connectors.instantly.api import STREAMS as _TABLE
from pipeline.config.base import Model, Secret
from pipeline.config.model import PipelineConfig
from pipeline.config.transport import checked_url

# ---------------------------------------------------------------------------------- sources
STREAMS: tuple[StreamName, ...] = tuple(s.name for s in _TABLE)
"""Every stream name, in poll order (from :data:`connectors.instantly.api.STREAMS`)."""
_AUDIT_PAGE_MAX = page_limit(AUDIT_LOGS)


def _default_streams() -> list[StreamName]:
    """Every stream but the opt-in ones (``webhook_deliveries``)."""
    return [s.name for s in DEFAULT_STREAMS]


DEFAULT_POLL_INTERVAL_SECS = 5.0
DEFAULT_SNAPSHOT_INTERVALS: dict[str, float] = {"block_list": 300.0, "accounts": 60.0, "webhook_deliveries": 300.0}
"""Streams listed less often than every poll unless configured otherwise.

Both can be large: a 20,000-entry block list is 200 requests, which at a 5 s poll would be 2,400
requests a minute on their own (the local budget allows 300). Every 300 s that is 40 a minute;
hundreds of mailboxes every 60 s are a few. Account changes have audit codes (6, 7, 36) that list
``accounts`` in the same poll; block-list entries have none. ``webhook_deliveries`` lists every
failed delivery of its look-back window (a customer's broken endpoint can fill many pages)."""


API_KEY_PLACEHOLDERS = ("replace_me", "replace-me", "replaceme", "changeme", "change_me", "your_", "your-", "<")
"""An ``api_key`` starting with one of these (any case), or ``...``, is a placeholder left in place."""


class BudgetConfig(Model):
    """The local request budget per workspace (Instantly allows 100/s and 6,000/min, shared)."""

    requests_per_second: float = Field(5.0, gt=0, le=100)
    requests_per_minute: int = Field(300, gt=0, le=6000)


class WorkspaceConfig(Model):
    """One Instantly workspace to watch."""

    api_key: Secret
    name: str | None = None
    base_url: str = "https://api.instantly.ai"
    as_workspace: str | None = Field(None, description="x-as-workspace: act on an agency sub-workspace")
    poll_interval_secs: float = Field(DEFAULT_POLL_INTERVAL_SECS, ge=1)
    streams: list[StreamName] = Field(default_factory=_default_streams)
    snapshot_interval_secs: float | None = Field(
        None,
        ge=1,
        description="list every snapshot stream not named in snapshot_intervals at most this often "
        "(default: the built-in per-stream intervals); an audit record saying a key, webhook or "
        "account changed lists that stream in the same poll anyway",
    )
    snapshot_intervals: dict[StreamName, float | None] = Field(
        default_factory=dict,
        description="per snapshot stream (and webhook_deliveries): list it at most this often "
        "(seconds, >= 1; null = every poll); wins over snapshot_interval_secs",
    )
    audit_triggers_snapshots: bool = Field(
        True, description="list a snapshot stream in the same poll when an audit record says it changed"
    )
    audit_overlap_secs: float = Field(3600.0, ge=0)
    audit_sweep_interval_secs: float | None = Field(
        86400.0,
        ge=60,
        description="re-read the last audit_sweep_days of the audit log this often to publish late records "
        "(default: daily; null turns the sweep off)",
    )
    audit_sweep_days: float = Field(7.0, gt=0, le=90, description="how far back the sweep reads")
    audit_sweep_max_requests: int = Field(100, ge=1, description="pages one sweep may read at most")
    audit_receipts: bool = Field(
        True,
        description="publish per-hour completeness receipts of the audit log to instantly.receipts.v1 "
        "(read by instantly-audit gaps)",
    )
    audit_page_size: int = Field(_AUDIT_PAGE_MAX, ge=1, le=_AUDIT_PAGE_MAX)
    webhook_deliveries_lookback_days: float = Field(
        2.0,
        gt=0,
        le=30,
        description="webhook_deliveries: how far back its first read goes (later reads start one day "
        "before the day of the last complete read)",
    )
    request_timeout_secs: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)
    budget: BudgetConfig = BudgetConfig()
    discover_subworkspaces: bool = Field(
        False, description="agency key: also poll every accepted sub-workspace of its group (x-as-workspace)"
    )
    discovery_interval_secs: float = Field(300.0, ge=0, description="how often the group's members are listed")

    @field_validator("snapshot_intervals")
    @classmethod
    def _intervals(cls, v: dict[StreamName, float | None]) -> dict[StreamName, float | None]:
        for name, secs in v.items():
            if name == AUDIT_LOGS.name:
                raise ValueError("audit_logs is read every poll (poll_interval_secs), not a snapshot stream")
            if secs is not None and secs < 1:
                raise ValueError(f"{name}: an interval is at least 1 second (null = every poll)")
        return v

    def snapshot_interval(self, stream: str) -> float | None:
        """How often the snapshot ``stream`` is listed at most (``None``: every poll).

        ``snapshot_intervals[stream]`` wins, then ``snapshot_interval_secs``, then
        :data:`DEFAULT_SNAPSHOT_INTERVALS`.
        """
        if stream in self.snapshot_intervals:
            return self.snapshot_intervals[stream]
        if self.snapshot_interval_secs is not None and BY_NAME[stream].kind == "snapshot":
            return self.snapshot_interval_secs
        return DEFAULT_SNAPSHOT_INTERVALS.get(stream)

    @field_validator("api_key")
    @classmethod
    def _not_a_placeholder(cls, v: Any) -> Any:
        # README's `export INSTANTLY_API_KEY=...` or the k8s example's REPLACE_ME, copied as they
        # stand, validated and then got 401 on every request. The value is never echoed.
        text = v.get_secret_value().strip().lower() if hasattr(v, "get_secret_value") else ""
        if text in ("...", "…") or text.startswith(API_KEY_PLACEHOLDERS):
            raise ValueError(
                "is a placeholder (`...`, REPLACE_ME, <your key>), not an Instantly API key: put a key with "
                "the read scopes (docs/security.md) in the variable or file it names"
            )
        return v

    @field_validator("base_url", mode="wrap")
    @classmethod
    def _url(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # aiohttp refuses a URL with userinfo when it builds the request (an uncaught ValueError
        # at poll time); the key goes in api_key, and a query or fragment would hide in logs.
        return checked_url(v, handler, "https://api.instantly.ai", credentials="the key goes in api_key")


class WorkspacesSection(RootModel[dict[str, WorkspaceConfig]]):
    """The ``workspaces`` section: workspace alias → its config."""

    model_config = {"frozen": True}


def workspaces(cfg: PipelineConfig) -> dict[str, WorkspaceConfig]:
    """The configured workspaces by alias (empty when the file has none).

    Raises:
        ConfigError: the Instantly connector's section is not registered (a broken installation).
    """
    return cfg.section("workspaces", WorkspacesSection).root
