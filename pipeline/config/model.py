"""The composed configuration model: the runtime's own sections, typed, plus the sections that
installed connectors own (found through the ``instantly_audit.sections`` registry).

The runtime owns ``bus``, ``rules``, ``sinks``, ``webhook``, ``secret_managers``, ``service``,
``logging`` and ``telemetry``; every other top-level key belongs to a connector (for example
``workspaces``, ``check`` and ``rotation`` belong to the Instantly connector) and is validated
by that connector's model when the file is loaded, so ``config validate`` rejects exactly what
a command would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.config.base import Model, Secret, validation_error_lines
from pipeline.errors import ConfigError
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.redaction.config import RedactionConfig
from pipeline.registry import config_sections


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


M = TypeVar("M", bound=BaseModel)


class PipelineConfig(Model):
    """The whole configuration file, typed: the runtime's sections and the connectors' sections."""

    bus: BusConfig = SqliteBusConfig()
    rules: dict[str, Any] = Field(default_factory=dict)  # compiled by pipeline.rules.config at load
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)  # each checked by its sink's model at load
    webhook: dict[str, Any] | None = None  # checked by pipeline.sources.webhook.config at load
    secret_managers: dict[str, Any] = Field(default_factory=dict)  # resolved by pipeline.config.vault
    service: ServiceConfig = ServiceConfig()
    logging: LoggingConfig = LoggingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    redaction: RedactionConfig = RedactionConfig()
    sections: dict[str, Any] = Field(default_factory=dict)
    """Validated sections owned by connectors, by top-level key (see :func:`compose`)."""

    @field_validator("sinks")
    @classmethod
    def _sink_blocks(cls, v: dict[str, Any]) -> dict[str, Any]:
        for sid, block in v.items():
            if not isinstance(block, Mapping) or "type" not in block:
                raise ValueError(f"sink {sid!r} needs a 'type'")
        return v

    def section(self, key: str, kind: type[M]) -> M:
        """The validated connector section ``key`` (its default when the file leaves it out).

        Raises:
            ConfigError: no installed connector owns ``key`` with that model.
        """
        value = self.sections.get(key)
        if value is None:
            owner = config_sections().get(key)
            if owner is not kind:
                raise ConfigError(f"config section {key!r} is not provided by an installed connector")
            value = kind.model_validate({})
        if not isinstance(value, kind):
            raise ConfigError(f"config section {key!r} is a {type(value).__name__}, not a {kind.__name__}")
        return value


RUNTIME_KEYS = frozenset(PipelineConfig.model_fields) - {"sections"}


def compose(data: Mapping[str, Any]) -> PipelineConfig:
    """Validate a resolved config mapping: the runtime's keys by :class:`PipelineConfig`, every other
    top-level key by the connector model registered for it; all problems at once.

    Raises:
        ConfigError: one line per problem, each naming its key path; an unknown top-level key
            names the closest known one.
    """
    owned = config_sections()
    problems: list[str] = []
    parts: dict[str, Any] = {}
    core = {k: v for k, v in data.items() if k not in owned}
    if "sections" in core:
        problems.append("sections: unknown key")
        del core["sections"]
    for key, model in owned.items():
        if key in RUNTIME_KEYS:
            problems.append(f"{key}: a connector claims a runtime section; reinstall the package")
            continue
        block = data.get(key)
        try:
            parts[key] = model.model_validate({} if block is None else block)
        except ValidationError as err:
            problems += [f"{key}.{line}" if not line.startswith("<root>") else f"{key}{line[6:]}"
                         for line in validation_error_lines(err, model)]  # fmt: skip
    try:
        cfg = PipelineConfig.model_validate(core)
    except ValidationError as err:
        lines = validation_error_lines(err, PipelineConfig, extra_keys=tuple(owned))
        problems = [*lines, *problems]
        raise ConfigError("\n".join(problems)) from None
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg.model_copy(update={"sections": parts})
