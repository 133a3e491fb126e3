"""Observability: telemetry (OpenTelemetry metrics and spans), health, logs and the service port."""
