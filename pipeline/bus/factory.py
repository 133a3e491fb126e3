"""Open the bus named by the configuration (the only place that knows every bus type)."""

from __future__ import annotations

from pipeline.bus.base import Bus
from pipeline.config.model import BusConfig, KafkaBusConfig, SqliteBusConfig

DAY_MS = 86_400_000


def open_bus(cfg: BusConfig, *, read_only: bool = False) -> Bus:
    """Build (not yet open) the bus for ``cfg``; use the result with ``async with``.

    Raises:
        ConfigError: the bus type is unknown.
    """
    if isinstance(cfg, SqliteBusConfig):
        from pipeline.bus.sqlite import SqliteBus

        age = cfg.retention.max_age_days
        return SqliteBus(
            cfg.path,
            partitions=cfg.partitions,
            retention_ms=int(age * DAY_MS) if age is not None else None,
            max_bytes_per_partition=cfg.retention.max_bytes_per_partition,
            synchronous=cfg.synchronous,
            read_only=read_only,
        )
    assert isinstance(cfg, KafkaBusConfig)
    from pipeline.bus.kafka import KafkaBus

    return KafkaBus.from_config(cfg, read_only=read_only)
