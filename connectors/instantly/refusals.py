"""What a stream refused with 402, 403 or 404 means, and the setting that fixes it.

``run --once`` and ``status`` add these to a refused stream's reason (``InstantlyWorkspacePoller``):
the scope a 403 lacks (from the stream table), a 402's missing paid plan, and for a 404 on a path
Instantly always serves, a ``base_url`` that is not the API's root.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from connectors.instantly.api import Stream
from pipeline.errors import NotFoundError, PaymentRequiredError, ScopeError, SourceError


def refusal_hint(alias: str, spec: Stream, err: SourceError, base_url: str) -> str:
    """What a 402/403/404 on the list ``spec`` means and the way out (the scope comes from the stream
    table; ``alias`` is the config's, also for a discovered sub-workspace polled with the agency's key)."""
    where = f"workspaces.{alias}"
    if isinstance(err, ScopeError):
        return (
            f": the API key lacks {spec.scope} (use a key with it in {where}.api_key, "
            f"or drop {spec.name} from {where}.streams)"
        )
    if isinstance(err, PaymentRequiredError):
        return ": the workspace has no active paid plan, which Instantly's API needs"
    if isinstance(err, NotFoundError):
        return not_found_hint(alias, base_url)
    return ""


def not_found_hint(alias: str, base_url: str) -> str:
    """A 404 on a path Instantly always serves: the base URL is not the API's root."""
    parts = urlsplit(base_url)
    where = (parts.netloc + parts.path.rstrip("/")) or base_url
    return (
        f": no Instantly API under {where} "
        f"(workspaces.{alias}.base_url must be the API root: api.instantly.ai, no path)"
    )
