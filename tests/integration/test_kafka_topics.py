"""Topics on a real broker as an operator sees them: configs we create, topics made beforehand.

Each test uses its own ``topic_prefix`` on the shared session broker (one node).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.bus.base import CONTROL_TOPIC, EVENTS_TOPIC, RECEIPTS_TOPIC, STATE_TOPIC
from pipeline.errors import BusError
from tests.conftest import kafka_bootstrap, make_bus

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


@pytest.mark.parametrize(
    ("topic", "partitions", "configs", "setting"),
    [
        (STATE_TOPIC, 1, {"cleanup.policy": "delete"}, "cleanup.policy=delete"),
        (RECEIPTS_TOPIC, 2, {}, "cleanup.policy=delete"),
        (EVENTS_TOPIC, 2, {"cleanup.policy": "compact"}, "cleanup.policy=compact"),
        (STATE_TOPIC, 3, {"cleanup.policy": "compact"}, "partitions=3"),
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


async def test_replication_factor_above_the_brokers_names_the_setting() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with pytest.raises(BusError) as err:
        async with make_bus(_cfg(prefix, replication_factor=3)):
            pass
    assert prefix in str(err.value)
    assert "bus.replication_factor" in str(err.value)
