"""The ``telemetry`` section of the config file: exporters, sampling, resource attributes.

Wire it into :class:`pipeline.config.PipelineConfig` as
``telemetry: TelemetryConfig = TelemetryConfig()``. Every model is frozen and refuses
unknown keys. OTLP header values (collector tokens) are secrets: like every secret in the
file they come only from a whole ``${ENV}`` reference or a ``<name>_file`` path.

```yaml
telemetry:
  enabled: true                 # false: every helper is a no-op, /metrics is empty
  service_name: instantly-audit
  prometheus: true              # /metrics on the service port
  console: false                # print spans and metrics to stderr (the demo)
  sample_ratio: 1.0             # share of new traces recorded (parent decision is kept)
  resource_attributes: {deployment.environment: prod}
  otlp:
    endpoint: http://otel-collector:4318   # OTLP/HTTP; /v1/traces and /v1/metrics are appended
    headers: {authorization: "${OTLP_TOKEN}"}
    traces: true
    metrics: true
    export_interval_secs: 15
    timeout_secs: 10
    compression: gzip
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidatorFunctionWrapHandler, field_validator

from pipeline.config.base import Model, Secret
from pipeline.config.transport import checked_url


class OtlpConfig(Model):
    """Export spans and metrics to an OpenTelemetry collector over OTLP/HTTP (protobuf)."""

    endpoint: str = Field(description="base URL of the collector's OTLP/HTTP receiver, e.g. http://collector:4318")
    headers: dict[str, Secret] = Field(default_factory=dict)
    traces: bool = True
    metrics: bool = True
    export_interval_secs: float = Field(15.0, ge=1, le=3600)
    timeout_secs: float = Field(10.0, gt=0, le=120)
    compression: Literal["none", "gzip"] = "gzip"

    @field_validator("endpoint", mode="wrap")
    @classmethod
    def _url(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # The exporter logs the endpoint's path and query without a scheme (no URL pass fires):
        # credentials, a query or a fragment are refused here, as on sink URLs.
        return checked_url(v, handler, "http://otel-collector:4318", credentials="put credentials in otlp.headers")

    def signal_url(self, signal: Literal["traces", "metrics"]) -> str:
        """The full URL for one signal (``<endpoint>/v1/<signal>``)."""
        return f"{self.endpoint}/v1/{signal}"


class TelemetryConfig(Model):
    """OpenTelemetry: where metrics and spans go."""

    enabled: bool = True
    service_name: str = Field("instantly-audit", min_length=1)
    prometheus: bool = Field(True, description="serve Prometheus text on the service port's /metrics")
    console: bool = Field(False, description="print spans and metrics to stderr (for the demo)")
    console_interval_secs: float = Field(10.0, ge=1)
    sample_ratio: float = Field(1.0, ge=0, le=1)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    otlp: OtlpConfig | None = None
