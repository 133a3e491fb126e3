"""Webhook receiver: requests/s and ack latency (p50/p99) at fixed loads, against a baseline in the same run.

Each target runs in its own process on 127.0.0.1; the load comes from ``wrk`` (Debian package
``wrk``; a Lua script sets the secret header and a unique ~2 KB Instantly-like body per request)
or, when wrk is missing, from an aiohttp load generator in a separate process. A "fixed load"
is a fixed number of open connections, each sending its next request when the last was answered.

Targets:
  baseline        aiohttp handler that reads the body and answers 200 without persisting
  sqlite          the receiver, durable on the embedded bus (synchronous=FULL, group commit)
  sqlite-nobatch  the same with max_batch=1 (one fsync'd transaction per delivery)
  kafka           the receiver on Kafka (transactions, acks=all) — when KAFKA_BOOTSTRAP is set

For each target it prints rate and latency per load level, the ratio to the baseline at the same
level, the target process's CPU per request (and the broker's, when ``KAFKA_BROKER_PID`` names
the local broker), deliveries per bus transaction, and the highest measured rate whose p99 stays
under 100 ms. CPU per request is the figure to compare on a busy shared machine: the rates move
with whatever else runs, the CPU a request costs much less.

    .venv/bin/python benchmarks/bench_webhook.py [--duration 5] [--connections 1,4,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "iaw_bench_secret_9f8e7d6c5b4a39281706f5e4"
WS = "019cc043-e2f1-7def-8b07-0aab88328dad"
PATH = "/hooks/bench"
FILLER = "Hi {{firstName}}, quick question about your outreach. " * 30

LUA = r"""
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"timestamp":"2026-03-05T23:09:47.337Z","event_type":"email_sent","workspace":"%s",' ..
    '"campaign_id":"019cc043-0000-7000-8000-000000000001","campaign_name":"Q1",' ..
    '"lead_email":"lead%d@example.com","email_account":"sender@acme.example","step":1,"variant":1,' ..
    '"is_first":true,"email_id":"%s-%d","email_subject":"Quick question","email_html":"%s"}',
    WS, counter, RUN .. "-" .. tostring(id or 0), counter, FILLER)
  return wrk.format("POST", PATH, {["Content-Type"]="application/json", ["X-Webhook-Secret"]=SECRET}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(run: str, n: int) -> bytes:
    return json.dumps(
        {
            "timestamp": "2026-03-05T23:09:47.337Z",
            "event_type": "email_sent",
            "workspace": WS,
            "campaign_id": "019cc043-0000-7000-8000-000000000001",
            "campaign_name": "Q1",
            "lead_email": f"lead{n}@example.com",
            "email_account": "sender@acme.example",
            "step": 1,
            "variant": 1,
            "is_first": True,
            "email_id": f"{run}-{n}",
            "email_subject": "Quick question",
            "email_html": FILLER,
        }
    ).encode()


# ------------------------------------------------------------------------------------ targets
async def serve(target: str, port: int, workdir: str) -> None:
    """Run one target until killed; print READY when listening."""
    from aiohttp import web

    if target == "baseline":

        async def ok(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b'{"status":"accepted"}', content_type="application/json")

        app = web.Application()
        app.router.add_post(PATH, ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        print("READY", flush=True)
        await asyncio.Event().wait()
        return

    from pipeline.bus.factory import open_bus
    from pipeline.config.base import EnvValue
    from pipeline.config.model import KafkaBusConfig, SqliteBusConfig
    from pipeline.sources.webhook.config import parse_webhook_config
    from pipeline.sources.webhook.receiver import WebhookReceiver

    bus_cfg: SqliteBusConfig | KafkaBusConfig
    if target.startswith("sqlite"):
        bus_cfg = SqliteBusConfig(path=Path(workdir) / "bus.db", synchronous="full")
    else:
        bus_cfg = KafkaBusConfig(
            type="kafka",
            bootstrap_servers=[os.environ["KAFKA_BOOTSTRAP"]],
            partitions=1,
            transactional_id_prefix=f"bench-{uuid.uuid4().hex[:8]}",
        )
    cfg = parse_webhook_config(
        {
            "host": "127.0.0.1",
            "port": port,
            "max_batch": 1 if target == "sqlite-nobatch" else 256,
            "sources": {"bench": {"workspace_id": WS, "secrets": [EnvValue(SECRET)]}},
        }
    )
    async with open_bus(bus_cfg) as bus:
        receiver = WebhookReceiver(cfg, bus)
        await receiver.start()
        print("READY", flush=True)
        stats = Path(workdir) / "stats.json"
        while True:  # the committer's counters, read by main() around each load level
            stats.write_text(
                json.dumps({"transactions": receiver.committer.transactions, "accepted": receiver.accepted})
            )
            await asyncio.sleep(0.25)


# ------------------------------------------------------------------------------------- load
def wrk_load(url: str, connections: int, duration: float, run: str) -> dict[str, Any]:
    script = Path(tempfile.mkdtemp()) / "hook.lua"
    consts = f'WS="{WS}"\nRUN="{run}"\nSECRET="{SECRET}"\nPATH="{PATH}"\nFILLER="{FILLER}"\n'
    script.write_text(consts + LUA)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    secs = r["duration_us"] / 1e6
    return {
        "rps": r["requests"] / secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["non2xx"] + r["socket_errors"],
    }


async def _aiohttp_load(url: str, connections: int, duration: float, run: str) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    n = 0
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession, wid: int) -> None:
        nonlocal errors, n
        while time.perf_counter() < deadline:
            n += 1
            b = body(f"{run}-{wid}", n)
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=b, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            lat.append(time.perf_counter() - t0)
            errors += not ok

    t0 = time.perf_counter()
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session, i) for i in range(connections)))
    secs = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / secs,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "errors": errors,
    }


