#!/usr/bin/env python3
"""End-to-end smoke check of a broker started by ``deploy/kafka/broker.py``.

Usage::

    python3 deploy/kafka/broker.py up
    <venv>/bin/python deploy/kafka/smoke_check.py [deploy/kafka/.cache/run/broker.json]

Needs ``aiokafka`` (checked with 0.14.0) in the running interpreter; nothing
else outside the standard library. The argument is ``broker.json`` or the state
dir holding it (default: ``deploy/kafka/.cache/run``).

Checks, each with its own freshly created topic (the broker has
``auto.create.topics.enable=false``):

1. PLAINTEXT: create a topic with the admin client, produce and consume a record.
2. PLAINTEXT transactions: a ``transactional_id`` producer sends a record and
   ``send_offsets_to_transaction`` for a consumer group, commits; a
   ``read_committed`` consumer sees the record and the group offset is committed.
3. SASL_PLAINTEXT with SCRAM-SHA-512 and SCRAM-SHA-256 as the SCRAM user
   (produce + consume), and a wrong password is rejected.
4. SSL with the broker's CA (``aiokafka.helpers.create_ssl_context``): produce + consume.
5. SASL_SSL with SCRAM-SHA-512: produce + consume.

Prints one line per check and a closing ``smoke: N passed, N failed``; exits 1
if any check failed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

DEFAULT_STATE = Path(__file__).resolve().parent / ".cache" / "run"


def load_facts(arg: str | None) -> dict[str, Any]:
    """Read broker.json from a file path or a state dir."""
    path = Path(arg) if arg else DEFAULT_STATE
    if path.is_dir():
        path = path / "broker.json"
    facts: dict[str, Any] = json.loads(path.read_text())
    return facts


def _conn(
    facts: dict[str, Any], listener: str, mechanism: str | None = None, password: str | None = None
) -> dict[str, Any]:
    """aiokafka connection kwargs for one listener."""
    bootstrap = {
        "PLAINTEXT": facts["bootstrap"],
        "SASL_PLAINTEXT": facts["sasl_bootstrap"],
        "SSL": facts["ssl_bootstrap"],
        "SASL_SSL": facts["sasl_ssl_bootstrap"],
    }[listener]
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": listener}
    if listener in ("SSL", "SASL_SSL"):
        ctx: ssl.SSLContext = create_ssl_context(cafile=facts["ssl_cafile"])
        kwargs["ssl_context"] = ctx
    if listener.startswith("SASL"):
        kwargs["sasl_mechanism"] = mechanism or "SCRAM-SHA-512"
        kwargs["sasl_plain_username"] = facts["scram_user"]
        kwargs["sasl_plain_password"] = password if password is not None else facts["scram_password"]
    return kwargs


async def create_topic(facts: dict[str, Any], partitions: int = 1) -> str:
    """Create a fresh topic over PLAINTEXT and return its name."""
    name = f"smoke-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**_conn(facts, "PLAINTEXT"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def roundtrip(facts: dict[str, Any], listener: str, mechanism: str | None = None) -> str:
    """Produce one record on ``listener`` and read it back; return a summary."""
    topic = await create_topic(facts)
    payload = uuid.uuid4().bytes
    producer = AIOKafkaProducer(acks="all", **_conn(facts, listener, mechanism))
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, payload, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **_conn(facts, listener, mechanism),
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    if msg.value != payload:
        raise AssertionError(f"read back {msg.value!r}, expected {payload!r}")
    return f"{topic} p{meta.partition}@{meta.offset}"


async def check_plaintext(facts: dict[str, Any]) -> str:
    """Produce + consume on PLAINTEXT."""
    return await roundtrip(facts, "PLAINTEXT")


async def check_transaction(facts: dict[str, Any]) -> str:
    """Transactional produce + send_offsets_to_transaction + read_committed consume."""
    src = await create_topic(facts)
    dst = await create_topic(facts)
    group = f"smoke-group-{uuid.uuid4().hex[:8]}"
    conn = _conn(facts, "PLAINTEXT")
    plain = AIOKafkaProducer(**conn)
    await plain.start()
    try:
        await plain.send_and_wait(src, b"input")
    finally:
        await plain.stop()
    producer = AIOKafkaProducer(transactional_id=f"smoke-tx-{uuid.uuid4().hex[:8]}", **conn)
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(dst, b"output")
            await producer.send_offsets_to_transaction({TopicPartition(src, 0): 1}, group)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        dst,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **conn,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    if msg.value != b"output":
        raise AssertionError(f"read_committed consumer got {msg.value!r}")
    checker = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **conn)
    await checker.start()
    try:
        committed = await checker.committed(TopicPartition(src, 0))
    finally:
        await checker.stop()
    if committed != 1:
        raise AssertionError(f"group {group} committed offset {committed}, expected 1")
    return f"{dst} committed; group offset {src}:0 = {committed}"


async def check_scram(facts: dict[str, Any]) -> str:
    """SASL_PLAINTEXT with SCRAM-SHA-512 and -256; a wrong password must fail."""
    out = [await roundtrip(facts, "SASL_PLAINTEXT", "SCRAM-SHA-512")]
    out.append(await roundtrip(facts, "SASL_PLAINTEXT", "SCRAM-SHA-256"))
    bad = AIOKafkaProducer(**_conn(facts, "SASL_PLAINTEXT", "SCRAM-SHA-512", password="wrong"))  # noqa: S106
    try:
        await asyncio.wait_for(bad.start(), 30)
    except (TimeoutError, KafkaError) as exc:
        out.append(f"wrong password rejected ({type(exc).__name__})")
    else:
        raise AssertionError("a wrong SCRAM password was accepted")
    finally:
        await bad.stop()
    return "; ".join(out)


async def check_ssl(facts: dict[str, Any]) -> str:
    """SSL listener verified with the generated CA."""
    return await roundtrip(facts, "SSL")


async def check_sasl_ssl(facts: dict[str, Any]) -> str:
    """SASL_SSL listener with SCRAM-SHA-512."""
    return await roundtrip(facts, "SASL_SSL", "SCRAM-SHA-512")


CHECKS: list[tuple[str, Callable[[dict[str, Any]], Awaitable[str]]]] = [
    ("PLAINTEXT produce/consume", check_plaintext),
    ("transaction + send_offsets_to_transaction", check_transaction),
    ("SASL_PLAINTEXT SCRAM", check_scram),
    ("SSL (CA-verified)", check_ssl),
    ("SASL_SSL SCRAM-SHA-512", check_sasl_ssl),
]


async def run(facts: dict[str, Any]) -> int:
    """Run every check; return the number of failures."""
    failed = 0
    for name, check in CHECKS:
        t0 = time.monotonic()
        try:
            detail = await asyncio.wait_for(check(facts), 90)
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - t0:.2f}s)\n{traceback.format_exc()}")
        else:
            print(f"ok   {name} ({time.monotonic() - t0:.2f}s): {detail}")
    print(f"smoke: {len(CHECKS) - failed} passed, {failed} failed")
    return failed


def main(argv: list[str]) -> int:
    """CLI entry point."""
    facts = load_facts(argv[1] if len(argv) > 1 else None)
    print(f"Kafka {facts['kafka_version']} pid {facts['pid']} bootstrap {facts['bootstrap']}")
    return 1 if asyncio.run(run(facts)) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
