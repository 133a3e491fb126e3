"""What a workspace poller logs about its polls: what changed at INFO, the quiet heartbeat at DEBUG.

``Poll finished.`` (fields ``source``, ``workspace``, ``published`` per stream, and ``failed`` —
the streams it could not read — when there are any) is logged at INFO when the poll

* is the first of this poller (the workspace answers: a start, a takeover, a restart),
* published anything (events, or pipeline events such as ``pipeline.stream_recovered``),
* could not read a stream, or is the first good poll after one that could not (recovered),

and at DEBUG otherwise: a quiet poll of a quiet workspace says nothing at the default level. So an
operator still sees each workspace is alive, ``Polls summary.`` is logged at INFO at most once per
workspace every :data:`SUMMARY_EVERY_SECS` — after the first poll that ends that long after the
previous summary (or the poller's start) — with ``polls``, ``failed_polls``, ``published`` (per
stream, summed) and ``since_secs`` for the polls since then. A workspace with no such line for two
periods is not being polled (a stuck task, a lost assignment): see docs/operations.md#logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pipeline.clock import Clock
from pipeline.observability.logs import get_logger

log = get_logger("instantly.poller")

SUMMARY_EVERY_SECS = 600.0
"""At most one ``Polls summary.`` line per workspace this often (10 minutes)."""


class PollLog:
    """Decides the level of each ``Poll finished.`` line of one poller and when to log its summary."""

    def __init__(self, source_id: str, clock: Clock, every_secs: float = SUMMARY_EVERY_SECS):
        self.source_id = source_id
        self.clock = clock
        self.every_secs = every_secs
        self._since = clock.now()
        self._polls = 0
        self._failed_polls = 0
        self._published: Counter[str] = Counter()
        self._first = True
        self._failed_last = False

    def finished(self, workspace: str, counts: Mapping[str, int], failed: Mapping[str, str]) -> bool:
        """Log one finished poll (``counts``: published per stream; ``failed``: streams not read).

        Returns:
            Whether the ``Poll finished.`` line went out at INFO.
        """
        extra: dict[str, object] = {"source": self.source_id, "workspace": workspace, "published": dict(counts)}
        if failed:
            extra["failed"] = sorted(failed)
        notable = self._first or bool(failed) or self._failed_last or any(n > 0 for n in counts.values())
        if notable:
            log.info("Poll finished.", extra=extra)
        else:
            log.debug("Poll finished.", extra=extra)
        self._first, self._failed_last = False, bool(failed)
        self._polls += 1
        self._failed_polls += bool(failed)
        self._published.update({stream: n for stream, n in counts.items() if n})
        now = self.clock.now()
        if now - self._since >= self.every_secs:
            log.info(
                "Polls summary.",
                extra={
                    "source": self.source_id,
                    "workspace": workspace,
                    "polls": self._polls,
                    "failed_polls": self._failed_polls,
                    "published": dict(self._published),
                    "since_secs": round(now - self._since, 1),
                },
            )
            self._since, self._polls, self._failed_polls = now, 0, 0
            self._published.clear()
        return notable
