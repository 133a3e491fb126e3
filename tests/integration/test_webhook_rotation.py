"""Secret rotation under load: A → [A, B] → [B] while deliveries keep arriving; no valid one is refused."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pydantic import SecretStr

from pipeline.bus.sqlite import SqliteBus
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.unit.test_webhook_support import SECRET_A, SECRET_B, delivery, events_of, hdrs, make_config, serve

PATH = "/hooks/crm"


async def test_rotation_under_load_rejects_no_valid_delivery(tmp_path: Path) -> None:
    """Senders use A, then A or B, then only B (after in-flight A requests finished); every delivery is accepted."""
    rnd = random.Random(7)
    async with SqliteBus(tmp_path / "bus.db") as bus:
        r = WebhookReceiver(make_config((SECRET_A,)), bus)
        phase = {"name": "A"}
        in_flight_a = 0
        statuses: list[int] = []
        counter = iter(range(1_000_000))
        stop = asyncio.Event()
        a_drained = asyncio.Event()
        async with serve(r) as c:

            async def sender() -> None:
                nonlocal in_flight_a
                while not stop.is_set():
                    name = phase["name"]
                    secret = SECRET_A if name == "A" or (name == "AB" and rnd.random() < 0.5) else SECRET_B
                    n = next(counter)
                    if secret == SECRET_A:
                        in_flight_a += 1
                    try:
                        resp = await c.post(PATH, data=delivery(n), headers=hdrs(secret))
                        await resp.read()
                        statuses.append(resp.status)
                    finally:
                        if secret == SECRET_A:
                            in_flight_a -= 1
                            if in_flight_a == 0 and phase["name"] == "B":
                                a_drained.set()

            tasks = [asyncio.create_task(sender()) for _ in range(8)]
            await asyncio.sleep(0.4)
            r.rotate("crm", [SecretStr(SECRET_A), SecretStr(SECRET_B)])  # 1. receiver accepts both
            phase["name"] = "AB"  # 2. the sender switches over; retries with A still arrive
            await asyncio.sleep(0.4)
            phase["name"] = "B"  # 3. the sender uses only B ...
            if in_flight_a == 0:
                a_drained.set()
            await a_drained.wait()  # ... and nothing signed with A is still on its way
            r.rotate("crm", [SecretStr(SECRET_B)])  # 4. retire A
            await asyncio.sleep(0.4)
            stop.set()
            await asyncio.gather(*tasks)
            retired = await c.post(PATH, data=delivery(10**6), headers=hdrs(SECRET_A))
            assert retired.status == 401
        assert len(statuses) > 100
        assert set(statuses) == {200}, f"valid deliveries refused: {sorted(set(statuses))}"
        assert r.rejections == {"wrong_secret": 1}
        assert len(await events_of(bus)) == len(statuses) == r.accepted
