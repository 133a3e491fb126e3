"""The embedded bus's files on disk: private permissions, no symlinks, one writer process.

* Directories the bus creates are 0700; the bus file is created 0600 before SQLite opens
  it (SQLite gives its ``-wal`` and ``-shm`` files the database file's mode), with
  ``O_NOFOLLOW``, and a symlink at the bus path or at any of its side files is refused.
* A writable open takes an exclusive ``flock`` on ``<bus>.lock`` for as long as the bus is
  open, and writes the holder's pid into it. A second writer *process* is refused with one
  line naming that pid; buses opened in the same process share the lock (the pipeline's
  components share one file). Read-only openers (replay) take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path

from pipeline.errors import BusError

DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_SUFFIXES = ("-wal", "-shm", ".lock")

_held: dict[str, tuple[int, int]] = {}  # lock file's real path -> (fd, openers in this process)
_held_guard = threading.Lock()


def side_file(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its name (``bus.db`` → ``bus.db-wal``)."""
    return path.with_name(path.name + suffix)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700 (existing ones are left alone).

    Raises:
        BusError: a directory cannot be created.
    """
    missing: list[Path] = []
    d = directory
    while not d.exists() and not d.is_symlink():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise BusError(f"cannot create the bus directory {d}: {err.strerror}") from err


def refuse_symlinks(path: Path) -> None:
    """Refuse a symlink at the bus path or at any of its side files.

    Raises:
        BusError: one of them is a symlink.
    """
    for p in (path, *(side_file(path, s) for s in SIDE_SUFFIXES)):
        if p.is_symlink():
            raise BusError(f"bus file {p} is a symbolic link; refusing to follow it (point bus.path at a real file)")


def create_private(path: Path) -> None:
    """Create ``path`` 0600 if it does not exist, never following a symlink.

    Raises:
        BusError: the path is a symlink or cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        if path.is_symlink():
            raise BusError(f"bus file {path} is a symbolic link; refusing to follow it") from None
        return
    except OSError as err:
        raise BusError(f"cannot create the bus file {path}: {err.strerror}") from err
    os.close(fd)


def acquire_writer_lock(path: Path) -> str:
    """Take (or share, within this process) the exclusive writer lock of the bus at ``path``.

    Returns the key to pass to :func:`release_writer_lock`.

    Raises:
        BusError: another process holds the lock (the message names its pid), or the lock
            file is a symlink or cannot be opened.
    """
    lock_path = side_file(path, ".lock")
    key = os.path.realpath(lock_path)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            _held[key] = (held[0], held[1] + 1)
            return key
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BusError(f"bus lock file {lock_path} is a symbolic link; refusing to follow it") from None
            raise BusError(f"cannot open the bus lock file {lock_path}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BusError(
                f"bus {path} is in use by pid {holder} (another `instantly-audit run`?)", retriable=False
            ) from None
        except OSError as err:
            os.close(fd)
            raise BusError(f"cannot lock the bus lock file {lock_path}: {err.strerror}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1)
        return key


def writer_pid(path: Path) -> int | None:
    """The pid of the live process holding the writer lock of the bus at ``path`` (None: nobody runs).

    Reads the pid the holder wrote into ``<bus>.lock`` and checks that process exists, without
    taking the lock (a ``run`` starting meanwhile must never find it held by a reader).
    """
    try:
        text = side_file(path, ".lock").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a crashed writer's pid stays in the file
    except PermissionError:
        return pid  # alive, another user's
    return pid


def release_writer_lock(key: str) -> None:
    """Drop one opener's share of the lock; the last one in the process releases it."""
    with _held_guard:
        held = _held.get(key)
        if held is None:
            return
        fd, count = held
        if count > 1:
            _held[key] = (fd, count - 1)
            return
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid left behind: `status` reads a pid there as the running writer
        os.close(fd)  # closing the descriptor releases the flock
