"""Detection latency per leg: the Instantly simulator driving a running pipeline (issue 19).

``instantly-audit run`` (one process: poller, webhook receiver, rules, a JSONL sink) runs against
the simulator in this process. While it runs:

* an ``all:all`` API key is created in the simulator every ``--key-every`` seconds (audit 37 and
  a new key in the listing); the poller reads the audit log every ``--poll`` seconds and the
  audit record triggers the ``api_keys`` snapshot in the same poll; ``api_key.all_scope`` raises
  a critical alert;
* webhook deliveries are POSTed to the receiver at ``--rate`` per second.

The JSONL file is tailed (every 10 ms) to see when each record reached the destination; after
the run the bus is read for each record's append time. Legs, p50 / p95 / p99 / max in seconds:

* key created → ``api_key.created`` on the bus → alert on the bus → alert in the sink (and end to end);
* webhook delivery sent → event on the bus → event in the sink (and end to end).

Also printed: the pipeline's own ``pipeline_latency_seconds`` histograms from ``/metrics``
(quantiles interpolated within buckets).

Run: ``python -m benchmarks.bench_latency [--bus kafka] [--duration 60]`` (Kafka: KAFKA_BOOTSTRAP).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.seed import demo_world
from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, iter_records
from pipeline.bus.factory import open_bus
from pipeline.config.model import KafkaBusConfig, SqliteBusConfig

ROOT = Path(__file__).resolve().parents[1]
HOOK_SECRET = "iaw_bench_latency_secret_5f4e3d2c1b0a"
KEY_ENV, HOOK_ENV = "INSTANTLY_API_KEY", "BENCH_HOOK_SECRET"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    v = sorted(values)
    p50, p95, p99 = (v[min(len(v) - 1, int(q * len(v)))] for q in (0.5, 0.95, 0.99))
    return f"n={len(v):>5}  p50 {p50:7.3f}  p95 {p95:7.3f}  p99 {p99:7.3f}  max {v[-1]:7.3f}"


def bus_block(kind: str, tmp: Path) -> dict[str, Any]:
    if kind == "kafka":
        prefix = f"lat-{uuid.uuid4().hex[:6]}."
        return {
            "type": "kafka",
            "bootstrap_servers": [os.environ["KAFKA_BOOTSTRAP"]],
            "topic_prefix": prefix,
            "transactional_id_prefix": prefix,
            "partitions": 1,
        }
    return {"type": "sqlite", "path": str(tmp / "bus.db")}


class Tail:
    """Follows the JSONL sink file: first time each event / alert id was seen."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: dict[str, float] = {}
        self.docs: dict[str, dict[str, Any]] = {}
        self._pos = 0
        self._rest = b""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.read()
            await asyncio.sleep(0.01)
        self.read()

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._pos)
            chunk = f.read()
        now = time.time()
        self._pos += len(chunk)
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if line.strip():
                doc = orjson.loads(line)
                self.seen.setdefault(doc["id"], now)
                self.docs[doc["id"]] = doc


