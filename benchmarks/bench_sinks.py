"""Sink delivery benchmark: runner throughput against a plain aiohttp loop, and memory during an outage.

Part 1 — throughput. For each HTTP sink (Splunk HEC, Elasticsearch, signed webhook; all with
``format: native``) and the Elasticsearch sink with ``format: ecs`` (its default; the plain loop
then builds the same ECS documents with :func:`pipeline.formats.to_ecs`), the fake destination
runs in its own process. In the same run we measure

* **runner**: ``SinkRunner.run_once()`` delivering N events from the embedded SQLite bus
  (read, decode, filter, encode, gzip, POST, confirm, commit offsets per batch), and
* **baseline**: a plain ``aiohttp`` loop POSTing the same batches, already encoded before
  the clock starts (the cheapest any client could do against that server),

alternately, best of ``--rounds``, and print events/s and runner ÷ baseline (target ≥ 70%).

Part 2 — outage. The three destinations go down (503) while a producer publishes at a steady
``--rate`` for ``--outage-secs``; the three runners keep running with their default retry and
circuit settings. We sample the process RSS and report the peak: it must stay flat while the
lag grows on the bus. Then the destinations come back and we report the drain time and lost ids.

    .venv/bin/python benchmarks/bench_sinks.py                  # ~90 s
    .venv/bin/python benchmarks/bench_sinks.py --outage-secs 10 --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import gzip
import hashlib
import hmac
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from connectors.splunk_hec import SplunkHecConfig, SplunkHecSink
from connectors.webhook_sink import SignedWebhookConfig, SignedWebhookSink
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.bus.sqlite import SqliteBus
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Delivery, SinkConfig
from pipeline.delivery.runner import SinkRunner, decode
from pipeline.formats import to_ecs
from tests.fakes import make_event, publish

TOKEN = "bench-hec-token"
API_KEY = "YmVuY2g6a2V5"
SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef").decode()
SINKS = ("splunk_hec", "elasticsearch", "elasticsearch-ecs", "webhook")
# The sink type behind each benchmark row, and the record format it sends.
SINK_TYPE = {"splunk_hec": "splunk_hec", "elasticsearch": "elasticsearch", "elasticsearch-ecs": "elasticsearch",
             "webhook": "webhook"}  # fmt: skip
OUTAGE_SINKS = ("splunk_hec", "elasticsearch", "webhook")
FORMAT = {"splunk_hec": "native", "elasticsearch": "native", "elasticsearch-ecs": "ecs", "webhook": "native"}
SYNC: Any = os.environ.get("BENCH_SYNC", "full")


# ---------------------------------------------------------------------- the server process
def _serve(kind: str, conn: Connection) -> None:
    asyncio.run(_serve_async(kind, conn))


async def _serve_async(kind: str, conn: Connection) -> None:
    from tests.fakes.elasticsearch import FakeElasticsearch
    from tests.fakes.hec import FakeHec
    from tests.fakes.receiver import FakeReceiver

    server: Any
    if kind == "splunk_hec":
        server = FakeHec(TOKEN)
    elif kind.startswith("elasticsearch"):
        server = FakeElasticsearch(api_key=API_KEY)
    else:
        server = FakeReceiver(SECRET)
    await server.start()
    conn.send(server.port)
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "stop":
            await server.stop()
            conn.send("ok")
            return
        if cmd == "down":
            server.faults.down = True
        elif cmd == "up":
            server.faults.down = False
        elif cmd == "reset":
            for attr in ("events", "docs", "records"):
                if hasattr(server, attr):
                    getattr(server, attr).clear()
        elif cmd == "ids":
            conn.send(server.ids)
            continue
        conn.send("ok")


class Destination:
    """A fake destination in a child process."""

    def __init__(self, kind: str) -> None:
        ctx = mp.get_context("spawn")
        self.kind = kind
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(kind, child), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, cmd: str) -> Any:
        self._conn.send(cmd)
        return self._conn.recv()

    def close(self) -> None:
        self.call("stop")
        self._proc.join(5)


# ------------------------------------------------------------------------------ the sinks
def build(kind: str, url: str, **extra: Any) -> tuple[Any, SinkConfig]:
    extra = {"format": FORMAT.get(kind, "native"), **extra}
    if kind == "splunk_hec":
        hec = SplunkHecConfig.model_validate({"type": kind, "url": url, "token": EnvValue(TOKEN), **extra})
        return SplunkHecSink("bench-hec", hec), hec
    if kind.startswith("elasticsearch"):
        block = {"type": "elasticsearch", "url": url, "api_key": EnvValue(API_KEY), **extra}
        es = ElasticsearchConfig.model_validate(block)
        return ElasticsearchSink("bench-es", es), es
    wh = SignedWebhookConfig.model_validate({"type": kind, "url": url + "/hooks", "secret": EnvValue(SECRET), **extra})
    return SignedWebhookSink("bench-webhook", wh), wh


async def encoded_requests(kind: str, sink: Any, batches: list[list[Delivery]]) -> list[tuple[bytes, dict[str, str]]]:
    """The exact request bodies and headers the sink would send, built before timing."""
    out: list[tuple[bytes, dict[str, str]]] = []
    for batch in batches:
        if kind == "splunk_hec":
            body = await sink._body([sink.encode(d) for d in batch])
            out.append((body, HEADERS[kind]))
        elif kind.startswith("elasticsearch"):
            out.append((b"".join(sink.encode(d) for d in batch), HEADERS[kind]))
        else:
            for d in batch:
                out.append((d.raw, {**sink.signed_headers(d.id, d.raw), **HEADERS[kind]}))
    return out


HEADERS = {
    "splunk_hec": {"Authorization": f"Splunk {TOKEN}", "Content-Encoding": "gzip", "Content-Type": "application/json"},
    "elasticsearch": {"Authorization": f"ApiKey {API_KEY}", "Content-Type": "application/x-ndjson"},
    "elasticsearch-ecs": {"Authorization": f"ApiKey {API_KEY}", "Content-Type": "application/x-ndjson"},
    "webhook": {"Content-Type": "application/json"},
}
PATHS = {"splunk_hec": "/services/collector/event", "elasticsearch": "/_bulk", "elasticsearch-ecs": "/_bulk",
         "webhook": "/hooks"}  # fmt: skip
DATA_STREAM = {"type": "logs", "dataset": "instantly.audit", "namespace": "default"}


def plain_requests(kind: str, raws: list[bytes], key: bytes) -> list[tuple[bytes, dict[str, str]]]:
    """What a hand-written forwarder does per batch: parse each event for its id/time, wrap, compress, sign."""
    if kind == "splunk_hec":
        parts = []
        for raw in raws:
            t = datetime.fromisoformat(orjson.loads(raw)["time"]).timestamp()
            parts.append(b'{"source":"instantly-audit","sourcetype":"instantly:audit:event","time":'
                         + str(t).encode() + b',"event":' + raw + b"}")  # fmt: skip
        return [(gzip.compress(b"".join(parts), 3, mtime=0), HEADERS[kind])]
    if kind == "elasticsearch":
        lines = []
        for raw in raws:
            ev = orjson.loads(raw)
            lines.append(orjson.dumps({"create": {"_index": "logs-instantly.audit-default", "_id": ev["id"]}}))
            lines.append(b'{"@timestamp":"' + ev["time"].encode() + b'",' + raw[1:])
        return [(b"\n".join(lines) + b"\n", HEADERS[kind])]
    if kind == "elasticsearch-ecs":  # the same ECS documents, made with the library's formatter
        lines = []
        for raw in raws:
            ev = orjson.loads(raw)
            doc = to_ecs(ev)
            doc["@timestamp"], doc["data_stream"] = ev["time"], DATA_STREAM
            lines.append(orjson.dumps({"create": {"_index": "logs-instantly.audit-default", "_id": ev["id"]}}))
            lines.append(orjson.dumps(doc))
        return [(b"\n".join(lines) + b"\n", HEADERS[kind])]
    out = []
    for raw in raws:
        msg_id, ts = orjson.loads(raw)["id"], int(time.time())
        mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + raw, hashlib.sha256).digest()
        sig = "v1," + base64.b64encode(mac).decode()
        out.append((raw, {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
                          **HEADERS[kind]}))  # fmt: skip
    return out


async def post_all(
    session: aiohttp.ClientSession, url: str, requests: list[tuple[bytes, dict[str, str]]], sem: asyncio.Semaphore
) -> None:
    async def post(body: bytes, headers: dict[str, str]) -> None:
        async with sem, session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"baseline got HTTP {resp.status}")

    if len(requests) == 1:
        await post(*requests[0])
    else:
        await asyncio.gather(*(post(b, h) for b, h in requests))


async def replay(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> float:
    """POST pre-encoded requests (transport and server only); return the seconds taken."""
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(concurrency)
        start = time.perf_counter()
        if concurrency == 1:
            for req in requests:
                await post_all(session, url, [req], sem)
        else:
            await post_all(session, url, requests, sem)
        return time.perf_counter() - start


async def plain_client(kind: str, url: str, batches: list[list[bytes]], concurrency: int) -> float:
    """A plain aiohttp loop: per batch, encode (as a hand-written forwarder would) and POST."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(concurrency)
        start = time.perf_counter()
        for raws in batches:
            await post_all(session, url, plain_requests(kind, raws, key), sem)
        return time.perf_counter() - start


