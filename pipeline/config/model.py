"""The composed configuration model: the runtime's own sections, typed, plus the sections that
installed connectors own (found through the ``instantly_audit.sections`` registry).

The runtime owns ``bus``, ``rules``, ``sinks``, ``webhook``, ``secret_managers``, ``service``,
``logging`` and ``telemetry``; every other top-level key belongs to a connector (for example
``workspaces``, ``check`` and ``rotation`` belong to the Instantly connector) and is validated
by that connector's model when the file is loaded, so ``config validate`` rejects exactly what
a command would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.config.base import Model, Secret, validation_error_lines
from pipeline.config.paths import anchor_paths
from pipeline.config.tls import TlsFiles, tls_problems
from pipeline.delivery.base import SinkConfig
from pipeline.delivery.registry import validate_sink
from pipeline.errors import ConfigError
from pipeline.observability.telemetry_config import TelemetryConfig
from pipeline.redaction.config import RedactionConfig
from pipeline.registry import config_sections
from pipeline.rules.config import parse_rules_config
from pipeline.sources.webhook.config import WebhookConfig, parse_webhook_config


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
    max_consumer_lag: int | None = Field(
        None,
        ge=1,
        description="backpressure: pollers pause while the rules' or a sink's consumer lag is at least this many "
        "records, and resume below it (default: off)",
    )
    backpressure_check_secs: float = Field(5.0, gt=0, description="how often the lag is measured for backpressure")


class KafkaSecurityConfig(Model):
    """How to authenticate to Kafka."""

    tls_files: ClassVar[TlsFiles] = TlsFiles("ssl_cafile", "ssl_certfile", "ssl_keyfile")

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSecurityConfig:
        """SASL without a user or password crashed every command inside aiokafka; a mechanism
        under a protocol without SASL would be ignored silently."""
        if self.protocol.startswith("SASL_"):
            missing = [name for name in ("username", "password") if getattr(self, name) is None]
            if missing:
                need = " and ".join(missing)
                raise ValueError(f"protocol {self.protocol} needs {need} (SASL PLAIN/SCRAM credentials)")
        elif self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs protocol SASL_PLAINTEXT or SASL_SSL")
        return self


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
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="codec of the record batches the pipeline produces (every reader decodes all four)"
    )
    share_pollers: bool = Field(
        True, description="poller replicas share the workspaces through a consumer group (each polled by one)"
    )
    security: KafkaSecurityConfig = KafkaSecurityConfig()
    max_consumer_lag: int | None = Field(
        None,
        ge=1,
        description="backpressure: pollers pause while the rules' or a sink's consumer lag is at least this many "
        "records, and resume below it (default: off)",
    )
    backpressure_check_secs: float = Field(5.0, gt=0, description="how often the lag is measured for backpressure")

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


BusConfig = Annotated[SqliteBusConfig | KafkaBusConfig, Field(discriminator="type")]

_KAFKA_ONLY = frozenset(KafkaBusConfig.model_fields) - frozenset(SqliteBusConfig.model_fields)


def _bus_type_default(v: Any) -> Any:
    """``bus.type`` defaults to ``sqlite`` (docs/configuration.md): ``bus: {path: x}`` is the embedded
    bus. A block with a Kafka-only key and no ``type`` still needs one (it is not guessed)."""
    if isinstance(v, Mapping) and "type" not in v and not (set(v) & _KAFKA_ONLY):
        return {"type": "sqlite", **v}
    return v


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
INTERNAL_KEYS = frozenset({"sections", "config_dir"})
"""Fields filled by the loader, never by the file."""


class PipelineConfig(Model):
    """The whole configuration file, typed: the runtime's sections and the connectors' sections.

    Build it with :func:`compose` (the loader does): every section is validated by the model of
    the component that owns it — sinks by their sink type's ``Config``, ``webhook`` by the
    receiver's, ``rules`` by compiling every rule, connector sections by the connector's model —
    so a file that loads is a file every command accepts.
    """

    bus: BusConfig = SqliteBusConfig()
    rules: dict[str, Any] = Field(default_factory=dict)
    """The ``rules`` section as written; compiled (and so checked) by :func:`compose`."""
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)
    webhook: WebhookConfig | None = None
    secret_managers: dict[str, Any] = Field(default_factory=dict)  # resolved by pipeline.config.vault
    service: ServiceConfig = ServiceConfig()
    logging: LoggingConfig = LoggingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    redaction: RedactionConfig = RedactionConfig()
    sections: dict[str, Any] = Field(default_factory=dict)
    """Validated sections owned by connectors, by top-level key (see :func:`compose`)."""
    config_dir: Path | None = None
    """The directory of the config file: relative paths in the file are relative to it."""

    @field_validator("bus", mode="before")
    @classmethod
    def _bus_type(cls, v: Any) -> Any:
        return _bus_type_default(v)

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


RUNTIME_KEYS = frozenset(PipelineConfig.model_fields) - INTERNAL_KEYS


def _lines(err: ConfigError) -> list[str]:
    return str(err).splitlines()


def _typed_components(core: dict[str, Any], base_dir: Path | None, problems: list[str]) -> None:
    """Replace the sinks and webhook blocks with their validated models; compile the rules."""
    sinks = core.get("sinks")
    if isinstance(sinks, Mapping):
        typed: dict[str, Any] = {}
        for sid, block in sinks.items():
            if not isinstance(block, Mapping):
                problems.append(f"sinks.{sid}: expected a mapping with a 'type'")
                continue
            try:
                typed[sid] = validate_sink(str(sid), block)[1]
            except ConfigError as err:
                problems += _lines(err)
        core["sinks"] = typed
    webhook = core.get("webhook")
    if webhook is not None:
        try:
            core["webhook"] = parse_webhook_config(webhook)
        except ConfigError as err:
            problems += _lines(err)
            del core["webhook"]
    rules = core.get("rules")
    if rules is None or isinstance(rules, Mapping):
        try:
            parse_rules_config(rules or {}, base_dir=base_dir)
        except ConfigError as err:
            problems += _lines(err)


def compose(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    check_files: Callable[[tuple[Any, ...]], bool] | None = None,
) -> PipelineConfig:
    """Validate a resolved config mapping: the runtime's keys by their components' models, every
    other top-level key by the connector model registered for it; all problems at once. Relative
    paths are anchored at ``base_dir`` (the config file's directory).

    ``check_files`` (a predicate on the key path) turns on the TLS file checks
    (:func:`pipeline.config.tls.tls_problems`) for the key paths it accepts.

    Raises:
        ConfigError: one line per problem, each naming its key path; an unknown top-level key
            names the closest known one.
    """
    owned = config_sections()
    problems: list[str] = []
    parts: dict[str, Any] = {}
    core = {k: v for k, v in data.items() if k not in owned}
    for key in INTERNAL_KEYS & set(core):
        problems.append(f"{key}: unknown key")
        del core[key]
    for key, model in owned.items():
        if key in RUNTIME_KEYS:
            problems.append(f"{key}: a connector claims a runtime section; reinstall the package")
            continue
        block = data.get(key)
        try:
            parts[key] = anchor_paths(model.model_validate({} if block is None else block), base_dir)
        except ValidationError as err:
            problems += [f"{key}.{line}" if not line.startswith("<root>") else f"{key}{line[6:]}"
                         for line in validation_error_lines(err, model)]  # fmt: skip
    _typed_components(core, base_dir, problems)
    files: list[str] = []

    def check(node: Any, where: tuple[Any, ...]) -> None:
        if check_files is not None:
            files.extend(tls_problems(node, where, base_dir, check_files))

    for key, part in parts.items():
        check(part, (key,))
    for sid, sink in (core.get("sinks") or {}).items():
        check(sink, ("sinks", sid))
    if isinstance(core.get("webhook"), BaseModel):
        check(core["webhook"], ("webhook",))
    try:
        cfg = PipelineConfig.model_validate(core)
    except ValidationError as err:
        lines = validation_error_lines(err, PipelineConfig, extra_keys=tuple(owned))
        if "bus" in core:
            with contextlib.suppress(ValidationError):  # the bus's TLS files, even when another key is wrong
                check(PipelineConfig.model_validate({"bus": core["bus"]}).bus, ("bus",))
        raise ConfigError("\n".join([*lines, *problems, *files])) from None
    check(cfg.bus, ("bus",))
    if problems or files:
        raise ConfigError("\n".join([*problems, *files]))
    cfg = anchor_paths(cfg, base_dir)
    return cfg.model_copy(update={"sections": parts, "config_dir": base_dir})
