"""Soak: do the pipeline's resources stay bounded while it runs? (RSS, fds, threads, bus file, series).

``instantly-audit run`` (one process on the embedded bus: poller, webhook receiver, rules, a JSONL
sink) runs against the Instantly simulator in this process, which drives it with distinct values
everywhere a structure could be keyed on them:

* webhook deliveries at ``--rate`` per second, every one a new lead, email id and campaign, the
  event types taken in turn, until ``--events`` were accepted;
* every ``--key-every`` seconds an API key is created and the previous one deleted, each from a new
  IP address and user agent (audit 37 / 38 and two ``api_keys`` snapshot changes).

The bus keeps records ``--retention-secs`` (``bus.retention.max_age_days``), so a bounded bus file
stops growing once that much has been written. Every ``--sample-secs`` the pipeline's process is
sampled: RSS (``/proc/PID/status`` VmRSS), open fds, threads, the bus file and its WAL, the state
(keys, bytes), the number of series on ``/metrics`` and the log lines so far (at the default level,
JSON); the asyncio tasks are counted at the start and at the end (``SIGUSR1`` logs one ``Task
stack`` line per task). Printed at the end:

* RSS growth: the mean RSS of the last quarter of the events ÷ that of the first quarter (the
  baseline, same run); 1.00 is flat;
* series growth: the series on ``/metrics`` at the end ÷ at the end of the first quarter;
* the bus file (+ WAL) at the end ÷ at the end of the first quarter.

Run: ``python benchmarks/bench_soak.py`` (15,000 events at 250/s: about 1.5 min on 2 cores), or a long
soak: ``nice -n 10 python benchmarks/bench_soak.py --events 150000 --sample-secs 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from connectors.instantly.enums import WEBHOOK_EVENT_TYPE_ORDER
from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.sim.seed import demo_world

ROOT = Path(__file__).resolve().parents[1]
HOOK_SECRET = "iaw_bench_soak_secret_0a1b2c3d4e5f6a7b"
KEY_ENV, HOOK_ENV = "INSTANTLY_API_KEY", "BENCH_HOOK_SECRET"
EVENT_TYPES = [t for t in WEBHOOK_EVENT_TYPE_ORDER if t != "all_events"]


@dataclass
class Sample:
    t: float
    events: int
    rss_kib: int
    fds: int
    threads: int
    bus_bytes: int
    series: int
    log_lines: int
    state_keys: int
    state_bytes: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> tuple[int, int, int]:
    """(VmRSS KiB, open fds, threads) of ``pid``."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def series_count(text: str) -> int:
    """Samples on a Prometheus text page (one per series)."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def count_lines(path: Path) -> int:
    """Log lines, without the ``Task stack`` lines this bench asks for."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    return data.count(b"\n") - data.count(b'"msg":"Task stack"')


def state_size(bus: Path) -> tuple[int, int]:
    """(keys, bytes) of the bus's state table (read-only, beside the running writer)."""
    db = sqlite3.connect(f"file:{bus}?mode=ro", uri=True, timeout=5)
    try:
        keys, size = db.execute("SELECT COUNT(*), COALESCE(SUM(length(v)), 0) FROM state").fetchone()
        return int(keys), int(size)
    finally:
        db.close()


async def task_count(pid: int, log: Path) -> int:
    """asyncio tasks in the pipeline: SIGUSR1 logs one ``Task stack`` line per task."""
    before = (await asyncio.to_thread(log.read_bytes)).count(b'"msg":"Task stack"')
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(1.0)
    return (await asyncio.to_thread(log.read_bytes)).count(b'"msg":"Task stack"') - before


def files_size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


