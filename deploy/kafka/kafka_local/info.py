"""``BrokerInfo``, the facts of one running broker, and the two files it is kept in.

``<state>/broker.json`` holds every fact (``load`` reads it back); ``<state>/env`` holds the
shell ``export`` lines clients source. Both are written atomically with mode 0600 (they hold the
SCRAM password).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Any

from .defaults import DEFAULT_STATE_DIR


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """Everything a client or test needs to know about one running broker.

    Written to ``<state_dir>/broker.json``; ``load`` reads it back.
    """

    state_dir: str
    pid: int
    pgid: int
    kafka_version: str
    java: str
    java_version: int
    lib_dir: str
    cluster_id: str
    node_id: int
    host: str
    ports: dict[str, int]
    bootstrap: str
    sasl_bootstrap: str
    ssl_bootstrap: str
    sasl_ssl_bootstrap: str
    controller: str
    scram_user: str
    scram_password: str
    scram_mechanisms: list[str]
    ssl_cafile: str
    log_file: str
    flush_every_message: bool
    started_at: float
    ready_seconds: float

    def to_json(self) -> str:
        """Serialise as pretty JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerInfo:
        """Parse what ``to_json`` wrote (unknown keys are ignored).

        Raises:
            ValueError: ``text`` is not JSON.
            TypeError: a field is missing.
        """
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def env(self) -> dict[str, str]:
        """The environment variables written to ``<state>/env``."""
        return {
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "KAFKA_SASL_BOOTSTRAP": self.sasl_bootstrap,
            "KAFKA_SSL_BOOTSTRAP": self.ssl_bootstrap,
            "KAFKA_SASL_SSL_BOOTSTRAP": self.sasl_ssl_bootstrap,
            "KAFKA_SCRAM_USER": self.scram_user,
            "KAFKA_SCRAM_PASSWORD": self.scram_password,
            "KAFKA_SCRAM_MECHANISMS": " ".join(self.scram_mechanisms),
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_CLUSTER_ID": self.cluster_id,
            "KAFKA_VERSION": self.kafka_version,
            "KAFKA_BROKER_STATE_DIR": self.state_dir,
            "KAFKA_BROKER_PID": str(self.pid),
            "KAFKA_BROKER_LOG": self.log_file,
        }


def write_facts(info: BrokerInfo) -> None:
    """Write ``<state>/broker.json`` and ``<state>/env`` (each via a temp file, mode 0600).

    Raises:
        OSError: the state dir is not writable.
    """
    state = Path(info.state_dir)
    tmp = state / "broker.json.tmp"
    tmp.write_text(info.to_json())
    tmp.chmod(0o600)
    tmp.replace(state / "broker.json")
    env_lines = [f"# Kafka test broker (deploy/kafka/broker.py), pid {info.pid}"]
    env_lines += [f"export {k}={shlex.quote(v)}" for k, v in info.env().items()]
    tmp = state / "env.tmp"
    tmp.write_text("\n".join(env_lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(state / "env")


def load(state_dir: str | os.PathLike[str] | None = None) -> BrokerInfo | None:
    """Read ``<state_dir>/broker.json``; ``None`` if there is none."""
    state = (Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR).resolve()
    try:
        return BrokerInfo.from_json((state / "broker.json").read_text())
    except (OSError, ValueError, TypeError):
        return None
