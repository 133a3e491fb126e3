"""A rules worker process that the correlation crash test kills with SIGKILL at random points.

Runs the shipped correlation rules over the events topic in small batches (each batch commits
alerts, rule state and offsets in one bus transaction), then ticks once at END (absence windows
close) and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pipeline.bus.factory import open_bus
from pipeline.config.model import KafkaBusConfig, SqliteBusConfig
from pipeline.rules.worker import RulesWorker


class _Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return 0.0


async def main(cfg: dict[str, object], rules: dict[str, object], end: float, batch: int) -> int:
    model = SqliteBusConfig.model_validate(cfg) if cfg["type"] == "sqlite" else KafkaBusConfig.model_validate(cfg)
    async with open_bus(model) as bus:
        worker = RulesWorker(bus, rules, clock=_Clock(end), batch_size=batch, txn_id="rules-crash")
        await worker.run_once()
        await worker.tick()
        await worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))))
