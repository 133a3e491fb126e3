#!/usr/bin/env python3
"""Local single-node Apache Kafka broker (KRaft) for tests, without Docker.

The broker is the real Apache Kafka (``org.apache.kafka:kafka_2.13``, version
pinned in ``pom.xml`` beside this file), run from jars that Maven copies into a
cache directory. The module is standard-library only and works both as a CLI::

    python3 deploy/kafka/broker.py fetch      # resolve jars (Maven) unless cached
    python3 deploy/kafka/broker.py up         # fresh state dir, start, wait ready
    python3 deploy/kafka/broker.py status     # exit 0 if running, 3 if not
    python3 deploy/kafka/broker.py env        # print <state>/env (shell exports)
    python3 deploy/kafka/broker.py restart [--kill]
    python3 deploy/kafka/broker.py down [--purge]

and as an importable module (``fetch``, ``start``, ``stop``, ``restart``,
``load``, ``is_running``, ``BrokerInfo``)::

    info = broker.start(tmp_path / "kafka", flush_every_message=True)
    ...
    info = broker.restart(info, signal.SIGKILL)   # same ports, same data
    broker.stop(info)

What ``start`` does: picks free loopback ports; writes ``server.properties`` and
``log4j2.properties`` into a fresh state dir; generates a CA and a broker
certificate with the ``openssl`` CLI (SAN ``IP:127.0.0.1``, ``DNS:localhost``;
PEM key store/trust store); formats the storage with ``kafka.tools.StorageTool``
(cluster id made here, SCRAM-SHA-256/512 credentials for user ``alice`` with a
random password added at format time); launches ``kafka.Kafka`` detached (own
session and process group, output appended to ``<state>/broker.log``, pid in
``<state>/broker.pid``); and waits until every listener answers: a Kafka
protocol Metadata request on PLAINTEXT and SSL (TLS verified against the CA)
must list this broker, and ApiVersions must answer on SASL_PLAINTEXT and
SASL_SSL. It then writes ``<state>/env`` (shell ``export`` lines) and
``<state>/broker.json`` (the same facts, see ``BrokerInfo``).

Listeners (all on 127.0.0.1): PLAINTEXT (client + inter-broker), CONTROLLER,
SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512), SSL
(``ssl.client.auth=none``). No authorizer is configured.

A single node loses acknowledged records on SIGKILL unless every append is
fsynced: ``flush_every_message=True`` (``--flush-every-message``) sets
``log.flush.interval.messages=1`` for fault tests.

Java: the class-file version of ``kafka.Kafka`` decides the minimum JDK; the
first sufficient one of ``$JAVA_HOME``, ``java`` on ``PATH`` and
``/usr/lib/jvm/*`` (newest first) is used.

Environment overrides: ``KAFKA_BROKER_LIB_DIR`` (jar cache),
``KAFKA_BROKER_STATE_DIR`` (default state dir), ``KAFKA_BROKER_HEAP``
(default ``512m``), ``KAFKA_BROKER_LOG_LEVEL`` (root log level, default WARN),
``KAFKA_BROKER_MVN`` (Maven executable).

This file is only the entry point: the work is done by the package
``kafka_local`` beside it (one module per job: ``fetch``, ``java``,
``properties``, ``tls``, ``storage``, ``process``, ``wire``, ``readiness``,
``lifecycle``, ``cli``). It puts its own directory on ``sys.path`` so that it
also works when loaded by file path (``importlib.util.spec_from_file_location``)
rather than as a package, and re-exports the public API listed in ``__all__``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_local.cli import main
from kafka_local.defaults import (
    DEFAULT_CACHE,
    DEFAULT_LIB_DIR,
    DEFAULT_START_TIMEOUT,
    DEFAULT_STATE_DIR,
    DEFAULT_STOP_TIMEOUT,
    DEPENDENCY_PLUGIN,
    FETCH_STAMP,
    HERE,
    HOST,
    LISTENERS,
    LOCK_NAME,
    NODE_ID,
    POM,
    SCRAM_MECHANISMS,
    SCRAM_USER,
    STARTED_LINE,
    STATE_MARKER,
)
from kafka_local.errors import BrokerAlreadyRunning, BrokerError, BrokerStartError, FetchError
from kafka_local.fetch import fetch, kafka_version
from kafka_local.info import BrokerInfo, load
from kafka_local.java import find_java, required_java
from kafka_local.lifecycle import restart, start, stop
from kafka_local.process import is_running
from kafka_local.readiness import check_ready
from kafka_local.wire import ProbeResult, probe

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_LIB_DIR",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STOP_TIMEOUT",
    "DEPENDENCY_PLUGIN",
    "FETCH_STAMP",
    "HERE",
    "HOST",
    "LISTENERS",
    "LOCK_NAME",
    "NODE_ID",
    "POM",
    "SCRAM_MECHANISMS",
    "SCRAM_USER",
    "STARTED_LINE",
    "STATE_MARKER",
    "BrokerAlreadyRunning",
    "BrokerError",
    "BrokerInfo",
    "BrokerStartError",
    "FetchError",
    "ProbeResult",
    "check_ready",
    "fetch",
    "find_java",
    "is_running",
    "kafka_version",
    "load",
    "main",
    "probe",
    "required_java",
    "restart",
    "start",
    "stop",
]

if __name__ == "__main__":
    sys.exit(main())