async def throughput(kind: str, tmp: Path, n: int, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` events/s for the replay, the plain client and the runner."""
    dest = Destination(kind)
    try:
        async with SqliteBus(tmp / f"{kind}.db", synchronous=SYNC) as bus:
            await publish(bus, [make_event(i, workspace=f"ws-{i % 5}") for i in range(n)])
            async with bus.consumer([EVENTS_TOPIC, ALERTS_TOPIC], start="earliest") as c:
                records: list[Record] = []
                while got := await c.poll(5000, timeout_s=0):
                    records += got
            deliveries = [d for d in (decode(r) for r in records) if not isinstance(d, str)]
            sink, cfg = build(kind, dest.url)
            size = cfg.batch_max_records
            batches = [deliveries[i : i + size] for i in range(0, len(deliveries), size)]
            async with sink:
                encoded = await encoded_requests(kind, sink, batches)
            raw_batches = [[d.raw for d in b] for b in batches]
            url = dest.url + PATHS[kind]
            concurrency = getattr(cfg, "max_concurrent_requests", 1) if kind == "webhook" else 1
            times: dict[str, list[float]] = {"replay": [], "plain": [], "runner": []}
            for r in range(rounds):
                for what in ("replay", "plain", "runner"):
                    dest.call("reset")
                    gc.collect()
                    if what == "replay":
                        times[what].append(await replay(url, encoded, concurrency))
                    elif what == "plain":
                        times[what].append(await plain_client(kind, url, raw_batches, concurrency))
                    else:
                        sink, cfg = build(kind, dest.url)
                        runner = SinkRunner(bus, sink, cfg, group=f"bench-{kind}-{r}")
                        start = time.perf_counter()
                        stats = await runner.run_once()
                        times[what].append(time.perf_counter() - start)
                        if stats.delivered != len(deliveries):
                            raise RuntimeError(f"{kind}: runner delivered {stats.delivered} of {len(deliveries)}")
                    arrived = len(set(dest.call("ids")))
                    if arrived != len(deliveries):
                        raise RuntimeError(f"{kind}: {what} left {arrived} of {len(deliveries)} at the destination")
            return {k: len(deliveries) / min(v) for k, v in times.items()} | {
                f"{k}_med": len(deliveries) / statistics.median(v) for k, v in times.items()}  # fmt: skip
    finally:
        dest.close()


# --------------------------------------------------------------------------------- outage
def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def outage(bus: SqliteBus, secs: float, rate: int) -> None:
    """All three destinations down while events arrive at ``rate``/s: peak memory, then recovery."""
    dests = {k: Destination(k) for k in OUTAGE_SINKS}
    try:
        for d in dests.values():
            d.call("down")
        stop = asyncio.Event()
        runners = {k: SinkRunner(bus, *build(k, d.url), group=f"outage-{k}") for k, d in dests.items()}
        for r in runners.values():  # start at the current end: only the outage's events count
            async with bus.consumer(r.topics) as c:
                ends = await c.end_offsets()
            async with bus.transaction("bench") as txn:
                txn.commit_offsets(r.group, ends)
        tasks = [asyncio.create_task(r.run(stop)) for r in runners.values()]
        gc.collect()
        tracemalloc.start()
        base_rss, base_heap = rss_kib(), tracemalloc.get_traced_memory()[0]
        samples: list[int] = []
        first = i = 10_000_000
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < secs:
            due = first + int(elapsed * rate)  # steady rate, whatever each publish costs
            if due > i:
                await publish(bus, [make_event(j, workspace=f"ws-{j % 5}") for j in range(i, due)])
                i = due
            samples.append(rss_kib())
            await asyncio.sleep(0.05)
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = max(samples)
        print(f"  outage {secs:.0f} s at {rate} events/s: {i - first} events queued on the bus, "
              f"{sum(r.health().totals.delivered for r in runners.values())} delivered")  # fmt: skip
        quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] / 1024 for q in (1, 2, 3, 4)]
        print(
            f"  RSS: start {base_rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB (+{(peak - base_rss) / 1024:.1f}); "
            f"at 25/50/75/100% of the outage: {' / '.join(f'{q:.1f}' for q in quarters)} MiB"
        )
        print(f"  Python heap (tracemalloc) peak +{(heap_peak - base_heap) / 2**20:.1f} MiB over the start")
        for k, r in runners.items():
            h = r.health()
            print(f"  {k:<14} circuit={h.circuit.value:<9} attempts={h.totals.retries + 1:<4} "
                  f"consecutive failures={h.consecutive_failures}")  # fmt: skip
        for d in dests.values():
            d.call("up")
        t0 = time.monotonic()
        want = {make_event(j, workspace=f"ws-{j % 5}").id for j in range(first, i)}
        pending = set(OUTAGE_SINKS)
        drained: dict[str, float] = {}
        while pending and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.5)
            for k in list(pending):
                if want <= set(dests[k].call("ids")):
                    drained[k] = time.monotonic() - t0
                    pending.discard(k)
        stop.set()
        await asyncio.gather(*tasks)
        for k in OUTAGE_SINKS:
            lost = len(want - set(dests[k].call("ids")))
            when = f"{drained[k]:.1f} s" if k in drained else "not within 120 s"
            print(f"  {k:<14} back up: caught up in {when} (includes the rest of circuit_open_secs=30), lost {lost}")
    finally:
        for d in dests.values():
            d.close()


# ------------------------------------------------------------------------------------ main
async def main(args: argparse.Namespace) -> None:
    logging.getLogger("instantly_audit").setLevel(logging.ERROR)  # retries during the outage are expected
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteBus(Path(tmp) / "bus.db") as bus:
            print(f"\nthroughput (events/s, best of {args.rounds}; each fake destination runs in its own process)")
            print("  replay = pre-encoded requests POSTed by a bare aiohttp loop (transport + server only)")
            print("  plain  = a bare aiohttp loop that encodes each batch itself (parse, wrap, gzip/sign) and POSTs it")
            print("  runner = SinkRunner.run_once(): bus read, decode, filter, encode, POST, confirm, commit per batch")
            print(f"  {'sink':<14}{'events':>7}{'replay':>9}{'plain':>9}{'runner':>9}"
                  f"{'runner/plain':>14}{'(median)':>9}{'runner/replay':>15}")  # fmt: skip
            for kind in args.sinks:
                count = args.webhook_events if kind == "webhook" else args.events
                r = await throughput(kind, Path(tmp), count, args.rounds)
                print(f"  {kind:<14}{count:>7}{r['replay']:>9.0f}{r['plain']:>9.0f}{r['runner']:>9.0f}"
                      f"{r['runner'] / r['plain']:>14.0%}{r['runner_med'] / r['plain_med']:>9.0%}"
                      f"{r['runner'] / r['replay']:>15.0%}")  # fmt: skip
            if args.outage_secs > 0:
                print("\noutage (all three destinations answer 503; default retry/circuit settings)")
                await outage(bus, args.outage_secs, args.rate)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    # Runs of a second or more, five rounds: shorter runs swung the ratios by 20 points on 2 shared cores.
    p.add_argument("--events", type=int, default=50_000, help="events per HEC/Elasticsearch run")
    p.add_argument("--webhook-events", type=int, default=20_000, help="events per webhook run (one POST each)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sinks", nargs="+", choices=SINKS, default=list(SINKS), help="throughput of these sinks only")
    p.add_argument("--outage-secs", type=float, default=60.0)
    p.add_argument("--rate", type=int, default=500, help="events/s published during the outage")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
