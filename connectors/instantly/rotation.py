"""Rotate one Instantly API key without downtime, resumably: ``instantly-audit keys rotate NAME``.

Steps, each recorded in a journal before the next begins::

    planned → created(new key id, fingerprint) → verified → stored → confirmed → done (old key deleted)

1. **planned** — the one live key called NAME is found with the *admin* key (never the
   pipeline's read-only key); the new scopes are its scopes, or ``--scopes`` if they only narrow them.
2. **created** — ``POST /api/v2/api-keys`` with the same name; the secret is shown once and
   lives only in memory until it is stored.
3. **verified** — a read call authenticates with the new key (401 → retried, then the new key is
   deleted and the rotation aborted; 402/403 still prove the key is live).
4. **stored** — written to the destination: a file (atomic replace, mode 0600) or a Vault KV v2
   field (check-and-set), then read back and compared by fingerprint.
5. **confirmed** — ``--confirm`` (an operator saw the consumers switch) or the grace period elapsed.
6. **done** — the new key is verified once more from the destination, then the old key is deleted.

Resuming (run the same command again) continues from the last completed step. A new key whose
secret was lost in an interruption (after *created*, before *stored*) is recovered from the
destination when it got there, otherwise deleted and created again, so a rotation never ends
with two live keys named NAME or with none, and the destination always holds a live key.
Before creating, keys named NAME that an interrupted create left behind are deleted.

The journal (JSON, mode 0600, atomically replaced, with a lock file so two runs cannot
interleave) holds ids, fingerprints and times — never a key. The poller sees the rotation as
``api_key.created`` / ``api_key.deleted`` snapshot events (and audit records 37/38), which
resolve ``api_key.stale`` and ``api_key.rotation_incomplete`` for the old key.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from pydantic import Field, SecretStr

from connectors.instantly.client import InstantlyClient, SessionFactory
from connectors.instantly.config import WorkspaceConfig
from connectors.instantly.streams import SNAPSHOT_PATHS, WORKSPACE_PATH
from pipeline.clock import Clock, format_time, parse_time
from pipeline.config.base import Model, Secret
from pipeline.config.vault import SecretSourceError, VaultKV, VaultRef, VaultSettings, parse_vault_ref
from pipeline.errors import AuthError, ConfigError, NotFoundError, PipelineError, SourceError, UpstreamError
from pipeline.observability.logs import get_logger, register_secret
from schemas.ids import fingerprint_secret

log = get_logger("instantly.rotation")

KEYS_PATH = SNAPSHOT_PATHS["api_keys"]
STEPS = ("planned", "created", "verified", "stored", "confirmed", "done")
State = Literal["planned", "created", "verified", "stored", "confirmed", "done", "aborted"]
JOURNAL_VERSION = 1
ORPHAN_SKEW_SECS = 300.0
"""A key named NAME created this long before the plan (clock skew) still counts as our orphan."""
Hook = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]
HOOK_POINTS = ("planned", "create:sent", "created", "verified", "store:written", "stored", "confirmed",
               "delete:sent", "done")  # fmt: skip
"""Where :class:`KeyRotation` calls its hook (tests interrupt there)."""


class RotationError(PipelineError):
    """The rotation cannot go on safely; the message says what to do."""


# ---------------------------------------------------------------------------------- destinations
class Destination(Protocol):
    """Where the new key is written (and read back from)."""

    def describe(self) -> str:
        """A label without any secret (``file:/run/secrets/x``)."""
        ...

    async def write(self, secret: str) -> None:
        """Store ``secret`` (replacing the previous key)."""
        ...

    async def read(self) -> str | None:
        """The stored key, or None when there is none."""
        ...


class FileDestination:
    """A file holding only the key (Docker secrets, a ``*_file`` the pipeline reads): 0600, replaced atomically."""

    def __init__(self, path: Path):
        self.path = path

    def describe(self) -> str:
        """``file:<path>``."""
        return f"file:{self.path}"

    async def write(self, secret: str) -> None:
        """Write to a temporary 0600 file in the same directory, fsync, rename over the target, fsync the directory.

        Raises:
            RotationError: the file cannot be written.
        """
        try:
            await asyncio.to_thread(_atomic_write, self.path, secret.encode("utf-8") + b"\n")
        except OSError as err:
            raise RotationError(f"cannot write {self.describe()}: {err.strerror or type(err).__name__}") from None

    async def read(self) -> str | None:
        """The key in the file (trailing newline stripped), or None.

        Raises:
            RotationError: the file exists but cannot be read.
        """
        try:
            text = await asyncio.to_thread(self.path.read_text, "utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise RotationError(f"cannot read {self.describe()}: {type(err).__name__}") from None
        return text.rstrip("\r\n") or None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # explicit, whatever the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class VaultDestination:
    """One field of a Vault KV v2 secret (other fields kept; check-and-set write)."""

    def __init__(self, kv: VaultKV, ref: VaultRef):
        self.kv = kv
        self.ref = ref

    def describe(self) -> str:
        """``vault:<mount>/<path>#<field>``."""
        return f"vault:{self.ref}"

    async def write(self, secret: str) -> None:
        """Write the field.

        Raises:
            RotationError: Vault refused or is unreachable.
        """
        try:
            await asyncio.to_thread(self.kv.write, self.ref, secret)
        except SecretSourceError as err:
            raise RotationError(f"cannot store the key: {err.message}") from None

    async def read(self) -> str | None:
        """The field's value, or None when the secret or field does not exist.

        Raises:
            RotationError: Vault refused or is unreachable.
        """
        try:
            data, _ = await asyncio.to_thread(self.kv.read_data, self.ref)
        except SecretSourceError as err:
            if err.status == 404:
                return None
            raise RotationError(f"cannot read the stored key: {err.message}") from None
        value = data.get(self.ref.field)
        return value if isinstance(value, str) and value else None


