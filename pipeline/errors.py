"""One exception tree for the whole pipeline.

Each error tells the runtime what to do next: ``retriable`` says whether the same
operation may succeed if tried again, ``retry_after`` (seconds) how long to wait first.
Retry code reads only these two attributes.

```
PipelineError                          retriable = False
├── ConfigError (also ValueError)      fatal at start; exit code 2
├── SourceError                        something upstream (the Instantly API) failed
│   ├── UpstreamError(status)          retriable on 5xx / timeouts / connection errors
│   ├── RateLimitedError               retriable after retry_after
│   ├── AuthError                      401 - the key is missing, invalid or revoked
│   ├── PaymentRequiredError           402 - the workspace lost its paid plan
│   ├── ScopeError                     403 - the key lacks a scope
│   └── NotFoundError                  404
├── NormalizeError                     a record could not be normalized → dead letters
├── BusError                           the bus failed; retriable copies the cause
│   └── BusCorruptError                the bus file is not a bus / is damaged (fatal)
├── SinkError                          a destination failed; retriable on 5xx/timeouts
│   └── BackpressureError              the destination asks us to slow down
└── WebhookRejected                    a webhook delivery was refused (status + reason)
```

Third-party errors (aiohttp, aiokafka, sqlite3) are wrapped at the boundary with
``raise ... from err``. Messages never contain secrets or ``Authorization`` headers.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None, retry_after: float | None = None):
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable
        self.retry_after = retry_after

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""


class ConfigError(PipelineError, ValueError):
    """The configuration is invalid; names the key path and the problem."""


class UsageError(ConfigError):
    """A command-line argument is wrong (not the config file): the CLI reports it as argparse does,
    ``instantly-audit replay: error: argument --since: …`` (exit 2, like every configuration error)."""


class SourceError(PipelineError):
    """A source (the Instantly API) failed."""

    hint: str | None = None
    """Where to look, set by the connector that raised it: the host and the config key that
    supplies what was refused or unreachable (``cannot resolve the host … (workspaces.acme.base_url)``);
    never a secret."""


class UpstreamError(SourceError):
    """The upstream API answered 5xx, timed out or could not be reached."""

    retriable = True

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, retry_after=retry_after)
        self.status = status


class RateLimitedError(UpstreamError):
    """The upstream API answered 429."""


class AuthError(SourceError):
    """401: the API key is missing, invalid or revoked."""

    status = 401


class PaymentRequiredError(SourceError):
    """402: the workspace has no active paid plan."""

    status = 402


class ScopeError(SourceError):
    """403: the API key lacks a scope the request needs."""

    status = 403


class NotFoundError(SourceError):
    """404: the resource does not exist."""

    status = 404


class NormalizeError(PipelineError):
    """A source record could not be turned into an event; it goes to the dead-letter topic."""


class BusError(PipelineError):
    """The bus failed. ``retriable`` tells whether the operation may be retried."""


class BusCorruptError(BusError):
    """The bus storage is damaged or is not a bus; refusing to touch it."""


class SinkError(PipelineError):
    """A destination failed to accept a batch."""


class BackpressureError(SinkError):
    """The destination asked us to slow down (429/503 with Retry-After)."""

    retriable = True


class WebhookRejected(PipelineError):
    """A webhook delivery was refused; ``status`` is the HTTP answer, ``reason`` a metric label."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
