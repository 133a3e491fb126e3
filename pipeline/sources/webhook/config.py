"""The ``webhook:`` config section: the receiver, its sources and their secrets.

```yaml
webhook:
  host: 0.0.0.0
  port: 8088
  max_body_bytes: 16777216         # default 16 MiB; larger deliveries get 413
  allow_ips: [203.0.113.0/24]      # optional; defence in depth only (Instantly publishes no IPs)
  trusted_proxies: [10.0.0.0/8]    # X-Forwarded-For is honoured only from these peers
  header_timeout_secs: 10          # request line + headers must arrive within this of the accept
  idle_timeout_secs: 30            # a keep-alive connection idle this long is closed
  max_connections: 256             # open connections; at the cap the oldest one still sending
                                   # its headers is closed to make room (else the new one is)
  backlog: 128                     # listen backlog
  body_timeout_secs: 30            # an authenticated body must arrive within this
  sources:
    crm:
      path: /hooks/crm             # default /hooks/<name>
      workspace_id: 019cc043-e2f1-7def-8b07-0aab88328dad
      header_name: X-Webhook-Secret
      secrets: ["${HOOK_SECRET_A}", "${HOOK_SECRET_B}"]   # 1 or 2; both valid during rotation
      keep_lead_fields: [company_name]                # custom lead variables to keep
      drop_fields: [lead_email]                       # default fields to drop
      public_urls: [https://hooks.example.com/hooks/crm]   # optional: the URL(s) Instantly posts to
```

``public_urls`` are the webhook's ``target_hook_url`` as Instantly knows it (through any proxy):
a poller stream that reads Instantly's delivery log (``webhook_deliveries``) recognises the
deliveries meant for this source by them (:meth:`WebhookConfig.source_for_url`). Each must be an
http(s) URL without credentials, query or fragment, and belongs to one source only.

Secrets follow :data:`pipeline.config.Secret`: only ``${ENV}`` references or a ``secrets_file``
path (one secret per line, two during a rotation; re-read on SIGHUP) are accepted. A secret must
have at least 24 printable ASCII characters and must not be a placeholder (anything starting
with ``REPLACE_ME``, ``changeme``, ``example``, ``secret`` or ``password``, any case). Every
problem names its path, e.g. ``webhook.sources.crm.header_name: ...``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from pipeline.config.base import Model, Secret, validate_block
from pipeline.config.tls import TlsFiles
from pipeline.config.transport import clean_http_url
from pipeline.errors import ConfigError
from pipeline.sources.webhook.kind import default_kind, webhook_kind

MIB = 1 << 20
DEFAULT_HEADER = "X-Webhook-Secret"
MIN_SECRET_CHARS = 24
MAX_SECRET_CHARS = 1024
PLACEHOLDER_PREFIXES = (
    "replace_me",
    "replace-me",
    "replaceme",
    "changeme",
    "change_me",
    "example",
    "secret",
    "password",
)
"""A secret starting with one of these (any case) is a placeholder, e.g. ``REPLACE_ME_WITH_32_RANDOM_CHARACTERS``
as shipped in ``deploy/k8s/secret.yaml``; the receiver refuses it."""

RESERVED_PATHS = frozenset({"/healthz", "/readyz"})
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_FORBIDDEN_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
        "cookie",
        "user-agent",
    }
)


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR string such as 203.0.113.0/24")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as err:
        raise ValueError(f"not a network in CIDR form ({err})") from None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_key(url: str) -> tuple[str, str, int, str] | None:
    """What identifies a receiver URL: (scheme, host, port, path), lower-cased scheme and host, the
    default port filled in, trailing ``/`` dropped; query and fragment ignored (the receiver routes
    by path alone). ``None`` for a string that is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except (ValueError, AttributeError):
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path.rstrip("/") or "/"


Cidr = Annotated[str, BeforeValidator(lambda v: str(_network(v)))]
"""A network in CIDR form (host bits must be zero), normalised."""


