"""Start-up on Kafka after a writer died mid-transaction: never held hostage by the zombie.

A SIGKILLed writer leaves its transaction open on the broker until the same transactional id is
claimed again (InitProducerId aborts it) or the transaction timeout (60 s) passes. A
``read_committed`` state read waits for every transaction open when it began, so a restarted
process must claim its writer ids *before* it reads state — and a SIGTERM that arrives while
start-up still waits (behind somebody else's zombie) must end the process at once with exit 0.

Each test opens a real transaction with aiokafka in a child process, SIGKILLs it, and then runs
``instantly-audit run`` against the same broker under its own topic and transactional-id
prefixes (the session broker is shared with other tests).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import kafka_bootstrap
from tests.integration.helpers import PipelineRunner, kafka_bus, simulator, wait_for, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ZOMBIE = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

async def main(boot: str, txn_id: str, topic: str) -> None:
    p = AIOKafkaProducer(bootstrap_servers=boot, transactional_id=txn_id, enable_idempotence=True, acks="all")
    await p.start()
    await p.begin_transaction()
    await p.send_and_wait(topic, b"left open", key=b"zombie/left-open")
    print("open", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:4]))
"""

WAITING = "State read is waiting behind an open transaction"
TXN_TIMEOUT_SECS = 60.0
"""aiokafka's default transaction timeout: how long an unclaimed zombie holds the state topic."""


def _leave_transaction_open(bootstrap: str, txn_id: str, topic: str) -> None:
    """Open a transaction that wrote to ``topic`` under ``txn_id``, then SIGKILL its producer."""
    with subprocess.Popen(
        [sys.executable, "-c", ZOMBIE, bootstrap, txn_id, topic], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == b"open", line
        finally:
            proc.kill()
            proc.wait(10)


def _bus(bootstrap: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {**kafka_bus(bootstrap, f"zombie-{tag}"), "topic_prefix": f"z{tag}."}


def _first_run(runner: PipelineRunner) -> None:
    """``run --once``: creates the topics and writes a first cursor (a state topic to be blocked)."""
    assert runner.run_once() == 0, runner.last_log()


@contextlib.contextmanager
def _started(runner: PipelineRunner) -> Iterator[None]:
    """``runner`` started; SIGKILLed on the way out if a failed assert left it running."""
    runner.start()
    try:
        yield
    finally:
        if runner.alive():
            runner.kill()


def _logged(runner: PipelineRunner, msg: str) -> bool:
    return any(r.get("msg") == msg for r in runner.log_records())


def test_restart_claims_its_writer_ids_before_reading_state(tmp_path: Path) -> None:
    """The rules writer died mid-transaction: a restarted ``run`` claims ``rules`` and is running
    long before the zombie's transaction would time out."""
    bootstrap = kafka_bootstrap()
    bus = _bus(bootstrap)
    with simulator(tmp_path / "logs", seed=random.randrange(1 << 30), rate=5.0) as sim:
        config = write_config(tmp_path / "config.yaml", bus=bus, sim=sim, source_id="acme")
        runner = PipelineRunner(config, tmp_path / "logs", sim.key)
        _first_run(runner)
        _leave_transaction_open(
            bootstrap,
            f"{bus['transactional_id_prefix']}-{bus['topic_prefix']}rules",
            f"{bus['topic_prefix']}instantly.state.v1",
        )
        t0 = time.monotonic()
        with _started(runner):
            running = wait_for(lambda: _logged(runner, "Pipeline running"), TXN_TIMEOUT_SECS - 15.0)
            took = time.monotonic() - t0
            print(f"\n[zombie rules writer] running after {took:.1f} s (the zombie would hold state for 60 s)")
            assert running, f"not running {took:.0f} s after start (held behind the zombie?):\n{runner.last_log()}"
            assert not [r for r in runner.log_records() if WAITING in str(r.get("msg"))]
            assert runner.stop() == 0, runner.last_log()


def test_sigterm_while_startup_waits_behind_a_zombie_exits_0(tmp_path: Path) -> None:
    """A writer id this process does not own holds the state topic: start-up waits (and says so);
    SIGTERM then ends the process with exit 0 instead of waiting out the transaction timeout."""
    bootstrap = kafka_bootstrap()
    bus = _bus(bootstrap)
    with simulator(tmp_path / "logs", seed=random.randrange(1 << 30), rate=5.0) as sim:
        config = write_config(tmp_path / "config.yaml", bus=bus, sim=sim, source_id="acme")
        runner = PipelineRunner(config, tmp_path / "logs", sim.key, roles=("sinks",))
        _first_run(runner)
        _leave_transaction_open(
            bootstrap, f"{bus['transactional_id_prefix']}-elsewhere", f"{bus['topic_prefix']}instantly.state.v1"
        )
        with _started(runner):
            waiting = wait_for(lambda: any(WAITING in str(r.get("msg")) for r in runner.log_records()), 40.0)
            assert waiting, f"start-up did not wait behind the zombie:\n{runner.last_log()}"
            assert not _logged(runner, "Pipeline running")
            t0 = time.monotonic()
            rc = runner.stop(timeout=30.0)
        print(f"\n[zombie elsewhere] SIGTERM during start-up: exit {rc} after {time.monotonic() - t0:.1f} s")
        assert rc == 0, runner.last_log()
        assert _logged(runner, "Stopped while starting; nothing had started yet")
