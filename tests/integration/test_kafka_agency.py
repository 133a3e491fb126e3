"""Discovered sub-workspaces are shared over poller replicas through the control topic (real Kafka).

The simulator serves an agency: the demo workspace with 12 accepted sub-workspaces (``--agency``),
one admin key. The config names only the agency (``discover_subworkspaces``); three
``run --role pollers`` replicas share the work. The replica that polls the agency announces each
sub-workspace on ``instantly.workspaces.v1``; each replica polls the ones in its control
partitions. A sub that leaves gets a tombstone and its poller stops; one that joins is polled; a
SIGKILLed replica's subs are taken over by the survivors. At the end kcat (read_committed) counts
every audit record of the agency and its subs exactly once.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.bus.base import CONTROL_PARTITIONS
from tests.conftest import kafka_bootstrap
from tests.integration.helpers import (
    KEY_ENV,
    REPO,
    PipelineRunner,
    Sim,
    bus_events,
    exactly_once,
    kcat_available,
    log_time,
    wait_for,
)
from tests.integration.test_kafka_pollers import SETTLE_LIMIT_SECS

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SUBS = 12
POLL_SECS = 3.0
DISCOVERY_SECS = 2.0


@pytest.fixture(autouse=True)
def _kafka_leg() -> None:
    kafka_bootstrap()
    kcat_available()


class Replica(PipelineRunner):
    """A ``run --role pollers`` process; ``owned`` follows its logs, discovered workspaces included."""

    def owned(self) -> set[str]:
        """The workspaces this replica polls now (empty when it is not running)."""
        owned: set[str] = set()
        for r in self.log_records():
            ws = set(r.get("workspaces") or [])
            msg = r.get("msg")
            if msg == "Workspaces assigned":
                owned = ws  # eager rebalancing: everything was revoked just before
            elif msg == "Discovered workspaces assigned":
                owned |= ws
            elif msg in ("Workspaces revoked", "Discovered workspaces left"):
                owned -= ws
        return owned if self.alive() else set()

    def partitions(self) -> list[int]:
        """The control partitions the last rebalance gave this replica."""
        last = [r for r in self.log_records() if r.get("msg") == "Workspaces assigned"]
        return list(last[-1].get("partitions") or []) if last else []


@pytest.fixture
def agency_sim(tmp_path: Path) -> Iterator[Sim]:
    """The simulator process with an agency of :data:`SUBS` sub-workspaces under the demo key."""
    cmd = [sys.executable, "-m", "tests.integration.sim_server", "--seed", str(random.randrange(1, 1 << 30))]
    cmd += ["--rate", "24", "--changes-every", "0", "--agency", str(SUBS)]
    with open(tmp_path / "sim.err", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, (tmp_path / "sim.err").read_text()[-2000:]
            info = orjson.loads(line)
            workspaces = [{"id": info["workspace_id"]}, *info["agency"]]
            yield Sim(proc, info["url"], info["control_url"], info["key"], info["workspace_id"], workspaces)
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _config(path: Path, sim: Sim, bus: dict[str, Any]) -> Path:
    agency = {
        "api_key": "${" + KEY_ENV + "}",
        "base_url": sim.url,
        "poll_interval_secs": POLL_SECS,
        "audit_page_size": 2,
        "streams": ["audit_logs"],
        "max_retries": 3,
        "budget": {"requests_per_second": 100, "requests_per_minute": 6000},
        "discover_subworkspaces": True,
        "discovery_interval_secs": DISCOVERY_SECS,
    }
    # DEBUG: _first_poll waits for a "Poll finished." line, which a poll that published nothing logs at DEBUG only
    doc = {"bus": bus, "workspaces": {"agency": agency}, "logging": {"format": "json", "level": "DEBUG"}}
    doc["service"] = {"port": 0}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _child(sub_id: str) -> str:
    return f"agency--{sub_id}"


def _settled(replicas: list[Replica], expected: set[str], timeout: float) -> bool:
    """Wait until every live replica holds control partitions (together each exactly once) and they poll
    exactly ``expected``, each workspace on one replica."""

    def ok() -> bool:
        live = [r for r in replicas if r.alive()]
        parts = [r.partitions() for r in live]
        if not all(parts) or sorted(p for ps in parts for p in ps) != list(range(CONTROL_PARTITIONS)):
            return False
        owned = [r.owned() for r in live]
        return set().union(*owned) == expected and sum(len(o) for o in owned) == len(expected)

    return wait_for(ok, timeout, step=0.5)


def _first_poll(replicas: list[Replica], sources: set[str], since: float, timeout: float) -> float | None:
    """When a replica first finished a poll of each of ``sources`` after ``since``: the latest of those."""

    def firsts() -> dict[str, float]:
        out: dict[str, float] = {}
        for r in replicas:
            for rec in r.log_records():
                sid = rec.get("source")
                if rec.get("msg") == "Poll finished." and sid in sources and log_time(rec) >= since:
                    out[sid] = min(out.get(sid, 1e18), log_time(rec))
        return out

    wait_for(lambda: set(firsts()) == sources, timeout)
    got = firsts()
    return max(got.values()) if set(got) == sources else None


def test_discovered_subworkspaces_are_shared_over_replicas(agency_sim: Sim, tmp_path: Path) -> None:
    """Subs spread over three replicas; a leaver is stopped, a joiner polled; SIGKILL hands subs on; once each."""
    sim = agency_sim
    tag = uuid.uuid4().hex[:6]
    bus = {
        "type": "kafka",
        "bootstrap_servers": [kafka_bootstrap()],
        "partitions": 3,
        "topic_prefix": f"agency-{tag}.",
        "transactional_id_prefix": f"agency-{tag}",
    }
    config = _config(tmp_path / "config.yaml", sim, bus)
    replicas = [Replica(config, tmp_path / f"replica{n}", sim.key, roles=("pollers",)) for n in range(3)]
    once = Replica(config, tmp_path / "once", sim.key)
    for r in [*replicas, once]:
        r.logdir.mkdir(parents=True)
    subs = {str(w["alias"]): str(w["id"]) for w in sim.workspaces[1:]}
    expected = {"agency"} | {_child(i) for i in subs.values()}
    try:
        for r in replicas:
            r.start()
        assert _settled(replicas, expected, 90), "\n".join(r.last_log(1500) for r in replicas)
        holding = [len(r.owned() - {"agency"}) for r in replicas]
        print(f"\n[agency] sub-workspaces per replica: {holding}")
        assert sum(1 for n in holding if n) >= 2, holding  # 12 subs on one replica: P = 3 * 3**-12

        left = subs.pop("sub-03")
        sim.call("POST", "/agency/leave?sub=sub-03")
        joined = str(sim.call("POST", "/agency/join?sub=sub-new")["id"])
        since = time.time()
        expected = (expected - {_child(left)}) | {_child(joined)}
        assert _settled(replicas, expected, 60), "\n".join(r.last_log(1500) for r in replicas)
        assert _first_poll(replicas, {_child(joined)}, since, 60) is not None

        victim = max(replicas, key=lambda r: len(r.owned() - {"agency"}))
        lost_ws = victim.owned()
        time.sleep(random.uniform(0.5, POLL_SECS))
        victim.kill()
        killed = time.time()
        survivors = [r for r in replicas if r is not victim]
        assert _settled(survivors, expected, SETTLE_LIMIT_SECS + 20), "\n".join(r.last_log(1500) for r in survivors)
        took = _first_poll(survivors, lost_ws, killed, SETTLE_LIMIT_SECS + 20)
        assert took is not None, f"no survivor polled {sorted(lost_ws)}"
        print(
            f"[agency] SIGKILL of a replica with {len(lost_ws)} workspaces: "
            f"all polled again after {took - killed:.1f} s"
        )
        time.sleep(POLL_SECS * 2)

        sim.stop_generator()
        for r in survivors:
            assert r.stop() == 0, r.last_log()
        assert once.run_once() == 0, once.last_log()
    finally:
        for r in replicas:
            if r.alive():
                r.kill()
    events = bus_events(bus)
    total = lost = dup = 0
    for wid in [sim.workspace_id, *subs.values(), joined]:
        count = exactly_once([str(i) for i in sim.call("GET", f"/audit/ids?workspace={wid}")], events, wid)
        total += count.records
        lost += len(count.lost)
        dup += len(count.duplicated) + len(count.duplicate_event_ids)
    # The leaver: polled until its tombstone stopped it (later records are not watched), never twice.
    gone = exactly_once([str(i) for i in sim.call("GET", f"/audit/ids?workspace={left}")], events, left)
    dup += len(gone.duplicated) + len(gone.duplicate_event_ids)
    print(
        f"[agency] records {total} (+{gone.records - len(gone.lost)} of {gone.records} of the leaver), "
        f"lost {lost}, duplicated {dup}"
    )
    assert total > 100
    assert (lost, dup) == (0, 0)
