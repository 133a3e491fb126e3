"""Topics on a real broker as an operator sees them: configs we create, topics made beforehand.

Each test uses its own ``topic_prefix`` on the shared session broker (one node).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pipeline.bus.base import (
    ALERTS_TOPIC,
    CONTROL_TOPIC,
    DEADLETTER_TOPIC,
    EVENTS_TOPIC,
    RECEIPTS_TOPIC,
    STATE_TOPIC,
    OutRecord,
    iter_records,
)
from pipeline.errors import BusError
from pipeline.observability.telemetry import Telemetry, set_telemetry
from pipeline.observability.telemetry_config import TelemetryConfig
from tests.conftest import kafka_bootstrap, make_bus
from tests.integration.helpers import REPO, cli_command

pytestmark = [pytest.mark.kafka]


def _cfg(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "kafka",
        "bootstrap_servers": [kafka_bootstrap()],
        "partitions": 2,
        "transactional_id_prefix": f"test-{uuid.uuid4().hex[:8]}",
        "topic_prefix": prefix,
        **extra,
    }


async def _admin() -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
    await admin.start()
    return admin


async def _configs(names: list[str]) -> dict[str, dict[str, str]]:
    admin = await _admin()
    try:
        answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    return {res[3]: {e[0]: e[1] for e in res[4]} for a in answers for res in a.resources}


async def _precreate(name: str, partitions: int, configs: Mapping[str, str]) -> None:
    admin = await _admin()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(configs))])
    finally:
        await admin.close()


async def test_created_topics_carry_documented_configs() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    async with make_bus(_cfg(prefix)):
        pass
    got = await _configs([prefix + t for t in (EVENTS_TOPIC, STATE_TOPIC, RECEIPTS_TOPIC, CONTROL_TOPIC)])
    events = got[prefix + EVENTS_TOPIC]
    assert events["cleanup.policy"] == "delete"
    assert events["retention.ms"] == str(30 * 86_400_000)
    for keyed in (STATE_TOPIC, RECEIPTS_TOPIC, CONTROL_TOPIC):
        assert got[prefix + keyed]["cleanup.policy"] == "compact"
    assert got[prefix + STATE_TOPIC]["max.message.bytes"] == "5242880"
    assert all(c["min.insync.replicas"] == "1" for c in got.values())


async def test_precreated_data_topic_with_other_partitions_is_used() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + EVENTS_TOPIC, 5, {"retention.ms": "3600000"})
    async with make_bus(_cfg(prefix)) as bus:
        assert await bus.partitions(EVENTS_TOPIC) == 5
    assert (await _configs([prefix + EVENTS_TOPIC]))[prefix + EVENTS_TOPIC]["retention.ms"] == "3600000"


SIZE_LIMITED = {"cleanup.policy": "delete,compact", "retention.ms": "-1", "retention.bytes": "1000000"}


@pytest.mark.parametrize(
    ("topic", "partitions", "configs", "setting"),
    [
        (STATE_TOPIC, 1, {"cleanup.policy": "delete"}, "cleanup.policy=delete"),
        (RECEIPTS_TOPIC, 2, {}, "cleanup.policy=delete"),
        (EVENTS_TOPIC, 2, {"cleanup.policy": "compact"}, "cleanup.policy=compact"),
        (STATE_TOPIC, 3, {"cleanup.policy": "compact"}, "partitions=3"),
        (STATE_TOPIC, 1, {"cleanup.policy": "compact,delete"}, "cleanup.policy=compact,delete with retention.ms="),
        (CONTROL_TOPIC, 12, SIZE_LIMITED, "cleanup.policy=compact,delete with retention.bytes=1000000"),
        (CONTROL_TOPIC, 4, {"cleanup.policy": "compact"}, "partitions=4"),
    ],
)
async def test_precreated_topic_that_cannot_serve_is_refused_naming_topic_and_setting(
    topic: str, partitions: int, configs: dict[str, str], setting: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + topic, partitions, configs)
    with pytest.raises(BusError) as err:
        async with make_bus(_cfg(prefix)):
            pass
    assert f"topic {prefix}{topic}: {setting}" in str(err.value)


async def test_precreated_keyed_topic_compacted_and_deleted_without_retention_is_used() -> None:
    """``cleanup.policy=compact,delete`` with no time or size limit never expires a newest value: accepted."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    unlimited = {"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "-1"}
    await _precreate(prefix + STATE_TOPIC, 1, {**unlimited, "max.message.bytes": "5242880"})
    async with make_bus(_cfg(prefix)) as bus:
        assert await bus.partitions(STATE_TOPIC) == 1


