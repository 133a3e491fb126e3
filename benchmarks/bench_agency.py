"""A large agency on the embedded bus: one process polling 50 and then 500 workspaces.

The simulator runs in its own process (``tests/integration/sim_server.py --workspaces N``, no
generator), so this process's CPU time is the pollers' and the bus's alone. For each size, one
process-worth of pollers (one :class:`InstantlyWorkspacePoller` per workspace, every stream, on
one SQLite bus) polls every workspace ``--rounds`` times after a first (baseline) poll, at most
``--concurrency`` polls at once (pollers run on their own schedules, so not all at once).
Reported per size: CPU ms per workspace per poll (``time.process_time``, steady polls only),
resident memory per workspace (RSS after the first poll minus RSS before the pollers existed,
divided by N) and the wall time of a round. Cost grows linearly or better when the per-workspace
figures at 500 are no larger than at 50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import SYSTEM_CLOCK

REPO = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    """The current resident set size (``/proc/self/statm``), else the peak."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def simulator(workspaces: int) -> Iterator[dict[str, Any]]:
    """The simulator process serving ``workspaces`` workspaces (no generated traffic)."""
    cmd = [sys.executable, "-m", "tests.integration.sim_server", "--rate", "0", "--changes-every", "0"]
    cmd += ["--workspaces", str(workspaces)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield orjson.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)


async def measure(n: int, rounds: int, concurrency: int) -> dict[str, float]:
    with simulator(n) as info, tempfile.TemporaryDirectory() as d:
        budget = BudgetConfig(requests_per_second=50, requests_per_minute=3000)
        async with SqliteBus(Path(d) / "bus.db", synchronous="normal") as bus:
            rss0 = rss_bytes()
            pollers = [
                InstantlyWorkspacePoller(
                    f"ws{i:04d}",
                    WorkspaceConfig(api_key=SecretStr(ws["key"]), base_url=info["url"], budget=budget),
                    bus,
                    clock=SYSTEM_CLOCK,
                )
                for i, ws in enumerate(info["workspaces"][:n])
            ]
            gate = asyncio.Semaphore(concurrency)

            async def poll(p: InstantlyWorkspacePoller) -> None:
                async with gate:
                    await p.poll_once()

            async with contextlib.AsyncExitStack() as stack:
                for p in pollers:
                    await stack.enter_async_context(p)
                await asyncio.gather(*(poll(p) for p in pollers))  # the baseline poll
                rss1 = rss_bytes()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(rounds):
                    await asyncio.gather(*(poll(p) for p in pollers))
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_ms_per_ws_poll": cpu * 1000 / (n * rounds),
        "rss_kib_per_ws": (rss1 - rss0) / 1024 / n,
        "round_secs": wall / rounds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="50,500", help="workspace counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="steady polls of every workspace per size")
    p.add_argument("--concurrency", type=int, default=64, help="polls in flight at once")
    args = p.parse_args(argv)
    print(f"# bench_agency  python {platform.python_version()}  {platform.machine()}  rounds {args.rounds}")
    print(f"{'workspaces':>10}  {'CPU ms/ws/poll':>14}  {'RSS KiB/ws':>10}  {'round s':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = asyncio.run(measure(n, args.rounds, args.concurrency))
        print(f"{n:>10}  {r['cpu_ms_per_ws_poll']:>14.2f}  {r['rss_kib_per_ws']:>10.1f}  {r['round_secs']:>8.2f}")


if __name__ == "__main__":
    main()
