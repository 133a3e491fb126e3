"""The receiver on each bus (SQLite and a real Kafka broker): exactly-once publish, dedup across restarts,
rejections leave nothing, bus failures answer 503 and acknowledge nothing; on Kafka, a commit the
broker refuses fails its whole group and leaves nothing visible."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from pipeline.bus.base import DEADLETTER_TOPIC, Bus, iter_records
from pipeline.sources.webhook.dedup import SeenWindow, body_digest
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.conftest import make_bus
from tests.unit.test_webhook_support import (
    JSON,
    SECRET_A,
    FlakyBus,
    delivery,
    events_of,
    hdrs,
    make_config,
    serve,
    unique_names,
)


async def test_publish_dedup_and_restart(bus: Bus, bus_factory: Callable[[], Bus]) -> None:
    """Concurrent deliveries are published once each; redeliveries, even after a restart, are not republished."""
    source, ws = unique_names()
    path = f"/hooks/{source}"
    cfg = make_config(source=source, workspace=ws)
    r = WebhookReceiver(cfg, bus)
    async with serve(r) as c:
        resps = await asyncio.gather(*(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in range(60)))
        assert [x.status for x in resps] == [200] * 60
        again = await c.post(path, data=delivery(3, workspace=ws), headers=hdrs())
        assert (await again.json())["status"] == "duplicate"
    async with bus_factory() as bus2:
        r2 = WebhookReceiver(cfg, bus2)
        async with serve(r2) as c:
            resps = await asyncio.gather(
                *(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in range(60))
            )
            assert {(await x.json())["status"] for x in resps} == {"duplicate"}
            assert (await c.post(path, data=delivery(60, workspace=ws), headers=hdrs())).status == 200
        assert (r2.accepted, r2.duplicates) == (1, 60)
        recs = await events_of(bus2, ws)
    seqs = sorted(orjson.loads(x.value)["raw"]["email_id"] for x in recs)
    assert len(seqs) == len(set(seqs)) == 61
    assert r.committer.transactions < 61


async def test_rejections_leave_nothing_in_the_bus(bus: Bus) -> None:
    """Every kind of refused request writes neither events nor dedup state; the two authenticated
    bodies that are no valid delivery become dead letters (answered 200), on both buses."""
    source, ws = unique_names()
    path = f"/hooks/{source}"
    r = WebhookReceiver(make_config(source=source, workspace=ws, max_body_bytes=2048), bus)
    dup: CIMultiDict[str] = CIMultiDict(JSON)
    dup.add("X-Webhook-Secret", SECRET_A)
    dup.add("X-Webhook-Secret", SECRET_A)
    cases: list[tuple[str, object, bytes, int]] = [
        (path, dict(JSON), delivery(1, workspace=ws), 401),
        (path, hdrs("wrong-wrong-wrong-wrong"), delivery(1, workspace=ws), 401),
        (path, hdrs(SECRET_A[:-1]), delivery(1, workspace=ws), 401),
        (path, dup, delivery(1, workspace=ws), 401),
        (f"{path}?secret={SECRET_A}", dict(JSON), delivery(1, workspace=ws), 401),
        (path, {"Content-Type": "text/plain", "X-Webhook-Secret": "wrong"}, delivery(1, workspace=ws), 401),
        (path, {**hdrs(), "Content-Encoding": "gzip"}, delivery(1, workspace=ws), 415),
        (path, hdrs(), delivery(1, workspace=ws, pad="x" * 4096), 413),
    ]
    letters = [b"{nope", delivery(1)]  # malformed; another workspace
    async with serve(r) as c:
        for p, headers, body, status in cases:
            assert (await c.post(p, data=body, headers=headers)).status == status  # type: ignore[arg-type]
        assert await events_of(bus, ws) == []
        assert await bus.state_items(f"webhook/seen/{source}/") == {}
        for body in letters:
            answer = await c.post(path, data=body, headers=hdrs())
            assert answer.status == 200 and (await answer.json())["status"] == "dead_lettered"
    assert await events_of(bus, ws) == []
    async with bus.consumer([DEADLETTER_TOPIC], start="earliest") as consumer:
        found = [orjson.loads(x.value) async for batch in iter_records(consumer) for x in batch]
    mine = [x for x in found if x["component"] == source]
    assert sorted(x["reason"] for x in mine) == ["malformed_json", "workspace_mismatch"]
    assert sum(r.rejections.values()) == len(cases) + len(letters) and r.accepted == 0


async def test_bus_failure_answers_503_and_acknowledges_nothing(bus: Bus) -> None:
    """While commits fail: 503 with Retry-After and nothing on the bus; after recovery each delivery once."""
    source, ws = unique_names()
    path = f"/hooks/{source}"
    flaky = FlakyBus(bus)
    r = WebhookReceiver(make_config(source=source, workspace=ws), flaky)  # type: ignore[arg-type]
    async with serve(r) as c:
        flaky.down = True
        resps = await asyncio.gather(*(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in range(10)))
        assert {x.status for x in resps} == {503} and all(x.headers.get("Retry-After") for x in resps)
        assert (await c.get("/readyz")).status == 503
        assert await events_of(bus, ws) == []
        flaky.down = False
        resps = await asyncio.gather(*(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in range(10)))
        assert {x.status for x in resps} == {200}
        assert (await c.get("/readyz")).status == 200
    assert len(await events_of(bus, ws)) == 10


@pytest.mark.parametrize("bus_kind", [pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)
async def test_kafka_commit_failure_fails_the_whole_group(
    bus: Bus, bus_factory: Callable[[], Bus], caplog: pytest.LogCaptureFixture
) -> None:
    """A real broker refusal (another process took the writer id, fencing this one) fails every
    delivery of the group being committed with 503, and none of them is visible read_committed;
    every 200 is in the bus once, and the senders' retries are each published once. The dropped
    producer leaves no unretrieved future exception behind."""
    source, ws = unique_names()
    path = f"/hooks/{source}"
    cfg = make_config(source=source, workspace=ws)
    r = WebhookReceiver(cfg, bus)
    async with serve(r) as c:
        assert (await c.post(path, data=delivery(0, workspace=ws), headers=hdrs())).status == 200
        async with bus_factory() as other:
            await other.fence(cfg.writer_id)  # bumps the producer epoch: this receiver's next commit is refused
            resps = await asyncio.gather(
                *(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in range(1, 25))
            )
        status = {n: x.status for n, x in zip(range(1, 25), resps, strict=True)}
        refused = sorted(n for n, s in status.items() if s == 503)
        assert refused and set(status.values()) <= {200, 503}
        assert r.committer.last_failure is not None
        gc.collect()  # an unretrieved exception on the dropped producer's futures would be logged now
        assert not [rec for rec in caplog.records if "never retrieved" in rec.getMessage()]
        seen = await numbers_in_bus(bus, ws)
        assert seen == Counter([0, *(n for n, s in status.items() if s == 200)])
        retries = await asyncio.gather(*(c.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in refused))
        assert {x.status for x in retries} == {200}
        assert {(await x.json())["status"] for x in retries} == {"accepted"}
    assert await numbers_in_bus(bus, ws) == Counter(range(25))


@pytest.mark.parametrize("bus_kind", [pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)
async def test_two_replicas_with_the_default_config_never_fence_each_other(
    bus_cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two receivers (two processes: own bus objects, own host names) behind a load balancer take
    deliveries alternately: each has its own writer id by default, so none is fenced, nothing gets
    503, /readyz stays 200; each delivery is in the bus once, and a third replica started later
    knows every one of them as a duplicate (it loads both writers' windows). The two replicas'
    deliveries are paired in the same window slots: had they written shared slot keys, each
    write would have dropped the other replica's entries."""
    source, ws = unique_names()
    path = f"/hooks/{source}"
    by_slot: dict[int, list[int]] = {}
    for n in range(5000):
        by_slot.setdefault(SeenWindow.slot_of(bytes.fromhex(body_digest(delivery(n, workspace=ws)))[:16]), []).append(n)
    pairs = [ns[:2] for ns in by_slot.values() if len(ns) >= 2][:15]
    numbers = [n for pair in pairs for n in pair]  # a's, b's, a's, ...: each pair shares a slot
    configs = []
    for host in ("instantly-audit-webhook-5f7d9c-a1b2c", "instantly-audit-webhook-5f7d9c-d3e4f", "replica-3"):
        monkeypatch.setenv("HOSTNAME", host)
        configs.append(make_config(source=source, workspace=ws))
    assert len({c.writer_id for c in configs}) == 3
    async with make_bus(bus_cfg) as bus_a, make_bus(bus_cfg) as bus_b:
        a, b = WebhookReceiver(configs[0], bus_a), WebhookReceiver(configs[1], bus_b)
        async with serve(a) as ca, serve(b) as cb:
            status = []
            for i, n in enumerate(numbers):
                resp = await (ca, cb)[i % 2].post(path, data=delivery(n, workspace=ws), headers=hdrs())
                status.append(resp.status)
            assert status == [200] * 30
            assert [(await c.get("/readyz")).status for c in (ca, cb)] == [200, 200]
            assert (a.accepted, b.accepted) == (15, 15)
        assert await numbers_in_bus(bus_a, ws) == Counter(numbers)
    async with make_bus(bus_cfg) as bus_c:
        c3 = WebhookReceiver(configs[2], bus_c)
        async with serve(c3) as cc:
            resps = [await cc.post(path, data=delivery(n, workspace=ws), headers=hdrs()) for n in numbers]
            assert [(await x.json())["status"] for x in resps] == ["duplicate"] * 30
        assert await numbers_in_bus(bus_c, ws) == Counter(numbers)


async def numbers_in_bus(bus: Bus, ws: str) -> Counter[int]:
    """How often each delivery number is in the bus (read_committed on Kafka)."""
    return Counter(int(orjson.loads(x.value)["raw"]["email_id"][-12:]) for x in await events_of(bus, ws))
