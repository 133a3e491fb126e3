"""Shared helpers of the process-level fault tests (``test_pipeline_faults``, ``test_kafka_faults``).

* :func:`simulator` starts ``tests/integration/sim_server.py`` (the Instantly simulator plus a
  steady generator of audit records and world changes) in its own process and steers it
  through its control port;
* :func:`write_config` writes a pipeline config file for it (the key comes from the
  environment, never from the file);
* :class:`PipelineRunner` runs ``instantly-audit run --config FILE`` as a subprocess, kills it
  with SIGKILL, restarts it, and keeps every run's stdout/stderr for the log and canary checks;
* :func:`bus_events` reads ``instantly.events.v1`` independently of the pipeline: the SQLite file
  through a read-only bus, Kafka through ``kcat`` (``read_committed``);
* :func:`tally` / :func:`exactly_once` count what the simulator holds against what the bus holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import yaml

from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, STATE_TOPIC, iter_records
from pipeline.bus.factory import open_bus
from pipeline.config.model import SqliteBusConfig

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "INSTANTLY_FAULT_TEST_KEY"
ALL_TOPICS = (EVENTS_TOPIC, ALERTS_TOPIC, DEADLETTER_TOPIC, STATE_TOPIC)
JSON = dict[str, Any]


# ---------------------------------------------------------------------------------- simulator
@dataclass
class Sim:
    """A simulator process (see ``sim_server.py``) and its control port."""

    proc: subprocess.Popen[bytes]
    url: str
    control_url: str
    key: str
    workspace_id: str
    workspaces: list[JSON] = field(default_factory=list)
    """Every workspace served (``--workspaces``): ``{id, key}``, the demo workspace first."""

    def call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.control_url + path, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return orjson.loads(resp.read())

    def status(self) -> JSON:
        out: JSON = self.call("GET", "/status")
        return out

    def stop_generator(self) -> JSON:
        out: JSON = self.call("POST", "/generator/stop")
        return out

    def late_record(self, age_secs: float, kind: str = "backdated") -> str:
        """Insert one audit record dated ``age_secs`` ago; return its id."""
        out: JSON = self.call("POST", f"/audit/late?age={age_secs}&kind={kind}")
        return str(out["id"])

    def audit_ids(self) -> list[str]:
        return [str(i) for i in self.call("GET", "/audit/ids")]

    def secrets(self) -> list[str]:
        return [str(s) for s in self.call("GET", "/secrets")]

    def changes(self) -> JSON:
        out: JSON = self.call("GET", "/changes")
        return out

    def calls(self) -> JSON:
        out: JSON = self.call("GET", "/calls")
        return out


@contextlib.contextmanager
def simulator(
    logdir: Path,
    *,
    seed: int,
    rate: float = 20.0,
    changes_every: float = 2.0,
    paused: bool = False,
    workspaces: int = 1,
) -> Iterator[Sim]:
    """Start the simulator process; stop it on exit."""
    logdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.sim_server",
        "--seed",
        str(seed),
        "--rate",
        str(rate),
        "--changes-every",
        str(changes_every),
    ]
    if paused:
        cmd.append("--paused")
    if workspaces > 1:
        cmd += ["--workspaces", str(workspaces)]
    with open(logdir / "sim.err", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(5)
                raise RuntimeError(f"simulator did not start: {(logdir / 'sim.err').read_text()[-2000:]}")
            info = orjson.loads(line)
            yield Sim(proc, info["url"], info["control_url"], info["key"], info["workspace_id"], info["workspaces"])
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


# ---------------------------------------------------------------------------------- config
def write_config(
    path: Path,
    *,
    bus: Mapping[str, Any],
    sim: Sim,
    source_id: str,
    poll_interval_secs: float = 1.0,
    audit_page_size: int = 100,
    audit_overlap_secs: float = 3600.0,
    requests_per_second: float = 100.0,
    requests_per_minute: int = 6000,
    max_retries: int = 3,
    request_timeout_secs: float = 10.0,
) -> Path:
    """A config file with one workspace polling ``sim`` (key from ``$INSTANTLY_FAULT_TEST_KEY``)."""
    doc = {
        "bus": dict(bus),
        "workspaces": {
            source_id: {
                "api_key": "${" + KEY_ENV + "}",
                "name": "Acme Outreach",
                "base_url": sim.url,
                "poll_interval_secs": poll_interval_secs,
                "audit_page_size": audit_page_size,
                "audit_overlap_secs": audit_overlap_secs,
                "max_retries": max_retries,
                "request_timeout_secs": request_timeout_secs,
                "budget": {"requests_per_second": requests_per_second, "requests_per_minute": requests_per_minute},
            }
        },
        # DEBUG: the tests time and count every poll by its "Poll finished." line, which a poll that
        # published nothing logs at DEBUG only (connectors/instantly/poll_log.py)
        "logging": {"format": "json", "level": "DEBUG"},
        "service": {"port": 0},  # /metrics on an ephemeral port: never collide with another process
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------- pipeline
def cli_command() -> list[str]:
    """``instantly-audit`` from the running interpreter's environment."""
    script = Path(sys.executable).parent / "instantly-audit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