async def churn_keys(sim: Any, ws: str, every: float, stop: asyncio.Event) -> None:
    """Create a key and delete the previous one every ``every`` s, each time from a new IP and user agent."""
    state = sim.state
    prev: str | None = None
    i = 0
    while not stop.is_set():
        i += 1
        ip = f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}"
        actor = state.actor_for_user("sam", ip, f"soak-agent/{i}")
        key = state.create_api_key(ws, f"soak-{i}", ["campaigns:read"], actor=actor)
        if prev is not None:
            state.delete_api_key(prev, actor=actor)
        prev = key.id
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def send_webhooks(url: str, ws: str, rate: float, total: int, accepted: list[int]) -> None:
    """POST ``total`` distinct deliveries at ``rate``/s; count the accepted ones in ``accepted[0]``."""
    run = uuid.uuid4().hex[:8]
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": HOOK_SECRET}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(n: int) -> None:
            body = orjson.dumps(
                {
                    "timestamp": "2026-12-07T00:00:00.000Z",
                    "event_type": EVENT_TYPES[n % len(EVENT_TYPES)],
                    "workspace": ws,
                    "campaign_id": f"019cc043-{n >> 12:04x}-7000-8000-{n:012x}",
                    "campaign_name": f"Campaign {n >> 6}",
                    "lead_email": f"lead{n}@soak{n % 997}.example",
                    "email_account": f"sender{n % 50}@acme.example",
                    "email_id": f"{run}-{n}",
                    "email_subject": f"Quick question {n}",
                }
            )
            for _ in range(20):  # a 503 (backpressure) is retried, as Instantly does
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            accepted[0] += 1
                            return
                await asyncio.sleep(0.5)

        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for n in range(total):
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def sample_loop(
    pid: int, metrics_url: str, files: tuple[Path, ...], log: Path, every: float, accepted: list[int],
    out: list[Sample], stop: asyncio.Event, t0: float,
) -> None:  # fmt: skip
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            try:
                rss, fds, threads = proc_status(pid)
                async with s.get(metrics_url) as r:
                    series = series_count(await r.text())
            except (OSError, aiohttp.ClientError):
                return
            lines = await asyncio.to_thread(count_lines, log)
            keys, size = await asyncio.to_thread(state_size, files[0])
            t, bus = time.monotonic() - t0, files_size(*files)
            smp = Sample(t, accepted[0], rss, fds, threads, bus, series, lines, keys, size)
            out.append(smp)
            print(
                f"  t={smp.t:6.0f}s events={smp.events:>7} rss={rss / 1024:7.1f}MiB fds={fds:>3} threads={threads:>2}"
                f" bus={bus / 1048576:7.1f}MiB state={keys}/{size / 1024:.0f}KiB series={series:>4} log_lines={lines}",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


def report(samples: list[Sample], total: int, duration: float, tasks: tuple[int, int]) -> None:
    q = max(1, total // 4)
    first = [s for s in samples if s.events <= q] or samples[:1]
    last = [s for s in samples if s.events >= total - q] or samples[-1:]

    def mean(xs: list[int]) -> float:
        return sum(xs) / len(xs)

    rss0, rss1 = mean([s.rss_kib for s in first]), mean([s.rss_kib for s in last])
    third = [s for s in samples if total // 2 <= s.events < total - q] or samples[-1:]
    rss2 = mean([s.rss_kib for s in third])
    ser0, ser1 = first[-1].series, samples[-1].series
    bus0, bus1 = first[-1].bus_bytes, samples[-1].bus_bytes
    minutes = max(duration / 60, 1e-9)
    print(f"# {len(samples)} samples over {duration:.0f} s")
    print(f"RSS first quarter mean {rss0 / 1024:.1f} MiB, last quarter mean {rss1 / 1024:.1f} MiB: "
          f"growth ratio {rss1 / rss0:.3f} (last ÷ third quarter {rss1 / rss2:.3f})")  # fmt: skip
    print(f"/metrics series end of first quarter {ser0}, at the end {ser1}: growth ratio {ser1 / max(ser0, 1):.3f}")
    print(f"bus file end of first quarter {bus0 / 1048576:.1f} MiB, at the end {bus1 / 1048576:.1f} MiB: "
          f"growth ratio {bus1 / max(bus0, 1):.3f}")  # fmt: skip
    st0, st1 = first[-1], samples[-1]
    print(f"state end of first quarter {st0.state_keys} keys / {st0.state_bytes / 1024:.0f} KiB, at the end "
          f"{st1.state_keys} keys / {st1.state_bytes / 1024:.0f} KiB")  # fmt: skip
    print(f"fds {first[-1].fds} -> {samples[-1].fds}; threads {first[-1].threads} -> {samples[-1].threads}; "
          f"asyncio tasks {tasks[0]} -> {tasks[1]}; "
          f"log lines {samples[-1].log_lines} ({samples[-1].log_lines / minutes:.1f}/min)")  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=15_000, help="webhook deliveries to send (default 15,000)")
    ap.add_argument("--rate", type=float, default=250.0, help="webhook deliveries per second")
    ap.add_argument("--key-every", type=float, default=1.0, help="seconds between API key create/delete pairs")
    ap.add_argument("--poll", type=float, default=2.0, help="the poller's poll interval (s)")
    ap.add_argument("--sample-secs", type=float, default=2.0)
    ap.add_argument("--retention-secs", type=float, default=30.0, help="the bus's retention.max_age (s)")
    args = ap.parse_args()
    machine = f"python {sys.version.split()[0]} {platform.machine()} {os.cpu_count()} CPUs"
    print(f"# bench_soak {args.events} events at {args.rate}/s, key churn every {args.key_every}s, "
          f"retention {args.retention_secs}s; {machine}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmpdir:
        tmp = Path(tmpdir)
        async with InstantlySimulator(seed=1) as sim:
            world = demo_world(sim.state)
            ws = world.workspace.id
            service, hook_port = free_port(), free_port()
            cfg = {
                "bus": {
                    "type": "sqlite",
                    "path": str(tmp / "bus.db"),
                    "synchronous": "normal",
                    "retention": {"max_age_days": args.retention_secs / 86_400},
                },
                "workspaces": {
                    "acme": {
                        "api_key": "${" + KEY_ENV + "}",
                        "base_url": sim.url,
                        "poll_interval_secs": args.poll,
                        "budget": {"requests_per_second": 20, "requests_per_minute": 1200},
                    }
                },
                "webhook": {
                    "host": "127.0.0.1",
                    "port": hook_port,
                    "sources": {"soak": {"workspace_id": ws, "secrets": ["${" + HOOK_ENV + "}"]}},
                },
                "sinks": {"archive": {"type": "jsonl", "path": str(tmp / "out.jsonl")}},
                "service": {"host": "127.0.0.1", "port": service},
                "logging": {"format": "json"},
            }
            path = tmp / "cfg.yaml"
            path.write_text(yaml.safe_dump(cfg))
            env = {**os.environ, "PYTHONPATH": str(ROOT), KEY_ENV: world.poller_key.key, HOOK_ENV: HOOK_SECRET}
            log = tmp / "pipeline.log"
            with log.open("wb") as logf:
                proc = subprocess.Popen(  # noqa: ASYNC220 - the pipeline under test
                    [sys.executable, "-m", "pipeline.cli.main", "run", "--config", str(path)],
                    cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                )  # fmt: skip
            samples: list[Sample] = []
            accepted = [0]
            t0 = time.monotonic()
            try:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, log.read_text()[-2000:]
                    assert time.monotonic() < deadline, "the pipeline did not start"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{hook_port}/readyz") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.3)
                stop = asyncio.Event()
                files = (tmp / "bus.db", tmp / "bus.db-wal")
                metrics = f"http://127.0.0.1:{service}/metrics"
                sampler = asyncio.create_task(
                    sample_loop(proc.pid, metrics, files, log, args.sample_secs, accepted, samples, stop, t0)
                )
                keys = asyncio.create_task(churn_keys(sim, ws, args.key_every, stop))
                tasks_at_start = await task_count(proc.pid, log)
                await send_webhooks(f"http://127.0.0.1:{hook_port}/hooks/soak", ws, args.rate, args.events, accepted)
                await asyncio.sleep(args.sample_secs + 1)
                tasks_at_end = await task_count(proc.pid, log)
                stop.set()
                await asyncio.gather(sampler, keys)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 60)
            duration = time.monotonic() - t0
            tail = [ln for ln in log.read_text().splitlines() if '"level": "ERROR"' in ln or '"ERROR"' in ln]
            if tail:
                print(f"# {len(tail)} ERROR log lines; last: {tail[-1][:300]}")
    if len(samples) < 2:
        raise SystemExit("too few samples (the pipeline stopped?)")
    report(samples, accepted[0], duration, (tasks_at_start, tasks_at_end))


if __name__ == "__main__":
    asyncio.run(main())