def aiohttp_load(url: str, connections: int, duration: float, run: str) -> dict[str, Any]:
    """The fallback generator, in its own process so it does not share the target's GIL."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, str(connections), str(duration), run],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------- main
def cpu_secs(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def counters(workdir: str) -> dict[str, int]:
    """The receiver's committed transactions and accepted deliveries (empty for the baseline)."""
    try:
        data: dict[str, int] = json.loads((Path(workdir) / "stats.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def start_target(target: str, workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", target, str(port), workdir],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"READY":
        proc.kill()
        raise SystemExit(f"target {target} failed to start")
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load level")
    ap.add_argument("--connections", default="1,4,16,64", help="load levels: open connections")
    ap.add_argument("--targets", default="baseline,sqlite,sqlite-nobatch,kafka")
    ap.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = ap.parse_args()
    levels = [int(x) for x in args.connections.split(",")]
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    load = wrk_load if tool == "wrk" else aiohttp_load
    targets = [t for t in args.targets.split(",") if t != "kafka" or os.environ.get("KAFKA_BOOTSTRAP")]
    print(f"load generator: {tool}; {args.duration:.0f}s per level; cpus={os.cpu_count()}")
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before: {load_avg:.2f}")
    broker = int(os.environ["KAFKA_BROKER_PID"]) if os.environ.get("KAFKA_BROKER_PID", "").isdigit() else None
    results: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        workdir = tempfile.mkdtemp(prefix="bench-webhook-")
        proc, port = start_target(target, workdir)
        try:
            url = f"http://127.0.0.1:{port}{PATH}" if tool == "aiohttp" else f"http://127.0.0.1:{port}"
            load(url, 2, 1.0, f"warm-{uuid.uuid4().hex[:6]}")
            results[target] = []
            for c in levels:
                time.sleep(0.3)  # let the counters file catch up
                before = (cpu_secs(proc.pid), cpu_secs(broker), counters(workdir))
                r = load(url, c, args.duration, f"{target}-{c}-{uuid.uuid4().hex[:6]}")
                time.sleep(0.3)
                after = (cpu_secs(proc.pid), cpu_secs(broker), counters(workdir))
                n = max(1, after[2].get("accepted", 0) - before[2].get("accepted", 0))
                txns = after[2].get("transactions", 0) - before[2].get("transactions", 0)
                served = max(1.0, r["rps"] * args.duration)
                r["cpu_ms"] = (after[0] - before[0]) * 1000 / served
                r["broker_ms"] = (after[1] - before[1]) * 1000 / served if target == "kafka" else float("nan")
                r["per_txn"] = n / txns if txns else float("nan")
                r["connections"] = c
                results[target].append(r)
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
    base = {r["connections"]: r["rps"] for r in results.get("baseline", [])}
    print(
        f"\n{'target':<15}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs base':>9}"
        f"{'cpu ms/req':>11}{'broker ms/req':>14}{'per txn':>8}"
    )
    for target, rows in results.items():
        for r in rows:
            ratio = r["rps"] / base[r["connections"]] if base.get(r["connections"]) else float("nan")
            print(
                f"{target:<15}{r['connections']:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                f"{r['errors']:>8}{ratio:>9.2f}{r['cpu_ms']:>11.3f}{r['broker_ms']:>14.3f}{r['per_txn']:>8.1f}"
            )
    print("\nhighest measured rate with p99 < 100 ms:")
    for target, rows in results.items():
        ok = [r for r in rows if r["p99_ms"] < 100 and r["errors"] == 0]
        best = max(ok, key=lambda r: r["rps"]) if ok else None
        text = f"{best['rps']:.0f} req/s at {best['connections']} connections" if best else "none"
        print(f"  {target:<15}{text}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--load":
        res = asyncio.run(_aiohttp_load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]))
        print(json.dumps(res))
    else:
        sys.exit(main())
