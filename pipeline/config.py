"""Configuration: one YAML file, validated once at start into frozen models.

* Unknown keys, wrong types and missing values are errors that name the key path.
* ``${VAR}`` (or ``${VAR:-default}``) in any string is replaced from the environment;
  ``$${`` writes a literal ``${``. A missing variable is an error naming the path.
* Secrets (API keys, tokens, passwords) are never taken literally from the file: a secret
  field accepts only a whole ``${VAR}`` reference or a sibling ``<field>_file`` path whose
  content is read at start (Docker/Kubernetes secrets), or a sibling ``<field>_vault``
  reference read from HashiCorp Vault (``secret_managers.vault``). Every key ending in
  ``_file`` is such a secret file reference.
* Component blocks (``sinks``) are validated by the component's own ``Config`` model
  through :mod:`pipeline.registry`.

This module is the only one that reads the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from pipeline.errors import ConfigError
from pipeline.telemetry_config import TelemetryConfig


class EnvValue(str):
    """A string that came whole from an environment variable (allowed for secrets)."""

    __slots__ = ()


class FileValue(str):
    """A string read from a ``*_file`` path (allowed for secrets)."""

    __slots__ = ()


def _secret(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return v
    if isinstance(v, EnvValue | FileValue):
        if not str(v):
            raise ValueError("the secret is empty")
        return SecretStr(str(v))
    if isinstance(v, str):
        raise ValueError(
            "a literal secret in the config file is refused; use a ${ENV_VAR} reference or a <field>_file path"
        )
    raise ValueError("expected a secret (a ${ENV_VAR} reference or a <field>_file path)")


Secret = Annotated[SecretStr, BeforeValidator(_secret)]
"""A secret field: only from ``${ENV}`` or ``<field>_file``."""


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------- bus
class RetentionConfig(Model):
    """How long the embedded bus keeps records."""

    max_age_days: float | None = Field(30.0, gt=0)
    max_bytes_per_partition: int | None = Field(None, gt=0)


class SqliteBusConfig(Model):
    """The embedded bus (default)."""

    type: Literal["sqlite"] = "sqlite"
    path: Path = Path("data/bus.db")
    partitions: int = Field(1, ge=1, le=1024)
    retention: RetentionConfig = RetentionConfig()
    synchronous: Literal["full", "normal"] = "full"


class KafkaSecurityConfig(Model):
    """How to authenticate to Kafka."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True


class KafkaBusConfig(Model):
    """Apache Kafka."""

    type: Literal["kafka"]
    bootstrap_servers: list[str] = Field(min_length=1)
    client_id: str = "instantly-audit"
    transactional_id_prefix: str = "instantly-audit"
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", description="prepended to every topic name")
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    retention_days: float = Field(30.0, gt=0)
    request_timeout_secs: float = Field(30.0, gt=0)
    security: KafkaSecurityConfig = KafkaSecurityConfig()

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


BusConfig = Annotated[SqliteBusConfig | KafkaBusConfig, Field(discriminator="type")]


# ---------------------------------------------------------------------------------- sources
StreamName = Literal["audit_logs", "api_keys", "members", "webhooks", "workspace", "group_members", "block_list"]
STREAMS: tuple[StreamName, ...] = (
    "audit_logs",
    "api_keys",
    "members",
    "webhooks",
    "workspace",
    "group_members",
    "block_list",
)


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
    audit_overlap_secs: float = Field(3600.0, ge=0)
    audit_page_size: int = Field(1000, ge=1, le=1000)
    request_timeout_secs: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)
    budget: BudgetConfig = BudgetConfig()

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL such as https://api.instantly.ai")
        return v.rstrip("/")


# ------------------------------------------------------------------------------------ rest
class ServiceConfig(Model):
    """The process's own HTTP port: /metrics, /healthz, /readyz."""

    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    enabled: bool = True


