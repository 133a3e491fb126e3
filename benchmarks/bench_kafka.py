"""Kafka bus throughput against raw aiokafka on the same broker, in the same run.

Publish: the pipeline's path — normalize Instantly audit records into Event v1 and publish
them with the cursor state in transactions of 500 (``KafkaBus``), through the audit poller's
own helpers (:func:`~connectors.instantly.streams.prepare_audit_batch` and the pipelined
:class:`~connectors.instantly.txn_pipeline.TxnPipeline`: batch N+1 is normalized while batch N
commits) — beside a raw aiokafka producer (idempotent, ``acks=all``, no transactions, the same
batch size) sending the same bytes. Target ≥ 70%.
Replay read: records/s through the bus's group-less read_committed consumer beside a raw
``AIOKafkaConsumer.getmany`` loop over the same records. Target ≥ 100k events/s.

Needs KAFKA_BOOTSTRAP (``make kafka-up`` then ``source deploy/kafka/.cache/run/env``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Iterator

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.instantly import streams
from connectors.instantly.normalize import normalize_audit_record
from connectors.instantly.streams import Publisher, cursor_key, prepare_audit_batch
from connectors.instantly.txn_pipeline import TxnPipeline, TxnWrite
from pipeline.bus.base import EVENTS_TOPIC, TopicSpec, default_topics, iter_records
from pipeline.bus.kafka import KafkaBus
from pipeline.bus.kafka_client import FETCH_PARTITION_BYTES, PRODUCER_BATCH_BYTES
from schemas import WorkspaceRef

WS = WorkspaceRef("019cc043-e2f1-7def-8b07-0aab88328dad", "Acme Outreach")
OBSERVED_AT = "2026-03-05T23:10:00.000Z"


def audit_records(n: int) -> list[dict[str, object]]:
    """Audit-log records shaped like the API's."""
    return [
        {
            "id": f"019cc043-{i:04x}-7def-8b07-{i:012x}",
            "timestamp": "2026-03-05T23:09:47.337Z",
            "organization_id": WS.id,
            "activity_type": 1 + i % 12,
            "ip_address": "203.0.113.9",
            "from_api": False,
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "user_id": f"019cc043-0000-7000-8000-{i % 500:012x}",
            "user_name": "Jane Doe",
            "affected_count": 1,
            "audit_metadata": {},
        }
        for i in range(n)
    ]


async def pipeline_publish(
    boot: str, prefix: str, records: list[dict[str, object]], batch: int, *, gate: bool = True
) -> float:
    """The audit poller's publish path into ``{prefix}instantly.events.v1`` (and its own state topic).

    ``gate=False`` swaps the redaction gate's encoder for the plain one (benchmark only: it separates
    the gate's cost, an issue-15 feature, from the rest of the path; production always gates).
    """
    if not gate:
        with patched_encoder():
            return await pipeline_publish(boot, prefix, records, batch)
    txn_prefix = f"bench-{uuid.uuid4().hex[:6]}"
    async with KafkaBus([boot], transactional_id_prefix=txn_prefix, partitions=2, topic_prefix=prefix) as bus:
        pub = Publisher(bus, "bench", "bench", WS)
        await bus.fence(pub.txn_id)
        t0 = time.perf_counter()
        async with TxnPipeline(bus, pub.txn_id) as line:
            for i in range(0, len(records), batch):
                prepared = await prepare_audit_batch(pub, records[i : i + batch], OBSERVED_AT, line)
                await line.submit(TxnWrite(prepared.records, {cursor_key(pub.source_id): str(i).encode()}))
            await line.drain()
        return len(records) / (time.perf_counter() - t0)


@contextlib.contextmanager
def patched_encoder() -> Iterator[None]:
    """The poller's encoder without the gate, for the duration of one benchmark leg."""
    original = streams.encode_event  # type: ignore[attr-defined]  # the module's imported name, patched
    streams.encode_event = lambda event: event.to_json()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        streams.encode_event = original  # type: ignore[attr-defined]


