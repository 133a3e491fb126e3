"""What a sink receives: its ``topics``, ``types`` globs and ``min_severity`` — one code path for the
live runner (:mod:`pipeline.delivery.batches`) and ``replay --to`` (:mod:`pipeline.replay.deliver`)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pipeline.delivery.base import Delivery, SinkConfig
from schemas.alert import severity_rank


class SinkFilter:
    """A sink's subscription, checked per delivery."""

    def __init__(self, config: SinkConfig) -> None:
        self.topics = frozenset(config.topics)
        self.globs = tuple(config.types)
        self.min_rank = severity_rank(config.min_severity) if config.min_severity else None

    @property
    def filters(self) -> bool:
        """Whether :meth:`keep` can refuse anything (else every delivery of the topics is kept)."""
        return bool(self.globs) or self.min_rank is not None

    def reads(self, topic: str) -> bool:
        """Whether the sink subscribes to ``topic`` (given as ``events``/``alerts`` or the full name)."""
        return any(topic == t or topic.endswith(f".{t}.v1") for t in self.topics)

    def keep(self, d: Delivery) -> bool:
        """Whether ``d`` passes the ``types`` globs and, for an alert, ``min_severity``."""
        if self.globs and not any(fnmatchcase(d.type, g) for g in self.globs):
            return False
        if self.min_rank is None or d.kind != "alert":
            return True
        return severity_rank(d.severity or "") >= self.min_rank
