"""The figures on ``/metrics`` move as events flow through a running pipeline.

`instantly-audit run` (continuous, one process: pollers, rules, a JSONL sink) polls the Instantly
simulator every second; the test scrapes ``/metrics`` with a real Prometheus parser, adds audit
records to the simulator, scrapes again and checks that every stage reported: API requests,
records published, alerts raised, sink deliveries, cursor age, consumer lag, and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.instantly.api import DEFAULT_STREAMS
from connectors.instantly.sim import Actor, InstantlySimulator
from connectors.instantly.sim.seed import demo_world

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "INSTANTLY_API_KEY"
Samples = list[tuple[str, dict[str, str], float]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parse(text: str) -> Samples:
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample named ``name`` whose labels include ``labels``."""
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def present(samples: Samples, name: str, **labels: str) -> list[float]:
    """The values of the samples named ``name`` whose labels include ``labels``."""
    return [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]


async def _get(port: int, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        return r.status, await r.read()


async def scrape(port: int) -> Samples:
    status, body = await _get(port, "/metrics")
    assert status == 200
    return _parse(body.decode())


async def wait_for(
    port: int, proc: subprocess.Popen[bytes], ok: Callable[[Samples], bool], what: str, secs: float = 45
) -> Samples:
    """Scrape until ``ok`` holds (the event loop keeps serving the simulator meanwhile)."""
    deadline = time.monotonic() + secs
    last: Samples = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the pipeline exited"
        try:
            last = await scrape(port)
            if ok(last):
                return last
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last scrape: {sorted({n for n, _, _ in last})}")


def _config(tmp_path: Path, sim_url: str, port: int) -> Path:
    cfg: dict[str, Any] = {
        "bus": {"type": "sqlite", "path": str(tmp_path / "bus.db")},
        "workspaces": {
            "acme": {"api_key": "${" + KEY_ENV + "}", "base_url": sim_url, "poll_interval_secs": 1},
        },
        "sinks": {"archive": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")}},
        "service": {"host": "127.0.0.1", "port": port},
        "logging": {"format": "json"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_metrics_move_as_events_flow(tmp_path: Path) -> None:
    """Scrape, add audit records, scrape again: every component's figures are there and grow."""
    async with InstantlySimulator(seed=1) as sim:
        world = demo_world(sim.state)
        ws_id = world.workspace.id
        port = _free_port()
        cfg = _config(tmp_path, sim.url, port)
        env = {**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: world.poller_key.key}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the process under test
            [sys.executable, "-m", "pipeline.cli.main", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            first = await wait_for(
                port,
                proc,
                lambda s: (
                    total(s, "pipeline_sink_deliveries_total", sink="archive") > 0
                    and total(s, "pipeline_alerts_raised_total") > 0
                    and bool(present(s, "pipeline_bus_consumer_lag"))
                    and len(present(s, "pipeline_source_cursor_age_seconds", workspace="acme", workspace_id=ws_id))
                    == len(DEFAULT_STREAMS)  # (the opt-in webhook_deliveries is not polled here)
                ),
                "the first poll of every stream to reach the sink",
            )
            # Instantly API requests, by status.
            assert total(first, "pipeline_instantly_api_requests_total", http_response_status_code="200") > 0
            # Every workspace metric carries both the Instantly id and the config alias.
            both = {"workspace_id": ws_id, "workspace": "acme"}
            assert total(first, "pipeline_instantly_api_requests_total", **both) > 0
            for name in ("pipeline_component_events_sent_total", "pipeline_alerts_raised_total"):
                assert total(first, name, **both) > 0, name
            # Records the poller published, per stream (component type instantly_<stream>).
            audit = {"component_kind": "source", "component_type": "instantly_audit_logs", "component_id": "acme"}
            published_before = total(first, "pipeline_component_events_sent_total", **audit)
            assert published_before > 0
            assert total(first, "pipeline_component_events_sent_total", component_type="instantly_api_keys") > 0
            assert total(first, "pipeline_component_events_received_total", component_kind="source") > 0
            # The demo world's old all:all key alerts on the first snapshot.
            all_scope = {"rule_id": "api_key.all_scope", "severity": "critical", **both}
            assert total(first, "pipeline_alerts_raised_total", **all_scope) >= 1
            assert total(first, "pipeline_component_events_received_total", component_kind="rules") > 0
            # The JSONL sink confirmed records; its circuit is closed.
            assert total(first, "pipeline_sink_deliveries_total", sink="archive") > 0
            assert present(first, "pipeline_sink_circuit_open", sink="archive") == [0.0]
            # Cursor age: present for every stream and small (polled every second).
            ages = present(first, "pipeline_source_cursor_age_seconds", **both, stream="audit_logs")
            assert len(ages) == 1 and 0 <= ages[0] < 30
            assert all(0 <= a < 30 for a in present(first, "pipeline_source_cursor_age_seconds", workspace="acme"))
            # Consumer lag: the rules group and the sink's group, per topic and partition.
            assert present(first, "pipeline_bus_consumer_lag", consumer_group="rules", topic="instantly.events.v1")
            assert present(first, "pipeline_bus_consumer_lag", consumer_group="sink-archive")

            # New audit activity in Instantly: published, and delivered, on the next polls.
            delivered_before = total(first, "pipeline_sink_deliveries_total", sink="archive")
            actor = Actor(user_id="u-metrics", user_name="Metrics Test", ip_address="198.51.100.7")
            for _ in range(5):
                sim.state.insert_audit(ws_id, 1, actor=actor)
            second = await wait_for(
                port,
                proc,
                lambda s: (
                    total(s, "pipeline_component_events_sent_total", **audit) >= published_before + 5
                    and total(s, "pipeline_sink_deliveries_total", sink="archive") >= delivered_before + 5
                ),
                "the new audit records to be published and delivered",
                secs=30,
            )
            assert total(second, "pipeline_instantly_api_requests_total", http_response_status_code="200") > total(
                first, "pipeline_instantly_api_requests_total", http_response_status_code="200"
            )
            ages = present(second, "pipeline_source_cursor_age_seconds", **both, stream="audit_logs")
            assert len(ages) == 1 and 0 <= ages[0] < 30
            # Latency per leg: each stage recorded its leg (the new records: within seconds).
            legs = {
                "source_to_bus": "acme",
                "bus_to_alert": "rules",
                "bus_to_destination": "archive",
                "end_to_end": "archive",
            }
            for leg, component in legs.items():
                count = total(second, "pipeline_latency_seconds_count", leg=leg, component_id=component)
                assert count > 0, leg
            e2e = {"leg": "end_to_end", "component_id": "archive"}
            assert total(second, "pipeline_latency_seconds_count", **e2e) > total(
                first, "pipeline_latency_seconds_count", **e2e
            )
            assert (
                total(second, "pipeline_latency_seconds_bucket", le="30.0", **e2e)
                - total(first, "pipeline_latency_seconds_bucket", le="30.0", **e2e)
                >= 5
            ), "the new audit records took over 30 s end to end"

            # Readiness: 200, every check listed and passing.
            status, body = await _get(port, "/readyz")
            assert status == 200, body
            checks = {c["name"]: c for c in orjson.loads(body)["checks"]}
            assert {"bus", "stream:acme/audit_logs", "stream:acme/api_keys", "sink:archive"} <= checks.keys()
            assert all(c["ok"] for c in checks.values()), checks
            assert present(second, "pipeline_readiness", check="bus") == [1.0]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, out.decode()[-3000:]
        assert world.poller_key.key not in out.decode()