class LoggingConfig(Model):
    """Log format and level."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class PipelineConfig(Model):
    """The whole configuration file."""

    bus: BusConfig = SqliteBusConfig()
    workspaces: dict[str, WorkspaceConfig] = Field(default_factory=dict)
    rules: dict[str, Any] = Field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    webhook: dict[str, Any] | None = None
    check: dict[str, Any] = Field(default_factory=dict)  # validated by connectors.instantly.posture
    rotation: dict[str, Any] = Field(default_factory=dict)  # validated by connectors.instantly.rotation
    secret_managers: dict[str, Any] = Field(default_factory=dict)  # validated by pipeline.secrets
    service: ServiceConfig = ServiceConfig()
    logging: LoggingConfig = LoggingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @field_validator("sinks")
    @classmethod
    def _sink_blocks(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for sid, block in v.items():
            if "type" not in block:
                raise ValueError(f"sink {sid!r} needs a 'type'")
        return v


# -------------------------------------------------------------------------------- loading
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WHOLE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$")


def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _interpolate(value: str, where: tuple[Any, ...], env: Mapping[str, str]) -> str:
    whole = _WHOLE.match(value)
    if whole:
        name, default = whole.group(1), whole.group(2)
        if name in env:
            return EnvValue(env[name])
        if default is not None:
            return EnvValue(default)
        raise ConfigError(f"{_path(where)}: environment variable {name} is not set")

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{_path(where)}: environment variable {name} is not set")

    return _REF.sub(sub, value)


def _resolve(node: Any, where: tuple[Any, ...], env: Mapping[str, str], base: Path) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not isinstance(k, str):
                raise ConfigError(f"{_path((*where, k))}: keys must be strings")
            if k.endswith("_file") and len(k) > 5:
                field = k[: -len("_file")]
                if field in node:
                    raise ConfigError(f"{_path((*where, k))}: give either {field} or {k}, not both")
                out[field] = _read_secret_file(_resolve(v, (*where, k), env, base), (*where, k), base)
            else:
                out[k] = _resolve(v, (*where, k), env, base)
        return out
    if isinstance(node, list):
        return [_resolve(v, (*where, i), env, base) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _interpolate(node, where, env)
    return node


def _read_secret_file(value: Any, where: tuple[Any, ...], base: Path) -> FileValue:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{_path(where)}: expected a file path")
    p = Path(value)
    if not p.is_absolute():
        p = base / p
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{_path(where)}: secret file {p} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{_path(where)}: secret file {p} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{_path(where)}: secret file {p} is a directory") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{_path(where)}: secret file {p} cannot be read ({type(err).__name__})") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(f"{_path(where)}: secret file {p} is empty")
    return FileValue(text)


_SECRETISH = re.compile(r"(?i)(key|secret|password|token|authorization|url|webhook|routing|dsn|header)")


def _describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    full = tuple(err.get("loc", ()))
    loc = full
    # Drop pydantic's discriminator tags (e.g. 'sqlite') from the path shown.
    if len(loc) >= 2 and loc[0] == "bus" and loc[1] in ("sqlite", "kafka"):
        loc = (loc[0], *loc[2:])
    where = _path(loc)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        known = _known_keys(model, full[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else (f" (allowed: {', '.join(known)})" if known else "")
        return f"{where}: unknown key{tip}"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = str(err.get("msg", "invalid value"))
    inp = err.get("input")
    shown = ""
    refused_secret = "secret" in msg.lower()
    if not refused_secret and (
        isinstance(inp, int | float | bool)
        or (isinstance(inp, str) and not isinstance(inp, EnvValue | FileValue) and not _SECRETISH.search(where))
    ):
        shown = f" (got {inp!r})" if len(repr(inp)) < 80 else ""
    return f"{where}: {msg}{shown}"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        tagged = _tagged_model(current, part)
        if tagged is not None:
            current = tagged
        elif isinstance(current, type) and issubclass(current, BaseModel):
            f = current.model_fields.get(str(part))
            if f is None:
                return []
            current = f.annotation if _tagged_model(f.annotation, "sqlite") else _inner_model(f.annotation)
        elif isinstance(current, dict):
            current = current.get("value")
        else:
            current = _inner_model(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _tagged_model(annotation: Any, tag: Any) -> Any:
    """The member of a discriminated union whose ``type`` literal equals ``tag``."""
    for a in getattr(annotation, "__args__", ()):
        for m in (a, *getattr(a, "__args__", ())):
            if (
                isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and m.model_fields["type"].default == tag
            ):
                return m
    return None


def _inner_model(annotation: Any) -> Any:
    """Find the model type inside Optional[...] / dict[str, Model] / Annotated[...] annotations."""
    args = getattr(annotation, "__args__", ())
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in reversed(args):
        found = _inner_model(a)
        if found is not None:
            return found
    return None


def validation_error_lines(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem, each naming the key path."""
    return [_describe(e, model) for e in err.errors()]


def parse_config(text: str, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> PipelineConfig:
    """Parse YAML text into a :class:`PipelineConfig`.

    Raises:
        ConfigError: the text is not valid YAML, or a key/value is invalid (the message
            names the key path; one line per problem).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise ConfigError(f"config is not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    resolved = _resolve(data, (), os.environ if env is None else env, base_dir or Path.cwd())
    from pipeline.secrets import resolve_managed_secrets  # here: pipeline.secrets imports this module

    resolved = resolve_managed_secrets(resolved)
    try:
        return PipelineConfig.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError("\n".join(validation_error_lines(err, PipelineConfig))) from None


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate a config file (secret ``*_file`` paths are relative to the file).

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {p} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    return parse_config(text, env=env, base_dir=p.resolve().parent)


def validate_block(model: type[Model], block: Mapping[str, Any], where: str) -> Model:
    """Validate a component block (e.g. a sink) with its own model; errors name ``where``.

    Raises:
        ConfigError: the block is invalid.
    """
    try:
        return model.model_validate(dict(block))
    except ValidationError as err:
        lines = [f"{where}.{line}" for line in validation_error_lines(err, model)]
        raise ConfigError("\n".join(lines)) from None
