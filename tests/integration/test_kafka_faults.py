"""The pipeline on a real Kafka broker of each test's own, under process and broker faults.

Every test starts its own single-node broker (``deploy/kafka/broker.py``, into ``tmp_path``) so a
restart never disturbs the session broker, a simulator process with a steady generator, and
``instantly-audit run --config`` as a subprocess. At the end the generator stops, the running
pipeline is stopped with SIGTERM, ``instantly-audit run --once`` catches up, and kcat — an
independent ``read_committed`` consumer — counts ``instantly.events.v1``: every simulator audit
record exactly once (lost 0, duplicated 0), no event id twice.

The brokers run with ``flush_every_message=True`` (``log.flush.interval.messages=1``): a single
node without replicas loses acknowledged records on SIGKILL unless every append is fsynced.
"""

from __future__ import annotations

import random
import re
import signal
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import kafka_bootstrap
from tests.integration.helpers import (
    JSON,
    Count,
    PipelineRunner,
    Sim,
    bus_bytes,
    bus_events,
    exactly_once,
    kafka_bus,
    kcat_available,
    leaked,
    log_time,
    own_broker,
    segment_bytes,
    simulator,
    snapshot_problems,
    uncommitted_count,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIRST_PUBLISH_SECS = 60.0
"""A fresh broker takes a few seconds before its first transaction (topics, coordinators)."""
RESUME_SECS = 60.0
"""How long after the broker is back the pipeline may take to publish again."""
RECOVERY = re.compile(r"recover|resum|available again|reachable again|reconnected", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _kafka_leg() -> None:
    kafka_bootstrap()  # these tests run with the Kafka leg of the suite (skip, or fail under CI=true)
    kcat_available()


def _finish(runner: PipelineRunner, sim: Sim, problems: list[str]) -> tuple[JSON, list[str], list[str], JSON]:
    """Stop the generator and the running pipeline (SIGTERM: exit 0 expected), catch up with ``--once``."""
    generated = sim.stop_generator()
    rc = runner.stop()
    if rc != 0:
        problems.append(f"exit code {rc} after SIGTERM (want 0); its stderr ends:\n{runner.last_log(1500)}")
    assert runner.run_once() == 0, runner.last_log()
    return generated, sim.audit_ids(), sim.secrets(), sim.changes()


def _check(count: Count) -> None:
    assert count.records > 200, "the generator produced too little to be a test"
    assert not count.lost, f"lost {len(count.lost)} of {count.records}: {count.lost[:5]}"
    assert not count.duplicated, f"duplicated: {list(count.duplicated.items())[:5]}"
    assert not count.unexpected, f"events for ids the simulator never had: {count.unexpected[:5]}"
    assert not count.duplicate_event_ids, f"event ids published twice: {list(count.duplicate_event_ids)[:5]}"


def _start_and_wait_first_publish(runner: PipelineRunner) -> None:
    runner.start()
    if not wait_for(lambda: bool(runner.polls_after(0)), FIRST_PUBLISH_SECS):
        pytest.fail(f"the pipeline published nothing within {FIRST_PUBLISH_SECS}s:\n{runner.last_log()}")


def test_pipeline_sigkilled_20_times_while_publishing(tmp_path: Path) -> None:
    """SIGKILL ``instantly-audit run`` 20 times at random points, restart it each time; count with kcat.

    The simulator adds 40 audit records/s and pages hold 50, so every poll commits several page
    transactions (events + cursor); the first poll after each restart catches up on the records
    added meanwhile. Every other kill is aimed at the end of a run's first poll (where its page
    transactions commit, just before it logs "Poll finished."), learnt from earlier runs; the
    others fall anywhere. How many kills landed inside an open transaction is measured: records
    of aborted transactions are visible to a read_uncommitted consumer only.
    """
    seed = random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    problems: list[str] = []
    with own_broker(tmp_path / "kafka") as broker, simulator(logs, seed=seed, rate=40.0, changes_every=2.0) as sim:
        bus = kafka_bus(broker.bootstrap, f"kill-{uuid.uuid4().hex[:6]}")
        config = write_config(tmp_path / "config.yaml", bus=bus, sim=sim, source_id="acme", audit_page_size=50)
        runner = PipelineRunner(config, logs, sim.key)
        _start_and_wait_first_publish(runner)
        time.sleep(rng.uniform(0.0, 1.0))
        runner.kill()
        _kill_while_publishing(runner, rng, 19)
        runner.start()
        time.sleep(2.0)
        generated, expected, secrets, changes = _finish(runner, sim, problems)
        events = bus_events(bus)
        aborted = uncommitted_count(broker.bootstrap) - len(events)
        stored = {**bus_bytes(bus), **segment_bytes(broker.state_dir)}
    count = exactly_once(expected, events, sim.workspace_id)
    print(
        f"\n[kafka kill -9] seed {seed}: kills {runner.kills}, runs {runner.runs}, generated "
        f"{generated['audit_generated']}, {count.line()}, records of aborted transactions {aborted}"
    )
    assert runner.kills == 20
    _check(count)
    assert snapshot_problems(events, sim.workspace_id, changes) == []
    assert leaked(secrets, stored) == [], "a secret reached a topic or a log segment (aborted transactions included)"
    assert leaked(secrets, {"pipeline stdout/stderr": runner.output()}) == []
    assert problems == [], "\n".join(problems)


def _kill_while_publishing(runner: PipelineRunner, rng: random.Random, kills: int) -> None:
    first_poll: list[float] = []  # seconds from process start to its first "Poll finished."
    for i in range(kills):
        runner.start()
        t0 = time.monotonic()
        if first_poll and i % 2:
            est = statistics.median(first_poll)
            delay = rng.uniform(0.75 * est, est)
        else:
            delay = rng.uniform(0.4, 2.0)
        seen: float | None = None
        while (elapsed := time.monotonic() - t0) < delay:
            if seen is None and b'"Poll finished."' in runner.outputs[-1].read_bytes():
                seen = elapsed
            time.sleep(0.02)
        if seen is not None:
            first_poll.append(seen)
        runner.kill()


def test_broker_restarted_mid_run_with_sigterm_then_sigkill(tmp_path: Path) -> None:
    """Restart the broker while the pipeline publishes: once with SIGTERM, once with SIGKILL.

    The broker runs with ``flush_every_message=True``: every append is fsynced, which is what a
    single node needs for an acknowledged record to survive SIGKILL. After each restart the
    running pipeline must publish again by itself; at the end no acknowledged event is lost
    (every simulator record is in the topic) and read_committed consumers see no duplicate.
    """
    seed = random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    problems: list[str] = []
    resumed_after: dict[str, float] = {}
    with own_broker(tmp_path / "kafka") as broker, simulator(logs, seed=seed, rate=30.0, changes_every=2.0) as sim:
        bus = kafka_bus(broker.bootstrap, f"restart-{uuid.uuid4().hex[:6]}")
        config = write_config(tmp_path / "config.yaml", bus=bus, sim=sim, source_id="acme", audit_page_size=50)
        runner = PipelineRunner(config, logs, sim.key)
        _start_and_wait_first_publish(runner)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            time.sleep(rng.uniform(0.5, 2.0))  # the poller commits page transactions every second
            broker.restart(sig)
            back = time.time()
            if wait_for(lambda back=back: bool(runner.polls_after(back)), RESUME_SECS):  # type: ignore[misc]
                resumed_after[sig.name] = round(min(log_time(r) for r in runner.polls_after(back)) - back, 1)
            else:
                problems.append(f"after the {sig.name} restart the pipeline did not publish within {RESUME_SECS}s")
            if not runner.alive():
                problems.append(f"the pipeline exited after the {sig.name} restart")
                break
        if runner.alive():
            generated, expected, secrets, _changes = _finish(runner, sim, problems)
        else:
            generated = sim.stop_generator()
            assert runner.run_once() == 0, runner.last_log()
            expected, secrets = sim.audit_ids(), sim.secrets()
        events = bus_events(bus)
    count = exactly_once(expected, events, sim.workspace_id)
    crashes = [r for r in runner.log_records() if r.get("msg") == "Task crashed; restarting"]
    print(
        f"\n[kafka broker restarts] seed {seed}: generated {generated['audit_generated']}, {count.line()}, "
        f"resumed after (s) {resumed_after}, task crashes {len(crashes)}"
    )
    _check(count)
    assert leaked(secrets, {"pipeline stdout/stderr": runner.output()}) == []
    assert problems == [], _problem_report(problems, crashes)


def test_broker_unreachable_for_30s_pipeline_waits_and_resumes(tmp_path: Path) -> None:
    """Stop the broker, wait 30 s, start it again on the same ports and data.

    The running pipeline must wait (not exit), publish again by itself once the broker is back,
    lose nothing and duplicate nothing, and say so in its logs: a warning or error about the
    bus failure, and a later line recording the recovery. Its stderr must stay structured (JSON
    lines only), so the redaction filter sees every line.
    """
    seed = random.randrange(1, 1 << 30)
    logs = tmp_path / "logs"
    problems: list[str] = []
    with own_broker(tmp_path / "kafka") as broker, simulator(logs, seed=seed, rate=20.0, changes_every=3.0) as sim:
        bus = kafka_bus(broker.bootstrap, f"outage-{uuid.uuid4().hex[:6]}")
        config = write_config(tmp_path / "config.yaml", bus=bus, sim=sim, source_id="acme")
        runner = PipelineRunner(config, logs, sim.key)
        _start_and_wait_first_publish(runner)
        time.sleep(1.5)
        down = time.time()
        broker.stop(signal.SIGTERM)
        time.sleep(30.0)
        broker.start_again()
        back = time.time()
        resumed = wait_for(lambda: bool(runner.polls_after(back)), RESUME_SECS)
        if not resumed:
            problems.append(f"the pipeline did not publish within {RESUME_SECS}s after the broker came back")
        if not runner.alive():
            problems.append(f"the pipeline exited during the outage (code {runner.proc and runner.proc.returncode})")
            generated = sim.stop_generator()
            assert runner.run_once() == 0, runner.last_log()
            expected = sim.audit_ids()
        else:
            generated, expected, _secrets, _changes = _finish(runner, sim, problems)
        events = bus_events(bus)
        continuous_stderr = (logs / "run01.err").read_bytes()
    count = exactly_once(expected, events, sim.workspace_id)
    records = runner.log_records()
    problems += _outage_log_problems(records, down, continuous_stderr)
    resumed_in = [round(log_time(r) - back, 1) for r in runner.polls_after(back)][:1]
    crashes = [r for r in records if r.get("msg") == "Task crashed; restarting"]
    print(
        f"\n[kafka 30 s outage] seed {seed}: generated {generated['audit_generated']}, {count.line()}, "
        f"resumed {resumed_in} s after the broker was back, task crashes {len(crashes)}"
    )
    _check(count)
    assert problems == [], _problem_report(problems, crashes)


def _outage_log_problems(records: list[JSON], down: float, stderr: bytes) -> list[str]:
    """What the logs of an outage should say: a failure naming the bus, then a recovery line."""
    problems: list[str] = []
    failures = [
        r
        for r in records
        if log_time(r) >= down
        and r.get("level") in ("warning", "error")
        and re.search(r"bus|kafka|broker", f"{r.get('component')} {r.get('msg')} {r.get('error')}", re.IGNORECASE)
    ]
    if not failures:
        problems.append("no warning/error log line about the bus (Kafka) failure during the outage")
    else:
        first = log_time(failures[0])
        if not any(log_time(r) >= first and RECOVERY.search(str(r.get("msg"))) for r in records):
            problems.append(
                "no log line records the recovery after the bus failure "
                f"(want a message matching {RECOVERY.pattern!r} once publishing works again)"
            )
    raw = [line for line in stderr.splitlines() if line.strip() and not line.lstrip().startswith(b"{")]
    if raw:
        sample = raw[0].decode(errors="replace")[:160]
        problems.append(f"{len(raw)} stderr lines are not structured JSON log lines (first: {sample!r})")
    return problems


def _problem_report(problems: list[str], crashes: list[dict[str, Any]]) -> str:
    lines = list(problems)
    for c in crashes[:3]:
        lines.append(f"  task crash: {c.get('task')}: {c.get('error')}")
    return "\n".join(lines)


async def test_bus_recovers_after_a_producer_sequence_gap(unique: str) -> None:
    """Regression for what a broker outage can do to the transactional producer (session broker).

    aiokafka (0.14) advances a partition's sequence number when it drains a batch, also for a
    batch that expires unsent because no leader was known for longer than ``request_timeout_ms``
    (a broker in controlled shutdown reports leader -1). Every later batch of that producer to the
    partition then fails with OutOfOrderSequenceNumber, and an abort does not reset the
    sequences: the writer never publishes again until the process restarts (seen after a 30 s
    outage: the poller crashed and was restarted with a growing backoff for as long as the
    process ran). Here the gap is made the way aiokafka makes it, deterministically; the bus must
    recover by itself (e.g. replace the producer after a failed transaction: a new producer's
    InitProducerId bumps the epoch and resets the sequences).
    """
    from aiokafka import TopicPartition as KafkaTP

    from pipeline.bus.base import EVENTS_TOPIC, iter_records
    from pipeline.bus.kafka import KafkaBus
    from pipeline.errors import BusError

    boot = kafka_bootstrap()
    async with KafkaBus(
        [boot], partitions=1, transactional_id_prefix=f"gap-{unique}", topic_prefix=f"gap{unique}."
    ) as bus:
        await bus.fence("w")

        async def publish(i: int) -> str:
            try:
                async with bus.transaction("w") as tx:
                    tx.send(EVENTS_TOPIC, f"r{i}".encode(), key=b"ws")
                    tx.put_state("cursor", str(i).encode())
                return "ok"
            except BusError as err:
                return str(err)[:100]

        assert await publish(0) == "ok"
        producer = bus._writers.producers["w"]
        # what aiokafka's RecordAccumulator._pop_batch does for a batch that then expires unsent:
        producer._txn_manager.increment_sequence_number(KafkaTP(bus.phys(EVENTS_TOPIC), 0), 1)
        outcomes = [await publish(i) for i in range(1, 6)]
        async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
            values = [r.value for batch in [b async for b in iter_records(consumer)] for r in batch]
    ok = [i for i, o in enumerate(outcomes, 1) if o == "ok"]
    assert outcomes[-3:] == ["ok"] * 3, f"the writer did not recover after a sequence gap: {outcomes}"
    assert sorted(values) == sorted(f"r{i}".encode() for i in [0, *ok]), "each committed record exactly once"
