"""The Instantly simulator as a separate process, with a steady generator of audit records and changes.

Run by the fault tests (``python -m tests.integration.sim_server --seed 7 --rate 25``). It does
what :func:`connectors.instantly.sim.server.serve` does (the demo world on a real port) and
keeps the object handles so that a generator task can change the world while the pipeline
polls it, through the same :class:`~connectors.instantly.sim.state.SimState` methods the API and
the scenarios use:

* ``--rate`` audit records per second (assorted activity types, one unknown code);
* ``--workspaces N`` serves N - 1 more workspaces ("Client 01"...), each with its own poller key and
  a little audit history; the generator then spreads its audit records over all of them;
* ``--agency N`` links N sub-workspaces (``sub-01``...) into the demo workspace's group
  (:func:`connectors.instantly.sim.agency.agency_world`); the demo key lists them and acts on them
  with ``x-as-workspace``; the generator spreads over them too;
* every ``--changes-every`` seconds one change (in the demo workspace), in turn: an API key is created (audit 37, a new
  secret), a generated key is deleted (audit 38), a member is invited, the CRM webhook gets a
  new secret header (audit 19; header names change, so the webhook snapshot changes too).

On start it prints one JSON line to stdout: ``url``, ``control_url``, ``key`` (the poller's
fake secret), ``workspace_id`` and ``workspaces`` (``[{id, key}]``, the demo workspace first).
A second HTTP server on ``control_url`` lets the test steer it:

===========================  ====================================================================
``GET  /status``             generator counters
``POST /generator/stop``     stop generating (returns the counters); ``/generator/start`` resumes
``POST /audit/late?age=S``   one record dated ``S`` s ago (``kind=backdated`` mints its id then too,
                             so it sorts among older ids; ``kind=late`` mints the id now)
``GET  /audit/ids``          every audit record id of the demo workspace (``?workspace=ID``: of that one)
``GET  /secrets``            every key secret and webhook header value the simulator ever held
``GET  /changes``            ids of generated keys (created, deleted) and invited members
``GET  /calls``              requests answered: total, per path prefix, per status
``POST /agency/leave?sub=A``  ``--agency``: sub-workspace ``A`` (alias ``sub-01``...) leaves the group
``POST /agency/join?sub=A``   a new sub-workspace ``A`` (one audit record) joins the group, accepted
===========================  ====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from connectors.instantly.sim import InstantlySimulator, SimConfig, catalog, demo_world
from connectors.instantly.sim.agency import agency_world, sub_alias
from connectors.instantly.sim.models import Actor
from connectors.instantly.sim.seed import DemoWorld

ACTIVITY_MIX = (1, 1, 1, 4, 9, 9, 11, 22, 33, 99)
"""Audit codes the generator draws from (99 is unknown on purpose: it must become ``audit.activity_99``)."""


class Generator:
    """Adds audit records and world changes at a steady pace."""

    def __init__(self, sim: InstantlySimulator, world: DemoWorld, rate: float, changes_every: float, seed: int):
        self.sim, self.world = sim, world
        self.rate, self.changes_every = rate, changes_every
        self.rng = random.Random(f"generator:{seed}")
        self.running = asyncio.Event()
        self.running.set()
        self.audit = 0
        self.step = 0
        self.keys_created: list[str] = []
        self.keys_deleted: list[str] = []
        self.members_invited: list[str] = []
        self.webhook_updates = 0
        self.secrets: set[str] = set()
        self.workspaces: list[str] = [world.workspace.id]
        """Where audit records go (round robin); :func:`add_clients` appends the client workspaces."""
        self.remember_secrets()

    def remember_secrets(self) -> None:
        """Note every key secret and webhook header value currently held."""
        state = self.sim.state
        self.secrets.update(k.key for k in state.api_keys.values())
        for hook in state.webhooks.values():
            self.secrets.update((hook.headers or {}).values())

    async def run(self, tick: float = 0.05) -> None:
        """Generate until cancelled."""
        loop = asyncio.get_running_loop()
        owed = 0.0
        last = loop.time()
        next_change = last + self.changes_every
        while True:
            await asyncio.sleep(tick)
            await self.running.wait()
            now = loop.time()
            owed += (now - last) * self.rate
            last = now
            while owed >= 1.0:
                self.add_audit()
                owed -= 1.0
            if self.changes_every > 0 and now >= next_change:
                self.change()
                next_change = now + self.changes_every

    def actor(self) -> Actor:
        ip = f"203.0.113.{self.rng.randint(1, 254)}"
        return self.sim.state.actor_for_user("sam", ip, "Mozilla/5.0 (X11; Linux x86_64)")

    def add_audit(self) -> None:
        """One audit record of an assorted type."""
        code = self.rng.choice(ACTIVITY_MIX)
        extra: dict[str, Any] = {}
        if code in (4, 11):
            extra["campaign_id"] = "019a7d3e-5b21-7c44-9e1a-3f0d2c8b6a11"
        if code == 9:
            extra["affected_count"] = self.rng.randint(1, 500)
        ws = self.workspaces[self.audit % len(self.workspaces)]
        self.sim.state.insert_audit(ws, code, actor=self.actor(), **extra)
        self.audit += 1

    def change(self) -> None:
        """One world change, in turn: key created, key deleted, member invited, webhook header rotated."""
        state, ws = self.sim.state, self.world.workspace.id
        kind = self.step % 4
        self.step += 1
        if kind == 0 or (kind == 1 and len(self.keys_created) <= len(self.keys_deleted)):
            key = state.create_api_key(ws, f"integration {self.step}", ["campaigns:read"], actor=self.actor())
            self.keys_created.append(key.id)
        elif kind == 1:
            victim = next(k for k in self.keys_created if k not in self.keys_deleted)
            state.delete_api_key(victim, actor=self.actor())
            self.keys_deleted.append(victim)
        elif kind == 2:
            member = state.invite_member(ws, f"contractor{self.step}@example.org", "view")
            self.members_invited.append(member.id)
        else:
            self.webhook_updates += 1
            value = f"hk-canary-{self.rng.getrandbits(64):016x}"
            state.update_webhook(
                self.world.webhook.id, {"headers": {f"X-Hook-Auth-{self.webhook_updates}": value}}, actor=self.actor()
            )
        self.remember_secrets()

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running.is_set(),
            "audit_generated": self.audit,
            "audit_total": len(self.sim.state.audit_of(self.world.workspace.id)),
            "changes": self.step,
        }


def control_app(sim: InstantlySimulator, world: DemoWorld, gen: Generator) -> web.Application:
    """The test's steering wheel (see the module docstring)."""
    ws = world.workspace.id

    def reply(body: Any) -> web.Response:
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def status(_r: web.Request) -> web.Response:
        return reply(gen.status())

    async def stop(_r: web.Request) -> web.Response:
        gen.running.clear()
        return reply(gen.status())

    async def start(_r: web.Request) -> web.Response:
        gen.running.set()
        return reply(gen.status())

    async def late(r: web.Request) -> web.Response:
        age = float(r.query.get("age", "600"))
        at = sim.state.now() - age
        if r.query.get("kind", "backdated") == "backdated":
            rec = sim.state.insert_audit_backdated(ws, 1, timestamp=at, actor=gen.actor())
        else:
            rec = sim.state.insert_audit(ws, 1, timestamp=at, actor=gen.actor())
        return reply({"id": rec.id, "timestamp": rec.timestamp})

    async def ids(r: web.Request) -> web.Response:
        return reply([rec.id for rec in sim.state.audit_of(r.query.get("workspace", ws))])

    async def secrets(_r: web.Request) -> web.Response:
        gen.remember_secrets()
        return reply(sorted(gen.secrets))

    async def changes(_r: web.Request) -> web.Response:
        return reply(
            {
                "keys_created": gen.keys_created,
                "keys_deleted": gen.keys_deleted,
                "members_invited": gen.members_invited,
                "webhook_updates": gen.webhook_updates,
                "webhook_id": world.webhook.id,
            }
        )

    async def calls(_r: web.Request) -> web.Response:
        by_path = Counter(c.path for c in sim.calls)
        by_status = Counter(str(c.status) for c in sim.calls)
        return reply({"total": len(sim.calls), "by_path": by_path, "by_status": by_status})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/generator/stop", stop)
    app.router.add_post("/generator/start", start)
    app.router.add_post("/audit/late", late)
    app.router.add_get("/audit/ids", ids)
    app.router.add_get("/secrets", secrets)
    app.router.add_get("/changes", changes)

    async def agency_leave(r: web.Request) -> web.Response:
        sub = sim.state.workspace(r.query["sub"])
        sim.state.delete_group_member(sim.state.group_member(f"link-{r.query['sub']}").id)
        if sub.id in gen.workspaces:
            gen.workspaces.remove(sub.id)
        return reply({"id": sub.id})

    async def agency_join(r: web.Request) -> web.Response:
        alias = r.query["sub"]
        sub = sim.state.add_workspace(alias, owner_email=f"owner@{alias}.example.org", alias=alias)
        sim.state.insert_audit(sub.id, 1, actor=gen.actor())
        sim.state.add_group_member(ws, sub.id, status="accepted", alias=f"link-{alias}")
        gen.workspaces.append(sub.id)
        return reply({"id": sub.id})

    app.router.add_get("/calls", calls)
    app.router.add_post("/agency/leave", agency_leave)
    app.router.add_post("/agency/join", agency_join)
    return app


