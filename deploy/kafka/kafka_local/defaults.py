"""Fixed facts and defaults of the test broker: where things live, what it listens on.

``KAFKA_BROKER_LIB_DIR`` and ``KAFKA_BROKER_STATE_DIR`` are read once, at import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent.parent  # deploy/kafka
POM: Final = HERE / "pom.xml"
DEFAULT_CACHE: Final = HERE / ".cache"
DEFAULT_LIB_DIR: Final = Path(os.environ.get("KAFKA_BROKER_LIB_DIR") or DEFAULT_CACHE / "lib")
DEFAULT_STATE_DIR: Final = Path(os.environ.get("KAFKA_BROKER_STATE_DIR") or DEFAULT_CACHE / "run")
DEPENDENCY_PLUGIN: Final = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
FETCH_STAMP: Final = ".fetch-stamp.json"
STATE_MARKER: Final = ".kafka-broker-state"
LOCK_NAME: Final = ".lock"
HOST: Final = "127.0.0.1"
NODE_ID: Final = 1
SCRAM_USER: Final = "alice"
SCRAM_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")
LISTENERS: Final = ("PLAINTEXT", "CONTROLLER", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
STARTED_LINE: Final = "Kafka Server started"
DEFAULT_START_TIMEOUT: Final = 120.0
DEFAULT_STOP_TIMEOUT: Final = 20.0