async def raw_publish(boot: str, topic: str, payloads: list[bytes]) -> float:
    p = AIOKafkaProducer(
        bootstrap_servers=boot, enable_idempotence=True, acks="all", max_batch_size=PRODUCER_BATCH_BYTES, linger_ms=0
    )
    await p.start()
    try:
        key = WS.id.encode()
        t0 = time.perf_counter()
        futs = [await p.send(topic, v, key=key, headers=[("event_type", b"audit.user_login")]) for v in payloads]
        await asyncio.gather(*futs)
        return len(payloads) / (time.perf_counter() - t0)
    finally:
        await p.stop()


async def bus_read(boot: str, prefix: str) -> tuple[float, int]:
    async with KafkaBus([boot], create_topics=False, topic_prefix=prefix) as bus:
        n = 0
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as c:
            t0 = time.perf_counter()
            async for recs in iter_records(c, batch=5000):
                n += len(recs)
            return n / (time.perf_counter() - t0), n


async def raw_read(boot: str, topic: str, expected: int) -> float:
    c = AIOKafkaConsumer(
        bootstrap_servers=boot,
        isolation_level="read_committed",
        max_poll_records=5000,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or {0, 1})]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        n = 0
        t0 = time.perf_counter()
        while n < expected:
            got = await c.getmany(timeout_ms=1000, max_records=5000)
            n += sum(len(v) for v in got.values())
        return n / (time.perf_counter() - t0)
    finally:
        await c.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    boot = os.environ.get("KAFKA_BOOTSTRAP")
    if not boot:
        sys.exit("KAFKA_BOOTSTRAP is not set: run `make kafka-up` and source the env file it prints")
    records = audit_records(args.events)
    payloads = [normalize_audit_record(r, WS, OBSERVED_AT).to_json() for r in records]
    pub, nogate, raw_pub, rd, raw_rd = [], [], [], [], []
    for _ in range(args.rounds):  # paired rounds, medians: the broker shares the machine's 2 cores
        run = uuid.uuid4().hex[:8]
        p_pipe, t_raw = f"bench-pipe-{run}.", f"bench-raw-{run}"
        async with KafkaBus([boot], create_topics=False) as admin_bus:
            await admin_bus.ensure_topics([TopicSpec(t_raw, 2)])
        async with KafkaBus([boot], create_topics=False, topic_prefix=p_pipe) as admin_bus:
            await admin_bus.ensure_topics(default_topics(2))
        raw_pub.append(await raw_publish(boot, t_raw, payloads))
        pub.append(await pipeline_publish(boot, p_pipe, records, args.batch))
        async with KafkaBus([boot], create_topics=False, topic_prefix=f"{p_pipe}ng.") as admin_bus:
            await admin_bus.ensure_topics(default_topics(2))
        nogate.append(await pipeline_publish(boot, f"{p_pipe}ng.", records, args.batch, gate=False))
        r, n = await bus_read(boot, p_pipe)
        assert n == args.events, (n, args.events)
        rd.append(r)
        raw_rd.append(await raw_read(boot, t_raw, args.events))
    pipe_rate, raw_rate = statistics.median(pub), statistics.median(raw_pub)
    read_rate, raw_r = statistics.median(rd), statistics.median(raw_rd)
    pub_ratio = statistics.median(a / b for a, b in zip(pub, raw_pub, strict=True))
    nogate_ratio = statistics.median(a / b for a, b in zip(nogate, raw_pub, strict=True))
    read_ratio = statistics.median(a / b for a, b in zip(rd, raw_rd, strict=True))
    print(
        f"Kafka {os.environ.get('KAFKA_VERSION', '?')}, aiokafka {aiokafka.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores; {args.events} events, "
        f"median of {args.rounds} paired rounds"
    )
    print(f"{'measure':<34}{'pipeline':>12}{'raw aiokafka':>14}{'ratio':>8}")
    print(f"{'publish (events/s)':<34}{pipe_rate:>12,.0f}{raw_rate:>14,.0f}{pub_ratio:>8.0%}   target >= 70%")
    nogate_rate = statistics.median(nogate)
    label = "  same path, redaction gate off"
    print(f"{label:<34}{nogate_rate:>12,.0f}{raw_rate:>14,.0f}{nogate_ratio:>8.0%}   (shows the gate's share)")
    print(f"{'replay read (events/s)':<34}{read_rate:>12,.0f}{raw_r:>14,.0f}{read_ratio:>8.0%}   target >= 100,000/s")


if __name__ == "__main__":
    asyncio.run(main())
