"""The Instantly connector's config section ``workspaces``: one entry per workspace to watch.

```yaml
workspaces:
  acme:
    api_key: ${INSTANTLY_API_KEY}     # read-only scopes are enough
    name: Acme Outreach
    poll_interval_secs: 60
```

Registered as the ``workspaces`` section (entry point group ``instantly_audit.sections``), so the
loader validates it with the rest of the file.
"""

from __future__ import annotations

from pydantic import Field, RootModel, field_validator

from connectors.instantly.api import AUDIT_LOGS, StreamName, page_limit
from connectors.instantly.api import STREAMS as _TABLE
from pipeline.config.base import Model, Secret
from pipeline.config.model import PipelineConfig
from pipeline.config.transport import clean_http_url

# ---------------------------------------------------------------------------------- sources
STREAMS: tuple[StreamName, ...] = tuple(s.name for s in _TABLE)
"""Every stream name, in poll order (from :data:`connectors.instantly.api.STREAMS`)."""
_AUDIT_PAGE_MAX = page_limit(AUDIT_LOGS)


def _all_streams() -> list[StreamName]:
    return list(STREAMS)


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
    poll_interval_secs: float = Field(60.0, ge=1)
    streams: list[StreamName] = Field(default_factory=_all_streams)
    snapshot_interval_secs: float | None = Field(
        None,
        ge=1,
        description="list snapshot streams at most this often (default: every poll); an audit record "
        "saying a key or webhook changed lists that stream in the same poll anyway",
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
    request_timeout_secs: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)
    budget: BudgetConfig = BudgetConfig()
    discover_subworkspaces: bool = Field(
        False, description="agency key: also poll every accepted sub-workspace of its group (x-as-workspace)"
    )
    discovery_interval_secs: float = Field(300.0, ge=0, description="how often the group's members are listed")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        # aiohttp refuses a URL with userinfo when it builds the request (an uncaught ValueError
        # at poll time); the key goes in api_key, and a query or fragment would hide in logs.
        return clean_http_url(v, "https://api.instantly.ai", credentials="the key goes in api_key")


class WorkspacesSection(RootModel[dict[str, WorkspaceConfig]]):
    """The ``workspaces`` section: workspace alias → its config."""

    model_config = {"frozen": True}


def workspaces(cfg: PipelineConfig) -> dict[str, WorkspaceConfig]:
    """The configured workspaces by alias (empty when the file has none).

    Raises:
        ConfigError: the Instantly connector's section is not registered (a broken installation).
    """
    return cfg.section("workspaces", WorkspacesSection).root