def add_clients(sim: InstantlySimulator, gen: Generator, n: int) -> list[dict[str, str]]:
    """``n`` client workspaces with a poller key and three audit records each; the generator spreads over them."""
    state = sim.state
    out = []
    for i in range(1, n + 1):
        ws = state.add_workspace(f"Client {i:02d}", owner_email=f"owner@client{i:02d}.example.org")
        key = state.create_api_key(ws.id, "security-poller", list(catalog.POLLER_SCOPES), user_id=ws.owner)
        for code in (1, 4, 22):
            state.insert_audit(ws.id, code, actor=gen.actor())
        gen.workspaces.append(ws.id)
        out.append({"id": ws.id, "key": key.key})
    gen.remember_secrets()
    return out


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=20.0, help="audit records per second")
    p.add_argument("--changes-every", type=float, default=2.0, help="seconds between world changes (0 = none)")
    p.add_argument("--paused", action="store_true", help="start with the generator stopped")
    p.add_argument("--workspaces", type=int, default=1, help="workspaces served (the demo one plus clients)")
    p.add_argument("--agency", type=int, default=0, help="sub-workspaces in the demo workspace's group")
    args = p.parse_args(argv)
    config = SimConfig(rate_limit_per_second=100, rate_limit_per_minute=6000)
    async with InstantlySimulator(args.host, args.port, seed=args.seed, config=config) as sim:
        world = demo_world(sim.state)
        gen = Generator(sim, world, args.rate, args.changes_every, args.seed)
        if args.paused:
            gen.running.clear()
        clients = add_clients(sim, gen, max(0, args.workspaces - 1))
        subs = agency_world(sim.state, world.workspace.id, args.agency, actor=gen.actor())
        gen.workspaces += [w.id for w in subs]
        runner = web.AppRunner(control_app(sim, world, gen), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.control_port)
        await site.start()
        control_port = int(runner.addresses[0][1])
        info = {
            "url": sim.url,
            "control_url": f"http://{args.host}:{control_port}",
            "key": world.poller_key.key,
            "workspace_id": world.workspace.id,
            "workspaces": [{"id": world.workspace.id, "key": world.poller_key.key}, *clients],
            "agency": [{"id": w.id, "alias": sub_alias(i)} for i, w in enumerate(subs, 1)],
        }
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        task = asyncio.create_task(gen.run())
        try:
            await asyncio.Event().wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