@dataclass
class PipelineRunner:
    """Runs ``instantly-audit run`` processes on one config and keeps every run's output."""

    config: Path
    logdir: Path
    key: str
    roles: tuple[str, ...] = ()
    runs: int = 0
    kills: int = 0
    proc: subprocess.Popen[bytes] | None = None
    outputs: list[Path] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANTLY_")}
        env[KEY_ENV] = self.key
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, *, once: bool = False) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None, "a pipeline process is already running"
        self.runs += 1
        cmd = [*cli_command(), "run", "--config", str(self.config)]
        if once:
            cmd.append("--once")
        for role in self.roles:
            cmd += ["--role", role]
        out, err = self.logdir / f"run{self.runs:02d}.out", self.logdir / f"run{self.runs:02d}.err"
        self.outputs += [out, err]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=fo, stderr=fe, env=self.env())
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the running process (it must still be running: an early exit is a failure)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"pipeline run {self.runs} exited early with {self.proc.returncode}:\n{self.last_log()}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"pipeline did not stop within {timeout}s of SIGTERM:\n{self.last_log()}")

    def run_once(self, timeout: float = 120.0) -> int:
        proc = self.start(once=True)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"instantly-audit run --once did not finish within {timeout}s:\n{self.last_log()}")

    def last_log(self, chars: int = 4000) -> str:
        """The last run's stderr tail (its log), and its stdout tail when there is one."""
        if not self.outputs:
            return ""
        err = self.outputs[-1].read_text(errors="replace")[-chars:]
        out = self.outputs[-2].read_text(errors="replace")[-chars:] if len(self.outputs) > 1 else ""
        return f"{err}\n--- stdout ---\n{out}" if out else (err or "(the run wrote nothing to stderr or stdout)")

    def output(self) -> bytes:
        """Everything every run wrote to stdout and stderr."""
        return b"".join(p.read_bytes() for p in self.outputs if p.exists())

    def log_records(self) -> list[JSON]:
        """The JSON log lines of every run, in order (other lines are skipped)."""
        out: list[JSON] = []
        for p in self.outputs:
            for line in p.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    doc = orjson.loads(line)
                    if isinstance(doc, dict):
                        out.append(doc)
        return out

    def polls_after(self, since: float) -> list[JSON]:
        """``Poll finished.`` lines logged at or after epoch ``since`` that published audit records."""
        out = []
        for r in self.log_records():
            if r.get("msg") == "Poll finished." and log_time(r) >= since:
                published = r.get("published") or {}
                if isinstance(published, dict) and published.get("audit_logs", 0) > 0:
                    out.append(r)
        return out

    def kill_restart(
        self,
        kills: int,
        rng: random.Random,
        *,
        min_secs: float,
        max_secs: float,
        after_kill: Callable[[int], None] | None = None,
    ) -> None:
        """Start, let it run a random time, SIGKILL it; ``kills`` times."""
        for i in range(kills):
            self.start()
            time.sleep(rng.uniform(min_secs, max_secs))
            self.kill()
            if after_kill is not None:
                after_kill(i)


def log_time(record: Mapping[str, Any]) -> float:
    """Epoch seconds of a JSON log line's ``ts`` (``2026-11-27T13:43:51.744Z``); 0 if absent."""
    ts = record.get("ts")
    if not isinstance(ts, str):
        return 0.0
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------------------- reading the bus
async def _sqlite_events(path: Path) -> list[JSON]:
    out: list[JSON] = []
    async with (
        open_bus(SqliteBusConfig(path=path), read_only=True) as bus,
        bus.consumer([EVENTS_TOPIC], start="earliest") as consumer,
    ):
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