async def create_keys(sim: Any, ws: str, every: float, stop: asyncio.Event, created: dict[str, float]) -> None:
    state = sim.state
    actor = state.actor_for_user("sam", "203.0.113.9")
    i = 0
    while not stop.is_set():
        i += 1
        key = state.create_api_key(ws, f"bench-{i}", ["all:all"], actor=actor)
        created[key.id] = time.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def send_webhooks(
    url: str, ws: str, rate: float, stop: asyncio.Event, sent: dict[str, float], acks: list[float]
) -> None:
    run = uuid.uuid4().hex[:8]
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": HOOK_SECRET}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(n: int) -> None:
            body = orjson.dumps(
                {
                    "timestamp": "2026-12-07T00:00:00.000Z",
                    "event_type": "email_sent",
                    "workspace": ws,
                    "campaign_id": "019cc043-0000-7000-8000-000000000001",
                    "campaign_name": "Q1",
                    "lead_email": f"lead{n}@example.com",
                    "email_account": "sender@acme.example",
                    "email_id": f"{run}-{n}",
                    "email_subject": "Quick question",
                }
            )
            t0 = time.time()
            async with session.post(url, data=body, headers=headers) as r:
                doc = await r.json()
            if r.status == 200 and doc.get("status") == "accepted":
                sent[doc["id"]] = t0
                acks.append(time.time() - t0)

        tasks: set[asyncio.Task[None]] = set()
        start, n = time.monotonic(), 0
        while not stop.is_set():
            n += 1
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def histogram_quantiles(text: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(leg, component) → (count, p50, p99) from the pipeline's histogram buckets (linear within a bucket)."""
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "pipeline_latency_seconds_bucket":
                key = (s.labels["leg"], s.labels.get("component_id", ""))
                buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
    out = {}
    for key, bs in buckets.items():
        bs.sort()
        total = bs[-1][1]

        def q(p: float, bs: list[tuple[float, float]] = bs, total: float = total) -> float:
            target, lo, below = p * total, 0.0, 0.0
            for le, cum in bs:
                if cum >= target:
                    if le == float("inf"):
                        return lo
                    return lo + (le - lo) * ((target - below) / max(cum - below, 1e-9))
                lo, below = le, cum
            return lo

        out[key] = (total, q(0.5), q(0.99))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bus", choices=["sqlite", "kafka"], default="sqlite")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--poll", type=float, default=5.0, help="audit poll interval (s)")
    ap.add_argument("--key-every", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="webhook deliveries per second")
    ap.add_argument(
        "--batch-wait", type=float, default=None, help="the sink's batch_max_wait_secs (default: the sink default)"
    )
    args = ap.parse_args()
    print(f"# bench_latency bus={args.bus} poll={args.poll}s key every {args.key_every}s webhooks {args.rate}/s")
    machine = f"python {sys.version.split()[0]} {platform.machine()} {os.cpu_count()} CPUs"
    wait = "the sink default" if args.batch_wait is None else f"{args.batch_wait}s"
    print(f"# {machine}; sink batch wait {wait}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmpdir:
        tmp = Path(tmpdir)
        async with InstantlySimulator(seed=1) as sim:
            world = demo_world(sim.state)
            ws = world.workspace.id
            service, hook_port = free_port(), free_port()
            bus = bus_block(args.bus, tmp)
            cfg = {
                "bus": bus,
                "workspaces": {
                    "acme": {
                        "api_key": "${" + KEY_ENV + "}",
                        "base_url": sim.url,
                        "poll_interval_secs": args.poll,
                        "snapshot_interval_secs": 300,
                        "budget": {"requests_per_second": 20, "requests_per_minute": 1200},
                    }
                },
                "webhook": {
                    "host": "127.0.0.1",
                    "port": hook_port,
                    "sources": {"bench": {"workspace_id": ws, "secrets": ["${" + HOOK_ENV + "}"]}},
                },
                "sinks": {
                    "archive": {"type": "jsonl", "path": str(tmp / "out.jsonl")}
                    | ({} if args.batch_wait is None else {"batch_max_wait_secs": args.batch_wait})
                },
                "service": {"host": "127.0.0.1", "port": service},
                "logging": {"format": "json", "level": "WARNING"},
            }
            path = tmp / "cfg.yaml"
            path.write_text(yaml.safe_dump(cfg))
            env = {**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: world.poller_key.key, HOOK_ENV: HOOK_SECRET}
            proc = subprocess.Popen(  # noqa: ASYNC220 - the pipeline under test
                [sys.executable, "-m", "pipeline.cli.main", "run", "--config", str(path)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            tail = Tail(tmp / "out.jsonl")
            stop_tail = asyncio.Event()
            tail_task = asyncio.create_task(tail.run(stop_tail))
            created: dict[str, float] = {}
            sent: dict[str, float] = {}
            acks: list[float] = []
            metrics = ""
            try:
                deadline = time.monotonic() + 60
                while not any(d.get("schema") == "instantly.alert.v1" for d in tail.docs.values()):
                    assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
                    assert time.monotonic() < deadline, "the pipeline did not deliver its first alert"
                    await asyncio.sleep(0.2)
                stop = asyncio.Event()
                load = [
                    asyncio.create_task(create_keys(sim, ws, args.key_every, stop, created)),
                    asyncio.create_task(
                        send_webhooks(f"http://127.0.0.1:{hook_port}/hooks/bench", ws, args.rate, stop, sent, acks)
                    ),
                ]
                await asyncio.sleep(args.duration)
                stop.set()
                await asyncio.gather(*load)
                await asyncio.sleep(2 * args.poll + 5)  # the last key's poll and delivery
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{service}/metrics") as r:
                    metrics = await r.text()
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 60)
                stop_tail.set()
                await tail_task
        appended: dict[str, tuple[float, dict[str, Any]]] = {}
        bus_cfg = KafkaBusConfig(**bus) if args.bus == "kafka" else SqliteBusConfig(**bus)
        dead: dict[str, int] = {}
        async with (
            open_bus(bus_cfg) as b,
            b.consumer([EVENTS_TOPIC, ALERTS_TOPIC, DEADLETTER_TOPIC], start="earliest") as c,
        ):
            async for recs in iter_records(c):
                for rec in recs:
                    if rec.topic == DEADLETTER_TOPIC:
                        reason = (rec.header("dlq.reason") or rec.header("error") or b"?").decode()
                        dead[reason] = dead.get(reason, 0) + 1
                        continue
                    doc = orjson.loads(rec.value)
                    appended[doc["id"]] = (rec.timestamp_ms / 1000, doc)
        if dead:
            print(f"# dead letters: {dead}")
    report(created, sent, acks, appended, tail, metrics)


def report(
    created: dict[str, float],
    sent: dict[str, float],
    acks: list[float],
    appended: dict[str, tuple[float, dict[str, Any]]],
    tail: Tail,
    metrics: str,
) -> None:
    key_event: dict[str, str] = {}
    for eid, (_t, doc) in appended.items():
        if doc.get("type") == "api_key.created":
            key_event[doc["source"]["record_id"]] = eid
    event_alert: dict[str, str] = {}
    for aid, (_t, doc) in sorted(appended.items(), key=lambda kv: kv[1][0]):
        if doc.get("schema") == "instantly.alert.v1" and doc["rule"]["id"] == "api_key.all_scope":
            for eid in doc.get("event_ids", []):
                event_alert.setdefault(eid, aid)
    legs: dict[str, list[float]] = {k: [] for k in ("src", "alert", "sink", "e2e")}
    missing = {"no event": 0, "no alert": 0, "alert not in sink": 0}
    for key, t0 in created.items():
        found = key_event.get(key)
        alert = event_alert.get(found) if found is not None else None
        if found is None or alert is None or alert not in tail.seen:
            why = "no event" if found is None else "no alert" if alert is None else "alert not in sink"
            missing[why] += 1
            if why == "no alert":
                about = [d["rule"]["id"] for _t, d in appended.values() if key in str(d.get("summary", ""))]
                print(f"# {key}: no api_key.all_scope alert with its event; alerts naming it: {about}")
            continue
        legs["src"].append(appended[found][0] - t0)
        legs["alert"].append(appended[alert][0] - appended[found][0])
        legs["sink"].append(tail.seen[alert] - appended[alert][0])
        legs["e2e"].append(tail.seen[alert] - t0)
    unmatched = ", ".join(f"{n} {why}" for why, n in missing.items() if n) or "all matched"
    print(f"\nkey created → alert in the sink ({len(created)} keys; {unmatched})")
    print(f"  key created → api_key.created on the bus   {quantiles(legs['src'])}")
    print(f"  event on the bus → alert on the bus        {quantiles(legs['alert'])}")
    print(f"  alert on the bus → alert in the sink       {quantiles(legs['sink'])}")
    print(f"  end to end                                 {quantiles(legs['e2e'])}")
    w: dict[str, list[float]] = {"bus": [], "sink": [], "e2e": []}
    lost = 0
    for eid, t0 in sent.items():
        if eid not in appended or eid not in tail.seen:
            lost += 1
            continue
        w["bus"].append(appended[eid][0] - t0)
        w["sink"].append(tail.seen[eid] - appended[eid][0])
        w["e2e"].append(tail.seen[eid] - t0)
    print(f"\nwebhook delivery → event in the sink ({len(sent)} accepted, {lost} not found)")
    print(f"  acknowledged (2xx)                         {quantiles(acks)}")
    print(f"  sent → event on the bus                    {quantiles(w['bus'])}")
    print(f"  event on the bus → event in the sink       {quantiles(w['sink'])}")
    print(f"  end to end                                 {quantiles(w['e2e'])}")
    print("\npipeline_latency_seconds (the pipeline's own histograms, bucket-interpolated)")
    for (leg, comp), (n, p50, p99) in sorted(histogram_quantiles(metrics).items()):
        print(f"  {leg:<20} {comp:<10} n={int(n):>6}  p50 {p50:7.3f}  p99 {p99:7.3f}")


if __name__ == "__main__":
    asyncio.run(main())
