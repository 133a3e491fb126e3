"""The broker's config files: ``server.properties`` (KRaft, listeners, SCRAM, PEM TLS) and log4j2.

``KAFKA_BROKER_LOG_LEVEL`` sets the root log level (default WARN).
"""

from __future__ import annotations

import os
from pathlib import Path

from .defaults import HOST, LISTENERS, NODE_ID, SCRAM_MECHANISMS


def server_properties(state: Path, ports: dict[str, int], flush_every_message: bool) -> str:
    """``server.properties`` of a single-node KRaft broker on ``ports`` (listener name → port)."""
    p = ports
    jaas_scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    lines = [
        "# written by deploy/kafka/broker.py; single-node KRaft test broker",
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        f"controller.quorum.voters={NODE_ID}@{HOST}:{p['CONTROLLER']}",
        "listeners=" + ",".join(f"{name}://{HOST}:{p[name]}" for name in LISTENERS),
        "advertised.listeners=" + ",".join(f"{name}://{HOST}:{p[name]}" for name in LISTENERS if name != "CONTROLLER"),
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        f"log.dirs={state / 'data'}",
        "num.partitions=2",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        "num.recovery.threads.per.data.dir=1",
        "log.cleaner.dedupe.buffer.size=33554432",
        "log.cleaner.threads=1",
        # after a SIGKILL the restarted broker waits until the controller expires the
        # old registration's session (default 9 s); 4 s keeps restarts quick
        "broker.session.timeout.ms=4000",
        "broker.heartbeat.interval.ms=500",
        # SASL (SCRAM credentials are stored in the metadata log at format time)
        "sasl.enabled.mechanisms=" + ",".join(SCRAM_MECHANISMS),
    ]
    for listener in ("sasl_plaintext", "sasl_ssl"):
        for mech in SCRAM_MECHANISMS:
            lines.append(f"listener.name.{listener}.{mech.lower()}.sasl.jaas.config={jaas_scram}")
    lines += [
        # TLS, PEM stores (no store passwords allowed with PEM; key is unencrypted PKCS#8)
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={state / 'tls' / 'broker.pem'}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={state / 'tls' / 'ca.pem'}",
        "ssl.client.auth=none",
    ]
    if flush_every_message:
        lines += [
            "# fsync every append: a SIGKILL then loses no acknowledged record",
            "log.flush.interval.messages=1",
        ]
    return "\n".join(lines) + "\n"


def log4j2_properties() -> str:
    """``log4j2.properties``: console output at ``KAFKA_BROKER_LOG_LEVEL``, start/stop milestones at INFO."""
    level = os.environ.get("KAFKA_BROKER_LOG_LEVEL", "WARN")
    return "\n".join(
        [
            "status = warn",
            "appender.out.type = Console",
            "appender.out.name = OUT",
            "appender.out.layout.type = PatternLayout",
            "appender.out.layout.pattern = [%d] %p %m (%c)%n",
            f"rootLogger.level = {level}",
            "rootLogger.appenderRef.out.ref = OUT",
            # keeps the "Kafka Server started" line and start/stop milestones
            "logger.raft.name = kafka.server.KafkaRaftServer",
            "logger.raft.level = INFO",
            "logger.kafka.name = kafka.Kafka",
            "logger.kafka.level = INFO",
            "logger.broker.name = kafka.server.BrokerServer",
            "logger.broker.level = INFO",
            "",
        ]
    )