def parse_destination(spec: Any, *, vault: Callable[[], VaultSettings] | None, base_dir: Path) -> Destination:
    """``file:PATH`` / ``{type: file, path}`` or ``vault:<mount>/<path>#<field>`` / ``{type: vault, ref}``.

    Raises:
        ConfigError: the destination is malformed, or Vault is used without ``secret_managers.vault``.
    """
    kind, target = None, None
    if isinstance(spec, str):
        kind, _, target = spec.partition(":")
    elif isinstance(spec, Mapping):
        kind = spec.get("type")
        target = spec.get("path") if kind == "file" else spec.get("ref")
    if kind == "file" and isinstance(target, str) and target:
        p = Path(target)
        return FileDestination(p if p.is_absolute() else base_dir / p)
    if kind == "vault" and target is not None:
        if vault is None:
            raise ConfigError("a vault: destination needs secret_managers.vault (url and token)")
        try:
            ref = parse_vault_ref(target)
        except ValueError as err:
            raise ConfigError(f"destination: {err}") from None
        return VaultDestination(VaultKV(vault()), ref)
    raise ConfigError("destination must be file:PATH or vault:<mount>/<path>#<field> (or {type: file|vault, ...})")


# -------------------------------------------------------------------------------------- settings
class KeyRotationConfig(Model):
    """``rotation.keys.<NAME>``: where one key lives."""

    workspace: str | None = None
    destination: str | dict[str, Any]
    scopes: list[str] | None = None
    admin_api_key: Secret | None = None


class RotationSettings(Model):
    """The ``rotation`` config section."""

    admin_api_key: Secret | None = None
    journal_dir: Path = Path("data/rotation")
    grace_period_secs: float = Field(900.0, ge=0, le=30 * 86_400)
    verify_attempts: int = Field(5, ge=1, le=50)
    verify_delay_secs: float = Field(2.0, ge=0, le=300)
    keys: dict[str, KeyRotationConfig] = Field(default_factory=dict)


def covers(old: Sequence[str], scope: str) -> bool:
    """Whether ``old`` scopes already grant everything ``scope`` grants (``all`` is a wildcard on either side)."""
    resource, _, action = scope.partition(":")
    if scope in old or "all:all" in old:
        return True
    if resource == "all":
        return False  # all:<action> is covered only by itself or all:all
    if action == "all":
        return f"{resource}:all" in old
    return f"{resource}:all" in old or f"all:{action}" in old


_SCOPE = re.compile(r"^[a-z_-]+:(all|create|read|update|delete)$")


def check_scopes(requested: Sequence[str], old: Sequence[str]) -> list[str]:
    """Validate ``--scopes``: well-formed and only narrowing the old key's scopes.

    Raises:
        ConfigError: a scope is malformed or widens the key.
    """
    bad = [s for s in requested if not _SCOPE.match(s)]
    if bad:
        raise ConfigError(f"--scopes: not a scope: {', '.join(bad)} (form <resource>:<all|create|read|update|delete>)")
    wider = [s for s in requested if not covers(old, s)]
    if wider:
        raise ConfigError(f"--scopes may only narrow the key; the old key does not grant {', '.join(wider)}")
    if not requested:
        raise ConfigError("--scopes: give at least one scope")
    return sorted(set(requested))


