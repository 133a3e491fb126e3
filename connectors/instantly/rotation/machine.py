"""The rotation of one key, step by step: :class:`KeyRotation` (the steps are in the package docstring).

Each step is recorded in the journal before the next begins, so running the same command again
resumes where an interruption stopped; ``hook`` is called at :data:`HOOK_POINTS` (tests interrupt
there) and ``out`` receives human-readable progress lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from connectors.instantly.client import InstantlyClient, SessionFactory
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.rotation.destinations import Destination
from connectors.instantly.rotation.errors import RotationError
from connectors.instantly.rotation.journal import JOURNAL_VERSION, STEPS, Journal, journal_lock
from connectors.instantly.rotation.lookup import KEYS_PATH, authenticates, keys_named, plan_document, plan_lines
from pipeline.clock import Clock, format_time, parse_time
from pipeline.errors import ConfigError, NotFoundError
from pipeline.observability.logs import get_logger, register_secret
from schemas.ids import fingerprint_secret

log = get_logger("instantly.rotation")

ORPHAN_SKEW_SECS = 300.0
"""A key named NAME created this long before the plan (clock skew) still counts as our orphan."""
Hook = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]
HOOK_POINTS = ("planned", "create:sent", "created", "verified", "store:written", "stored", "confirmed",
               "delete:sent", "done")  # fmt: skip
"""Where :class:`KeyRotation` calls its hook (tests interrupt there)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``done``, ``pending`` (waiting for confirmation) or ``planned`` (dry run)."""

    status: Literal["done", "pending", "planned"]
    message: str
    journal: Path


_fp = fingerprint_secret


class KeyRotation:
    """One key's rotation (see the module docstring). ``out`` receives human-readable progress lines."""

    def __init__(
        self,
        *,
        name: str,
        source_id: str,
        admin: WorkspaceConfig,
        destination: Destination,
        journal: Path,
        clock: Clock,
        scopes: Sequence[str] | None = None,
        grace_secs: float = 900.0,
        confirm: bool = False,
        wait: bool = True,
        verify_attempts: int = 5,
        verify_delay_secs: float = 2.0,
        forbidden_secrets: Sequence[str] = (),
        session_factory: SessionFactory | None = None,
        sleep: Sleep = asyncio.sleep,
        hook: Hook | None = None,
        out: Callable[[str], None] | None = None,
    ):
        admin_secret = admin.api_key.get_secret_value()
        if admin_secret in forbidden_secrets:
            raise ConfigError("the admin key is a pipeline key; rotation needs a separate admin key (never the "
                              "pipeline's read-only key)")  # fmt: skip
        register_secret(admin_secret)
        self.name, self.source_id, self.admin = name, source_id, admin
        self.destination, self.journal_file, self.clock = destination, journal, clock
        self.scopes = list(scopes) if scopes is not None else None
        self.grace_secs, self.confirm, self.wait = grace_secs, confirm, wait
        self.verify_attempts, self.verify_delay_secs = verify_attempts, verify_delay_secs
        self._session_factory, self._sleep = session_factory, sleep
        self._hook = hook or (lambda _point: None)
        self._out = out or (lambda _line: None)
        self._secret: str | None = None

    def _client(self, secret: str | None = None, retries: int | None = None) -> InstantlyClient:
        cfg = self.admin
        update: dict[str, Any] = {}
        if secret is not None:
            update["api_key"] = SecretStr(secret)
        if retries is not None:
            update["max_retries"] = retries
        if update:
            cfg = cfg.model_copy(update=update)
        return InstantlyClient(cfg, session_factory=self._session_factory, sleep=self._sleep, source_id=self.source_id)

    def _say(self, line: str) -> None:
        self._out(line)

    # ---- public ------------------------------------------------------------------------------
    async def plan(self) -> Outcome:
        """Dry run: read only, print the steps (or where an interrupted rotation would resume)."""
        existing = Journal.load(self.journal_file)
        async with self._client() as client:
            if existing is not None and existing.state not in ("done", "aborted"):
                self._check_journal(existing)
                nxt = STEPS[STEPS.index(existing.state) + 1]
                msg = (f"A rotation of '{self.name}' is in progress (last step: {existing.state}); "
                       f"running without --dry-run resumes at: {nxt}.")  # fmt: skip
                self._say(msg)
                return Outcome("planned", msg, self.journal_file)
            doc = await self._find(client)
        lines = plan_lines(doc, destination=self.destination.describe(), grace_secs=self.grace_secs,
                           confirm=self.confirm, journal=self.journal_file)  # fmt: skip
        for line in lines:
            self._say(line)
        return Outcome("planned", "\n".join(lines), self.journal_file)

    async def run(self) -> Outcome:
        """Rotate, or resume an interrupted rotation.

        Raises:
            RotationError: a step cannot be completed safely (the journal says where it stopped).
            SourceError: Instantly failed in a way retries did not fix (re-run to resume).
        """
        with journal_lock(self.journal_file):
            async with self._client() as client:
                j = Journal.load(self.journal_file)
                if j is None or j.state in ("done", "aborted"):
                    doc = await self._find(client)
                    j = Journal(self.journal_file, {"v": JOURNAL_VERSION, "rotation_id": str(uuid.uuid4()), **doc})
                    j.record("planned", self.clock.now(), planned_at=format_time(self.clock.now()))
                    self._say(f"planned: rotate '{self.name}' ({doc['old_key_id']}) → {self.destination.describe()}")
                    self._hook("planned")
                else:
                    self._check_journal(j)
                    self._say(f"resuming the rotation of '{self.name}' after step: {j.state}")
                while j.state != "done":
                    if j.state == "planned":
                        await self._create(client, j)
                    elif j.state == "created":
                        if await self._ensure_secret(client, j):
                            await self._verify(client, j)
                    elif j.state == "verified":
                        # (a secret recovered from the destination completes "stored" by itself)
                        if await self._ensure_secret(client, j) and j.state == "verified":
                            await self._store(j)
                    elif j.state == "stored":
                        if not await self._confirm(j):
                            left = float(j.doc["confirm_after"]) - self.clock.now()
                            msg = (f"stored: the new key is in {self.destination.describe()}; the old key is deleted "
                                   f"once confirmed — re-run with --confirm, or after the grace period "
                                   f"({max(0.0, left):.0f} s left)")  # fmt: skip
                            self._say(msg)
                            return Outcome("pending", msg, self.journal_file)
                    elif j.state == "confirmed":
                        await self._delete_old(client, j)
                    else:  # pragma: no cover - load() validates states
                        raise RotationError(f"unexpected journal state {j.state}")
                msg = f"done: '{self.name}' rotated; new key {j.doc['new_key_id']} is in {self.destination.describe()}"
                self._say(msg)
                return Outcome("done", msg, self.journal_file)

    # ---- steps -------------------------------------------------------------------------------
    def _check_journal(self, j: Journal) -> None:
        if j.doc.get("key_name") != self.name or j.doc.get("workspace") != self.source_id:
            raise RotationError(f"{self.journal_file} belongs to another rotation "
                                f"({j.doc.get('workspace')}/{j.doc.get('key_name')})")  # fmt: skip
        if j.doc.get("destination") != self.destination.describe():
            raise RotationError(f"the interrupted rotation stores into {j.doc.get('destination')}, not "
                                f"{self.destination.describe()}; finish it with the same --destination")  # fmt: skip

    async def _named(self, client: InstantlyClient) -> list[dict[str, Any]]:
        return await keys_named(client, self.name)

    async def _find(self, client: InstantlyClient) -> dict[str, Any]:
        return await plan_document(client, name=self.name, source_id=self.source_id,
                                   admin_secret=self.admin.api_key.get_secret_value(), scopes=self.scopes,
                                   destination=self.destination.describe())  # fmt: skip

    async def _create(self, client: InstantlyClient, j: Journal) -> None:
        await self._delete_orphans(client, j)
        created = await client.post(KEYS_PATH, {"name": self.name, "scopes": j.doc["scopes"]})
        secret = created.get("key") if isinstance(created, dict) else None
        new_id = created.get("id") if isinstance(created, dict) else None
        if not isinstance(secret, str) or not secret or not isinstance(new_id, str):
            raise RotationError("Instantly did not return the new key's id and value; check the key list by hand")
        register_secret(secret)
        self._secret = secret
        self._hook("create:sent")
        j.record("created", self.clock.now(), new_key_id=new_id, new_key_fingerprint=_fp(secret))
        self._say(f"created: new key {new_id} ({_fp(secret)})")
        self._hook("created")

    async def _delete_orphans(self, client: InstantlyClient, j: Journal) -> None:
        """Delete keys named NAME (other than the old one) created since the plan: an interrupted create's."""
        planned = parse_time(j.doc["planned_at"]) - ORPHAN_SKEW_SECS
        for k in await self._named(client):
            kid = str(k.get("id"))
            if kid == j.doc["old_key_id"]:
                continue
            created = k.get("timestamp_created")
            try:
                recent = isinstance(created, str) and parse_time(created) >= planned
            except ValueError:
                recent = False
            if not recent:
                raise RotationError(f"another key named '{self.name}' ({kid}) exists that this rotation did not "
                                    "create; resolve it by hand, then re-run")  # fmt: skip
            self._say(f"deleting key {kid} left by an interrupted create (its secret was never stored)")
            with contextlib.suppress(NotFoundError):
                await client.delete(f"{KEYS_PATH}/{kid}")

    async def _ensure_secret(self, client: InstantlyClient, j: Journal) -> bool:
        """The new key's secret: in memory, or recovered from the destination; else discard the new key.

        Returns False when the new key was discarded (the journal is back at ``planned``).
        """
        if self._secret is not None and _fp(self._secret) == j.doc["new_key_fingerprint"]:
            return True
        stored = await self.destination.read()
        if stored is not None and _fp(stored) == j.doc["new_key_fingerprint"]:
            register_secret(stored)
            self._secret = stored
            if j.state == "verified":  # it was written before the interruption: complete the step
                self._stored(j)
            return True
        kid = j.doc["new_key_id"]
        self._say(f"the secret of new key {kid} was lost in the interruption; deleting it and creating another")
        with contextlib.suppress(NotFoundError):
            await client.delete(f"{KEYS_PATH}/{kid}")
        j.record("planned", self.clock.now(), discarded_key_id=kid, new_key_id=None, new_key_fingerprint=None)
        return False

    async def _verify(self, client: InstantlyClient, j: Journal) -> None:
        assert self._secret is not None
        if not await self._authenticates(self._secret):
            kid = j.doc["new_key_id"]
            with contextlib.suppress(NotFoundError):
                await client.delete(f"{KEYS_PATH}/{kid}")
            j.record("aborted", self.clock.now(), reason="the new key did not authenticate")
            raise RotationError(f"the new key {kid} was refused (401) {self.verify_attempts} times; it was deleted "
                                "and the old key left in place")  # fmt: skip
        j.record("verified", self.clock.now())
        self._say("verified: the new key authenticates")
        self._hook("verified")

    async def _authenticates(self, secret: str) -> bool:
        return await authenticates(lambda: self._client(secret, retries=2), attempts=self.verify_attempts,
                                   delay_secs=self.verify_delay_secs, sleep=self._sleep)  # fmt: skip

    async def _store(self, j: Journal) -> None:
        assert self._secret is not None
        await self.destination.write(self._secret)
        self._hook("store:written")
        back = await self.destination.read()
        if back is None or _fp(back) != j.doc["new_key_fingerprint"]:
            raise RotationError(f"{self.destination.describe()} does not hold the new key after writing it")
        self._stored(j)

    def _stored(self, j: Journal) -> None:
        now = self.clock.now()
        j.record("stored", now, stored_at=format_time(now), confirm_after=now + self.grace_secs)
        self._say(f"stored: the new key is in {self.destination.describe()}")
        self._hook("stored")

    async def _confirm(self, j: Journal) -> bool:
        due = float(j.doc["confirm_after"])
        if self.confirm:
            how = "operator"
        elif self.clock.now() >= due:
            how = "grace period"
        elif self.wait:
            self._say(f"waiting {due - self.clock.now():.0f} s (grace period) before deleting the old key")
            while self.clock.now() < due:
                await self._sleep(min(30.0, due - self.clock.now()))
            how = "grace period"
        else:
            return False
        j.record("confirmed", self.clock.now(), confirmed_by=how)
        self._say(f"confirmed ({how})")
        self._hook("confirmed")
        return True

    async def _delete_old(self, client: InstantlyClient, j: Journal) -> None:
        stored = await self.destination.read()
        if stored is None or _fp(stored) != j.doc["new_key_fingerprint"]:
            raise RotationError(f"{self.destination.describe()} no longer holds the new key "
                                f"({j.doc['new_key_fingerprint']}); the old key was NOT deleted")  # fmt: skip
        register_secret(stored)
        if not await self._authenticates(stored):
            raise RotationError("the new key no longer authenticates; the old key was NOT deleted")
        old = j.doc["old_key_id"]
        try:
            await client.delete(f"{KEYS_PATH}/{old}")
        except NotFoundError:
            self._say(f"the old key {old} was already deleted")
        self._hook("delete:sent")
        j.record("done", self.clock.now(), deleted_key_id=old)
        self._say(f"deleted the old key {old}")
        self._hook("done")
        left = [str(k.get("id")) for k in await self._named(client)]
        if left != [j.doc["new_key_id"]]:
            log.warning("Unexpected keys with the rotated name after the rotation.",
                        extra={"key_name": self.name, "key_ids": left})  # fmt: skip