async def test_replication_factor_above_the_brokers_names_the_setting() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with pytest.raises(BusError) as err:
        async with make_bus(_cfg(prefix, replication_factor=3)):
            pass
    assert prefix in str(err.value)
    assert "bus.replication_factor" in str(err.value)


@pytest.mark.parametrize("command", [["replay", "--since", "30d"], ["status"], ["gaps", "--since", "7d"]])
def test_read_only_commands_create_no_topics(tmp_path: Path, command: list[str]) -> None:
    """A reader on a prefix that holds nothing (a typo) fails in one line naming the topic, exit 1;
    it creates nothing (it used to create the six topics and report "0 matched of 0 scanned")."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"bus": _cfg(prefix)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANTLY_")}
    done = subprocess.run(
        [*cli_command(), *command, "--config", str(config)], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    err = done.stderr.decode()
    assert done.returncode == 1, (done.stdout, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"kafka topic {prefix}instantly." in lines[0]
    assert "does not exist" in lines[0]
    assert not [t for t in asyncio.run(_topics()) if t.startswith(prefix)]


async def test_read_only_bus_opens_existing_topics() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    async with make_bus(_cfg(prefix)):
        pass
    async with make_bus(_cfg(prefix), read_only=True) as bus:
        assert await bus.partitions(EVENTS_TOPIC) == 2


async def _topics() -> list[str]:
    admin = await _admin()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def test_record_over_max_message_bytes_fails_its_transaction_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record over its topic's max.message.bytes: refused before sending, naming size, topic and
    limit; not retried, not logged as "broker unreachable"; nothing of the transaction written.
    A batch of small records over the limit, refused by the broker, gets the same treatment.
    (An oversized *event* is dead-lettered instead: ``test_kafka_oversize.py``.)"""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + EVENTS_TOPIC, 2, {"max.message.bytes": "4000"})
    await _precreate(prefix + ALERTS_TOPIC, 2, {"max.message.bytes": "4000"})
    caplog.set_level("INFO", logger="instantly_audit.bus.kafka")
    async with make_bus(_cfg(prefix)) as bus:
        with pytest.raises(BusError) as big:
            async with bus.transaction("w") as txn:
                txn.send(EVENTS_TOPIC, b"small", key=b"ws")
                txn.send(ALERTS_TOPIC, b"x" * 5000, key=b"ws")
                txn.put_state("k", b"v")
        msg = str(big.value)
        assert not big.value.retriable
        assert f"{prefix}{ALERTS_TOPIC}" in msg and "max.message.bytes of 4,000" in msg, msg
        assert "5,0" in msg, msg  # the record's size on the broker (value + overhead)

        with pytest.raises(BusError) as batch:  # 3 records of 2 KB: each fits, their batch does not
            await bus.publish([OutRecord(EVENTS_TOPIC, b"y" * 2000, key=b"ws") for _ in range(3)])
        assert "a batch of records" in str(batch.value) and "max.message.bytes of 4,000" in str(batch.value)
        assert not batch.value.retriable

        await bus.publish([OutRecord(EVENTS_TOPIC, b"small", key=b"ws")])  # the writer works on
        assert await bus.get_state("k") is None
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as c:
            values = [r.value async for batch_ in iter_records(c) for r in batch_]
        assert values == [b"small"]
    messages = [r.getMessage() for r in caplog.records]
    assert not any("unreachable" in m for m in messages), messages
    assert sum("refused; not retried" in m for m in messages) == 2, messages


