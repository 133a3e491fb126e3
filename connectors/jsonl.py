"""The JSONL sink (type ``jsonl``): one event or alert per line, to a file or stdout.

* ``format``: ``native`` (default, the bus JSON), ``ecs``, ``ocsf``, ``splunk`` (one JSON
  document per line) or ``cef`` (one CEF line per record).

* ``path: "-"`` writes to standard output; any other value is a file opened in append
  mode with permissions 0600 (audit data is sensitive).
* ``rotate_bytes``: before a batch would take the file past this size, ``path`` becomes
  ``path.1`` (``path.1`` → ``path.2`` …) and a new file starts; ``keep`` rotated files are kept.
* ``fsync: true`` (default) makes a batch durable before it is confirmed, so the runner
  commits offsets only for lines that are on disk.
* A failed write is cut back to the last whole batch, so a retry never leaves half a line.
* Rotation by another tool is followed: before each batch, a ``path`` renamed away (logrotate),
  deleted or replaced is opened again (created 0600), and a file truncated in place
  (``copytruncate``) is appended from its real end, as ``tail -F`` and log shippers expect.

A file cannot de-duplicate: a batch replayed after a crash appears twice (same ``id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

import orjson
from pydantic import Field

from pipeline.delivery.base import Delivery, SendResult, SinkConfig
from pipeline.errors import SinkError
from pipeline.formats import render_bytes


class JsonlConfig(SinkConfig):
    """Options of the JSONL sink."""

    FORMATS: ClassVar[tuple[str, ...]] = ("native", "ecs", "ocsf", "splunk", "cef")

    path_fields: ClassVar[tuple[str, ...]] = ("path",)
    type: Literal["jsonl"] = "jsonl"
    path: str = Field("-", min_length=1, description='a file path, or "-" for standard output')
    rotate_bytes: int | None = Field(None, ge=1024)
    keep: int = Field(5, ge=1, le=1000)
    fsync: bool = True


class JsonlSink:
    """Append deliveries as JSON lines."""

    Config: ClassVar[type[SinkConfig]] = JsonlConfig

    def __init__(self, sink_id: str, config: JsonlConfig, *, stream: BinaryIO | None = None) -> None:
        self.sink_id = sink_id
        self.config = config
        self._stream = stream
        self._fd: int | None = None
        self._size = 0

    @property
    def path(self) -> Path | None:
        """The file written to (None for standard output)."""
        return None if self.config.path == "-" else Path(self.config.path)

    async def __aenter__(self) -> JsonlSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def healthcheck(self) -> None:
        """Check the directory of ``path`` exists and is writable.

        Raises:
            SinkError: it is not.
        """
        path = self.path
        if path is None:
            return
        parent = path.parent
        if not parent.is_dir():
            raise SinkError(f"{self.sink_id}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise SinkError(f"{self.sink_id}: {path} is not writable")

    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Write the batch (fsync'd when configured).

        Raises:
            SinkError: (retriable) the write failed; nothing of this batch remains in the file.
        """
        if not batch:
            return SendResult()
        fmt = self.config.record_format
        if fmt == "native":
            data = b"".join(orjson.dumps(d.body) + b"\n" for d in batch)
        else:
            data = b"".join(render_bytes(d.body, fmt) + b"\n" for d in batch)
        if self.path is None:
            await asyncio.to_thread(self._write_stream, data)
        else:
            await asyncio.to_thread(self._write_file, self.path, data)
        return SendResult()

    def _write_stream(self, data: bytes) -> None:
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except OSError as err:
            msg = f"{self.sink_id}: writing to standard output failed ({err.strerror})"
            raise SinkError(msg, retriable=True) from None

    def _write_file(self, path: Path, data: bytes) -> None:
        try:
            if self._fd is not None and self._moved(path):
                self._close_quietly()  # rotated or deleted by another tool: write to the name, as tail -F reads it
            if self._fd is None:
                self._open(path)
            else:
                assert self._fd is not None
                self._size = os.fstat(self._fd).st_size  # truncated in place (copytruncate) or grown by another writer
            limit = self.config.rotate_bytes
            if limit is not None and self._size and self._size + len(data) > limit:
                self._rotate(path)
            assert self._fd is not None
            start = self._size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                if self.config.fsync:
                    os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, start)  # no half line survives a failed write
                raise
            self._size = start + len(data)
        except OSError as err:
            self._close_quietly()
            raise SinkError(f"{self.sink_id}: writing {path} failed ({err.strerror or type(err).__name__})",
                            retriable=True) from None  # fmt: skip

    def _moved(self, path: Path) -> bool:
        """Whether ``path`` no longer names the open file (renamed by logrotate, deleted, replaced)."""
        assert self._fd is not None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)

    def _open(self, path: Path) -> None:
        """Open ``path`` for appending: created 0600 (its directory 0700), never through a symlink.

        Raises:
            SinkError: ``path`` is a symbolic link or not a regular file.
            OSError: the file cannot be opened.
        """
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP or path.is_symlink():
                raise SinkError(
                    f"{self.sink_id}: {path} is a symbolic link; the sink does not follow links (remove it)",
                    retriable=True,
                ) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SinkError(f"{self.sink_id}: {path} is not a regular file", retriable=True)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # a file left by an older version or another tool: owner only
        self._fd = fd
        self._size = st.st_size

    def _rotate(self, path: Path) -> None:
        self._close_quietly()
        keep = self.config.keep
        oldest = path.with_name(f"{path.name}.{keep}")
        if oldest.exists():
            oldest.unlink()
        for i in range(keep - 1, 0, -1):
            src = path.with_name(f"{path.name}.{i}")
            if src.exists():
                os.replace(src, path.with_name(f"{path.name}.{i + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        self._open(path)
        if self.config.fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _close_quietly(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
