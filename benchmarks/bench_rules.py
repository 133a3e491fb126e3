"""Rules throughput and rule-state size (standalone: ``python benchmarks/bench_rules.py [--events N]``).

Generates a deterministic mix of Event v1 records shaped like a busy audit log: 60 % logins over
``--users`` users (0.2 % from a new IP), 32 % lead/campaign activity, MFA challenges, exports,
deletions, and 0.5 % API-key / webhook / member / block-list snapshot changes; 5 % of the lead
activity comes from integration API keys, MFA events include TOTP disable/enable, exports name
their list, role changes their actor (so every shipped correlation rule has work to do). Then, chunk by
chunk in the same run, over the same serialized events:

* baseline "orjson.loads" — iterate the serialized events and ``orjson.loads`` each one;
* baseline "decode to Event" — decode each into an Event v1 (``decode_event``, the record codec:
  msgspec decodes and type-checks straight into the Event structs) in batches of ``--batch``,
  exactly as the rules leg decodes them;
* rules — decode the same way and evaluate every built-in rule, the shipped correlation rules
  included (``--correlations off`` leaves them out), on each batch (including
  encoding the changed rule state, as the worker commits it, and a tick per simulated hour),
  the way ``RulesWorker`` does it: each record is decoded just before the engine evaluates it,
  while its Event is still in the CPU cache;
* for reference, rules with the whole batch decoded first (the worker before 2026-11-27);
* the floor: decode the same way into an engine with every rule disabled (time parse, dispatch,
  flush only), the most any rule set can reach against the decode baseline.

**The target (rules ≥ 50 % of the baseline) applies to the decode-to-Event baseline**: the rules
consume Event v1 objects, so every consumer of the bus pays decoding the Event before any work
of its own, and measuring that decode the way the rules leg does isolates what evaluating the
rules adds. The ratio against bare ``orjson.loads`` is printed for reference. (Since the record
codec, decoding to Event is faster than ``orjson.loads`` to dicts: this ratio fell to about 0.13
while the rules' own throughput rose by half; the target dates from the slower decode.)

Times are CPU seconds of this process (``time.process_time``: load from other processes on a
shared machine hits every leg alike); the whole measurement runs ``--repeat`` times on fresh
engines and every figure printed is the median over the repeats. It also prints the alerts
raised and the size of the rule state at the end (keys and bytes, as stored in
``instantly.state.v1``). With ``--worker`` it also runs the RulesWorker over an embedded SQLite
bus (one transaction per batch, wall time) on ``--worker-events`` events.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bus.base import EVENTS_TOPIC, OutRecord
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, parse_time
from pipeline.rules.engine import RulesEngine, decode_event
from pipeline.rules.state import state_size
from pipeline.rules.testing import make_event
from pipeline.rules.worker import RulesWorker
from schemas.event import Event, WorkspaceRef

T0 = parse_time("2026-01-01T00:00:00Z")
SPAN = 30 * 86_400.0
CONFIG = {
    "allowlists": {"member_domains": ["acme.com"], "webhook_hosts": ["hooks.acme.com"]},
    "protected_domains": ["acme.com", "rival.io"],
}


def generate(n: int, users: int, workspaces: int, seed: int) -> Iterator[bytes]:
    """Yield ``n`` serialized events, deterministic for a seed."""
    rnd = random.Random(seed)
    wss = [WorkspaceRef(f"ws-{w:03d}", f"Workspace {w}") for w in range(workspaces)]
    homes = [[f"10.{u % 250}.{(u // 250) % 250}.{k}" for k in range(1 + u % 3)] for u in range(users)]
    for i in range(n):
        t = T0 + SPAN * i / n
        u = rnd.randrange(users)
        ws = wss[u % workspaces]
        actor = {"user_id": f"u{u}", "user_name": f"User {u}", "ip": rnd.choice(homes[u]), "via_api": False}
        r = rnd.random()
        ev: Event
        if r < 0.60:
            if rnd.random() < 0.002:
                actor["ip"] = f"203.0.{rnd.randrange(256)}.{rnd.randrange(256)}"
            ev = make_event("audit.user_login", time=t, workspace=ws, actor=actor)
        elif r < 0.92:  # lead / campaign activity: most of a real audit log, read by few rules
            code = rnd.choice([4, 5, 8, 9, 10, 11, 12, 32])
            if rnd.random() < 0.05:  # an integration's API key (corr.new_key_new_ip learns their IPs)
                actor = {"api_key_id": f"k{rnd.randrange(50)}", "ip": f"192.0.2.{rnd.randrange(100)}", "via_api": True}
            ev = make_event(f"audit.activity_{code}", time=t, workspace=ws, actor=actor,
                            attributes={"affected_count": rnd.randrange(1, 50)})  # fmt: skip
        elif r < 0.95:
            ev = make_event(rnd.choice(["audit.mfa_challenge_failed", "audit.mfa_login_succeeded",
                                        "audit.mfa_totp_disabled", "audit.mfa_totp_enabled"]), time=t,
                            workspace=ws, actor=actor)  # fmt: skip
        elif r < 0.97:
            attrs: dict[str, Any] = {"affected_count": rnd.randrange(1, 300), "list_id": f"l{rnd.randrange(20)}"}
            ev = make_event("audit.lead_exported", time=t, workspace=ws, actor=actor, attributes=attrs)
        elif r < 0.995:
            ev = make_event("audit.lead_deleted", time=t, workspace=ws, actor=actor, attributes={"affected_count": 1})
        elif r < 0.9965:
            kid = f"k{rnd.randrange(50)}"
            kind = rnd.choice(["created", "deleted", "baseline", "scopes_changed"])
            scopes = rnd.choice([["leads:read"], ["campaigns:all", "leads:all"], ["all:read"], ["all:all"]])
            attrs = {"scopes": scopes, "name": kid, "created_at": "2025-10-01T00:00:00Z"}
            ev = make_event(
                f"api_key.{kind}", time=t, workspace=ws, target={"kind": "api_key", "id": kid}, attributes=attrs
            )
        elif r < 0.998:
            hid = f"h{rnd.randrange(20)}"
            url = rnd.choice(["https://hooks.acme.com/x", "http://crm.example/in", "https://other.example/y"])
            attrs = {"target_hook_url": url, "url_scheme": url.split(":")[0], "has_auth_header": rnd.random() < 0.7,
                     "status": rnd.choice([1, 1, -1])}  # fmt: skip
            ev = make_event(
                "webhook.updated", time=t, workspace=ws, target={"kind": "webhook", "id": hid}, attributes=attrs
            )
        elif r < 0.999:
            mid = f"m{rnd.randrange(200)}"
            ev = make_event("member.role_changed", time=t, workspace=ws, actor=actor,
                            target={"kind": "member", "id": mid},
                            attributes={"email": f"{mid}@{rnd.choice(['acme.com', 'gmail.com'])}", "role": "admin"},
                            change={"before": {"role": "editor"}, "after": {"role": "admin"}})  # fmt: skip
        else:
            v = rnd.choice(["acme.com", "rival.io", "spam.biz", "x@acme.com"])
            ev = make_event(rnd.choice(["block_list.entry_added", "block_list.entry_removed"]), time=t, workspace=ws,
                            attributes={"value": v, "is_domain": "@" not in v})  # fmt: skip
        yield ev.to_json()


def chunks(it: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    """Group an iterator into lists of ``size``."""
    buf: list[bytes] = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def rules_config(args: argparse.Namespace) -> dict[str, Any]:
    """CONFIG, with the shipped correlation rules (``corr.*``) off when ``--correlations off``."""
    if args.correlations == "on":
        return CONFIG
    ids = [r.meta.id for r in RulesEngine.from_config(CONFIG, clock=FakeClock(T0)).ruleset.rules]
    return {**CONFIG, **{rid: {"enabled": False} for rid in ids if rid.startswith("corr.")}}


def no_rules_config() -> dict[str, Any]:
    """CONFIG with every rule disabled: the engine's own cost (time parse, dispatch, flush) only."""
    ids = [r.meta.id for r in RulesEngine.from_config(CONFIG, clock=FakeClock(T0)).ruleset.rules]
    return {**CONFIG, **{rid: {"enabled": False} for rid in ids}}