async def test_raising_max_message_bytes_at_runtime_lets_the_record_through() -> None:
    """The documented recovery for an oversized record — raise the topic's max.message.bytes — works
    without a restart: the cached limit is asked again before a record is refused (or an event
    dead-lettered)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topic = prefix + ALERTS_TOPIC
    await _precreate(topic, 2, {"max.message.bytes": "4000"})
    async with make_bus(_cfg(prefix)) as bus:
        with pytest.raises(BusError, match=r"max\.message\.bytes of 4,000"):
            await bus.publish([OutRecord(ALERTS_TOPIC, b"x" * 5000, key=b"ws")])
        admin = await _admin()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "65536"})])
        finally:
            await admin.close()
        for _ in range(50):  # the broker applies a config change within a moment
            if (await _configs([topic]))[topic]["max.message.bytes"] == "65536":
                break
            await asyncio.sleep(0.1)
        await bus.publish([OutRecord(ALERTS_TOPIC, b"x" * 5000, key=b"ws")])  # the same process, no restart
        async with bus.consumer([ALERTS_TOPIC], start="earliest") as c:
            values = [r.value async for batch_ in iter_records(c) for r in batch_]
        assert values == [b"x" * 5000]


async def test_precreated_state_topic_with_default_message_size_is_used_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A state topic made by an earlier version (Kafka's 1 MB default) still serves, but start says so."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + STATE_TOPIC, 1, {"cleanup.policy": "compact"})
    caplog.set_level("WARNING", logger="instantly_audit.bus")
    async with make_bus(_cfg(prefix)) as bus, bus.transaction("w") as txn:
        txn.put_state("k", b"v")
    problems = [str(getattr(r, "problem", "")) for r in caplog.records]
    hits = [p for p in problems if f"topic {prefix}{STATE_TOPIC}: max.message.bytes=" in p]
    assert len(hits) == 1, problems
    assert "below the 5242880" in hits[0] and "--bootstrap-server" in hits[0]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_topics_and_records_from_other_producers_are_read(codec: str) -> None:
    """An operator sets ``compression.type`` on the topics (the broker then stores every batch in
    that codec), or another tool writes compressed records: events and state are read back.

    aiokafka decodes snappy, lz4 and zstd only with ``cramjam`` installed; without it every read of
    such a batch failed (``UnsupportedCodecError: Libraries for zstd compression codec not found``)
    and a sink, the rules or a poller loading its cursor could read nothing at all."""
    from aiokafka import AIOKafkaProducer

    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + EVENTS_TOPIC, 2, {"compression.type": codec})
    state = {"compression.type": codec, "cleanup.policy": "compact", "max.message.bytes": "5242880"}
    await _precreate(prefix + STATE_TOPIC, 1, state)
    async with make_bus(_cfg(prefix)) as bus:
        async with bus.transaction("w") as txn:
            txn.send(EVENTS_TOPIC, b'{"from":"the pipeline"}' * 20, key=b"ws-1")
            txn.put_state("cursor/ws-1", b'{"after":"c-42"}')
        async with bus.consumer([EVENTS_TOPIC], group=None, start="earliest") as consumer:
            assert len([r async for batch in iter_records(consumer) for r in batch]) == 1
        other = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), compression_type=codec)
        await other.start()
        try:
            await other.send_and_wait(prefix + EVENTS_TOPIC, b'{"from":"another tool"}' * 20, key=b"ws-x")
        finally:
            await other.stop()
        async with bus.consumer([EVENTS_TOPIC], group=None, start="earliest") as consumer:
            values = [r.value async for batch in iter_records(consumer) for r in batch]
    assert sorted(v[:24] for v in values) == [b'{"from":"another tool"}{', b'{"from":"the pipeline"}{']
    async with make_bus(_cfg(prefix), read_only=True) as reader:
        assert await reader.get_state("cursor/ws-1") == b'{"after":"c-42"}'


async def _delete_and_wait(name: str) -> None:
    admin = await _admin()
    try:
        await admin.delete_topics([name])
        for _ in range(100):
            if name not in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise AssertionError(f"{name} was not deleted")


async def test_topic_deleted_while_running_is_named_counted_and_created_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator deletes a topic under a running pipeline (a cleanup script, a Terraform apply).

    The next transaction writing to it used to hang for ever — aiokafka retries AddPartitionsToTxn
    on UNKNOWN_TOPIC_OR_PARTITION without end — while the log said "Kafka broker unreachable". Now
    the stalled transaction is aborted, an error names the topic, ``pipeline_bus_errors_total`` counts
    it, and the topic is created again with the pipeline's configs (as ``run`` does at start), so the
    record is committed once."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig(prometheus=False), metric_readers=[reader])
    previous = set_telemetry(telemetry)
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topic = prefix + EVENTS_TOPIC

    async def scenario() -> list[bytes]:
        async with make_bus(_cfg(prefix, request_timeout_secs=5)) as bus:
            await bus.publish([OutRecord(EVENTS_TOPIC, b'{"n":1}', b"ws-1")])
            await _delete_and_wait(topic)
            with caplog.at_level(logging.WARNING, logger="instantly_audit"):
                await bus.publish([OutRecord(EVENTS_TOPIC, b'{"n":2}', b"ws-1")])
            gc.collect()  # the abandoned producer's failed batches: no "Future exception was never retrieved"
            await asyncio.sleep(0)
            gc.collect()
            async with bus.consumer([EVENTS_TOPIC], group=None, start="earliest") as consumer:
                return [r.value async for batch in iter_records(consumer) for r in batch]

    try:
        run = asyncio.ensure_future(scenario())
        done, _ = await asyncio.wait({run}, timeout=90)  # not wait_for: closing the bus hung too
        if not done:
            run.cancel()
            pytest.fail(f"publishing to the deleted topic {topic} did not finish in 90 s")
        assert run.result() == [b'{"n":2}']
        got = (await _configs([topic]))[topic]
        assert got["cleanup.policy"] == "delete" and got["retention.ms"] == str(30 * 86_400_000)
        named = [r for r in caplog.records if topic in getattr(r, "topics", ())]
        assert named and "deleted" in named[0].getMessage(), [r.getMessage() for r in caplog.records]
        assert not any("broker unreachable" in r.getMessage() for r in caplog.records)
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        data = reader.get_metrics_data()
        errors = [  # pipeline_bus_errors_total{error_type="TopicMissing"} on /metrics
            getattr(p, "value", 0)
            for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "pipeline.bus.errors"
            for p in m.data.data_points
            if "TopicMissing" in dict(p.attributes or {}).values()
        ]
        assert sum(errors) >= 1
    finally:
        set_telemetry(previous)
        telemetry.shutdown()


async def test_compression_type_compresses_what_the_pipeline_produces() -> None:
    """``bus.compression_type: zstd``: the producers compress their batches, so a record of 60 KB of
    JSON goes into a topic whose ``max.message.bytes`` (20,000) it exceeds uncompressed — the limit
    applies to the batch as sent. Uncompressed (the default) the same event is dead-lettered (a
    DeadLetter v1 naming the limit) instead."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await _precreate(prefix + EVENTS_TOPIC, 2, {"max.message.bytes": "20000"})
    value = b'{"type":"audit.user_login","raw":' + b'{"field":"value"},' * 3_300 + b"{}}"
    assert len(value) > 50_000
    async with make_bus(_cfg(prefix)) as plain:
        await plain.publish([OutRecord(EVENTS_TOPIC, value, b"ws-1")])
        async with plain.consumer([DEADLETTER_TOPIC], group=None, start="earliest") as consumer:
            [letter] = [r.value async for batch in iter_records(consumer) for r in batch]
        assert b"record_too_large" in letter and b"20,000 bytes" in letter
    async with make_bus(_cfg(prefix, compression_type="zstd")) as packed:
        await packed.publish([OutRecord(EVENTS_TOPIC, value, b"ws-1")])
        async with packed.consumer([EVENTS_TOPIC], group=None, start="earliest") as consumer:
            assert [r.value async for batch in iter_records(consumer) for r in batch] == [value]
