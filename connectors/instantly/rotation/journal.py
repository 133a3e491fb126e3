"""The rotation journal: the steps completed so far (ids, fingerprints, times — never a key) and its lock.

One JSON file per workspace and key name, mode 0600, atomically replaced on every step; a lock
file next to it keeps two runs from interleaving.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from connectors.instantly.rotation.destinations import atomic_write
from connectors.instantly.rotation.errors import RotationError
from pipeline.clock import format_time
from pipeline.observability.logs import get_logger

log = get_logger("instantly.rotation")

STEPS = ("planned", "created", "verified", "stored", "confirmed", "done")
State = Literal["planned", "created", "verified", "stored", "confirmed", "done", "aborted"]
JOURNAL_VERSION = 1


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
        atomic_write(self.path, orjson.dumps(self.doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
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
