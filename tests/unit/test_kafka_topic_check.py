"""Topic configs the Kafka bus sets on creation, and its verdict on topics made beforehand."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.bus.base import EVENTS_TOPIC, STATE_TOPIC, default_topics
from pipeline.bus.kafka_admin import KafkaTopics
from pipeline.bus.kafka_client import KafkaConnection
from pipeline.bus.kafka_topic_check import creation_configs, min_insync_replicas, problems


def test_min_insync_replicas_follows_kafkas_durable_setup() -> None:
    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 2]


def test_creation_configs_set_min_insync_replicas_and_policy() -> None:
    events, _, _, state, receipts = default_topics(3, 1000)
    assert creation_configs(events, 3) == {"retention.ms": "1000", "min.insync.replicas": "2"}
    assert creation_configs(state, 1)["cleanup.policy"] == "compact"
    assert creation_configs(state, 1)["min.insync.replicas"] == "1"
    assert creation_configs(receipts, 1)["cleanup.policy"] == "compact"


def test_compact_delete_keeps_keyed_topics_and_data_partitions_are_free() -> None:
    events, _, _, state, _ = default_topics(3, 1000)
    assert problems(state, "s", 1, {"cleanup.policy": "compact,delete"}) == []
    assert problems(events, "e", 7, {"cleanup.policy": "delete"}) == []
    assert problems(events, "e", 7, {}) == []
    assert problems(state, "s", 1, {}) == [
        "topic s: cleanup.policy=delete but it must be compact (it holds the newest value per key)"
    ]


def test_compact_delete_with_a_retention_limit_is_refused_for_keyed_topics() -> None:
    """Kafka's docs: with ``delete,compact`` "old segments will be discarded per the retention time and
    size configuration" — a state value not rewritten within a week (the broker default) would vanish."""
    _, _, _, state, receipts = default_topics(3, 1000)
    weekly = {"cleanup.policy": "compact,delete", "retention.ms": "604800000", "retention.bytes": "-1"}
    assert problems(state, "s", 1, weekly) == [
        "topic s: cleanup.policy=compact,delete with retention.ms=604800000: the newest value of a key not written"
        " again within that limit would be deleted (set cleanup.policy=compact, or retention.ms=-1 and"
        " retention.bytes=-1)"
    ]
    assert len(problems(receipts, "r", 3, {**weekly, "retention.ms": "-1", "retention.bytes": "10"})) == 1
    assert problems(state, "s", 1, {**weekly, "retention.ms": "-1"}) == []


class _AdminAnswering:
    """Answers like aiokafka's admin client for a principal allowed to list topics but not to describe them.

    Per topic, Kafka answers ``TOPIC_AUTHORIZATION_FAILED`` (29) with no partitions and no configs.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names

    async def list_topics(self) -> list[str]:
        return self.names

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"error_code": 29, "topic": n, "partitions": []} for n in names]

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        answer = SimpleNamespace(resources=[(29, "denied", 2, r.name, []) for r in resources])
        return [answer]


async def test_topics_the_cluster_will_not_describe_are_skipped_not_judged_by_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty answer must not read as 'cleanup.policy=delete, 0 partitions': the start goes on, with a warning."""
    specs = default_topics(3, 1000)
    topics = KafkaTopics(KafkaConnection(["127.0.0.1:1"], topic_prefix="p."))
    topics._admin = _AdminAnswering(["p." + s.name for s in specs])
    with caplog.at_level(logging.WARNING):
        await topics.ensure(specs)
    assert any("would not describe" in r.getMessage() for r in caplog.records)


def test_warnings_name_a_max_message_bytes_below_the_created_one() -> None:
    from pipeline.bus.kafka_topic_check import warnings

    state = next(s for s in default_topics() if s.name == STATE_TOPIC)
    [w] = warnings(state, "p." + STATE_TOPIC, {"max.message.bytes": "1048588"})
    assert f"topic p.{STATE_TOPIC}: max.message.bytes=1048588" in w and "5242880" in w
    assert warnings(state, STATE_TOPIC, {"max.message.bytes": "5242880"}) == []
    events = next(s for s in default_topics() if s.name == EVENTS_TOPIC)
    assert warnings(events, EVENTS_TOPIC, {"max.message.bytes": "1048588"}) == []


async def test_an_unreachable_broker_names_the_setting_once() -> None:
    """Nothing listening at ``bus.bootstrap_servers``: the error named the address but not the
    setting, and said the aiokafka class twice (``KafkaConnectionError: KafkaConnectionError: …``)."""
    import socket

    from pipeline.bus.kafka import KafkaBus
    from pipeline.errors import BusError

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BusError) as info:
        async with KafkaBus([f"127.0.0.1:{port}"], request_timeout_ms=3000):
            pass
    msg = str(info.value)
    assert f"127.0.0.1:{port} (bus.bootstrap_servers)" in msg, msg
    assert "KafkaConnectionError: KafkaConnectionError" not in msg, msg
