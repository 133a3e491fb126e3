"""JSONL sink: native JSON lines to a file or stdout, rotation by size, no half lines after a failed write."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import JsonlConfig, JsonlSink
from pipeline.bus.base import EVENTS_TOPIC, Record
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.errors import SinkError
from tests.fakes import make_event


def delivery(i: int, **kw: Any) -> Delivery:
    d = decode(Record(EVENTS_TOPIC, 0, i, 0, b"ws-1", make_event(i, **kw).to_json()))
    assert not isinstance(d, str)
    return d


def file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def sink(path: str, **kw: Any) -> JsonlSink:
    return JsonlSink("file", JsonlConfig.model_validate({"type": "jsonl", "path": path, **kw}))


async def test_writes_native_json_lines(tmp_path: Path) -> None:
    """Each delivery becomes one line holding the event's native JSON; the file is private (0600)."""
    path = tmp_path / "audit.jsonl"
    async with sink(str(path)) as s:
        assert (await s.send([delivery(0), delivery(1)])).ok
        await s.send([delivery(2)])
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == [make_event(i).to_dict() for i in range(3)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_stdout_mode_writes_to_the_stream() -> None:
    """path '-' writes to standard output (an injected stream here)."""
    buf = io.BytesIO()
    s = JsonlSink("out", JsonlConfig(path="-"), stream=buf)
    async with s:
        await s.send([delivery(0)])
    assert orjson.loads(buf.getvalue()) == make_event(0).to_dict()


async def test_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    """Past rotate_bytes the file rotates to .1, .2 …; only 'keep' rotated files remain; nothing is lost."""
    path = tmp_path / "audit.jsonl"
    async with sink(str(path), rotate_bytes=2048, keep=2) as s:
        for i in range(40):
            await s.send([delivery(i)])
    sizes = file_sizes(tmp_path)
    assert sorted(sizes) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert max(sizes.values()) <= 2048
    kept = [orjson.loads(x)["attributes"]["n"] for p in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl")
            for x in (tmp_path / p).read_bytes().splitlines()]  # fmt: skip
    assert kept == list(range(40 - len(kept), 40))


def fail_the_next_write_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next ``os.write`` write 10 bytes, then fail with ENOSPC; later writes go through."""
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data[:10]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky)


async def test_failed_write_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway is cut back and reported retriable; the retry writes whole lines."""
    path = tmp_path / "audit.jsonl"
    async with sink(str(path)) as s:
        await s.send([delivery(0)])
        fail_the_next_write_midway(monkeypatch)
        with pytest.raises(SinkError) as info:
            await s.send([delivery(1)])
        assert info.value.retriable and "No space left" in str(info.value)
        await s.send([delivery(1)])
    ns = [orjson.loads(x)["attributes"]["n"] for x in path.read_bytes().splitlines()]
    assert ns == [0, 1]


@pytest.mark.parametrize("how", ["rename", "delete"])
async def test_file_moved_away_by_logrotate_is_reopened(tmp_path: Path, how: str) -> None:
    """logrotate (rename, then a new file with ``create``) or a deleted file: the next batch goes to ``path``.

    Before, the sink kept writing to the file it had open: into ``audit.jsonl.1`` (which logrotate
    deletes after ``rotate N`` cycles) or into a deleted file, while ``path`` stayed empty for a
    ``tail -F`` or a shipper that follows the name.
    """
    path = tmp_path / "audit.jsonl"
    async with sink(str(path)) as s:
        await s.send([delivery(0), delivery(1)])
        if how == "rename":
            path.rename(tmp_path / "audit.jsonl.1")
            path.touch(mode=0o600)  # logrotate's "create"
        else:
            path.unlink()
        await s.send([delivery(2)])
        await s.send([delivery(3)])
    assert [orjson.loads(x)["attributes"]["n"] for x in path.read_bytes().splitlines()] == [2, 3]
    if how == "rename":
        rotated = (tmp_path / "audit.jsonl.1").read_bytes().splitlines()
        assert [orjson.loads(x)["attributes"]["n"] for x in rotated] == [0, 1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_file_truncated_by_copytruncate_is_appended_from_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate ``copytruncate`` empties the file in place: a write that then fails midway is cut back to the
    file's real end, not to its size before the truncation (which filled the file with NULs up to it)."""
    path = tmp_path / "audit.jsonl"
    async with sink(str(path)) as s:
        await s.send([delivery(0), delivery(1)])
        os.truncate(path, 0)
        fail_the_next_write_midway(monkeypatch)
        with pytest.raises(SinkError):
            await s.send([delivery(2)])
        await s.send([delivery(2)])
    data = path.read_bytes()
    assert b"\0" not in data
    assert [orjson.loads(x)["attributes"]["n"] for x in data.splitlines()] == [2]
