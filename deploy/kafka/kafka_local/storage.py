"""A fresh state dir, formatted by Kafka's ``StorageTool`` with a cluster id and SCRAM users.

The state dir carries a marker file; a non-empty dir without it is never wiped. SCRAM-SHA-256/512
credentials of the SCRAM user are stored in the metadata log at format time.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from pathlib import Path

from .defaults import LOCK_NAME, SCRAM_MECHANISMS, SCRAM_USER, STATE_MARKER
from .errors import BrokerError
from .java import jvm_base
from .process import run_tool


def foreign_state_dir(state: Path) -> bool:
    """Whether ``state`` is a non-empty dir that broker.py did not create (so must not be wiped)."""
    return state.is_dir() and not (state / STATE_MARKER).exists() and any(p.name != LOCK_NAME for p in state.iterdir())


def prepare_state_dir(state: Path) -> None:
    """Empty ``state`` (all but its lock file) or create it, and mark it as ours.

    Raises:
        BrokerError: ``state`` is not empty and has no marker (it is not ours to wipe).
    """
    if state.exists():
        entries = [p for p in state.iterdir() if p.name != LOCK_NAME]
        if entries and not (state / STATE_MARKER).exists():
            raise BrokerError(f"refusing to use {state}: it is not empty and was not created by broker.py")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    state.mkdir(parents=True, exist_ok=True)
    (state / STATE_MARKER).write_text("state dir of deploy/kafka/broker.py; wiped on `up`\n")


def new_cluster_id() -> str:
    """A random cluster id as Kafka's ``Uuid.randomUuid`` makes them (never starting with ``-``)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: "-..." reads as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    return cluster_id


def format_storage(java: str, lib: Path, state: Path, cluster_id: str, password: str) -> None:
    """Run ``kafka.tools.StorageTool format`` on ``state``'s config, adding the SCRAM user.

    Raises:
        BrokerStartError: the StorageTool fails.
    """
    fmt = jvm_base(java, lib, state, "256m")
    fmt.insert(1, "-XX:TieredStopAtLevel=1")
    fmt += [
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(state / "server.properties"),
    ]
    for mech in SCRAM_MECHANISMS:
        fmt += ["--add-scram", f"{mech}=[name={SCRAM_USER},password={password}]"]
    run_tool(fmt, state, "kafka.tools.StorageTool format")
