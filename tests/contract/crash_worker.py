"""A worker process that the crash tests kill with SIGKILL at random points.

Modes:
  produce TOTAL   — poller-like: read cursor from state, publish the next records and the
                    new cursor in one transaction, until TOTAL records exist.
  transform       — consume SRC (group), produce 'out-<value>' to DST and commit offsets
                    in the same transaction, until SRC is drained.
Random short sleeps between steps make the kill land between any two awaits.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from pipeline.bus.base import TopicSpec
from pipeline.bus.factory import open_bus
from pipeline.config.model import KafkaBusConfig, SqliteBusConfig


async def main(cfg: dict[str, object], mode: str, arg: str, src: str, dst: str, key: str) -> int:
    model = SqliteBusConfig.model_validate(cfg) if cfg["type"] == "sqlite" else KafkaBusConfig.model_validate(cfg)
    rnd = random.Random()
    async with open_bus(model) as bus:
        await bus.ensure_topics([TopicSpec(src, 2), TopicSpec(dst, 2)])
        await bus.fence(f"crash-{key}")
        if mode == "produce":
            total = int(arg)
            while True:
                raw = await bus.get_state(key)
                cursor = int(raw) if raw else 0
                if cursor >= total:
                    return 0
                n = min(rnd.randint(1, 7), total - cursor)
                await asyncio.sleep(rnd.random() * 0.01)
                async with bus.transaction(f"crash-{key}") as tx:
                    for i in range(cursor, cursor + n):
                        tx.send(src, f"rec-{i}".encode(), key=f"k{i % 3}".encode())
                        await asyncio.sleep(rnd.random() * 0.002)
                    tx.put_state(key, str(cursor + n).encode())
                await asyncio.sleep(rnd.random() * 0.01)
        else:
            group = f"g-{key}"
            async with bus.consumer([src], group=group) as consumer:
                ends = await consumer.end_offsets()
                while True:
                    pos = consumer.positions()
                    if all(pos.get(tp, 0) >= end for tp, end in ends.items()):
                        return 0
                    recs = await consumer.poll(rnd.randint(1, 5), timeout_s=0.5)
                    if not recs:
                        continue
                    await asyncio.sleep(rnd.random() * 0.01)
                    async with bus.transaction(f"crash-{key}") as tx:
                        for r in recs:
                            tx.send(dst, b"out-" + r.value, key=r.key)
                        tx.commit_offsets(group, consumer.positions())
                    await asyncio.sleep(rnd.random() * 0.01)


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    sys.exit(asyncio.run(main(cfg, *sys.argv[2:7])))