class SourceConfig(Model):
    """One Instantly webhook pointed at this receiver."""

    path: str = Field("", description="URL path; default /hooks/<name>")
    workspace_id: str = Field(min_length=1, max_length=128)
    workspace_name: str | None = None
    header_name: str = DEFAULT_HEADER
    secrets: list[Secret] = Field(min_length=1, max_length=2)
    kind: str = Field(
        "", pattern=r"^([a-z][a-z0-9_]{0,47})?$", description="the webhook kind (default: the one installed)"
    )
    public_urls: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="the URL(s) Instantly posts this source's deliveries to (its target_hook_url), "
        "for recovering lost deliveries from the delivery log",
    )
    options: Any = None
    """The kind's own options (every other key of the source block), validated by ``kind.Options``."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if v and (not _PATH.match(v) or v in RESERVED_PATHS):
            raise ValueError(
                "must be an absolute path like /hooks/crm (letters, digits, . _ ~ -), not /healthz, /readyz"
            )
        return v

    @field_validator("public_urls", mode="before")
    @classmethod
    def _one_url_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("public_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        # The example keeps its path apart: the output redaction fingerprints a URL's path.
        example = "https://hooks.example.com followed by the source's path (/hooks/crm)"
        out = [clean_http_url(u, example, credentials="the secret goes in secrets") for u in v]
        if len({url_key(u) for u in out}) != len(out):
            raise ValueError("a URL is listed twice")
        return out

    @field_validator("header_name")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _TOKEN.match(v):
            raise ValueError("must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        if v.lower() in _FORBIDDEN_HEADERS or v.lower().startswith("proxy-"):
            raise ValueError("this header belongs to HTTP or to proxies; pick a custom one such as X-Webhook-Secret")
        return v

    @field_validator("secrets", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        # ``secrets_file: path`` yields one string: one secret per line (two during a rotation),
        # so a mounted Kubernetes Secret can be rotated in place and picked up on SIGHUP.
        from pipeline.config.base import FileValue

        if isinstance(v, FileValue):
            return [FileValue(line.strip()) for line in str(v).splitlines() if line.strip()]
        return [v] if isinstance(v, str | SecretStr) else v

    @field_validator("secrets")
    @classmethod
    def _secret_quality(cls, v: list[SecretStr]) -> list[SecretStr]:
        values = [s.get_secret_value() for s in v]
        for i, s in enumerate(values):
            if len(s) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"secret {i + 1} is shorter than {MIN_SECRET_CHARS} characters; "
                    "generate one with python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            if s.lower().startswith(PLACEHOLDER_PREFIXES):
                raise ValueError(
                    f"secret {i + 1} is a placeholder (starts with REPLACE_ME, changeme, example, secret or password); "
                    "generate one with python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            if len(s) > MAX_SECRET_CHARS:
                raise ValueError(f"secret {i + 1} is longer than {MAX_SECRET_CHARS} characters")
            if any(not (0x20 <= ord(c) <= 0x7E) for c in s) or s != s.strip():
                raise ValueError(
                    f"secret {i + 1} must be printable ASCII without leading or trailing spaces (an HTTP header value)"
                )
        if len(set(values)) != len(values):
            raise ValueError("the two secrets are identical")
        return v


WRITER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def default_writer_id() -> str:
    """``webhook-<host name>``: one writer id per replica, so replicas never fence each other.

    The host name is ``HOSTNAME`` (Kubernetes sets it to the pod name) or the system's; characters
    a writer id cannot hold become ``-``, and a name too long keeps its start plus a hash of the whole.
    """
    host = os.environ.get("HOSTNAME", "").strip() or socket.gethostname()
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-.")
    if not clean:
        return "webhook"
    wid = f"webhook-{clean}"
    if len(wid) > 64:
        wid = f"{wid[:55]}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"
    return wid


class DedupConfig(Model):
    """The duplicate-delivery window (per source, persisted in bus state with each event)."""

    window_hours: float = Field(72.0, gt=0, le=24 * 90)
    max_entries: int = Field(65_536, ge=1_024, le=10_000_000)


class TlsConfig(Model):
    """Serve HTTPS directly (else terminate TLS at a proxy listed in ``trusted_proxies``)."""

    tls_files: ClassVar[TlsFiles] = TlsFiles(None, "certfile", "keyfile")

    certfile: Path
    keyfile: Path


class WebhookConfig(Model):
    """The ``webhook:`` section."""

    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    max_body_bytes: int = Field(16 * MIB, ge=1024, le=64 * MIB)
    sources: dict[str, SourceConfig] = Field(min_length=1)
    allow_ips: list[Cidr] | None = None
    trusted_proxies: list[Cidr] = Field(default_factory=list)
    ack_timeout_secs: float = Field(10.0, gt=0, le=120, description="answer 503 if the bus has not confirmed by then")
    retry_after_secs: int = Field(5, ge=1, le=3600)
    max_batch: int = Field(256, ge=1, le=10_000, description="deliveries per bus transaction (group commit)")
    max_linger_secs: float = Field(
        0.01, ge=0, le=1, description="group commit: longest wait for concurrent senders to fill a transaction"
    )
    max_pending: int = Field(4096, ge=1, le=1_000_000, description="queued deliveries before answering 503")
    body_timeout_secs: float = Field(30.0, gt=0, le=600, description="time to receive an authenticated body")
    writer_id: str = Field(
        default_factory=default_writer_id,
        pattern=WRITER_ID.pattern,
        description="bus writer id of this receiver, unique per replica (default webhook-<host name>)",
    )
    dedup: DedupConfig = DedupConfig()
    tls: TlsConfig | None = None
    shutdown_timeout_secs: float = Field(10.0, ge=0, le=300)
    header_timeout_secs: float = Field(
        10.0, gt=0, le=300, description="close a connection whose request line and headers have not arrived by then"
    )
    idle_timeout_secs: float = Field(30.0, gt=0, le=3600, description="close a keep-alive connection idle this long")
    max_connections: int = Field(256, ge=1, le=65_536, description="open connections; the oldest slow one makes room")
    backlog: int = Field(128, ge=1, le=65_535, description="listen backlog (connections not yet accepted)")

    def source_path(self, name: str) -> str:
        """The URL path of source ``name``."""
        return self.sources[name].path or f"/hooks/{name}"

    def source_for_url(self, url: str) -> str | None:
        """The source whose ``public_urls`` hold ``url`` (compared by :func:`url_key`), else ``None``."""
        key = url_key(url)
        if key is None:
            return None
        return next((n for n, s in self.sources.items() if any(url_key(u) == key for u in s.public_urls)), None)

    def networks(self, which: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        """``allow_ips`` or ``trusted_proxies`` as networks (``None``: no allowlist)."""
        items: list[str] | None = getattr(self, which)
        return None if items is None else tuple(ipaddress.ip_network(i) for i in items)


_GENERIC = frozenset(SourceConfig.model_fields) - {"options"}


def _split_kind_options(block: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Move every non-generic key of each source into ``options``, validated by the source kind's model."""
    out = dict(block)
    sources = block.get("sources")
    problems: list[str] = []
    if not isinstance(sources, Mapping):
        return out, problems
    fixed: dict[str, Any] = {}
    for name, src in sources.items():
        if not isinstance(src, Mapping):
            fixed[name] = src
            continue
        generic = {k: v for k, v in src.items() if k in _GENERIC}
        extra = {k: v for k, v in src.items() if k not in _GENERIC}
        try:
            kind_name = generic.get("kind") or default_kind()
            generic["kind"] = kind_name
            kind = webhook_kind(str(kind_name))
            # An unknown key is offered every key of a source, not only the kind's options
            # ("secret" → "secrets", "header" → "header_name").
            generic["options"] = validate_block(
                kind.Options, extra, f"{where}.sources.{name}", extra_keys=tuple(sorted(_GENERIC))
            )
        except ConfigError as err:
            problems += str(err).splitlines()
        fixed[name] = generic
    out["sources"] = fixed
    return out, problems


