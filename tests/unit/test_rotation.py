"""``keys rotate``: the full rotation, its refusals, and resuming after an interruption at every step."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.instantly.api import covers
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.rotation.destinations import Destination, FileDestination, VaultDestination
from connectors.instantly.rotation.errors import RotationError
from connectors.instantly.rotation.journal import Journal, journal_lock
from connectors.instantly.rotation.machine import HOOK_POINTS, KeyRotation
from connectors.instantly.rotation.scopes import check_scopes
from connectors.instantly.sim import InstantlySimulator, SimConfig
from connectors.instantly.sim.catalog import POLLER_SCOPES
from connectors.instantly.snapshots import Snapshot, build_snapshot, diff_snapshots
from pipeline.clock import FakeClock, format_time
from pipeline.config.vault import VaultKV, VaultSettings, parse_vault_ref
from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config
from pipeline.rules.engine import RulesEngine
from schemas.event import Event, WorkspaceRef
from tests.fakes.vault import FakeVault

T0 = 1_790_000_000.0
DAY = 86_400.0
NAME = "zapier"
SCOPES = ["campaigns:read", "leads:all"]


class Crash(BaseException):
    """A simulated kill: not an Exception, so nothing on the way out handles it."""


@dataclass
class World:
    """A simulator with one workspace: the pipeline key, an admin key and the key to rotate (200 days old)."""

    sim: InstantlySimulator
    clock: FakeClock
    ws_id: str
    pipeline_secret: str
    admin_secret: str
    old_id: str
    old_secret: str
    lines: list[str]

    def named(self) -> list[str]:
        """Ids of the live keys called NAME."""
        return [k.id for k in self.sim.state.api_keys_of(self.ws_id) if k.name == NAME]

    def live(self, secret: str | None) -> bool:
        """Whether ``secret`` is a live key called NAME."""
        key = self.sim.state.key_by_secret(secret or "")
        return key is not None and key.name == NAME

    def secrets(self) -> list[str]:
        """Every key value the rotation ever saw (for canary checks)."""
        return [self.pipeline_secret, self.admin_secret, self.old_secret,
                *(k.key for k in self.sim.state.api_keys.values())]  # fmt: skip


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """The simulator world (fake clock, no rate limit)."""
    clock = FakeClock(T0)
    no_limits = SimConfig(rate_limit_per_second=None, rate_limit_per_minute=None)
    async with InstantlySimulator(clock=clock.now, seed=21, config=no_limits) as sim:
        ws = sim.state.add_workspace("Acme", owner_email="owner@acme.example", created_at=T0 - 400 * DAY)
        pipeline = sim.state.create_api_key(ws.id, "security-poller", list(POLLER_SCOPES), created_at=T0 - 5 * DAY)
        admin = sim.state.create_api_key(ws.id, "key-admin", ["api_keys:all", "workspaces:read"],
                                         created_at=T0 - 5 * DAY)  # fmt: skip
        old = sim.state.create_api_key(ws.id, NAME, SCOPES, created_at=T0 - 200 * DAY)
        yield World(sim, clock, ws.id, pipeline.key, admin.key, old.id, old.key, [])


def rotation(w: World, dest: Destination, journal: Path, **kw: Any) -> KeyRotation:
    """A rotation of NAME with the admin key (fake sleep that advances the clock)."""

    async def sleep(secs: float) -> None:
        w.clock.advance(secs)
        await asyncio.sleep(0)

    admin = WorkspaceConfig(api_key=SecretStr(w.admin_secret), base_url=w.sim.url, max_retries=0,
                            budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000))  # fmt: skip
    kw.setdefault("confirm", True)
    return KeyRotation(name=NAME, source_id="acme", admin=admin, destination=dest, journal=journal, clock=w.clock,
                       sleep=sleep, verify_delay_secs=1.0, forbidden_secrets=[w.pipeline_secret],
                       out=w.lines.append, **kw)  # fmt: skip


@pytest.fixture(params=["file", "vault"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A destination already holding the old key (where the integration reads it), file or Vault."""
    if request.param == "file":
        return lambda w: _file_dest(w, tmp_path)
    vault = FakeVault().start()
    request.addfinalizer(vault.stop)
    return lambda w: _vault_dest(w, vault)


def _file_dest(w: World, tmp_path: Path) -> Destination:
    p = tmp_path / "secrets" / "zapier-key"
    p.parent.mkdir()
    p.write_text(w.old_secret + "\n")
    return FileDestination(p)


def _vault_dest(w: World, vault: FakeVault) -> Destination:
    vault.put("secret", "instantly/zapier", {"api_key": w.old_secret, "owner": "sales-ops"})
    from pipeline.config.base import EnvValue

    kv = VaultKV(VaultSettings.model_validate({"url": vault.url, "token": EnvValue(vault.token)}))
    return VaultDestination(kv, parse_vault_ref("secret/instantly/zapier#api_key"))


async def test_rotation_end_to_end(world: World, dest: Callable[[World], Destination], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Create, verify, store, confirm, delete: one live key named NAME remains and the destination holds it."""
    caplog.set_level(logging.DEBUG)
    d = dest(world)
    journal = tmp_path / "j" / "zapier.json"
    out = await rotation(world, d, journal).run()
    assert out.status == "done"
    stored = await d.read()
    (new_id,) = world.named()
    assert new_id != world.old_id and world.live(stored)
    assert world.sim.state.key_by_secret(world.old_secret) is None
    assert sorted(world.sim.state.api_keys[new_id].scopes) == sorted(SCOPES)
    j = Journal.load(journal)
    assert j is not None and j.state == "done"
    assert [s["step"] for s in j.doc["steps"]] == ["planned", "created", "verified", "stored", "confirmed", "done"]
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    if isinstance(d, FileDestination):
        assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o600
    else:
        assert isinstance(d, VaultDestination)
        data, _ = d.kv.read_data(d.ref)
        assert data["owner"] == "sales-ops"  # the secret's other fields are kept
    texts = [journal.read_text(), "\n".join(world.lines), caplog.text]
    for secret in world.secrets():
        for text in texts:
            assert secret not in text


@pytest.mark.parametrize("point", HOOK_POINTS)
async def test_interrupted_at_each_step_resumes(
    world: World, dest: Callable[[World], Destination], tmp_path: Path, point: str
) -> None:
    """Killed at any step, a re-run finishes: exactly one live key named NAME, held by the destination."""
    d = dest(world)
    journal = tmp_path / "zapier.json"

    def crash(at: str) -> None:
        if at == point:
            raise Crash(at)

    with pytest.raises(Crash):
        await rotation(world, d, journal, hook=crash).run()
    assert 1 <= len(world.named()) <= 2, "never zero or more than two keys named NAME"
    assert world.live(await d.read()), "the destination holds a live key at every interruption point"
    first_new = [k for k in world.named() if k != world.old_id]
    out = await rotation(world, d, journal).run()
    assert out.status == "done"
    j = Journal.load(journal)
    assert j is not None
    assert world.named() == [j.doc["new_key_id"]]
    assert world.live(await d.read()) and world.sim.state.key_by_secret(world.old_secret) is None
    if point in ("create:sent", "created", "verified"):  # the secret was never stored: that key is replaced
        assert first_new and first_new[0] not in world.named()
        assert any("interrupted create" in x or "was lost" in x for x in world.lines)
    elif point in ("store:written", "stored", "confirmed", "delete:sent"):  # recovered, not re-created
        assert world.named() == first_new


async def test_pending_then_confirmed(world: World, tmp_path: Path) -> None:
    """Without --confirm and --no-wait the run stops after storing; the old key lives until confirmation."""
    d = _file_dest(world, tmp_path)
    journal = tmp_path / "j.json"
    out = await rotation(world, d, journal, confirm=False, wait=False, grace_secs=900).run()
    assert out.status == "pending" and len(world.named()) == 2
    assert world.live(await d.read()) and world.sim.state.key_by_secret(world.old_secret) is not None
    out = await rotation(world, d, journal, confirm=True).run()
    assert out.status == "done" and len(world.named()) == 1


async def test_grace_period_elapses(world: World, tmp_path: Path) -> None:
    """With waiting allowed, the rotation sleeps through the grace period and finishes by itself."""
    d = _file_dest(world, tmp_path)
    out = await rotation(world, d, tmp_path / "j.json", confirm=False, grace_secs=600).run()
    assert out.status == "done" and world.clock.now() >= T0 + 600
    j = Journal.load(tmp_path / "j.json")
    assert j is not None and j.doc["confirmed_by"] == "grace period"


async def test_dry_run_changes_nothing(world: World, tmp_path: Path) -> None:
    """--dry-run reads only: no key created, no journal, the destination untouched."""
    d = _file_dest(world, tmp_path)
    out = await rotation(world, d, tmp_path / "j.json", scopes=["leads:read"]).plan()
    assert out.status == "planned"
    assert world.named() == [world.old_id] and not (tmp_path / "j.json").exists()
    assert await d.read() == world.old_secret
    assert "create a new key 'zapier' with scopes: leads:read (old: campaigns:read, leads:all)" in out.message


async def test_narrowed_scopes(world: World, tmp_path: Path) -> None:
    """--scopes narrows the new key; scopes the old key did not grant are refused before anything changes."""
    d = _file_dest(world, tmp_path)
    with pytest.raises(ConfigError, match="only narrow"):
        await rotation(world, d, tmp_path / "a.json", scopes=["leads:read", "accounts:read"]).run()
    assert world.named() == [world.old_id]
    await rotation(world, d, tmp_path / "b.json", scopes=["leads:read"]).run()
    (new_id,) = world.named()
    assert world.sim.state.api_keys[new_id].scopes == ["leads:read"]


def test_scope_rules() -> None:
    """covers() honours wildcards on the old side; check_scopes refuses malformed and widening scopes."""
    assert covers(["leads:all"], "leads:read") and covers(["all:read"], "leads:read") and covers(["all:all"], "x:all")
    assert not covers(["leads:read"], "leads:all") and not covers(["leads:all"], "all:read")
    with pytest.raises(ConfigError, match="not a scope"):
        check_scopes(["leads"], ["leads:all"])


async def test_admin_key_must_not_be_the_pipeline_key(world: World, tmp_path: Path) -> None:
    """The pipeline's read-only key is refused as the admin key."""
    admin = WorkspaceConfig(api_key=SecretStr(world.pipeline_secret), base_url=world.sim.url)
    with pytest.raises(ConfigError, match="separate admin key"):
        KeyRotation(name=NAME, source_id="acme", admin=admin, destination=_file_dest(world, tmp_path),
                    journal=tmp_path / "j.json", clock=world.clock,
                    forbidden_secrets=[world.pipeline_secret])  # fmt: skip


async def test_ambiguous_or_missing_name_is_refused(world: World, tmp_path: Path) -> None:
    """Rotation needs exactly one live key with the name."""
    d = _file_dest(world, tmp_path)
    world.sim.state.create_api_key(world.ws_id, NAME, ["leads:read"])
    with pytest.raises(RotationError, match="2 API keys are named"):
        await rotation(world, d, tmp_path / "a.json").run()
    for kid in world.named():
        world.sim.state.delete_api_key(kid)
    with pytest.raises(RotationError, match="no API key named"):
        await rotation(world, d, tmp_path / "b.json").run()


async def test_new_key_refused_aborts_and_keeps_the_old(world: World, tmp_path: Path) -> None:
    """A new key that does not authenticate is deleted; the old key and the destination stay as they were."""
    d = _file_dest(world, tmp_path)

    def revoke(at: str) -> None:
        if at == "created":  # someone deletes the new key before it is verified
            (kid,) = [k for k in world.named() if k != world.old_id]
            world.sim.state.delete_api_key(kid)

    with pytest.raises(RotationError, match="refused"):
        await rotation(world, d, tmp_path / "j.json", hook=revoke).run()
    assert world.named() == [world.old_id] and await d.read() == world.old_secret
    j = Journal.load(tmp_path / "j.json")
    assert j is not None and j.state == "aborted"


async def test_changed_destination_blocks_the_delete(world: World, tmp_path: Path) -> None:
    """If the destination no longer holds the new key when confirmed, the old key is not deleted."""
    d = _file_dest(world, tmp_path)
    journal = tmp_path / "j.json"
    await rotation(world, d, journal, confirm=False, wait=False).run()
    assert isinstance(d, FileDestination)
    d.path.write_text(world.old_secret + "\n")
    with pytest.raises(RotationError, match="NOT deleted"):
        await rotation(world, d, journal).run()
    assert world.old_id in world.named()


async def test_a_second_run_is_locked_out(world: World, tmp_path: Path) -> None:
    """Two runs of the same rotation cannot interleave."""
    journal = tmp_path / "j.json"
    with journal_lock(journal), pytest.raises(RotationError, match="another rotation"):
        await rotation(world, _file_dest(world, tmp_path), journal).run()


async def test_rotation_closes_stale_and_rotation_incomplete_alerts(world: World, tmp_path: Path) -> None:
    """Through the poller's snapshot diffs the rotation is api_key.created/deleted and resolves the stream's alerts."""
    rules = RulesEngine(parse_rules_config({}), clock=world.clock)
    ref = WorkspaceRef(world.ws_id, "Acme")

    def snapshot() -> Snapshot:
        return build_snapshot("api_keys", [k.to_json() for k in world.sim.state.api_keys_of(world.ws_id)])[0]

    def diff(prev: Snapshot | None, cur: Snapshot) -> list[Event]:
        return diff_snapshots("api_keys", prev, cur, workspace=ref, observed_at=format_time(world.clock.now()))

    open_alerts: dict[str, str] = {}

    def feed(events: list[Event], tick: bool = False) -> None:
        ev = rules.evaluate(events)
        alerts = [*ev.alerts, *(rules.tick(world.clock.now()).alerts if tick else ())]
        for a in alerts:
            if a.rule.id in ("api_key.stale", "api_key.rotation_incomplete"):
                open_alerts[a.dedup_key] = a.status

    s0 = snapshot()
    feed(diff(None, s0), tick=True)
    stale = f"api_key.stale:{world.ws_id}:key:{world.old_id}"
    assert open_alerts[stale] == "open"
    d = _file_dest(world, tmp_path)
    journal = tmp_path / "j.json"
    await rotation(world, d, journal, confirm=False, wait=False).run()
    s1 = snapshot()
    created = diff(s0, s1)
    assert [e.type for e in created] == ["api_key.created"]
    feed(created)
    world.clock.advance(8 * DAY)  # past rotation_incomplete's 7-day grace
    feed([], tick=True)
    incomplete = f"api_key.rotation_incomplete:{world.ws_id}:old:{world.old_id}"
    assert open_alerts[incomplete] == "open"
    await rotation(world, d, journal).run()
    deleted = diff(s1, snapshot())
    assert [e.type for e in deleted] == ["api_key.deleted"]
    feed(deleted)
    assert open_alerts[stale] == "resolved" and open_alerts[incomplete] == "resolved"