def kcat_available() -> str:
    """The kcat binary, or skip (fail under CI=true)."""
    found = shutil.which("kcat")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kcat is not installed under CI=true (deploy/dev/system-deps.sh installs it)")
        pytest.skip("kcat is not installed (apt-get install -y kcat)")
    return found


def kcat_values(bootstrap: str, topic: str, fmt: str = "%s\\n") -> bytes:
    """Every committed record of ``topic`` as kcat prints it (an independent, read_committed consumer)."""
    cmd = [
        kcat_available(),
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-X",
        "isolation.level=read_committed",
        "-f",
        fmt,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kcat failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout


def bus_events(bus: Mapping[str, Any]) -> list[JSON]:
    """Every event in ``instantly.events.v1`` (read independently of the pipeline)."""
    if bus["type"] == "sqlite":
        return asyncio.run(_sqlite_events(Path(bus["path"])))
    boot, prefix = ",".join(bus["bootstrap_servers"]), bus.get("topic_prefix", "")
    return [orjson.loads(line) for line in kcat_values(boot, prefix + EVENTS_TOPIC).splitlines() if line.strip()]


def bus_bytes(bus: Mapping[str, Any]) -> dict[str, bytes]:
    """Raw bytes of the whole bus, per place, for the secret canary.

    SQLite: the database file and its WAL. Kafka: every committed record (key, value, headers) of
    the four topics (with the config's ``topic_prefix``), as kcat prints them.
    """
    if bus["type"] == "sqlite":
        base = Path(bus["path"])
        return {p.name: p.read_bytes() for p in (base, Path(f"{base}-wal")) if p.exists()}
    boot, prefix = ",".join(bus["bootstrap_servers"]), bus.get("topic_prefix", "")
    return {t: kcat_values(boot, prefix + t, "%k\\t%s\\t%h\\n") for t in ALL_TOPICS}


# ---------------------------------------------------------------------------------- own Kafka broker
def broker_module() -> ModuleType:
    """``deploy/kafka/broker.py`` (a standalone stdlib module, not a package)."""
    spec = importlib.util.spec_from_file_location("instantly_audit_test_broker", REPO / "deploy/kafka/broker.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


class OwnBroker:
    """A broker of the test's own (never the session broker): restart it at will."""

    def __init__(self, state_dir: Path, *, flush_every_message: bool):
        self.mod = broker_module()
        self.state_dir = state_dir
        self.info: Any = self.mod.start(state_dir, flush_every_message=flush_every_message)

    @property
    def bootstrap(self) -> str:
        return str(self.info.bootstrap)

    def restart(self, sig: int) -> None:
        """Stop with ``sig`` and start again on the same ports and data."""
        self.info = self.mod.restart(self.info, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.mod.stop(self.info, sig)

    def start_again(self) -> None:
        """Start a stopped broker on the same ports and data."""
        self.info = self.mod.restart(self.info)


@contextlib.contextmanager
def own_broker(state_dir: Path, *, flush_every_message: bool = True) -> Iterator[OwnBroker]:
    """Start a broker for one test; stop (SIGKILL) and purge it on exit."""
    b = OwnBroker(state_dir, flush_every_message=flush_every_message)
    try:
        yield b
    finally:
        b.mod.stop(b.info, signal.SIGKILL, purge=True)


def kafka_bus(bootstrap: str, prefix: str, *, share_pollers: bool = False) -> dict[str, Any]:
    """A Kafka bus config block for the pipeline under test.

    ``share_pollers`` is off: these tests kill and restart one process and aim the kills at its page
    transactions; with sharing on, a restarted process waits for the killed one's group session to
    expire (10 s) before it polls, so most kills would land before anything is published. Sharing
    among replicas is tested in ``test_kafka_pollers.py``.
    """
    return {
        "type": "kafka",
        "bootstrap_servers": [bootstrap],
        "partitions": 2,
        "transactional_id_prefix": prefix,
        "share_pollers": share_pollers,
    }


def segment_bytes(state_dir: Path) -> dict[str, bytes]:
    """The broker's log segments (aborted transactions included), for the secret canary."""
    return {str(p.relative_to(state_dir)): p.read_bytes() for p in (state_dir / "data").rglob("*.log")}


def uncommitted_count(bootstrap: str, topic: str = EVENTS_TOPIC) -> int:
    """Records of ``topic`` a read_uncommitted consumer sees (aborted transactions included)."""
    cmd = [kcat_available(), "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"]
    cmd += ["-X", "isolation.level=read_uncommitted", "-f", "x\\n"]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    return done.stdout.count(b"x")


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ---------------------------------------------------------------------------------- counting
def of_workspace(events: Iterable[JSON], workspace_id: str) -> list[JSON]:
    return [e for e in events if (e.get("workspace") or {}).get("id") == workspace_id]


def tally(events: Iterable[JSON], workspace_id: str) -> Counter[str]:
    """How often each audit record id of ``workspace_id`` appears as an event (``source.record_id``)."""
    out: Counter[str] = Counter()
    for e in of_workspace(events, workspace_id):
        src = e.get("source") or {}
        if src.get("kind") == "audit_log":
            out[str(src.get("record_id"))] += 1
    return out


@dataclass
class Count:
    """The simulator's audit records against the bus."""

    records: int
    lost: list[str]
    duplicated: dict[str, int]
    unexpected: list[str]
    duplicate_event_ids: dict[str, int]

    def line(self) -> str:
        return (
            f"records {self.records}, lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"unexpected {len(self.unexpected)}, duplicate event ids {len(self.duplicate_event_ids)}"
        )


def exactly_once(expected_ids: Iterable[str], events: list[JSON], workspace_id: str) -> Count:
    """Compare the simulator's audit ids with the bus's events of that workspace."""
    expected = set(expected_ids)
    seen = tally(events, workspace_id)
    ids = Counter(str(e.get("id")) for e in of_workspace(events, workspace_id))
    return Count(
        records=len(expected),
        lost=sorted(expected - set(seen)),
        duplicated={k: v for k, v in seen.items() if v > 1},
        unexpected=sorted(set(seen) - expected),
        duplicate_event_ids={k: v for k, v in ids.items() if v > 1},
    )


def snapshot_problems(events: list[JSON], workspace_id: str, changes: Mapping[str, Any]) -> list[str]:
    """Check the generator's key and member changes against the snapshot events.

    A resource first seen by the pipeline's very first snapshot is a ``*.baseline`` event instead
    of ``created``/``invited``. Every invited member appears once as ``member.invited`` or
    ``member.baseline``. A generated key appears at most once as ``api_key.created`` or
    ``api_key.baseline`` — exactly once unless it was deleted before any poll saw it — and, once
    seen, its deletion appears exactly once as ``api_key.deleted``.
    """
    by: Counter[tuple[str, str]] = Counter()
    for e in of_workspace(events, workspace_id):
        src = e.get("source") or {}
        if src.get("kind") == "snapshot":
            by[(str(e.get("type")), str(src.get("record_id")))] += 1
    problems: list[str] = []
    deleted = set(changes["keys_deleted"])
    for kid in changes["keys_created"]:
        created = by[("api_key.created", kid)] + by[("api_key.baseline", kid)]
        gone = by[("api_key.deleted", kid)]
        if created > 1 or gone > 1:
            problems.append(f"key {kid}: created/baseline {created}x, deleted {gone}x")
        elif kid not in deleted and created != 1:
            problems.append(f"live key {kid}: api_key.created/baseline {created}x (want 1)")
        elif kid in deleted and gone != created:
            problems.append(f"deleted key {kid}: created/baseline {created}x but deleted {gone}x")
    for mid in changes["members_invited"]:
        seen = by[("member.invited", mid)] + by[("member.baseline", mid)]
        if seen != 1:
            problems.append(f"member {mid}: member.invited/baseline {seen}x (want 1)")
    return problems


def leaked(secrets: Iterable[str], blobs: Mapping[str, bytes]) -> list[str]:
    """Where any secret occurs (``place: secret prefix…``); the secret itself is never printed whole."""
    out = []
    for s in secrets:
        raw = s.encode()
        for place, blob in blobs.items():
            if raw in blob:
                out.append(f"{place}: {s[:6]}…")
    return out