def bench_engine(args: argparse.Namespace) -> dict[str, float]:
    """Both baselines and the rules over the same chunks; returns the measurements (CPU time)."""
    engine = RulesEngine.from_config(rules_config(args), clock=FakeClock(T0))
    ref = RulesEngine.from_config(rules_config(args), clock=FakeClock(T0))
    floor = RulesEngine.from_config(no_rules_config(), clock=FakeClock(T0))
    clock = time.process_time
    loads_s = decode_s = rules_s = listed_s = floor_s = 0.0
    ref_seen = ref_alerts = 0
    batch: list[Event] = []
    alerts = failures = 0
    tick_every = max(1, args.events // 720)  # a tick per simulated hour
    seen = 0
    for chunk in chunks(generate(args.events, args.users, args.workspaces, args.seed), 100_000):
        gc.collect()
        t = clock()
        for raw in chunk:
            orjson.loads(raw)
        loads_s += clock() - t
        gc.collect()
        t = clock()
        for i in range(0, len(chunk), args.batch):
            batch = [decode_event(raw) for raw in chunk[i : i + args.batch]]
        decode_s += clock() - t
        batch = []
        gc.collect()
        t = clock()
        for i in range(0, len(chunk), args.batch):
            raws = chunk[i : i + args.batch]
            result = engine.evaluate(decode_event(raw) for raw in raws)  # as RulesWorker._evaluate
            alerts += len(result.alerts)
            failures += len(result.failures)
            seen += len(raws)
            if seen // tick_every != (seen - len(raws)) // tick_every:
                alerts += len(engine.tick(T0 + SPAN * seen / args.events).alerts)
        rules_s += clock() - t
        gc.collect()
        t = clock()
        for i in range(0, len(chunk), args.batch):
            floor.evaluate(decode_event(raw) for raw in chunk[i : i + args.batch])
        floor_s += clock() - t
        gc.collect()
        t = clock()
        for i in range(0, len(chunk), args.batch):
            batch = [decode_event(raw) for raw in chunk[i : i + args.batch]]
            ref_alerts += len(ref.evaluate(batch).alerts)
            ref_seen += len(batch)
            if ref_seen // tick_every != (ref_seen - len(batch)) // tick_every:
                ref_alerts += len(ref.tick(T0 + SPAN * ref_seen / args.events).alerts)
        listed_s += clock() - t
        batch = []
    if ref_alerts != alerts:  # both legs did the same work
        raise SystemExit(f"the reference leg raised {ref_alerts} alerts, the rules leg {alerts}")
    items = engine.state_items()
    keys, size = state_size(items.items())
    ckeys, csize = state_size((k, v) for k, v in items.items() if k.startswith("rules/corr."))
    return {"corr_keys": ckeys, "corr_bytes": csize,
            "loads": args.events / loads_s, "decode": args.events / decode_s, "rules": args.events / rules_s,
            "listed": args.events / listed_s, "floor": args.events / floor_s, "alerts": alerts, "failures": failures,
            "keys": keys, "bytes": size, "rules_n": len(engine.ruleset.enabled)}  # fmt: skip


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per measurement, the median over the repeats (ratios are taken per run first)."""
    for r in runs:
        r["ratio_decode"] = r["rules"] / r["decode"]
        r["ratio_loads"] = r["rules"] / r["loads"]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def bench_worker(args: argparse.Namespace) -> float:
    """RulesWorker over an embedded SQLite bus: events/s including one transaction per batch."""
    n = int(min(args.worker_events, args.events))
    with tempfile.TemporaryDirectory() as d:
        async with SqliteBus(Path(d) / "bus.db", synchronous="normal") as bus:
            for chunk in chunks(generate(n, args.users, args.workspaces, args.seed), 10_000):
                await bus.publish([OutRecord(EVENTS_TOPIC, raw, key=orjson.loads(raw)["workspace"]["id"].encode())
                                   for raw in chunk])  # fmt: skip
            worker = RulesWorker(bus, rules_config(args), clock=FakeClock(T0), batch_size=args.batch)
            t = time.perf_counter()
            await worker.run_once()
            return n / (time.perf_counter() - t)


def cpu() -> str:
    """The CPU model, when Linux says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    """Run and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--workspaces", type=int, default=10)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=3, help="full measurements on fresh engines (medians printed)")
    p.add_argument("--worker", action="store_true", help="also measure the RulesWorker on a SQLite bus")
    p.add_argument("--worker-events", type=int, default=100_000)
    p.add_argument("--correlations", choices=("on", "off"), default="on", help="the shipped corr.* rules")
    args = p.parse_args()
    r = median_of([bench_engine(args) for _ in range(max(1, args.repeat))])
    rows = [
        ("baseline: iterate + orjson.loads", f"{r['loads']:,.0f} events/s"),
        (f"baseline: decode to Event v1 (batches of {args.batch})", f"{r['decode']:,.0f} events/s"),
        (f"rules: decode + {r['rules_n']:.0f} rules + state", f"{r['rules']:,.0f} events/s"),
        ("ratio rules / decode-to-Event (target >= 0.50)",
         f"{r['ratio_decode']:.3f}  (1 : {1 / r['ratio_decode']:.1f})"),
        ("ratio rules / orjson.loads", f"{r['ratio_loads']:.3f}  (1 : {1 / r['ratio_loads']:.1f})"),
        ("floor: decode + the engine with no rule enabled",
         f"{r['floor']:,.0f} events/s ({r['floor'] / r['decode']:.3f} of decode)"),
        ("reference: rules, whole batch decoded first",
         f"{r['listed']:,.0f} events/s ({r['listed'] / r['decode']:.3f} of decode)"),
        ("alerts raised", f"{r['alerts']:,.0f}"),
        ("rule failures", f"{r['failures']:,.0f}"),
        ("rule state keys", f"{r['keys']:,.0f}"),
        ("rule state size", f"{r['bytes'] / 1_048_576:.2f} MiB ({r['bytes']:,.0f} bytes)"),
        ("  of which correlation rules (corr.*)", f"{r['corr_keys']:,.0f} keys, {r['corr_bytes']:,.0f} bytes"),
    ]  # fmt: skip
    if args.worker:
        rows.append((f"worker on SQLite bus ({min(args.worker_events, args.events):,} ev)",
                     f"{asyncio.run(bench_worker(args)):,.0f} events/s"))  # fmt: skip
    print(f"instantly-audit rules benchmark: {args.events:,} events, {args.users:,} users, "
          f"{args.workspaces} workspaces, batch {args.batch}, correlations {args.correlations}, "
          f"median of {max(1, args.repeat)} runs (CPU time)")  # fmt: skip
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, {cpu()}\n")
    w = max(len(a) for a, _ in rows)
    v = max(len(b) for _, b in rows)
    print(f"| {'measurement':<{w}} | {'value':<{v}} |\n|{'-' * (w + 2)}|{'-' * (v + 2)}|")
    for a, b in rows:
        print(f"| {a:<{w}} | {b:<{v}} |")


if __name__ == "__main__":
    main()
