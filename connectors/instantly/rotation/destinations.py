"""Where a rotated key is stored: a file (atomic replace, mode 0600) or a Vault KV v2 field (check-and-set).

Every destination can be read back, so a rotation compares what it wrote by fingerprint and can
recover a new key whose secret an interruption lost from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from connectors.instantly.rotation.errors import RotationError
from pipeline.config.vault import SecretSourceError, VaultKV, VaultRef, VaultSettings, parse_vault_ref
from pipeline.errors import ConfigError


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
            await asyncio.to_thread(atomic_write, self.path, secret.encode("utf-8") + b"\n")
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


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a 0600 temporary file in the same directory, fsynced, renamed over it,
    and the directory fsynced.

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
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