def parse_webhook_config(block: Mapping[str, Any], where: str = "webhook") -> WebhookConfig:
    """Validate the ``webhook:`` block (already env-resolved by :func:`pipeline.config.parse_config`).

    Raises:
        ConfigError: one line per problem, each naming its path (``webhook.sources.crm.header_name: ...``).
    """
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    block, problems = _split_kind_options(block, where)
    try:
        cfg = validate_block(WebhookConfig, block, where)
    except ConfigError as err:
        raise ConfigError("\n".join([*problems, *str(err).splitlines()])) from None
    assert isinstance(cfg, WebhookConfig)
    paths: dict[str, str] = {}
    owner: dict[str, str] = {}
    urls: dict[tuple[str, str, int, str] | None, str] = {}
    for name, src in cfg.sources.items():
        for i, u in enumerate(src.public_urls):
            other = urls.setdefault(url_key(u), name)
            if other != name:
                problems.append(f"{where}.sources.{name}.public_urls.{i}: this URL is already source {other!r}'s")
        if not _SOURCE_NAME.match(name):
            problems.append(f"{where}.sources.{name}: source names must be lower_snake_case (a-z, 0-9, _), max 48")
        path = cfg.source_path(name)
        if path in paths:
            problems.append(f"{where}.sources.{name}.path: {path} is already used by source {paths[path]!r}")
        paths[path] = name
        for i, s in enumerate(src.secrets):
            value = s.get_secret_value()
            if value in owner and owner[value] != name:
                problems.append(
                    f"{where}.sources.{name}.secrets.{i}: the same secret is used by source {owner[value]!r}; "
                    "use one secret per webhook"
                )
            owner[value] = name
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg
