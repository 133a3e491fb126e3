"""The Kafka bus over the broker's authenticated listeners: TLS, SASL/SCRAM, SASL/SCRAM over TLS.

Managed clusters (Confluent Cloud, MSK, Aiven) take SASL_SSL with SCRAM or PLAIN; the test broker
(``deploy/kafka``) opens SSL, SASL_PLAINTEXT and SASL_SSL listeners beside PLAINTEXT, with a SCRAM
user for both mechanisms and its own CA. Each test writes a record in a transaction and reads it
back through the bus — the same config path `run` takes — and a wrong password fails with a message
that names the cause and never the password.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.bus.base import EVENTS_TOPIC, iter_records
from pipeline.errors import BusError
from tests.conftest import kafka_bootstrap, make_bus

pytestmark = [pytest.mark.kafka]


def _broker_env(name: str) -> str:
    """A setting the test broker exports beside KAFKA_BOOTSTRAP (``deploy/kafka/.cache/run/env``)."""
    kafka_bootstrap()  # skips (fails under CI=true) without a broker
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"{name} is not set: the test broker exports it with KAFKA_BOOTSTRAP")
    return value


def _cfg(bootstrap: str, security: dict[str, Any]) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {"type": "kafka", "bootstrap_servers": [bootstrap], "partitions": 1, "topic_prefix": f"sec{tag}.",
            "transactional_id_prefix": f"sec-{tag}", "request_timeout_secs": 10, "security": security}  # fmt: skip


async def _round_trip(cfg: dict[str, Any]) -> list[bytes]:
    async with make_bus(cfg) as bus:
        async with bus.transaction("w") as txn:
            txn.send(EVENTS_TOPIC, b"over an authenticated listener", key=b"ws")
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
            return [r.value async for batch in iter_records(consumer) for r in batch]


def _scram(mechanism: str, password: str | None = None) -> dict[str, Any]:
    return {"sasl_mechanism": mechanism, "username": _broker_env("KAFKA_SCRAM_USER"),
            "password": SecretStr(password or _broker_env("KAFKA_SCRAM_PASSWORD"))}  # fmt: skip


async def test_tls_listener_with_the_brokers_ca() -> None:
    cfg = _cfg(_broker_env("KAFKA_SSL_BOOTSTRAP"), {"protocol": "SSL", "ssl_cafile": _broker_env("KAFKA_SSL_CAFILE")})
    assert await _round_trip(cfg) == [b"over an authenticated listener"]


async def test_scram_sha_256_over_sasl_plaintext() -> None:
    cfg = _cfg(_broker_env("KAFKA_SASL_BOOTSTRAP"), {"protocol": "SASL_PLAINTEXT", **_scram("SCRAM-SHA-256")})
    assert await _round_trip(cfg) == [b"over an authenticated listener"]


async def test_scram_sha_512_over_sasl_ssl() -> None:
    security = {"protocol": "SASL_SSL", "ssl_cafile": _broker_env("KAFKA_SSL_CAFILE"), **_scram("SCRAM-SHA-512")}
    cfg = _cfg(_broker_env("KAFKA_SASL_SSL_BOOTSTRAP"), security)
    assert await _round_trip(cfg) == [b"over an authenticated listener"]


async def test_a_wrong_password_names_the_cause_not_the_password() -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    cfg = _cfg(_broker_env("KAFKA_SASL_BOOTSTRAP"), {"protocol": "SASL_PLAINTEXT", **_scram("SCRAM-SHA-256", wrong)})
    with pytest.raises(BusError) as info:
        await _round_trip(cfg)
    message = str(info.value)
    assert wrong not in message
    assert "the broker said:" in message and "SaslAuthenticationFailed" in message, message


async def test_a_protocol_the_listener_does_not_speak_gets_a_hint() -> None:
    """TLS towards the PLAINTEXT listener: aiokafka gives no reason at all; the error says what to check."""
    cfg = _cfg(kafka_bootstrap(), {"protocol": "SSL", "ssl_cafile": _broker_env("KAFKA_SSL_CAFILE")})
    cfg["request_timeout_secs"] = 5
    with pytest.raises(BusError, match=r"is bus\.security\.protocol \(TLS, SASL\) the one this listener speaks"):
        await _round_trip(cfg)