# --------------------------------------------------------------------------------------- journal
def journal_path(journal_dir: Path, workspace: str, name: str) -> Path:
    """``<dir>/<workspace>--<name>-<hash>.json`` (the name made file-safe; the hash keeps names distinct)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    digest = hashlib.sha256(f"{workspace}\0{name}".encode()).hexdigest()[:8]
    return journal_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', workspace)}--{safe}-{digest}.json"


class Journal:
    """The rotation's persistent state (no secrets); every :meth:`record` is an atomic 0600 replace."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path = path
        self.doc = doc

    @property
    def state(self) -> State:
        """The last completed step (or ``aborted``)."""
        state: State = self.doc["state"]
        return state

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        """The journal at ``path``, or None.

        Raises:
            RotationError: it exists but is not a journal of this version.
        """
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as err:
            raise RotationError(f"rotation journal {path} is unreadable ({type(err).__name__}); inspect it") from None
        if not isinstance(doc, dict) or doc.get("v") != JOURNAL_VERSION or doc.get("state") not in (*STEPS, "aborted"):
            raise RotationError(f"{path} is not a rotation journal (version {JOURNAL_VERSION})")
        return cls(path, doc)

    def record(self, state: State, now: float, **fields: Any) -> None:
        """Complete a step: set ``state`` and ``fields``, append to ``steps``, write atomically."""
        self.doc.update(fields)
        self.doc["state"] = state
        self.doc.setdefault("steps", []).append({"step": state, "at": format_time(now), **fields})
        _atomic_write(self.path, orjson.dumps(self.doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        log.info("Rotation step completed.", extra={"step": state, "key_name": self.doc.get("key_name"),
                                                    "workspace": self.doc.get("workspace"), **fields})  # fmt: skip


@contextlib.contextmanager
def journal_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock next to the journal.

    Raises:
        RotationError: another rotation of the same key holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(path.suffix + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RotationError(f"another rotation holds {path}.lock; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------- rotation
@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``done``, ``pending`` (waiting for confirmation) or ``planned`` (dry run)."""

    status: Literal["done", "pending", "planned"]
    message: str
    journal: Path


def _fp(secret: str) -> str:
    return fingerprint_secret(secret)


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
        return InstantlyClient(cfg, session_factory=self._session_factory, sleep=self._sleep)

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
        lines = [
            f"Rotation plan for API key '{self.name}' in workspace {self.source_id} ({doc['workspace_id']}):",
            f"  1. create a new key '{self.name}' with scopes: {', '.join(doc['scopes'])}"
            + ("" if doc["scopes"] == doc["old_scopes"] else f" (old: {', '.join(doc['old_scopes'])})"),
            f"  2. verify it with a read call (GET {WORKSPACE_PATH})",
            f"  3. store it in {self.destination.describe()}",
            "  4. wait for --confirm" + (f" or the grace period ({self.grace_secs:g} s)" if not self.confirm else ""),
            f"  5. delete the old key {doc['old_key_id']}",
            f"Journal: {self.journal_file}",
        ]
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
        return [k for k in await client.get_all(KEYS_PATH, limit=100) if k.get("name") == self.name]

    async def _find(self, client: InstantlyClient) -> dict[str, Any]:
        ws = await client.get(WORKSPACE_PATH)
        keys = await self._named(client)
        if not keys:
            raise RotationError(f"no API key named '{self.name}' in workspace {self.source_id}")
        if len(keys) > 1:
            ids = ", ".join(str(k.get("id")) for k in keys)
            raise RotationError(f"{len(keys)} API keys are named '{self.name}' ({ids}); rename or delete the "
                                "extra ones first (rotation finds the key by name)")  # fmt: skip
        old = keys[0]
        old_value = old.get("key")
        if isinstance(old_value, str) and old_value == self.admin.api_key.get_secret_value():
            raise RotationError(f"'{self.name}' is the admin key itself; rotate the admin key by hand")
        old_scopes = sorted({str(s) for s in old.get("scopes") or []})
        scopes = check_scopes(self.scopes, old_scopes) if self.scopes is not None else old_scopes
        return {
            "workspace": self.source_id,
            "workspace_id": ws.get("id"),
            "key_name": self.name,
            "old_key_id": str(old["id"]),
            "old_key_fingerprint": _fp(old_value) if isinstance(old_value, str) and "*" not in old_value else None,
            "old_scopes": old_scopes,
            "scopes": scopes,
            "destination": self.destination.describe(),
        }

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
        """A read call with ``secret``: True unless Instantly keeps answering 401 (403/402/404 prove the key)."""
        for attempt in range(self.verify_attempts):
            try:
                async with self._client(secret, retries=2) as probe:
                    await probe.get(WORKSPACE_PATH)
                return True
            except AuthError:
                if attempt + 1 < self.verify_attempts:
                    await self._sleep(self.verify_delay_secs)
            except UpstreamError:
                raise
            except SourceError:
                return True
        return False

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
